"""The trained prompt modules on disk (models/stage<N>/: model.safetensors + config.json), and building them on a
frozen backbone with prompt settings checked against it."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model import ActionAwareCLIP, PromptConfig
from tasks import paths
from tasks.backbone import load_backbone, sha256_of
from tasks.config import InputDataError, from_params

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def prompt_model(clip: nn.Module, prompt: PromptConfig, source: str = "params.yaml") -> ActionAwareCLIP:
    """The prompt modules on `clip`; settings that do not fit this backbone (say, an injection layer beyond its
    depth) are a one-line error naming `source`, like every other bad setting."""
    try:
        return ActionAwareCLIP(clip, prompt)
    except ValueError as exc:
        raise InputDataError(f"{source}: {exc}") from None


def prompt_state(model: ActionAwareCLIP) -> dict[str, torch.Tensor]:
    """Everything but the frozen backbone (which models/base_clip already holds)."""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
            if not name.startswith("clip.")}


def load_prompt_state(model: ActionAwareCLIP, weights: Path) -> None:
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.startswith("clip.")]
    if missing or unexpected:
        raise InputDataError(f"{weights}: does not fit the prompt model: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]} (were prompt.* params changed since it was trained?)")


def save_model(model: ActionAwareCLIP, out_dir: Path, description: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(prompt_state(model), out_dir / WEIGHTS_FILE)
    config = {"prompt": asdict(model.config), **description}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_model(model_dir: Path, backbone_dir: Path = paths.BASE_CLIP,
               device: torch.device | str = "cpu") -> tuple[ActionAwareCLIP, Any, dict[str, Any]]:
    """A trained model (models/stage1 or models/stage2) on its frozen backbone: (model, preprocess, config)."""
    config_file = model_dir / CONFIG_FILE
    if not config_file.is_file():
        raise InputDataError(f"{model_dir}: no trained model; run `dvc repro`")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    clip, preprocess, _ = load_backbone(backbone_dir, device)
    if sha256_of(backbone_dir / "open_clip_model.safetensors") != config["backbone_sha256"]:
        raise InputDataError(f"{model_dir}: trained on another backbone than {backbone_dir}; run `dvc repro`")
    try:
        prompt = from_params(PromptConfig, config, source=str(config_file))
    except InputDataError as exc:
        raise InputDataError(f"{exc} (made by another version? run `dvc repro`)") from None
    model = prompt_model(clip, prompt, str(config_file)).to(device)
    load_prompt_state(model, model_dir / WEIGHTS_FILE)
    return model.eval(), preprocess, config
