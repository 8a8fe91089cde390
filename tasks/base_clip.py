"""Stage `base_clip`: the frozen CLIP backbone -> models/base_clip/ (an open_clip local-dir) and reports/base_clip.json.

`clip.pretrained` is an open_clip tag (downloaded by open_clip), a local weights file, or `scratch`: `clip.model`
trained contrastively, seeded so a CPU run is repeatable, on `clip.scratch.corpus`: the train split's (image,
caption) pairs, or a demo corpus drawn apart from the data set (the stand-in for CLIP's web-scale pretraining).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tempfile

import numpy as np
import open_clip
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tasks import backbone, paths, retrieval, schemas
from tasks.config import InputDataError, section
from tasks.demo_data import generate_demo

SCRATCH = "scratch"
CORPORA = ("train", "demo")
EVAL_BATCH = 256


@dataclass(frozen=True)
class ScratchConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    workers: int = 0  # image-decoding processes; 0 decodes in the training process
    corpus: str = "train"  # train: the train split's pairs | demo: a demo corpus drawn with corpus_seed
    corpus_images: int = 960
    corpus_seed: int = 1


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-Demo"
    pretrained: str = SCRATCH
    device: str = "auto"
    scratch: ScratchConfig = field(default_factory=ScratchConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ClipConfig:
        values = dict(section(params, "clip", set(cls.__dataclass_fields__)))
        scratch = values.pop("scratch", None) or {}
        unknown = sorted(set(scratch) - set(ScratchConfig.__dataclass_fields__))
        if unknown:
            raise InputDataError(f"params.yaml: unknown keys in 'clip.scratch': {unknown}; "
                                 f"allowed: {sorted(ScratchConfig.__dataclass_fields__)}")
        config = cls(**values, scratch=ScratchConfig(**scratch))
        for key in ("model", "pretrained"):
            if not isinstance(getattr(config, key), str) or not getattr(config, key):
                raise InputDataError(f"params.yaml: clip.{key}: must be a non-empty string")
        for key in ("epochs", "batch_size"):
            if getattr(config.scratch, key) < 1:
                raise InputDataError(f"params.yaml: clip.scratch.{key}: must be >= 1")
        for key in ("warmup_steps", "workers", "weight_decay"):
            if getattr(config.scratch, key) < 0:
                raise InputDataError(f"params.yaml: clip.scratch.{key}: must be >= 0")
        if not config.scratch.lr > 0:
            raise InputDataError("params.yaml: clip.scratch.lr: must be > 0")
        if config.scratch.corpus not in CORPORA:
            raise InputDataError(f"params.yaml: clip.scratch.corpus: must be one of {list(CORPORA)}, "
                                 f"got {config.scratch.corpus!r}")
        return config


class CaptionedImages(backbone.ImageFiles):
    """(image, tokens, decode error) of each training pair."""

    def __init__(self, paths: list[str], tokens: torch.Tensor, transform: Any, input_size: tuple[int, ...]):
        super().__init__(paths, transform, input_size)
        self.tokens = tokens

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, error = super().__getitem__(index)
        return image, self.tokens[index], error


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up, then cosine decay to zero (open_clip's training schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def optimizer(model: open_clip.CLIP, config: ScratchConfig) -> torch.optim.AdamW:
    """AdamW; gains, biases and logit_scale are not decayed (as in open_clip's training)."""
    def exempt(name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def train_from_scratch(name: str, captions: pd.DataFrame, config: ScratchConfig, device: torch.device,
                       ) -> tuple[open_clip.CLIP, list[float]]:
    """Contrastive training (open_clip's ClipLoss) on the train split's pairs; returns the model and loss per epoch."""
    train = captions[captions["split"] == "train"]
    backbone.register_project_configs()
    torch.manual_seed(config.seed)  # initial weights, then shuffling and augmentation: all from this seed
    model, preprocess_train, _ = open_clip.create_model_and_transforms(name, device=device)
    tokenizer = open_clip.get_tokenizer(name)
    pairs = CaptionedImages(train["image_path"].tolist(), tokenizer(train["caption"].tolist()), preprocess_train,
                            backbone.input_size(model))
    batch_size = min(config.batch_size, len(pairs))
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                        generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda")
    total_steps = config.epochs * len(loader)
    optim = optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, warmup_cosine(config.warmup_steps, total_steps))
    loss_fn = open_clip.ClipLoss()
    losses: list[float] = []
    model.train()
    with tqdm(total=total_steps, desc=f"train {name} from scratch", unit="step") as progress:
        for epoch in range(1, config.epochs + 1):
            epoch_loss = 0.0
            for step, (images, tokens, errors) in enumerate(loader, start=1):
                backbone.raise_bad_images(errors)
                image_features, text_features, logit_scale = model(images.to(device), tokens.to(device))
                loss = loss_fn(image_features, text_features, logit_scale)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                schedule.step()
                with torch.no_grad():  # CLIP caps the temperature at 100
                    model.logit_scale.clamp_(0, math.log(100))
                epoch_loss += loss.item()
                progress.set_postfix(epoch=epoch, loss=f"{epoch_loss / step:.3f}")
                progress.update()
            losses.append(round(epoch_loss / len(loader), 4))
    return model.eval(), losses


def demo_corpus(folder: Path, model_cfg: dict[str, Any], config: ScratchConfig) -> pd.DataFrame:
    """Demo scenes drawn with their own seed, all in the train split, at the model's input size."""
    size = model_cfg["vision_cfg"]["image_size"]
    image_size = min(max(size if isinstance(size, int) else size[0], 32), 256)  # the generator's range
    try:
        corpus, _ = generate_demo(folder, config.corpus_images, image_size, config.corpus_seed,
                                  {"train": 1.0, "val": 0.0, "test": 0.0})
    except ValueError as exc:
        raise InputDataError(f"params.yaml: clip.scratch (corpus demo): {exc}") from None
    return corpus


def zero_shot_recalls(model: open_clip.CLIP, preprocess: Any, tokenizer: Any, captions: pd.DataFrame,
                      device: torch.device) -> dict[str, Any]:
    """Recall@1/5/10 of the model on one split's captions (5 captions per image protocol)."""
    images = captions.drop_duplicates("image_id")
    image_row = pd.Series(range(len(images)), index=images["image_id"]).loc[captions["image_id"]].to_numpy()
    image_features = backbone.encode_images(model, preprocess, images["image_path"].tolist(), EVAL_BATCH, 0, device,
                                            desc="val images")
    text_features = backbone.encode_texts(model, tokenizer, captions["caption"].tolist(), EVAL_BATCH, device,
                                          desc="val captions")
    k = max(retrieval.RECALL_AT)
    top_i2t = retrieval.top_k(image_features, text_features, min(k, len(captions)), EVAL_BATCH,
                              np.empty((len(images), min(k, len(captions))), np.int32), device)
    top_t2i = retrieval.top_k(text_features, image_features, min(k, len(images)), EVAL_BATCH,
                              np.empty((len(captions), min(k, len(images))), np.int32), device)
    return {"images": len(images), "captions": len(captions), **retrieval.recalls(top_i2t, top_t2i, image_row)}


def run(config: ClipConfig, captions_path: Path = paths.CAPTIONS, out_dir: Path = paths.BASE_CLIP,
        report_path: Path = paths.BASE_CLIP_REPORT) -> dict[str, Any]:
    """The whole stage without Prefect."""
    started = time.perf_counter()
    device = backbone.resolve_device(config.device, "clip.device")
    model_cfg = backbone.model_config(config.model)
    report: dict[str, Any] = {"model": config.model, "pretrained": config.pretrained, "device": str(device)}
    if config.pretrained == SCRATCH:
        if not captions_path.is_file():
            raise InputDataError(f"{captions_path}: not found; run `dvc repro ingest`")
        captions = schemas.read(captions_path, schemas.CAPTIONS)
        report["source"] = {"kind": SCRATCH, **asdict(config.scratch)}
        if config.scratch.corpus == "demo":
            with tempfile.TemporaryDirectory(prefix="clip-corpus-") as corpus_dir:
                corpus = demo_corpus(Path(corpus_dir), model_cfg, config.scratch)
                model, losses = train_from_scratch(config.model, corpus, config.scratch, device)
            report["source"]["corpus_pairs"] = len(corpus)
        else:
            if not (captions["split"] == "train").any():
                raise InputDataError(f"{captions_path}: no train captions to train clip.model '{config.model}' "
                                     "from scratch (clip.pretrained: scratch, clip.scratch.corpus: train)")
            model, losses = train_from_scratch(config.model, captions, config.scratch, device)
        report["loss_per_epoch"] = losses
    else:
        model, model_cfg, report["source"] = backbone.create_pretrained(config.model, config.pretrained)
    report["parameters"] = backbone.parameter_counts(model)
    weights = backbone.save_backbone(model, model_cfg, out_dir)
    report["weights_sha256"] = backbone.sha256_of(weights)
    if config.pretrained == SCRATCH:
        val = captions[captions["split"] == "val"]
        if val.empty:
            report["val_zero_shot"] = None
        else:
            frozen, preprocess, tokenizer = backbone.load_backbone(out_dir, device)
            report["val_zero_shot"] = zero_shot_recalls(frozen, preprocess, tokenizer, val, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
