"""Image prefixes (the frozen blocks before the injection layer) for a split: computed once, then read back.

Training scores each image under several captions per epoch and evaluation under its top-k candidates; the
blocks before layer l do not depend on the caption, so their output is cached as float16 arrays
(`tokens`: (I, 1+M, W), `patches`: (I, M, W)) in a folder keyed by everything they depend on. Without a cache
folder (`train.prefix_cache: false`, e.g. when COCO's train prefixes would not fit on disk) a PrefixSource
decodes and encodes the images of every batch instead.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import ActionAwareCLIP, ImagePrefix
from tasks.backbone import ImageFiles, input_size, raise_bad_images

COMPLETE = "complete.json"


def _images(model: ActionAwareCLIP, preprocess: Any, image_paths: Sequence[str], rows: Sequence[int]) -> torch.Tensor:
    dataset = ImageFiles([image_paths[row] for row in rows], preprocess, input_size(model.clip))
    pictures, errors = zip(*(dataset[i] for i in range(len(dataset))))
    raise_bad_images(errors)
    return torch.stack(pictures)


class PrefixSource:
    """prefix(rows) -> ImagePrefix of image `rows` on `device`: from the cache, or computed on the fly."""

    def __init__(self, model: ActionAwareCLIP, preprocess: Any, image_paths: Sequence[str], device: torch.device,
                 cache_dir: Path | None, backbone_sha256: str, batch_size: int = 64, workers: int = 0):
        self.model, self.preprocess, self.image_paths, self.device = model, preprocess, list(image_paths), device
        self.tokens = self.patches = None
        if cache_dir is not None:
            key = {"backbone": backbone_sha256, "injection_layer": model.injection_layer,
                   "images": hashlib.sha256("\n".join(self.image_paths).encode()).hexdigest()}
            folder = cache_dir / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            if not (folder / COMPLETE).is_file():
                self._fill(folder, key, batch_size, workers)
            self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")
            self.patches = np.load(folder / "patches.npy", mmap_mode="r")

    @torch.inference_mode()
    def _fill(self, folder: Path, key: dict[str, Any], batch_size: int, workers: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        loader = DataLoader(ImageFiles(self.image_paths, self.preprocess, input_size(model.clip)),
                            batch_size=batch_size, num_workers=workers)
        tokens = patches = None
        start = 0
        for pictures, errors in tqdm(loader, desc=f"image prefixes (blocks < {model.injection_layer})", unit="batch"):
            raise_bad_images(errors)
            prefix = model.image_prefix(pictures.to(self.device))
            if tokens is None:
                shape = (len(self.image_paths), *prefix.tokens.shape[1:])
                tokens = np.lib.format.open_memmap(folder / "tokens.npy", "w+", np.float16, shape)
                patches = np.lib.format.open_memmap(folder / "patches.npy", "w+", np.float16,
                                                    (shape[0], *prefix.patches.shape[1:]))
            tokens[start:start + len(pictures)] = prefix.tokens.float().cpu().numpy()
            patches[start:start + len(pictures)] = prefix.patches.float().cpu().numpy()
            start += len(pictures)
        tokens.flush()
        patches.flush()
        # Written last: a run killed while filling leaves no marker, and the next run fills the folder again.
        (folder / COMPLETE).write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")

    def prefix(self, rows: np.ndarray) -> ImagePrefix:
        rows = np.asarray(rows)
        if self.tokens is None:
            return self.model.image_prefix(_images(self.model, self.preprocess, self.image_paths, rows).to(self.device))
        # Each distinct image is read once, then repeated for its captions.
        distinct, inverse = np.unique(rows, return_inverse=True)
        tokens = torch.from_numpy(self.tokens[distinct].astype(np.float32))
        patches = torch.from_numpy(self.patches[distinct].astype(np.float32))
        return ImagePrefix(tokens, patches).to(self.device).index(torch.from_numpy(inverse).to(self.device))
