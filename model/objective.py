"""The training objective of one batch (paper eq. 10 and 11): scores of image-caption pairs -> the stage's loss.

In-batch batches score image b against caption c as s(i_b, t_c) = cos(f(i_b | t_b), g(t_c)) (`paired`: each
image under its own caption's knowledge) or cos(f(i_b | t_c), g(t_c)) (`batch_cross`: under the scored caption's
knowledge, B x B image passes). Under `paired` the prompt modules can lower the loss by turning the knowledge into
a copy of its caption's text feature, whatever the image; re-ranking, which conditions every candidate on its own
knowledge, then favours captions over images. Cross batches (`cross`) hold the B positives, then each anchor
image under sampled negative captions, then each anchor caption on sampled negative images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.action_clip import ActionAwareCLIP, ImagePrefix
from model.knowledge import Knowledge
from model.losses import contrastive_loss, triplet_loss

LOSSES = ("contrastive", "triplet")


@dataclass(frozen=True)
class Batch:
    """Pairs to score, `prefix`/`knowledge`/`text` aligned row by row: in-batch (B anchors, no `negative_valid`)
    or cross (the B positives, then B x n negative captions, then B x n negative images)."""
    prefix: ImagePrefix
    knowledge: Knowledge
    text: torch.Tensor
    image_rows: torch.Tensor  # the image of every anchor (in-batch: same-image captions are not negatives)
    negative_valid: torch.Tensor | None = None  # cross: (2, B, n) whether each sampled negative exists


class Objective(nn.Module):
    """The loss of one batch; a module so DistributedDataParallel can wrap it."""

    def __init__(self, model: ActionAwareCLIP, losses: tuple[str, ...], margin: float,
                 cross_conditioned: bool = False):
        super().__init__()
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; known: {LOSSES}")
        self.model, self.losses, self.margin = model, losses, margin
        self.cross_conditioned = cross_conditioned

    def _loss(self, rows: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        total = 0.0
        if "contrastive" in self.losses:
            # CLIP's cap on the learned temperature (1/τ <= 100) keeps the logits from running away.
            total = total + contrastive_loss(rows, target, valid, self.model.logit_scale.clamp(max=math.log(100)))
        if "triplet" in self.losses:
            total = total + triplet_loss(rows, target, valid, self.margin)
        return total

    def _in_batch_scores(self, batch: Batch) -> torch.Tensor:
        """(B, B): row b = image b, column c = caption c."""
        if not self.cross_conditioned:
            features = F.normalize(self.model.encode_from_prefix(batch.prefix, batch.knowledge), dim=-1)
            return features @ batch.text.to(features.dtype).T
        anchors = len(batch.image_rows)
        rows = torch.arange(anchors, device=batch.text.device)
        image_of_pair, caption_of_pair = rows.repeat_interleave(anchors), rows.repeat(anchors)
        features = F.normalize(self.model.encode_from_prefix(batch.prefix.index(image_of_pair),
                                                             batch.knowledge.index(caption_of_pair)), dim=-1)
        text = batch.text[caption_of_pair].to(features.dtype)
        return (features * text).sum(dim=-1).view(anchors, anchors)

    def forward(self, batch: Batch) -> torch.Tensor:
        anchors = len(batch.image_rows)
        if batch.negative_valid is None:  # in-batch: the score matrix, both directions
            scores = self._in_batch_scores(batch)
            diagonal = torch.eye(anchors, dtype=torch.bool, device=scores.device)
            valid = (batch.image_rows[:, None] != batch.image_rows[None, :]) | diagonal
            target = torch.arange(anchors, device=scores.device)
            return (self._loss(scores, target, valid) + self._loss(scores.T, target, valid.T)) / 2
        features = F.normalize(self.model.encode_from_prefix(batch.prefix, batch.knowledge), dim=-1)
        text = batch.text.to(features.dtype)
        target = torch.zeros(anchors, dtype=torch.long, device=features.device)
        pair_scores = (features * text).sum(dim=-1)
        positive, negatives = pair_scores[:anchors, None], pair_scores[anchors:].view(2, anchors, -1)
        always = torch.ones(anchors, 1, dtype=torch.bool, device=features.device)
        return sum(self._loss(torch.cat([positive, negatives[d]], dim=1), target,
                              torch.cat([always, batch.negative_valid[d]], dim=1)) for d in range(2)) / 2
