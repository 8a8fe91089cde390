"""Sizes and switches of the prompt modules (the `prompt` section of params.yaml, which holds their values).

The field metadata are the settings' rules (one of `choices`, >= `least`, <= `most`, > `above`), checked by
tasks/config.py where params are read; the paper's values are λ = 0.7 and a bottleneck adapter with t ≪ d.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

TRIPLET_SOURCES = ("encoder", "template")
FUSIONS = ("aim", "concat")


@dataclass(frozen=True)
class PromptConfig:
    SECTION: ClassVar[str] = "prompt"

    injection_layer: int | None = field(metadata={"least": 0})  # blocks before it see only the image (cacheable);
                                                                 # None: half the depth
    depth: int | None = field(metadata={"least": 1})             # blocks [injection_layer, depth) get their own
                                                                 # learnable prompts; None: all
    n_visual_prompts: int = field(metadata={"least": 0})         # N learnable prompts appended with the knowledge
    adapter_dim: int = field(metadata={"least": 1})              # the adapter's bottleneck t (d -> t -> width)
    triplet_layers: int = field(metadata={"least": 1})           # transformer layers over the K triplets
    triplet_heads: int = field(metadata={"least": 1})
    interaction_heads: int | None = field(metadata={"least": 1})  # None: the visual transformer's head count
    mix_lambda: float = field(metadata={"least": 0.0, "most": 1.0})  # Ṽ = (λ·A_t + (1-λ)·A_s)·V
    use_triplets: bool
    use_states: bool
    triplet_source: str = field(metadata={"choices": TRIPLET_SOURCES})  # encoder: learned triplet encoder |
                                        # template: frozen features of a hand-crafted sentence (paper, table 2)
    fusion: str = field(metadata={"choices": FUSIONS})  # aim: adaptive interaction | concat: prompts as they are
    init_std: float = field(metadata={"above": 0.0})
    use_caption: bool = False  # the caption's own g(t) as the one prompt instead of knowledge (TOMML's text-guided
                               # tuning, a baseline); excludes use_triplets and use_states

    def __post_init__(self) -> None:
        if self.use_caption and (self.use_triplets or self.use_states):
            raise ValueError("use_caption replaces the knowledge prompts: set use_triplets and use_states to false")

    @property
    def uses_knowledge(self) -> bool:
        """Whether a caption-dependent prompt stream reaches the image tower."""
        return self.use_triplets or self.use_states or self.use_caption
