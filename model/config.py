"""Sizes and switches of the prompt modules (the `prompt` section of params.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

TRIPLET_SOURCES = ("encoder", "template")
FUSIONS = ("aim", "concat")


@dataclass(frozen=True)
class PromptConfig:
    """Defaults follow the paper where it gives a value (λ = 0.7, a bottleneck adapter with t ≪ d)."""

    injection_layer: int | None = None  # blocks before it run without prompts (cacheable); None: half the depth
    depth: int | None = None            # blocks [injection_layer, depth) get their own learnable prompts; None: all
    n_visual_prompts: int = 4           # N learnable visual prompts appended with the knowledge tokens
    adapter_dim: int = 64               # the adapter's bottleneck t (d -> t -> visual width)
    triplet_layers: int = 2             # transformer layers over the K triplets
    triplet_heads: int = 4
    interaction_heads: int | None = None  # None: the visual transformer's head count
    mix_lambda: float = 0.7             # Ṽ = (λ·A_t + (1-λ)·A_s)·V
    use_triplets: bool = True
    use_states: bool = True
    triplet_source: str = "encoder"     # encoder: learned triplet encoder | template: frozen text features of a
                                        # hand-crafted sentence (the paper's table 2 ablation)
    fusion: str = "aim"                 # aim: adaptive interaction module | concat: prompts appended as they are
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.triplet_source not in TRIPLET_SOURCES:
            raise ValueError(f"prompt.triplet_source must be one of {TRIPLET_SOURCES}, got {self.triplet_source!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"prompt.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0.0 <= self.mix_lambda <= 1.0:
            raise ValueError(f"prompt.mix_lambda must be in [0, 1], got {self.mix_lambda}")
        for name in ("n_visual_prompts", "adapter_dim", "triplet_layers", "triplet_heads"):
            if getattr(self, name) < (0 if name == "n_visual_prompts" else 1):
                raise ValueError(f"prompt.{name} is out of range: {getattr(self, name)}")

    @property
    def uses_knowledge(self) -> bool:
        return self.use_triplets or self.use_states

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PromptConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown prompt settings {unknown}; known: {sorted(known)}")
        return cls(**values)
