"""build_model: an ActionAwareCLIP from the `clip` and `prompt` params (no weights are read here)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import open_clip
from torch import nn

from model.action_clip import ActionAwareCLIP
from model.config import PromptConfig


def build_model(config: Mapping[str, Any], clip_model: nn.Module | None = None) -> ActionAwareCLIP:
    """`config["clip"]["model"]` is an open_clip model name or a model config mapping (embed_dim, vision_cfg,
    text_cfg, ...); `config["prompt"]` is a PromptConfig or a mapping of all its fields (params.yaml's `prompt`
    section). Without `clip_model` the backbone gets open_clip's random initialisation; the stages pass the frozen
    backbone they loaded from models/base_clip."""
    if clip_model is None:
        architecture = config["clip"]["model"]
        if isinstance(architecture, Mapping):
            clip_model = open_clip.CLIP(**architecture)
        else:
            clip_model = open_clip.create_model(architecture, pretrained=None)
    prompt = config["prompt"]
    return ActionAwareCLIP(clip_model, prompt if isinstance(prompt, PromptConfig) else PromptConfig(**prompt))
