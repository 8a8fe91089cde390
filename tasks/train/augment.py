"""Training augmentation (`train.augment`): a random resized crop and a horizontal flip, as the official LAMP code.

The crop and flip of every image are drawn from the batch's generator, seeded by (seed, epoch, batch), so a run
resumed from a checkpoint crops as an uninterrupted one did, whatever the number of decoding threads. An
augmented image differs every epoch, so its prefix (the blocks before the injection layer) is computed every
step instead of read from the prefix cache.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from model import ActionAwareCLIP, ImagePrefix
from tasks.config import InputDataError

RATIOS = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop aspect ratios


@dataclass(frozen=True)
class CropDraw:
    """One image's augmentation, independent of its size: area fraction, log aspect ratio, position, flip."""
    area: float
    log_ratio: float
    x: float
    y: float
    flip: bool

    @classmethod
    def sample(cls, count: int, scale: Sequence[float], rng: np.random.Generator) -> list[CropDraw]:
        area = rng.uniform(scale[0], scale[1], count)
        log_ratio = rng.uniform(math.log(RATIOS[0]), math.log(RATIOS[1]), count)
        x, y, flip = rng.random(count), rng.random(count), rng.random(count) < 0.5
        return [cls(*values) for values in zip(area, log_ratio, x, y, flip)]

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop; a crop larger than the image is clipped to it."""
        crop_area = self.area * width * height
        crop_width = min(width, max(1, round(math.sqrt(crop_area * math.exp(self.log_ratio)))))
        crop_height = min(height, max(1, round(math.sqrt(crop_area / math.exp(self.log_ratio)))))
        return (round(self.y * (height - crop_height)), round(self.x * (width - crop_width)), crop_height,
                crop_width)


class Augmentation:
    """Augmented, normalised image tensors of a batch's files, decoded by `workers` threads."""

    def __init__(self, clip: torch.nn.Module, scale: Sequence[float], workers: int):
        config = PreprocessCfg(**open_clip.get_model_preprocess_cfg(clip))  # the model's, else open_clip's defaults
        self.size = [config.size, config.size] if isinstance(config.size, int) else list(config.size)
        self.mean, self.std, self.interpolation = config.mean, config.std, InterpolationMode(config.interpolation)
        self.scale, self.workers = tuple(scale), workers

    def _one(self, path: str, draw: CropDraw) -> torch.Tensor:
        try:
            with Image.open(path) as image:
                picture = image.convert("RGB")
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise InputDataError(f"{path}: cannot decode image: {exc}") from None
        picture = TF.resized_crop(picture, *draw.box(*picture.size), self.size, self.interpolation, antialias=True)
        if draw.flip:
            picture = TF.hflip(picture)
        return TF.normalize(TF.to_tensor(picture), self.mean, self.std)

    def images(self, paths: Sequence[str], rng: np.random.Generator) -> torch.Tensor:
        draws = CropDraw.sample(len(paths), self.scale, rng)
        if self.workers <= 1:
            return torch.stack([self._one(path, draw) for path, draw in zip(paths, draws)])
        with ThreadPoolExecutor(self.workers) as pool:
            return torch.stack(list(pool.map(self._one, paths, draws)))


@dataclass(frozen=True)
class AugmentedPrefixes:
    """Image prefixes of augmented training images, computed for every batch from crops drawn from `rng`
    (`drawing_from` binds a batch's generator); each distinct image of a batch is cropped once."""
    model: ActionAwareCLIP
    image_paths: Sequence[str]
    augmentation: Augmentation
    device: torch.device
    rng: np.random.Generator | None = None

    def drawing_from(self, rng: np.random.Generator) -> AugmentedPrefixes:
        return replace(self, rng=rng)

    def prefix(self, rows: np.ndarray) -> ImagePrefix:
        if self.rng is None:
            raise RuntimeError("AugmentedPrefixes.prefix needs a batch's generator: call drawing_from(rng) first")
        distinct, inverse = np.unique(np.asarray(rows), return_inverse=True)
        pictures = self.augmentation.images([self.image_paths[row] for row in distinct], self.rng)
        return self.model.image_prefix(pictures.to(self.device)).index(torch.from_numpy(inverse).to(self.device))
