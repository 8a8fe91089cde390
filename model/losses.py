"""The two training objectives (paper eq. 10 and 11), over rows of candidate scores.

Each row holds the cosine scores of one query against its candidates: the positive at column `target`, the
negatives wherever `valid` is True. In-batch ("paired") training passes the batch's score matrix (and its
transpose) with the other captions of the same image marked invalid, so they do not count as negatives;
cross-conditioned training passes (positive, negatives...) rows.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def _check(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    if scores.shape != valid.shape or target.shape != scores.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)}, target {tuple(target.shape)} and valid "
                         f"{tuple(valid.shape)} do not fit together")


def contrastive_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE with a learnable temperature: -log softmax(scale * s)[target], invalid columns excluded."""
    _check(scores, target, valid)
    logits = (logit_scale.exp() * scores).masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, target)


def triplet_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, margin: float) -> torch.Tensor:
    """max(d_p - d_n + α, 0) with d = 1 - cos and the hardest valid negative of each row.

    A row without any valid negative contributes 0.
    """
    _check(scores, target, valid)
    positive = scores.gather(1, target[:, None]).squeeze(1)
    negatives = valid.clone()
    negatives[torch.arange(len(scores), device=scores.device), target] = False
    hardest = scores.masked_fill(~negatives, float("-inf")).max(dim=1).values
    has_negative = negatives.any(dim=1)
    losses = F.relu(hardest - positive + margin)
    return torch.where(has_negative, losses, torch.zeros_like(losses)).mean()
