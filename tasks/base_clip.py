"""Stage `base_clip`: the frozen CLIP backbone -> models/base_clip/ (an open_clip local-dir) and reports/base_clip.json.

`clip.pretrained` is an open_clip tag (downloaded by open_clip), a local weights file, or `scratch`: `clip.model`
trained contrastively, seeded so a CPU run is repeatable, on `clip.scratch.corpus`: the train split's (image,
caption) pairs, or a demo corpus drawn apart from the data set (the stand-in for CLIP's web-scale pretraining).
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import open_clip
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.optim import decay_groups
from tasks import backbone, paths, retrieval, schemas
from tasks.config import InputDataError, ParamError, checked, write_json
from tasks.ingest.demo import ACTIONS, NOUNS, generate_demo

SCRATCH = "scratch"
CORPORA = ("train", "demo")
EVAL_BATCH = 256
SCENE_COLUMNS = ("action", "agent", "patient")


@dataclass(frozen=True)
class ScratchConfig:
    epochs: int = checked(least=1)
    batch_size: int = checked(least=1)
    lr: float = checked(above=0)
    weight_decay: float = checked(least=0)
    warmup_steps: int = checked(least=0)
    seed: int
    workers: int = checked(least=0)  # image-decoding processes; 0 decodes in the training process
    corpus: str = checked(choices=CORPORA)  # train: the train split's pairs | demo: a demo corpus drawn with corpus_seed
    corpus_images: int = checked(least=1)
    corpus_seed: int
    scene_supervision: float = checked(least=0)  # demo corpus: weight of the image embedding's scene loss


@dataclass(frozen=True)
class ClipConfig:
    SECTION: ClassVar[str] = "clip"

    model: str
    pretrained: str
    device: str
    scratch: ScratchConfig

    def resolve(self, params: Any) -> ClipConfig:
        if self.scratch.scene_supervision and self.scratch.corpus != "demo":
            raise ParamError("scratch.scene_supervision", "needs clip.scratch.corpus: demo (only the demo corpus "
                                                          "knows each scene's action and roles)")
        return self


class CaptionedImages(backbone.ImageFiles):
    """(image, tokens, scene labels, decode error) of each training pair."""

    def __init__(self, paths: list[str], tokens: torch.Tensor, labels: torch.Tensor, transform: Any,
                 input_size: tuple[int, ...]):
        super().__init__(paths, transform, input_size)
        self.tokens, self.labels = tokens, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        image, error = super().__getitem__(index)
        return image, self.tokens[index], self.labels[index], error


class SceneHead(torch.nn.Module):
    """Reads the scene's action, agent and patient off the image embedding. It exists only during scratch
    training: web-scale CLIP image features encode actions, which its bag-of-words-like text matching
    mostly ignores; the contrastive loss on a small corpus alone learns objects and colours only."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.action = torch.nn.Linear(embed_dim, len(ACTIONS))
        self.agent = torch.nn.Linear(embed_dim, len(NOUNS))
        self.patient = torch.nn.Linear(embed_dim, len(NOUNS))

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        heads = (self.action, self.agent, self.patient)
        return sum(F.cross_entropy(head(image_features), labels[:, column]) for column, head in enumerate(heads)) / 3




def scene_labels(triplets: pd.DataFrame) -> pd.DataFrame:
    """caption_id -> action, agent, patient class indices from the demo's true action triplet."""
    actions, nouns = list(ACTIONS), list(NOUNS)
    rows = []
    for caption_id, caption_triplets in zip(triplets["caption_id"], triplets["triplets"]):
        main = next(t for t in caption_triplets if t["action"] != "is")
        rows.append({"caption_id": caption_id, "action": actions.index(main["action"]),
                     "agent": nouns.index(main["subject"]), "patient": nouns.index(main["object"])})
    return pd.DataFrame(rows)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up, then cosine decay to zero (open_clip's training schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def optimizer(model: open_clip.CLIP, config: ScratchConfig,
              scene_head: torch.nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW; gains, biases and logit_scale are not decayed (as in open_clip's training)."""
    named = list(model.named_parameters())
    if scene_head is not None:
        named += [(f"scene_head.{name}", param) for name, param in scene_head.named_parameters()]
    return torch.optim.AdamW(decay_groups(named, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def train_from_scratch(name: str, captions: pd.DataFrame, config: ScratchConfig, device: torch.device,
                       ) -> tuple[open_clip.CLIP, dict[str, list[float]]]:
    """Contrastive training (open_clip's ClipLoss) on the train split's pairs, plus the scene loss if asked for
    (the captions then carry SCENE_COLUMNS); returns the model and the mean losses per epoch."""
    train = captions[captions["split"] == "train"]
    backbone.register_project_configs()
    torch.manual_seed(config.seed)  # initial weights, then shuffling and augmentation: all from this seed
    model, preprocess_train, _ = open_clip.create_model_and_transforms(name, device=device)
    tokenizer = open_clip.get_tokenizer(name)
    scene = config.scene_supervision > 0
    labels = torch.tensor(train[list(SCENE_COLUMNS)].to_numpy() if scene else np.zeros((len(train), 3)),
                          dtype=torch.long)
    pairs = CaptionedImages(train["image_path"].tolist(), tokenizer(train["caption"].tolist()), labels,
                            preprocess_train, backbone.input_size(model))
    batch_size = min(config.batch_size, len(pairs))
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=config.workers,
                        generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda")
    total_steps = config.epochs * len(loader)
    head = SceneHead(model.visual.output_dim).to(device) if scene else None
    optim = optimizer(model, config, head)
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, warmup_cosine(config.warmup_steps, total_steps))
    loss_fn = open_clip.ClipLoss()
    history: dict[str, list[float]] = {"loss_per_epoch": []} | ({"scene_loss_per_epoch": []} if scene else {})
    model.train()
    with tqdm(total=total_steps, desc=f"train {name} from scratch", unit="step") as progress:
        for epoch in range(1, config.epochs + 1):
            epoch_loss = epoch_scene_loss = 0.0
            for step, (images, tokens, scene_targets, errors) in enumerate(loader, start=1):
                backbone.raise_bad_images(errors)
                image_features, text_features, logit_scale = model(images.to(device), tokens.to(device))
                loss = loss_fn(image_features, text_features, logit_scale)
                if head is not None:
                    scene_loss = head.loss(image_features, scene_targets.to(device))
                    loss = loss + config.scene_supervision * scene_loss
                    epoch_scene_loss += scene_loss.item()
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                schedule.step()
                with torch.no_grad():  # CLIP caps the temperature at 100
                    model.logit_scale.clamp_(0, math.log(100))
                epoch_loss += loss.item()
                progress.set_postfix(epoch=epoch, loss=f"{epoch_loss / step:.3f}")
                progress.update()
            history["loss_per_epoch"].append(round(epoch_loss / len(loader), 4))
            if head is not None:
                history["scene_loss_per_epoch"].append(round(epoch_scene_loss / len(loader), 4))
    return model.eval(), history


def demo_corpus(folder: Path, model_cfg: dict[str, Any], config: ScratchConfig) -> pd.DataFrame:
    """Demo scenes drawn with their own seed, all in the train split, at the model's input size."""
    size = model_cfg["vision_cfg"]["image_size"]
    image_size = min(max(size if isinstance(size, int) else size[0], 32), 256)  # the generator's range
    try:
        corpus, triplets = generate_demo(folder, config.corpus_images, image_size, config.corpus_seed,
                                         {"train": 1.0, "val": 0.0, "test": 0.0})
    except ValueError as exc:
        raise InputDataError(f"params.yaml: clip.scratch (corpus demo): {exc}") from None
    return corpus.merge(scene_labels(triplets), on="caption_id", validate="one_to_one")


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
        captions = schemas.read(captions_path, schemas.CAPTIONS)
        report["source"] = {"kind": SCRATCH, **asdict(config.scratch)}
        if config.scratch.corpus == "demo":
            with tempfile.TemporaryDirectory(prefix="clip-corpus-") as corpus_dir:
                corpus = demo_corpus(Path(corpus_dir), model_cfg, config.scratch)
                model, history = train_from_scratch(config.model, corpus, config.scratch, device)
            report["source"]["corpus_pairs"] = len(corpus)
        else:
            if not (captions["split"] == "train").any():
                raise InputDataError(f"{captions_path}: no train captions to train clip.model '{config.model}' "
                                     "from scratch (clip.pretrained: scratch, clip.scratch.corpus: train)")
            model, history = train_from_scratch(config.model, captions, config.scratch, device)
        report.update(history)
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
    write_json(report_path, report)
    return report
