"""The action knowledge of a batch of captions, as tensors (built from data/features/ by the training code)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Knowledge:
    """K triplet slots per caption; `mask[b, k]` says whether caption b has a k-th triplet.

    slot_tokens: (B, K, 3, S) token ids of the subject/action/object words, 0 = padding (triplet encoder).
    states: (B, K, D) frozen text features of the templated state sentences.
    templates: (B, K, D) frozen text features of the hand-crafted triplet sentence (triplet_source: template).
    caption: (B, D) the caption's own frozen text feature g(t) (use_caption: text-guided tuning, TOMML's baseline).
    A caption without valid knowledge has an all-False mask row: the model uses its learned null prompt.
    """

    mask: torch.Tensor
    slot_tokens: torch.Tensor | None = None
    states: torch.Tensor | None = None
    templates: torch.Tensor | None = None
    caption: torch.Tensor | None = None

    def __post_init__(self) -> None:
        batch, slots = self.mask.shape
        for name in ("slot_tokens", "states", "templates"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[:2]) != (batch, slots):
                raise ValueError(f"knowledge.{name} has shape {tuple(value.shape)}, expected ({batch}, {slots}, ...)")
        if self.caption is not None and self.caption.shape[0] != batch:
            raise ValueError(f"knowledge.caption has shape {tuple(self.caption.shape)}, expected ({batch}, D)")

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def max_triplets(self) -> int:
        return self.mask.shape[1]

    def _map(self, fn) -> Knowledge:
        return replace(self, **{name: None if getattr(self, name) is None else fn(getattr(self, name))
                                for name in ("mask", "slot_tokens", "states", "templates", "caption")})

    def index(self, rows: torch.Tensor) -> Knowledge:
        """The knowledge of `rows` (e.g. each image's candidate captions in re-ranking)."""
        return self._map(lambda tensor: tensor[rows])

    def to(self, device: torch.device | str) -> Knowledge:
        return self._map(lambda tensor: tensor.to(device))
