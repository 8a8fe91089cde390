"""The training objective of one batch (paper eq. 10 and 11): scores of image-caption pairs -> the stage's loss.

Re-ranking scores image i against caption t as s(i, t) = cos(f(i | t), g(t)): the image under the candidate's
own knowledge. The in-batch objectives approximate the (B, B) matrix of those scores:

- `paired` (the paper): row b holds f(i_b | t_b) against every caption's g(t_c); B image passes. The prompt
  modules can lower this loss by turning the knowledge into a copy of its caption's text feature, whatever the
  image, and re-ranking, which conditions every candidate on its own knowledge, then favours captions over images.
- `consistent`: `paired`, plus each caption's knowledge on one other image of the batch (its hardest by zero-shot
  score), scored as re-ranking scores it and put in that pair's cell; 2B image passes. A copy of the caption's
  text feature now scores the other image as high as its own, so the shortcut no longer lowers the loss.
- `batch_cross`: every cell scored under its caption's knowledge; B x B image passes (small batches only).

Under DistributedDataParallel `paired` and `consistent` contrast each process's rows against the whole global
batch: features are gathered from every process (with their gradients), so N processes x b anchors make an
N·b-way loss, as open_clip's ClipLoss does. `batch_cross` and `cross` stay within each process's batch.
Cross batches (`cross`) hold the B positives, then each anchor image under sampled negative captions, then each
anchor caption on sampled negative images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
from torch import nn
from torch.nn import functional as F

from model.action_clip import ActionAwareCLIP, ImagePrefix
from model.knowledge import Knowledge
from model.losses import contrastive_loss, triplet_loss

LOSSES = ("contrastive", "triplet")
NEGATIVES = ("paired", "consistent", "batch_cross", "cross")


@dataclass(frozen=True)
class Batch:
    """Pairs to score, `prefix`/`knowledge`/`text` aligned row by row: in-batch (B anchors, no `negative_valid`)
    or cross (the B positives, then B x n negative captions, then B x n negative images)."""
    prefix: ImagePrefix
    knowledge: Knowledge
    text: torch.Tensor
    image_rows: torch.Tensor  # the image of every anchor (in-batch: same-image captions are not negatives)
    negative_valid: torch.Tensor | None = None  # cross: (2, B, n) whether each sampled negative exists
    other_image: torch.Tensor | None = None  # consistent: (B,) the anchor whose image each caption is also
    #                                          scored on, -1 for none (every anchor shows the caption's image)


def gather(rows: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, int]:
    """The rows of every process, concatenated in rank order, and where this process's rows start.

    Processes may hold different numbers of rows (neighbourhood batches): rows are padded to the longest for the
    collective and cut back after. `with_grad`: gradients flow back to the process that owns each row.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = F.pad(rows, (0,) * (2 * rows.dim() - 1) + (max(counts) - len(rows),))
    if with_grad:
        parts = dist_functional.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]), sum(counts[:rank])


class Objective(nn.Module):
    """The loss of one batch; a module so DistributedDataParallel can wrap it."""

    def __init__(self, model: ActionAwareCLIP, losses: tuple[str, ...], margin: float, negatives: str):
        super().__init__()
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; known: {LOSSES}")
        if negatives not in NEGATIVES:
            raise ValueError(f"unknown negatives {negatives!r}; known: {NEGATIVES}")
        self.model, self.losses, self.margin, self.negatives = model, losses, margin, negatives

    def _loss(self, rows: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        total = 0.0
        if "contrastive" in self.losses:
            # CLIP's cap on the learned temperature (1/τ <= 100) keeps the logits from running away.
            total = total + contrastive_loss(rows, target, valid, self.model.logit_scale.clamp(max=math.log(100)))
        if "triplet" in self.losses:
            total = total + triplet_loss(rows, target, valid, self.margin)
        return total

    def _features(self, prefix: ImagePrefix, knowledge: Knowledge) -> torch.Tensor:
        return F.normalize(self.model.encode_from_prefix(prefix, knowledge), dim=-1)

    def cross_conditioned_scores(self, batch: Batch) -> torch.Tensor:
        """(B, B) `batch_cross` scores: row b = image b, column c = caption c under its own knowledge."""
        anchors = len(batch.image_rows)
        rows = torch.arange(anchors, device=batch.text.device)
        image_of_pair, caption_of_pair = rows.repeat_interleave(anchors), rows.repeat(anchors)
        features = self._features(batch.prefix.index(image_of_pair), batch.knowledge.index(caption_of_pair))
        text = batch.text[caption_of_pair].to(features.dtype)
        return (features * text).sum(dim=-1).view(anchors, anchors)

    def global_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """`paired` / `consistent` scores of this process's anchors against the global batch:
        (b, N·b) image -> captions, (b, N·b) caption -> images, the global image rows and this process's offset."""
        anchors = len(batch.image_rows)
        consistent = self.negatives == "consistent"
        if consistent and batch.other_image is None:
            raise ValueError("consistent negatives need batch.other_image (tasks/train/batches.py sets it)")
        if consistent:  # one pass over the anchors and the (other image, caption) pairs: larger, faster matmuls
            captions = torch.nonzero(batch.other_image >= 0).squeeze(1)
            others = batch.other_image[captions]
            rows = torch.arange(anchors, device=captions.device)
            features = self._features(batch.prefix.index(torch.cat([rows, others])),
                                      batch.knowledge.index(torch.cat([rows, captions])))
            features, other_features = features[:anchors], features[anchors:]
        else:
            features = self._features(batch.prefix, batch.knowledge)
        text = batch.text.to(features.dtype)
        all_features, offset = gather(features, with_grad=True)
        all_text, _ = gather(text, with_grad=False)  # g(t) is frozen
        all_images, _ = gather(batch.image_rows, with_grad=False)
        i2t, t2i = features @ all_text.T, text @ all_features.T
        if consistent:
            scores = (other_features * text[captions]).sum(dim=-1)
            i2t = i2t.index_put((others, offset + captions), scores)
            t2i = t2i.index_put((captions, offset + others), scores)
        return i2t, t2i, all_images, offset

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.negative_valid is not None:
            return self._cross_loss(batch)
        anchors = len(batch.image_rows)
        if self.negatives == "batch_cross":
            i2t = self.cross_conditioned_scores(batch)
            t2i, all_images, offset = i2t.T, batch.image_rows, 0
        else:
            i2t, t2i, all_images, offset = self.global_scores(batch)
        target = offset + torch.arange(anchors, device=i2t.device)
        # Other captions of an anchor's image are not its negatives.
        valid = batch.image_rows[:, None] != all_images[None, :]
        valid[torch.arange(anchors, device=i2t.device), target] = True
        return (self._loss(i2t, target, valid) + self._loss(t2i, target, valid)) / 2

    def _cross_loss(self, batch: Batch) -> torch.Tensor:
        anchors = len(batch.image_rows)
        features = self._features(batch.prefix, batch.knowledge)
        target = torch.zeros(anchors, dtype=torch.long, device=features.device)
        pair_scores = (features * batch.text.to(features.dtype)).sum(dim=-1)
        positive, negatives = pair_scores[:anchors, None], pair_scores[anchors:].view(2, anchors, -1)
        always = torch.ones(anchors, 1, dtype=torch.bool, device=features.device)
        return sum(self._loss(torch.cat([positive, negatives[d]], dim=1), target,
                              torch.cat([always, batch.negative_valid[d]], dim=1)) for d in range(2)) / 2
