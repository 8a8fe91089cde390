"""Training stages 1 and 2 (paper section 3.4) on cached frozen features and image prefixes.

Stage 1 trains every new parameter with the symmetric contrastive loss and a learnable temperature; stage 2
only the adaptive interaction module, with the triplet loss (margin α, hardest negative). `train.mode` also
offers the paper's table-5 alternatives: `one_stage` (stage 1 only) and `combined` (both losses in one stage);
stage 2 then passes stage 1's weights on unchanged.

Negatives (`train.negatives`): `paired` is the paper literally (each image conditioned on its own caption,
the batch's texts as negatives); `batch_cross` conditions each image on every in-batch caption's knowledge in
turn (see Objective); `cross` scores the image under each negative caption's own knowledge, with negatives
drawn from the zero-shot top-k as at inference (captions for the image, images for the caption).

Runs resume: a checkpoint (safetensors weights + optimizer state + position) is written every
`train.checkpoint_every` steps and at every epoch end, into checkpoints/ (no DVC output); a re-run with the
same inputs continues from the last one, a run with other inputs starts afresh, and a finished run removes its
checkpoints. With `train.processes` > 1
the stage runs under torchrun with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import ActionAwareCLIP, ImagePrefix, Knowledge, PromptConfig, contrastive_loss, triplet_loss
from tasks import paths
from tasks.backbone import load_backbone, resolve_device, sha256_of
from tasks.config import InputDataError, section, write_json
from tasks.features import FeatureSplit
from tasks.prefixes import PrefixSource
from tasks.rerank import rerank
from tasks.retrieval import recalls

MODES = ("two_stage", "one_stage", "combined")
NEGATIVES = ("paired", "batch_cross", "cross")
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class StageConfig:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0


@dataclass(frozen=True)
class TrainConfig:
    stage1: StageConfig
    stage2: StageConfig
    mode: str = "two_stage"
    negatives: str = "batch_cross"
    cross_negatives: int = 3       # per direction and anchor
    negative_pool: int | None = 5  # cross, batch_neighbours: the anchor's N best-ranked wrong candidates (None: all)
    batch_neighbours: int = 0      # paired, batch_cross: near-miss images each seed caption brings into its batch
    margin: float = 0.2            # α of the triplet loss
    batch_size: int = 8            # anchors per step and process
    seed: int = 0
    device: str = "auto"
    amp: bool = True               # autocast on GPUs (bf16 where supported, else fp16 with a grad scaler)
    processes: int = 1             # > 1: torchrun DistributedDataParallel
    checkpoint_every: int = 200    # steps; and at every epoch end
    keep_checkpoints: int = 2
    validate_every: int = 1        # epochs between re-ranked recalls on the val split (0: never)
    select_best: bool = False      # keep the validated weights with the best val Rsum (stage 2: or stage 1's)
    prefix_cache: bool = True      # cache the image prefixes on disk (data/cache/prefixes)
    score_batch_size: int = 256    # pairs per forward pass when re-ranking
    workers: int = 0               # image decoding workers when filling the prefix cache

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        values = dict(section(params, "train", {f.name for f in fields(cls)}))
        try:
            for stage in ("stage1", "stage2"):
                stage_values = values.get(stage)
                if not isinstance(stage_values, dict):
                    raise InputDataError(f"params.yaml: train.{stage} must be a mapping with epochs and lr")
                values[stage] = StageConfig(**stage_values)
            config = cls(**values)
        except TypeError as exc:
            raise InputDataError(f"params.yaml: train: {exc}") from None
        if config.mode not in MODES:
            raise InputDataError(f"params.yaml: train.mode must be one of {MODES}, got {config.mode!r}")
        if config.negatives not in NEGATIVES:
            raise InputDataError(f"params.yaml: train.negatives must be one of {NEGATIVES}, got {config.negatives!r}")
        if config.batch_size < 2 or config.cross_negatives < 1 or config.processes < 1:
            raise InputDataError("params.yaml: train.batch_size must be >= 2, cross_negatives and processes >= 1")
        if config.negative_pool is not None and config.negative_pool < config.cross_negatives:
            raise InputDataError("params.yaml: train.negative_pool must be null or >= train.cross_negatives")
        if not 0 <= config.batch_neighbours < config.batch_size:
            raise InputDataError("params.yaml: train.batch_neighbours must be >= 0 and < train.batch_size "
                                 "(a batch holds batch_size // (batch_neighbours + 1) seed captions)")
        return config


def prompt_config(params: dict[str, Any]) -> PromptConfig:
    try:
        return PromptConfig.from_mapping(params.get("prompt") or {})
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"params.yaml: prompt: {exc}") from None


# ---------------------------------------------------------------- saved prompt modules

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
    if not (model_dir / CONFIG_FILE).is_file():
        raise InputDataError(f"{model_dir}: no trained model; run `dvc repro`")
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    clip, preprocess, _ = load_backbone(backbone_dir, device)
    if sha256_of(backbone_dir / "open_clip_model.safetensors") != config["backbone_sha256"]:
        raise InputDataError(f"{model_dir}: trained on another backbone than {backbone_dir}; run `dvc repro`")
    try:
        prompt = PromptConfig.from_mapping(config["prompt"])
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{model_dir / CONFIG_FILE}: {exc} (made by another version? run `dvc repro`)") from None
    model = ActionAwareCLIP(clip, prompt).to(device)
    load_prompt_state(model, model_dir / WEIGHTS_FILE)
    return model.eval(), preprocess, config


# ---------------------------------------------------------------- checkpoints

class Checkpoints:
    """step-NNNNNNNN/ folders (weights, optimizer and scheduler state, position) for one fingerprint of inputs."""

    def __init__(self, folder: Path, fingerprint: str, keep: int):
        self.folder, self.fingerprint, self.keep = folder, fingerprint, keep

    def _current(self) -> bool:
        marker = self.folder / "fingerprint.txt"
        return marker.is_file() and marker.read_text().strip() == self.fingerprint

    def latest(self) -> Path | None:
        """The newest complete checkpoint of these inputs; another run's checkpoints are never resumed."""
        completed = sorted(self.folder.glob("step-*/position.json")) if self._current() else []
        return completed[-1].parent if completed else None

    def save(self, model: ActionAwareCLIP, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
             position: dict[str, Any]) -> None:
        self._claim()
        target = self.folder / f"step-{position['global_step']:08d}"
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file(prompt_state(model), partial / WEIGHTS_FILE)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict()}, partial / "optimizer.pt")
        (partial / "position.json").write_text(json.dumps(position) + "\n")  # last: marks it complete
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in sorted(self.folder.glob("step-*[0-9]"))[:-self.keep]:
            shutil.rmtree(old)

    def save_best(self, model: ActionAwareCLIP) -> None:
        """The best weights so far; the position saved next records which epoch they are."""
        self._claim()
        partial = self.folder / (BEST_FILE + ".partial")
        save_file(prompt_state(model), partial)
        partial.replace(self.folder / BEST_FILE)

    def _claim(self) -> None:
        if not self._current():
            shutil.rmtree(self.folder, ignore_errors=True)  # checkpoints of other inputs
            self.folder.mkdir(parents=True)
            (self.folder / "fingerprint.txt").write_text(self.fingerprint + "\n")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def restore(checkpoint: Path, model: ActionAwareCLIP, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: Any) -> dict[str, Any]:
        load_prompt_state(model, checkpoint / WEIGHTS_FILE)
        state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        return json.loads((checkpoint / "position.json").read_text())


# ---------------------------------------------------------------- batches and the objective

@dataclass(frozen=True)
class Batch:
    """Rows to score: `prefix`/`knowledge`/`text` are aligned pair by pair; how to read the scores is `layout`."""
    prefix: ImagePrefix
    knowledge: Knowledge
    text: torch.Tensor
    image_rows: torch.Tensor  # paired: the image of every anchor (same-image captions are not negatives)
    negative_valid: torch.Tensor | None = None  # cross: (2, B, n) whether each sampled negative exists


def paired_batch(split: FeatureSplit, source: PrefixSource, captions: np.ndarray, device: torch.device) -> Batch:
    images = split.image_row[captions]
    return Batch(source.prefix(images), split.knowledge(captions, device), split.text_features(captions, device),
                 torch.from_numpy(images).to(device))


def neighbourhood_captions(split: FeatureSplit, seeds: np.ndarray, neighbours: int, pool: int | None,
                           captions_of_image: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Caption rows of an in-batch batch: each seed caption, then one random caption of each of `neighbours`
    images drawn from the seed's first `pool` wrong zero-shot candidates (None: all k). Every batch then holds
    the near misses re-ranking has to sort out, while each caption stays a negative for the batch's other
    images as often as it is a positive: unlike `cross`, no caption prior lowers the loss."""
    images = split.image_row[seeds]
    candidates = np.asarray(split.topk_t2i[seeds])
    neighbour_images, valid = sample_negatives(candidates, candidates != images[:, None], neighbours, pool, rng)
    rows = []
    for seed, picked, usable in zip(seeds, neighbour_images, valid):
        rows.append(seed)
        rows.extend(rng.choice(captions_of_image[image]) for image in picked[usable])
    return np.asarray(rows, dtype=np.int64)


def sample_negatives(candidates: np.ndarray, valid: np.ndarray, count: int, pool: int | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random entries per row among the first `pool` valid zero-shot candidates (ranked best first;
    None: all valid ones); fewer eligible: padded, marked invalid."""
    eligible = valid if pool is None else valid & (np.cumsum(valid, axis=1) <= pool)
    priority = np.where(eligible, rng.random(valid.shape), np.inf)
    chosen = np.argsort(priority, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(candidates, chosen, axis=1), np.take_along_axis(eligible, chosen, axis=1)


def cross_batch(split: FeatureSplit, source: PrefixSource, captions: np.ndarray, count: int, pool: int | None,
                rng: np.random.Generator, device: torch.device) -> Batch:
    """Pairs: the B positives, then each anchor image under `count` other captions, then each anchor caption
    on `count` other images; the negatives come from the anchors' zero-shot top-k (its first `pool` wrong
    entries: the near misses re-ranking has to sort out)."""
    images = split.image_row[captions]
    caption_candidates = np.asarray(split.topk_i2t[images])
    negative_captions, caption_valid = sample_negatives(
        caption_candidates, split.image_row[caption_candidates] != images[:, None], count, pool, rng)
    image_candidates = np.asarray(split.topk_t2i[captions])
    negative_images, image_valid = sample_negatives(image_candidates, image_candidates != images[:, None], count,
                                                    pool, rng)
    pair_images = np.concatenate([images, np.repeat(images, count), negative_images.ravel()])
    pair_captions = np.concatenate([captions, negative_captions.ravel(), np.repeat(captions, count)])
    return Batch(source.prefix(pair_images), split.knowledge(pair_captions, device),
                 split.text_features(pair_captions, device), torch.from_numpy(images).to(device),
                 torch.from_numpy(np.stack([caption_valid, image_valid])).to(device))


class Objective(nn.Module):
    """The loss of one batch; a module so DistributedDataParallel can wrap it.

    In-batch batches score image b against caption c as s(i_b, t_c) = cos(f(i_b | t_b), g(t_c)) (`paired`: each
    image under its own caption's knowledge) or cos(f(i_b | t_c), g(t_c)) (`batch_cross`: under the scored
    caption's knowledge, B x B image passes). Under `paired` the prompt modules can lower the loss by turning the
    knowledge into a copy of its caption's text feature, whatever the image; re-ranking, which conditions every
    candidate on its own knowledge, then favours captions over images.
    """

    def __init__(self, model: ActionAwareCLIP, losses: tuple[str, ...], margin: float,
                 cross_conditioned: bool = False):
        super().__init__()
        self.model, self.losses, self.margin = model, losses, margin
        self.cross_conditioned = cross_conditioned

    def _loss(self, rows: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        total = 0.0
        if "contrastive" in self.losses:
            # CLIP's cap on the learned temperature (1/τ <= 100) keeps the logits from running away.
            total = total + contrastive_loss(rows, target, valid, self.model.logit_scale.clamp(max=math.log(100)))
        if "triplet" in self.losses:
            total = total + triplet_loss(rows, target, valid, self.margin)
        return total

    def _in_batch_scores(self, batch: Batch) -> torch.Tensor:
        """(B, B): row b = image b, column c = caption c."""
        if not self.cross_conditioned:
            features = F.normalize(self.model.encode_from_prefix(batch.prefix, batch.knowledge), dim=-1)
            return features @ batch.text.to(features.dtype).T
        anchors = len(batch.image_rows)
        rows = torch.arange(anchors, device=batch.text.device)
        image_of_pair, caption_of_pair = rows.repeat_interleave(anchors), rows.repeat(anchors)
        features = F.normalize(self.model.encode_from_prefix(batch.prefix.index(image_of_pair),
                                                             batch.knowledge.index(caption_of_pair)), dim=-1)
        text = batch.text[caption_of_pair].to(features.dtype)
        return (features * text).sum(dim=-1).view(anchors, anchors)

    def forward(self, batch: Batch) -> torch.Tensor:
        anchors = len(batch.image_rows)
        if batch.negative_valid is None:  # in-batch: the score matrix, both directions
            scores = self._in_batch_scores(batch)
            diagonal = torch.eye(anchors, dtype=torch.bool, device=scores.device)
            valid = (batch.image_rows[:, None] != batch.image_rows[None, :]) | diagonal
            target = torch.arange(anchors, device=scores.device)
            return (self._loss(scores, target, valid) + self._loss(scores.T, target, valid.T)) / 2
        features = F.normalize(self.model.encode_from_prefix(batch.prefix, batch.knowledge), dim=-1)
        text = batch.text.to(features.dtype)
        target = torch.zeros(anchors, dtype=torch.long, device=features.device)
        pair_scores = (features * text).sum(dim=-1)
        positive, negatives = pair_scores[:anchors, None], pair_scores[anchors:].view(2, anchors, -1)
        always = torch.ones(anchors, 1, dtype=torch.bool, device=features.device)
        return sum(self._loss(torch.cat([positive, negatives[d]], dim=1), target,
                              torch.cat([always, batch.negative_valid[d]], dim=1)) for d in range(2)) / 2


# ---------------------------------------------------------------- the stage

@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _lr_factor(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def stage_paths(stage: int) -> dict[str, Path]:
    return {"out": Path(f"models/stage{stage}"), "checkpoints": Path(f"checkpoints/stage{stage}"),
            "metrics": Path(f"metrics/train_stage{stage}.json"), "live": Path(f"dvclive/train_stage{stage}")}


def _losses(stage: int, mode: str) -> tuple[str, ...]:
    if stage == 2:
        return ("triplet",)
    return ("contrastive", "triplet") if mode == "combined" else ("contrastive",)


def run(stage: int, params: dict[str, Any], features_dir: Path = paths.FEATURES, backbone_dir: Path = paths.BASE_CLIP,
        cache_dir: Path = paths.PREFIX_CACHE, progress: bool = True) -> dict[str, Any]:
    """Train stage 1 or 2 and write models/stage<N>/, metrics/train_stage<N>.json and dvclive/train_stage<N>/."""
    config, prompt = TrainConfig.from_params(params), prompt_config(params)
    where = stage_paths(stage)
    dist_env = Distributed.from_environment()
    device = resolve_device(config.device, "train.device")
    if dist_env.world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", dist_env.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(stage, config, prompt, where, dist_env, device, features_dir, backbone_dir, cache_dir, progress)
    finally:
        if dist_env.world > 1:
            dist.destroy_process_group()


def _run(stage: int, config: TrainConfig, prompt: PromptConfig, where: dict[str, Path], dist_env: Distributed,
         device: torch.device, features_dir: Path, backbone_dir: Path, cache_dir: Path,
         progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    clip, preprocess, _ = load_backbone(backbone_dir, device)
    backbone_sha = sha256_of(backbone_dir / "open_clip_model.safetensors")
    model = ActionAwareCLIP(clip, prompt).to(device)
    description = {"backbone": str(backbone_dir), "backbone_sha256": backbone_sha, "stage": stage,
                   "train": asdict(config)}
    inputs = [backbone_sha, (features_dir / "meta.json").read_text(encoding="utf-8")]
    if stage == 2:
        stage1 = stage_paths(1)["out"]
        load_prompt_state(model, stage1 / WEIGHTS_FILE)
        inputs.append(sha256_of(stage1 / WEIGHTS_FILE))
        skip = ("train.mode is " + config.mode) if config.mode != "two_stage" else (
            None if model.interaction is not None else f"prompt.fusion {prompt.fusion!r} has no interaction module")
        if skip:
            if dist_env.main:
                save_model(model, where["out"], description | {"skipped": skip})
                write_json(where["metrics"], {"stage": 2, "skipped": skip})
            return {"skipped": skip}

    stage_config = config.stage1 if stage == 1 else config.stage2
    trainable = model.set_trainable(1 if stage == 1 else 2)
    train_split = FeatureSplit.load("train", features_dir)
    val_split = FeatureSplit.load("val", features_dir) if (features_dir / "val").is_dir() else None
    cache = cache_dir if config.prefix_cache else None
    if not dist_env.main:
        dist.barrier()  # the main process fills the prefix cache first
    train_source = PrefixSource(model, preprocess, train_split.images["image_path"].tolist(), device, cache,
                                backbone_sha, workers=config.workers)
    val_source = None if val_split is None else PrefixSource(
        model, preprocess, val_split.images["image_path"].tolist(), device, cache, backbone_sha, workers=config.workers)
    if dist_env.main and dist_env.world > 1:
        dist.barrier()

    n_captions = len(train_split.captions)
    batches_per_epoch = n_captions // (config.batch_size * dist_env.world)
    if batches_per_epoch == 0:
        raise InputDataError(f"{features_dir / 'train'}: {n_captions} training captions are fewer than one batch "
                             f"(train.batch_size {config.batch_size} x {dist_env.world} processes)")
    total_steps = batches_per_epoch * stage_config.epochs
    objective = Objective(model, _losses(stage, config.mode), config.margin, config.negatives == "batch_cross")
    optimizer = torch.optim.AdamW(trainable.values(), lr=stage_config.lr, weight_decay=stage_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(stage_config.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    runner = objective
    if dist_env.world > 1:
        runner = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=True)

    checkpoints = Checkpoints(where["checkpoints"], _fingerprint(stage, asdict(config), asdict(prompt), inputs,
                                                                 dist_env.world), config.keep_checkpoints)
    latest = checkpoints.latest()
    # Where training stands; saved with every checkpoint, so a resumed run also keeps the epochs' history.
    position: dict[str, Any] = {"epoch": 0, "batch": 0, "global_step": 0, "epoch_loss": 0.0, "history": [],
                                "best": None}
    if latest is not None:
        position = Checkpoints.restore(latest, model, optimizer, scheduler, scaler)
    live = Live(str(where["live"]), resume=latest is not None, report=None, save_dvc_exp=False, dvcyaml=None) \
        if dist_env.main else None
    validates = dist_env.main and val_split is not None and config.validate_every > 0

    def validate() -> dict[str, float | None]:
        reranked = rerank(model, val_source, val_split, config.score_batch_size, device, progress=False)
        return recalls(reranked.i2t, reranked.t2i, val_split.image_row)

    def keep_if_best(epoch: int, val: dict[str, float | None]) -> None:
        if config.select_best and (position["best"] is None or val["rsum"] > position["best"]["rsum"]):
            checkpoints.save_best(model)
            position["best"] = {"epoch": epoch, "rsum": val["rsum"]}

    # Stage 2's start is stage 1's model, which stage 2 has to beat; stage 1 starts from random prompts.
    if validates and config.select_best and stage == 2 and latest is None:
        start = validate()
        keep_if_best(0, start)
        position["history"] = [{"epoch": 0, "val": start}]
    captions_of_image = np.split(np.argsort(train_split.image_row, kind="stable"),
                                 np.cumsum(np.bincount(train_split.image_row))[:-1])
    seeds_per_batch = config.batch_size // (config.batch_neighbours + 1)
    model.train()
    for epoch in range(position["epoch"], stage_config.epochs):
        # The order depends only on (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
        order = np.random.default_rng([config.seed, epoch]).permutation(n_captions)
        steps = tqdm(range(position["batch"], batches_per_epoch), desc=f"stage {stage} epoch {epoch + 1}/"
                     f"{stage_config.epochs}", unit="step", disable=not (progress and dist_env.main))
        for batch_index in steps:
            global_batch = batch_index * dist_env.world + dist_env.rank
            rng = np.random.default_rng([config.seed, epoch, global_batch])
            if config.negatives == "cross":
                captions = order[global_batch * config.batch_size:(global_batch + 1) * config.batch_size]
                batch = cross_batch(train_split, train_source, captions, config.cross_negatives,
                                    config.negative_pool, rng, device)
            elif config.batch_neighbours:
                seeds = order[global_batch * seeds_per_batch:(global_batch + 1) * seeds_per_batch]
                captions = neighbourhood_captions(train_split, seeds, config.batch_neighbours, config.negative_pool,
                                                  captions_of_image, rng)
                batch = paired_batch(train_split, train_source, captions, device)
            else:
                captions = order[global_batch * config.batch_size:(global_batch + 1) * config.batch_size]
                batch = paired_batch(train_split, train_source, captions, device)
            with _autocast(device, config.amp):
                loss = runner(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            position.update(batch=batch_index + 1, global_step=position["global_step"] + 1,
                            epoch_loss=position["epoch_loss"] + loss.item())
            steps.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if live:
                live.log_metric("train/loss", loss.item())
                live.log_metric("train/lr", scheduler.get_last_lr()[0])
                live.next_step()
            if dist_env.main and config.checkpoint_every and position["global_step"] % config.checkpoint_every == 0:
                checkpoints.save(model, optimizer, scheduler, scaler, position)
        epoch_report = {"epoch": epoch + 1, "loss": round(position["epoch_loss"] / batches_per_epoch, 6)}
        if validates and (epoch + 1) % config.validate_every == 0:
            epoch_report["val"] = validate()
            keep_if_best(epoch + 1, epoch_report["val"])
            for name, value in epoch_report["val"].items():
                if value is not None:
                    live.log_metric(f"val/{name}", value)
            live.next_step()
        position.update(epoch=epoch + 1, batch=0, epoch_loss=0.0, history=position["history"] + [epoch_report])
        if dist_env.main:
            checkpoints.save(model, optimizer, scheduler, scaler, position)
        if dist_env.world > 1:
            dist.barrier()
    if not dist_env.main:
        return {}
    live.end()
    history = position["history"]
    selected = position["best"] if config.select_best else None
    if selected is not None:
        load_prompt_state(model, checkpoints.folder / BEST_FILE)
    summary = {"stage": stage, "mode": config.mode, "negatives": config.negatives,
               "batch_neighbours": config.batch_neighbours, "epochs": stage_config.epochs,
               "steps": total_steps, "resumed_from_step": None if latest is None else int(latest.name.split("-")[1]),
               "final_loss": history[-1].get("loss") if history else None, "selected": selected,
               "val": next((h["val"] for h in reversed(history) if "val" in h
                            and (selected is None or h["epoch"] == selected["epoch"])), None), "history": history,
               "trainable_parameters": sum(p.numel() for p in trainable.values()),
               "backbone_parameters": sum(p.numel() for p in model.clip.parameters()),
               "processes": dist_env.world, "device": str(device), "seconds": round(time.perf_counter() - started, 1)}
    save_model(model, where["out"], description)
    write_json(where["metrics"], summary)
    # Checkpoints exist to finish an interrupted run; a finished one is in models/ (and DVC's cache), and keeping
    # its checkpoints would let a later run (say, after a code change) "resume" a run that is already over.
    checkpoints.clear()
    return summary


def main() -> None:
    """The per-process entry point under torchrun: `torchrun --nproc_per_node N -m tasks.train STAGE`."""
    import argparse

    from tasks.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("stage", type=int, choices=(1, 2))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    run(args.stage, load_params(args.params), progress=Distributed.from_environment().main)


if __name__ == "__main__":
    main()
