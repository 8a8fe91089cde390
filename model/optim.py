"""AdamW parameter groups as open_clip's training makes them: weight decay on weight matrices only."""
from __future__ import annotations

from collections.abc import Collection, Iterable

from torch import nn


def decay_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay: Collection[str] = ()) -> list[dict]:
    """[no-decay group, decay group]: gains, biases and scalars (ndim < 2, norm layers, biases) and the names in
    `no_decay` (learned prompts and temperatures, which decay would pull towards zero) get no weight decay."""
    def exempt(name: str, parameter: nn.Parameter) -> bool:
        return parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or name in no_decay

    named = list(named_parameters)
    return [{"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": weight_decay}]
