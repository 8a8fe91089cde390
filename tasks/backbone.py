"""The frozen CLIP backbone: an open_clip model built from params, saved as an open_clip local-dir, loaded back.

`models/base_clip/` holds `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}, self-contained) and
`open_clip_model.safetensors`, so `open_clip.create_model_and_transforms("local-dir:models/base_clip")` and
`open_clip.get_tokenizer("local-dir:models/base_clip")` rebuild it without this project's configs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tasks.config import InputDataError

CLIP_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "clip"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@functools.cache
def register_project_configs() -> None:
    """Make configs/clip/*.json (ViT-Demo, ViT-Tiny-Test) known to open_clip by their file names."""
    open_clip.add_model_config(CLIP_CONFIGS)


def resolve_device(device: str, key: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputDataError(f"params.yaml: {key}: '{device}' is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputDataError(f"params.yaml: {key}: '{device}' requested, but torch sees no CUDA device")
    return resolved


def model_config(name: str) -> dict[str, Any]:
    """The architecture of `clip.model` (a copy): an open_clip built-in or a configs/clip/ file.

    Only open_clip's own ViT + text transformer (class CLIP) qualifies: the prompt model reads its token
    embeddings and injects prompts into its VisionTransformer, and its tokenizer is open_clip's default one.
    """
    if ":" in name:  # hf-hub:/local-dir: would bring their own weights, bypassing clip.pretrained
        raise InputDataError(f"params.yaml: clip.model: '{name}': give a model name, and the weights in "
                             "clip.pretrained")
    register_project_configs()
    config = open_clip.get_model_config(name)
    if config is None:
        project = sorted(path.stem for path in CLIP_CONFIGS.glob("*.json"))
        raise InputDataError(f"params.yaml: clip.model: '{name}' is neither an open_clip model "
                             f"(open_clip.list_models()) nor a config in configs/clip/ ({', '.join(project)})")
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    foreign = [reason for reason, found in (
        ("a timm vision tower", "timm_model_name" in vision),
        ("a ResNet vision tower", not isinstance(vision.get("layers", 12), int)),
        ("a Hugging Face text tower", "hf_model_name" in text),
        ("a Hugging Face tokenizer", "hf_tokenizer_name" in text),
        ("a custom text tower", config.get("custom_text", False) or "multimodal_cfg" in config),
    ) if found]
    if foreign:
        raise InputDataError(f"params.yaml: clip.model: '{name}' has {', '.join(foreign)}; the action-aware prompts "
                             "need open_clip's own ViT and text transformer (e.g. ViT-B-32, ViT-B-16, ViT-L-14-336)")
    return config


def parameter_counts(model: open_clip.CLIP) -> dict[str, int]:
    visual = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    scales = model.logit_scale.numel() + (model.logit_bias.numel() if model.logit_bias is not None else 0)
    return {"visual": visual, "text": total - visual - scales, "logit_scale": scales, "total": total}


# ---------------------------------------------------------------- pretrained weights

def create_pretrained(name: str, pretrained: str) -> tuple[open_clip.CLIP, dict[str, Any], dict[str, Any]]:
    """`clip.model` with `clip.pretrained` weights: an open_clip tag, or a local weights file.

    Returns the model, its architecture as it was built, and a description of the weights' source.
    """
    config = model_config(name)
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if tag:
        # OpenAI's weights were trained with QuickGELU: the saved config must say so to rebuild the same network.
        config["quick_gelu"] = bool(config.get("quick_gelu", False) or tag.get("quick_gelu", False))
        try:
            model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=config["quick_gelu"])
        except RuntimeError as exc:
            if not str(exc).startswith("Failed to download"):
                raise
            cause = str(exc).split("Last error:")[-1].strip().splitlines()[0].rstrip(".")
            offline = " (the Hugging Face hub is offline: HF_HUB_OFFLINE=1)" if huggingface_hub.is_offline_mode() else ""
            raise InputDataError(
                f"params.yaml: clip.pretrained: open_clip could not fetch the '{pretrained}' weights of {name}"
                f"{offline}: {cause}. Run once with network access and HF_HUB_OFFLINE=0 (open_clip caches the "
                "download), or set clip.pretrained to a local .safetensors/.pt file") from None
        return model, config, {"kind": "open_clip_tag", "tag": pretrained}

    path = Path(pretrained)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise InputDataError(f"params.yaml: clip.pretrained: '{pretrained}' is not an open_clip tag of {name} "
                             f"({', '.join(tags) or 'it has none'}), a weights file ({', '.join(WEIGHT_SUFFIXES)}) "
                             "nor 'scratch'")
    model = open_clip.create_model(name)
    load_weights_file(model, path, name)
    return model, config, {"kind": "file", "file": str(path), "sha256": sha256_of(path)}


def load_weights_file(model: open_clip.CLIP, path: Path, name: str) -> None:
    """Load a state dict (nested "state_dict" and "module." prefixes allowed) without unpickling objects."""
    where = f"params.yaml: clip.pretrained: {path}"
    if not path.is_file():
        raise InputDataError(f"{where}: file not found")
    try:
        # open_clip's loader: safetensors, or torch.load(weights_only=True); it unwraps "state_dict" and "module.".
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if needs:
            raise InputDataError(f"{where}: holds a pickled {needs.group(1)}, not a plain state dict; loading it would "
                                 "run pickle (refused). Save model.state_dict() with torch.save, or a .safetensors file"
                                 ) from None
        raise InputDataError(f"{where}: not a readable torch weights file") from None
    except SafetensorError as exc:
        raise InputDataError(f"{where}: not a readable safetensors file ({exc})") from None
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        if not lines or not lines[0].startswith("Error(s) in loading state_dict"):
            raise InputDataError(f"{where}: not a readable weights file ({lines[0] if lines else exc})") from None
        problems = "; ".join(line if len(line) <= 200 else line[:200] + "..." for line in lines[1:] if line)
        raise InputDataError(f"{where}: weights do not match clip.model {name}: {problems}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the local-dir

def save_backbone(model: open_clip.CLIP, model_cfg: dict[str, Any], out_dir: Path) -> Path:
    """Write the open_clip local-dir; returns the weights file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    weights = out_dir / WEIGHTS_FILE
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, weights, metadata={"format": "pt"})
    return weights


def load_backbone(path: Path, device: torch.device | str = "cpu") -> tuple[open_clip.CLIP, Any, Any]:
    """(clip_model, preprocess, tokenizer) of a saved backbone: eval mode, every parameter frozen."""
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise InputDataError(f"{path}: no backbone ({CONFIG_FILE} + {WEIGHTS_FILE}); run `dvc repro base_clip`")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    model.eval().requires_grad_(False)
    return model, preprocess, tokenizer


def backbone_meta(path: Path) -> dict[str, Any]:
    """What identifies a saved backbone: its config and the hash of its weights."""
    return {"path": str(path), **json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")),
            "weights_sha256": sha256_of(path / WEIGHTS_FILE)}


# ---------------------------------------------------------------- encoding

class ImageFiles(Dataset):
    """Preprocessed images; a file that does not decode yields its reason instead of killing the worker."""

    def __init__(self, paths: Sequence[str], transform: Any, input_size: tuple[int, ...]):
        self.paths, self.transform, self.input_size = list(paths), transform, input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB")), ""
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            return torch.zeros(self.input_size), f"{self.paths[index]}: cannot decode image: {exc}"


def input_size(model: open_clip.CLIP) -> tuple[int, ...]:
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    return (3, *((size, size) if isinstance(size, int) else size))


def raise_bad_images(errors: Sequence[str]) -> None:
    bad = [error for error in errors if error]
    if bad:
        more = f" (and {len(bad) - 1} more in the same batch)" if len(bad) > 1 else ""
        raise InputDataError(bad[0] + more)


@torch.inference_mode()
def encode_images(model: open_clip.CLIP, preprocess: Any, paths: Sequence[str], batch_size: int, workers: int,
                  device: torch.device, desc: str = "images") -> np.ndarray:
    """L2-normalised encode_image of every file, float16 (N, D), in the order given."""
    loader = DataLoader(ImageFiles(paths, preprocess, input_size(model)), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda")
    features = np.empty((len(paths), model.visual.output_dim), dtype=np.float16)
    start = 0
    for images, errors in tqdm(loader, desc=desc, unit="batch"):
        raise_bad_images(errors)
        batch = model.encode_image(images.to(device, non_blocking=True), normalize=True)
        features[start:start + len(batch)] = batch.float().cpu().numpy()
        start += len(batch)
    return features


@torch.inference_mode()
def encode_texts(model: open_clip.CLIP, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device,
                 desc: str = "texts") -> np.ndarray:
    """L2-normalised encode_text of every text, float16 (N, D), in the order given."""
    features = np.empty((len(texts), model.visual.output_dim), dtype=np.float16)  # one embedding space
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        features[start:start + len(tokens)] = model.encode_text(tokens, normalize=True).float().cpu().numpy()
    return features
