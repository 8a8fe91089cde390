"""The `train` section of params.yaml, and where each training stage writes."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from model.objective import NEGATIVES
from tasks.config import ParamError, checked

MODES = ("two_stage", "one_stage", "combined")
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class StageConfig:
    epochs: int = checked(least=0)
    lr: float = checked(above=0)
    weight_decay: float = checked(least=0)
    warmup_steps: int = checked(least=0)


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "train"

    stage1: StageConfig
    stage2: StageConfig
    mode: str = checked(choices=MODES)
    optimizer: str = checked(choices=OPTIMIZERS)
    momentum: float = checked(least=0)            # sgd
    negatives: str = checked(choices=NEGATIVES)
    cross_negatives: int = checked(least=1)       # per direction and anchor
    negative_pool: int | None = checked(least=1)  # the anchor's N best-ranked wrong candidates (None: all)
    batch_neighbours: int = checked(least=0)      # near-miss images each seed caption brings into its batch
    margin: float = checked(least=0)              # α of the triplet loss
    batch_size: int = checked(least=2)            # anchors per step and process
    max_steps: int | None = checked(least=1)      # steps per stage at most (None: every epoch's); a smoke test's cap
    seed: int
    device: str
    amp: bool                                     # autocast on GPUs (bf16 where supported, else fp16)
    processes: int = checked(least=1)             # per machine; > 1: torchrun DistributedDataParallel
    nnodes: int = checked(least=1)                # machines; > 1: the one running the stage is node 0
    rdzv_endpoint: str | None                     # host:port of node 0, where every machine meets (nnodes > 1)
    checkpoint_every: int = checked(least=0)      # steps; and at every epoch end
    keep_checkpoints: int = checked(least=1)
    validate_every: int = checked(least=0)        # epochs between re-ranked recalls on the val split (0: never)
    select_best: bool                             # keep the validated weights with the best val Rsum
    prefix_cache: bool                            # cache the image prefixes on disk (data/cache/prefixes)
    augment: bool                                 # random resized crop + flip; the train prefixes then every step
    crop_scale: list[float]                       # the crop's share of the image area: [min, max]
    score_batch_size: int = checked(least=1)      # pairs per forward pass when re-ranking
    workers: int = checked(least=0)               # image decoding: processes filling the prefix cache, threads augmenting

    def resolve(self, params: Any) -> TrainConfig:
        if self.negative_pool is not None and self.negative_pool < self.cross_negatives:
            raise ParamError("negative_pool", f"must be null or >= train.cross_negatives ({self.cross_negatives})")
        if self.nnodes > 1 and not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint or ""):
            raise ParamError("rdzv_endpoint", f"train.nnodes is {self.nnodes}: give host:port of the machine that "
                                              f"runs the stage (node 0), reachable from all; got {self.rdzv_endpoint!r}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ParamError("crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if self.batch_neighbours >= self.batch_size:
            raise ParamError("batch_neighbours", f"must be < train.batch_size ({self.batch_size}): a batch holds "
                                                 "batch_size // (batch_neighbours + 1) seed captions")
        return self

    def stage(self, stage: int) -> StageConfig:
        return self.stage1 if stage == 1 else self.stage2


def stage_paths(stage: int) -> dict[str, Path]:
    return {"out": Path(f"models/stage{stage}"), "checkpoints": Path(f"checkpoints/stage{stage}"),
            "metrics": Path(f"metrics/train_stage{stage}.json"), "live": Path(f"dvclive/train_stage{stage}")}


def losses(stage: int, mode: str) -> tuple[str, ...]:
    if stage == 2:
        return ("triplet",)
    return ("contrastive", "triplet") if mode == "combined" else ("contrastive",)
