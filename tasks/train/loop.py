"""The training loop of one stage: optimizer and schedule, epochs of steps, checkpoints, validation, dvclive.

The model, its batches and its checkpoints come from tasks/train/stage.py; this loop only runs them. The epoch
order depends on (seed, epoch) and each batch's draws on (seed, epoch, batch), so a run resumed from a checkpoint
ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dvclive import Live
from model import ActionAwareCLIP, Objective
from model.optim import decay_groups
from tasks.rerank.features import FeatureSplit
from tasks.rerank.prefixes import PrefixSource
from tasks.rerank.scores import rerank
from tasks.retrieval import recalls
from tasks.train.batches import BatchMaker
from tasks.train.checkpoints import Checkpoints
from tasks.train.config import StageConfig, TrainConfig


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Validation:
    """Re-ranked recalls on the val split, as evaluation computes them."""
    split: FeatureSplit
    source: PrefixSource
    batch_size: int

    def __call__(self, model: ActionAwareCLIP, device: torch.device) -> dict[str, float | None]:
        reranked = rerank(model, self.source, self.split, self.batch_size, device, progress=False)
        return recalls(reranked.i2t, reranked.t2i, self.split.image_row)


def lr_factor(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


class TrainingLoop:
    """One stage's optimisation of `trainable` under `objective`, resumable from `checkpoints`."""

    def __init__(self, stage: int, config: TrainConfig, objective: Objective, trainable: dict[str, torch.nn.Parameter],
                 batches: BatchMaker, validation: Validation | None, checkpoints: Checkpoints, live_dir: Path,
                 dist_env: Distributed, device: torch.device, progress: bool):
        self.stage, self.config, self.model = stage, config, objective.model
        self.stage_config: StageConfig = config.stage(stage)
        self.batches, self.checkpoints, self.dist_env, self.device = batches, checkpoints, dist_env, device
        self.validation = validation if dist_env.main and config.validate_every > 0 else None
        self.progress = progress and dist_env.main
        captions = len(batches.split.captions)
        self.batches_per_epoch = captions // (config.batch_size * dist_env.world)
        self.total_steps = self.batches_per_epoch * self.stage_config.epochs
        if config.max_steps is not None:  # the last epoch ends early, with its validation and checkpoint
            self.total_steps = min(self.total_steps, config.max_steps)
        self.epochs = math.ceil(self.total_steps / self.batches_per_epoch)
        groups = decay_groups(trainable.items(), self.stage_config.weight_decay, self.model.no_weight_decay())
        self.optimizer = (torch.optim.SGD(groups, lr=self.stage_config.lr, momentum=config.momentum)
                          if config.optimizer == "sgd" else torch.optim.AdamW(groups, lr=self.stage_config.lr))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(self.stage_config.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda"
                                           and not torch.cuda.is_bf16_supported())
        self.runner = objective if dist_env.world == 1 else DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        self.resumed_from = checkpoints.latest()
        # Where training stands; saved with every checkpoint, so a resumed run also keeps the epochs' history.
        self.position: dict[str, Any] = {"epoch": 0, "batch": 0, "global_step": 0, "epoch_loss": 0.0, "history": [],
                                         "best": None}
        if self.resumed_from is not None:
            self.position = Checkpoints.restore(self.resumed_from, self.model, self.optimizer, self.scheduler,
                                                self.scaler)
        self.live = Live(str(live_dir), resume=self.resumed_from is not None, report=None, save_dvc_exp=False,
                         dvcyaml=None) if dist_env.main else None

    def run(self) -> None:
        """Train the remaining epochs; `position` then holds every epoch's history and the validated best."""
        # Stage 2's start is stage 1's model, which stage 2 has to beat; stage 1 starts from random prompts.
        if self.validation and self.config.select_best and self.stage == 2 and self.resumed_from is None:
            start = self.validation(self.model, self.device)
            self._keep_if_best(0, start)
            self.position["history"] = [{"epoch": 0, "val": start}]
        self.model.train()
        for epoch in range(self.position["epoch"], self.epochs):
            self._epoch(epoch)
            if self.dist_env.world > 1:
                dist.barrier()
        if self.live:
            self.live.end()
        if self.config.select_best and self.position["best"] is not None:
            self.checkpoints.load_best(self.model)

    def _epoch(self, epoch: int) -> None:
        config, position = self.config, self.position
        # The order depends only on (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.batches.split.captions))
        batches = min(self.batches_per_epoch, self.total_steps - epoch * self.batches_per_epoch)
        steps = tqdm(range(position["batch"], batches), unit="step", disable=not self.progress,
                     desc=f"stage {self.stage} epoch {epoch + 1}/{self.epochs}")
        for batch_index in steps:
            global_batch = batch_index * self.dist_env.world + self.dist_env.rank
            loss = self._step(self.batches.make(order, global_batch,
                                                np.random.default_rng([config.seed, epoch, global_batch])))
            position.update(batch=batch_index + 1, global_step=position["global_step"] + 1,
                            epoch_loss=position["epoch_loss"] + loss)
            steps.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.dist_env.main and config.checkpoint_every and position["global_step"] % config.checkpoint_every == 0:
                self._save()
        report = {"epoch": epoch + 1, "loss": round(position["epoch_loss"] / batches, 6)}
        if self.validation and (epoch + 1) % config.validate_every == 0:
            report["val"] = self.validation(self.model, self.device)
            self._keep_if_best(epoch + 1, report["val"])
            for name, value in report["val"].items():
                if value is not None:
                    self.live.log_metric(f"val/{name}", value)
            self.live.next_step()
        position.update(epoch=epoch + 1, batch=0, epoch_loss=0.0, history=position["history"] + [report])
        if self.dist_env.main:
            self._save()

    def _step(self, batch) -> float:
        with autocast(self.device, self.config.amp):
            loss = self.runner(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.live:
            self.live.log_metric("train/loss", loss.item())
            self.live.log_metric("train/lr", self.scheduler.get_last_lr()[0])
            self.live.next_step()
        return loss.item()

    def _keep_if_best(self, epoch: int, val: dict[str, float | None]) -> None:
        best = self.position["best"]
        if self.config.select_best and (best is None or val["rsum"] > best["rsum"]):
            self.checkpoints.save_best(self.model)
            self.position["best"] = {"epoch": epoch, "rsum": val["rsum"]}

    def _save(self) -> None:
        self.checkpoints.save(self.model, self.optimizer, self.scheduler, self.scaler, self.position)
