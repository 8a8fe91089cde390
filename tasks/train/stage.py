"""Training stages 1 and 2 (paper section 3.4) on cached frozen features and image prefixes.

Stage 1 trains every new parameter with the symmetric contrastive loss and a learnable temperature; stage 2
only the adaptive interaction module, with the triplet loss (margin α, hardest negative). `train.mode` also
offers the paper's table-5 alternatives: `one_stage` (stage 1 only) and `combined` (both losses in one stage);
stage 2 then passes stage 1's weights on unchanged. Negatives: tasks/train/batches.py and model/objective.py.
Runs resume from checkpoints (tasks/train/checkpoints.py). With `train.processes` > 1 the stage runs under
torchrun with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): `python -m tasks.train.stage STAGE`.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model import ActionAwareCLIP, Objective, PromptConfig
from tasks import paths
from tasks.backbone import load_backbone, resolve_device, sha256_of
from tasks.config import InputDataError, from_params, load_params, write_json
from tasks.rerank.features import FeatureSplit
from tasks.rerank.prefixes import PrefixSource
from tasks.train.augment import Augmentation, AugmentedPrefixes
from tasks.train.batches import BatchMaker
from tasks.train.checkpoints import Checkpoints, fingerprint
from tasks.train.config import TrainConfig, losses, stage_paths
from tasks.train.loop import Distributed, TrainingLoop, Validation
from tasks.train.model_files import WEIGHTS_FILE, load_prompt_state, prompt_model, save_model


def run(stage: int, params: dict[str, Any], features_dir: Path = paths.FEATURES, backbone_dir: Path = paths.BASE_CLIP,
        cache_dir: Path = paths.PREFIX_CACHE, progress: bool = True) -> dict[str, Any]:
    """Train stage 1 or 2 and write models/stage<N>/, metrics/train_stage<N>.json and dvclive/train_stage<N>/."""
    config, prompt = from_params(TrainConfig, params), from_params(PromptConfig, params)
    dist_env = Distributed.from_environment()
    device = resolve_device(config.device, "train.device")
    if dist_env.world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", dist_env.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return train(stage, config, prompt, dist_env, device, features_dir, backbone_dir, cache_dir, progress)
    finally:
        if dist_env.world > 1:
            dist.destroy_process_group()


def train(stage: int, config: TrainConfig, prompt: PromptConfig, dist_env: Distributed, device: torch.device,
          features_dir: Path, backbone_dir: Path, cache_dir: Path, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    where = stage_paths(stage)
    torch.manual_seed(config.seed)
    clip, preprocess, _ = load_backbone(backbone_dir, device)
    backbone_sha = sha256_of(backbone_dir / "open_clip_model.safetensors")
    model = prompt_model(clip, prompt).to(device)
    description = {"backbone": str(backbone_dir), "backbone_sha256": backbone_sha, "stage": stage,
                   "train": asdict(config)}
    inputs = [backbone_sha, (features_dir / "meta.json").read_text(encoding="utf-8")]
    if stage == 2:
        stage1 = stage_paths(1)["out"] / WEIGHTS_FILE
        load_prompt_state(model, stage1)
        inputs.append(sha256_of(stage1))
        skip = _stage2_skipped(config, model)
        if skip:
            if dist_env.main:
                save_model(model, where["out"], description | {"skipped": skip})
                write_json(where["metrics"], {"stage": 2, "skipped": skip})
            return {"stage": 2, "skipped": skip}

    trainable = model.set_trainable(stage)
    train_split, train_source, validation = _data(model, preprocess, config, features_dir, cache_dir, backbone_sha,
                                                  dist_env, device)
    if len(train_split.captions) < config.batch_size * dist_env.world:
        raise InputDataError(f"{features_dir / 'train'}: {len(train_split.captions)} training captions are fewer "
                             f"than one batch (train.batch_size {config.batch_size} x {dist_env.world} processes)")
    checkpoints = Checkpoints(where["checkpoints"], fingerprint(stage, asdict(config), asdict(prompt), inputs,
                                                                dist_env.world), config.keep_checkpoints)
    objective = Objective(model, losses(stage, config.mode), config.margin, config.negatives)
    loop = TrainingLoop(stage, config, objective, trainable, BatchMaker(train_split, train_source, config, device),
                        validation, checkpoints, where["live"], dist_env, device, progress)
    loop.run()
    if not dist_env.main:
        return {}
    summary = _summary(loop, trainable) | {"seconds": round(time.perf_counter() - started, 1)}
    save_model(model, where["out"], description)
    write_json(where["metrics"], summary)
    # Checkpoints exist to finish an interrupted run; a finished one is in models/ (and DVC's cache), and keeping
    # its checkpoints would let a later run (say, after a code change) "resume" a run that is already over.
    checkpoints.clear()
    return summary


def _stage2_skipped(config: TrainConfig, model: ActionAwareCLIP) -> str | None:
    if config.mode != "two_stage":
        return "train.mode is " + config.mode
    if model.interaction is None:
        return f"prompt.fusion {model.config.fusion!r} has no interaction module"
    return None


def _data(model: ActionAwareCLIP, preprocess: Any, config: TrainConfig, features_dir: Path, cache_dir: Path,
          backbone_sha: str, dist_env: Distributed,
          device: torch.device) -> tuple[FeatureSplit, PrefixSource | AugmentedPrefixes, Validation | None]:
    """The train split and its prefixes (augmented: computed every batch), and the val split's validation."""
    cache = cache_dir if config.prefix_cache else None

    def prefixes(split: FeatureSplit) -> PrefixSource:
        return PrefixSource(model, preprocess, split.images["image_path"].tolist(), device, cache, backbone_sha,
                            workers=config.workers)

    train_split = FeatureSplit.load("train", features_dir)
    val_split = FeatureSplit.load("val", features_dir) if (features_dir / "val").is_dir() else None
    if not dist_env.main:
        dist.barrier()  # the main process fills the prefix cache first
    if config.augment:  # new crops every epoch: nothing to cache
        train_source = AugmentedPrefixes(model, train_split.images["image_path"].tolist(),
                                         Augmentation(model.clip, config.crop_scale, config.workers), device)
    else:
        train_source = prefixes(train_split)
    validation = None if val_split is None else Validation(val_split, prefixes(val_split), config.score_batch_size)
    if dist_env.main and dist_env.world > 1:
        dist.barrier()
    return train_split, train_source, validation


def _summary(loop: TrainingLoop, trainable: dict[str, torch.nn.Parameter]) -> dict[str, Any]:
    config, history = loop.config, loop.position["history"]
    selected = loop.position["best"] if config.select_best else None
    resumed = loop.resumed_from
    return {"stage": loop.stage, "mode": config.mode, "negatives": config.negatives,
            "batch_neighbours": config.batch_neighbours, "epochs": loop.epochs,
            "steps": loop.total_steps, "resumed_from_step": None if resumed is None else int(resumed.name.split("-")[1]),
            "final_loss": history[-1].get("loss") if history else None, "selected": selected,
            "val": next((h["val"] for h in reversed(history) if "val" in h
                         and (selected is None or h["epoch"] == selected["epoch"])), None), "history": history,
            "trainable_parameters": sum(p.numel() for p in trainable.values()),
            "backbone_parameters": sum(p.numel() for p in loop.model.clip.parameters()),
            "processes": loop.dist_env.world, "device": str(loop.device)}


def main() -> None:
    """The per-process entry point under torchrun: `torchrun --nproc_per_node N -m tasks.train.stage STAGE`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("stage", type=int, choices=(1, 2))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    run(args.stage, load_params(args.params), progress=Distributed.from_environment().main)


if __name__ == "__main__":
    main()
