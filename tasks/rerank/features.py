"""Reading one split of data/features/ (written by featurize) as memory-mapped arrays, and batches of it as tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from model import Knowledge
from tasks import paths, schemas
from tasks.config import InputDataError

ARRAYS = ("text", "image", "slot_tokens", "triplet_mask", "states", "templates", "topk_i2t", "topk_t2i")


@dataclass(frozen=True)
class FeatureSplit:
    split: str
    images: pd.DataFrame     # row, image_id, image_path
    captions: pd.DataFrame   # row, caption_id, caption, image_id, image_row, status, n_triplets
    text: np.ndarray          # (C, D) float16, L2-normalised g(t)
    image: np.ndarray         # (I, D) float16, L2-normalised zero-shot image features
    slot_tokens: np.ndarray   # (C, K, 3, S) int32
    triplet_mask: np.ndarray  # (C, K) bool
    states: np.ndarray        # (C, K, D) float16
    templates: np.ndarray     # (C, K, D) float16
    topk_i2t: np.ndarray      # (I, k) int32 caption rows, zero-shot order
    topk_t2i: np.ndarray      # (C, k) int32 image rows, zero-shot order

    @classmethod
    def load(cls, split: str, root: Path = paths.FEATURES) -> FeatureSplit:
        folder = root / split
        if not folder.is_dir():
            raise InputDataError(f"{folder}: no features for split '{split}'; run `dvc repro featurize`")
        images = schemas.read(folder / "images.parquet", schemas.FEATURE_IMAGES)
        captions = schemas.read(folder / "captions.parquet", schemas.FEATURE_CAPTIONS)
        arrays = {}
        for name in ARRAYS:
            try:
                arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
            except FileNotFoundError:
                raise InputDataError(f"{folder / name}.npy: missing; run `dvc repro featurize`") from None
        return cls(split, images, captions, **arrays)

    @property
    def image_row(self) -> np.ndarray:
        """The image row of every caption row."""
        return self.captions["image_row"].to_numpy()

    def knowledge(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Knowledge:
        """The knowledge tensors of caption `rows` (any order, repeats allowed)."""
        rows = np.asarray(rows)
        return Knowledge(mask=torch.from_numpy(self.triplet_mask[rows]).to(device),
                         slot_tokens=torch.from_numpy(self.slot_tokens[rows].astype(np.int64)).to(device),
                         states=torch.from_numpy(self.states[rows].astype(np.float32)).to(device),
                         templates=torch.from_numpy(self.templates[rows].astype(np.float32)).to(device),
                         caption=self.text_features(rows, device))

    def text_features(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.from_numpy(self.text[np.asarray(rows)].astype(np.float32)).to(device)
