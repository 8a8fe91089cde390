"""The `data` section of params.yaml (stage ingest): the source, its files, the checks' policies, the demo."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tasks.config import ParamError, checked
from tasks.ingest.demo.scenes import (
    GROUP_SIZE,
    MAX_CAST_GAIN,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    SPLITS,
)

SOURCES = ("demo", "karpathy", "table", "lamp_txt")
POLICIES = ("fail", "skip")
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class DemoConfig:
    """`data.demo`: the synthetic data set (tasks/ingest/demo)."""

    n_images: int = checked(least=GROUP_SIZE)
    image_size: int = checked(least=MIN_IMAGE_SIZE, most=MAX_IMAGE_SIZE)
    splits: Mapping[str, float]
    passive_voice: bool
    colour_cast: Sequence[float]

    def check(self) -> None:
        """The rules of splits and colour_cast, which the types alone do not state."""
        if set(self.splits) != set(SPLITS):
            raise ParamError("demo.splits", f"need exactly the keys {list(SPLITS)}, got {sorted(self.splits)}")
        if any(not math.isfinite(value) or value < 0 for value in self.splits.values()):
            raise ParamError("demo.splits", f"must be finite and non-negative, got {self.splits}")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise ParamError("demo.splits", f"must sum to 1, got {self.splits} (sum {sum(self.splits.values())})")
        if len(self.colour_cast) != 3 or not all(0 <= gain <= MAX_CAST_GAIN for gain in self.colour_cast):
            raise ParamError("demo.colour_cast", f"must be three gains (red, green, blue) between 0 and "
                                                 f"{MAX_CAST_GAIN}, got {list(self.colour_cast)}")


@dataclass(frozen=True)
class IngestConfig:
    SECTION: ClassVar[str] = "data"

    source: str = checked(choices=SOURCES)
    annotations: Path | None
    image_root: Path | None  # null: the annotation file's folder
    split: str = checked(choices=tuple(SPLIT_ALIASES))  # lamp_txt files carry no split: all their captions get it
    captions_per_image: int | None = checked(least=1)  # the benchmark protocol's 5 (COCO has 6-7); None keeps all
    val_fraction: float = checked(least=0)  # tables without a split column are split by image with these
    test_fraction: float = checked(least=0)
    min_image_side: int = checked(least=1)
    on_bad_image: str = checked(choices=POLICIES)
    on_bad_caption: str = checked(choices=POLICIES)
    seed: int = checked(least=0)
    workers: int = checked(least=0)  # image-check threads; 0 = automatic
    demo: DemoConfig

    def resolve(self, params: Mapping[str, Any]) -> IngestConfig:
        """Rules across settings; image_root defaults to the annotation file's folder (relative image paths)."""
        self.demo.check()
        if self.val_fraction + self.test_fraction >= 1:
            raise ParamError("val_fraction/test_fraction", "each must be >= 0 and together < 1")
        config = self
        if self.image_root is None and self.annotations is not None:
            config = dataclasses.replace(self, image_root=self.annotations.parent)
        if config.source != "demo":
            config._check_files()
        return config

    def _check_files(self) -> None:
        if self.annotations is None:
            raise ParamError("annotations", f"required for source '{self.source}'")
        if not self.annotations.is_file():
            raise ParamError("annotations", f"{self.annotations}: file not found")
        if self.image_root is not None and not self.image_root.is_dir():
            raise ParamError("image_root", f"{self.image_root}: directory not found")
        if self.source == "table" and self.annotations.suffix.lower() not in TABLE_FORMATS:
            raise ParamError("annotations", f"{self.annotations}: unknown table format; "
                                            f"use one of {', '.join(TABLE_FORMATS)}")
