"""Training batches from cached features and image prefixes, by `train.negatives` and `train.batch_neighbours`.

`paired`, `consistent` and `batch_cross` take in-batch batches (random captions, or seed captions with their
zero-shot near misses when `batch_neighbours` > 0; `consistent` also names each caption's hardest other image in
the batch); `cross` adds negatives drawn from the anchors' zero-shot top-k. Every draw
comes from a generator seeded by (seed, epoch, batch), so a resumed run sees the batches an uninterrupted one saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model import Batch
from tasks.rerank.features import FeatureSplit
from tasks.rerank.prefixes import PrefixSource
from tasks.train.augment import AugmentedPrefixes
from tasks.train.config import TrainConfig

Prefixes = PrefixSource | AugmentedPrefixes


def paired_batch(split: FeatureSplit, source: Prefixes, captions: np.ndarray, device: torch.device,
                 other_images: bool = False) -> Batch:
    """An in-batch batch of caption rows; `other_images` (consistent): with each caption's hardest other image."""
    images = split.image_row[captions]
    other = torch.from_numpy(hardest_other_images(split, captions)).to(device) if other_images else None
    return Batch(source.prefix(images), split.knowledge(captions, device), split.text_features(captions, device),
                 torch.from_numpy(images).to(device), other_image=other)


def hardest_other_images(split: FeatureSplit, captions: np.ndarray) -> np.ndarray:
    """For each caption row of a batch, the batch row whose image the zero-shot model scores highest for it among
    the batch's other images (the confusion re-ranking has to resolve); -1 where every row shows its own image."""
    images = split.image_row[captions]
    scores = split.text[captions].astype(np.float32) @ split.image[images].astype(np.float32).T
    scores[images[:, None] == images[None, :]] = -np.inf
    return np.where(np.isfinite(scores).any(axis=1), scores.argmax(axis=1), -1)


def sample_negatives(candidates: np.ndarray, valid: np.ndarray, count: int, pool: int | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random entries per row among the first `pool` valid zero-shot candidates (ranked best first;
    None: all valid ones); fewer eligible: padded, marked invalid."""
    eligible = valid if pool is None else valid & (np.cumsum(valid, axis=1) <= pool)
    priority = np.where(eligible, rng.random(valid.shape), np.inf)
    chosen = np.argsort(priority, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(candidates, chosen, axis=1), np.take_along_axis(eligible, chosen, axis=1)


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


def cross_batch(split: FeatureSplit, source: Prefixes, captions: np.ndarray, count: int, pool: int | None,
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


@dataclass
class BatchMaker:
    """The batches of one process: batch `index` of an epoch is the process's share of global batch
    index * world + rank, cut from the epoch's caption order."""
    split: FeatureSplit
    source: Prefixes
    config: TrainConfig
    device: torch.device

    def __post_init__(self) -> None:
        image_row = self.split.image_row
        self.captions_of_image = np.split(np.argsort(image_row, kind="stable"),
                                          np.cumsum(np.bincount(image_row))[:-1])

    def make(self, order: np.ndarray, global_batch: int, rng: np.random.Generator) -> Batch:
        config = self.config
        source = self.source.drawing_from(rng) if isinstance(self.source, AugmentedPrefixes) else self.source
        if config.batch_neighbours and config.negatives != "cross":
            per_batch = config.batch_size // (config.batch_neighbours + 1)
            seeds = order[global_batch * per_batch:(global_batch + 1) * per_batch]
            captions = neighbourhood_captions(self.split, seeds, config.batch_neighbours, config.negative_pool,
                                              self.captions_of_image, rng)
        else:
            captions = order[global_batch * config.batch_size:(global_batch + 1) * config.batch_size]
            if config.negatives == "cross":
                return cross_batch(self.split, source, captions, config.cross_negatives, config.negative_pool,
                                   rng, self.device)
        return paired_batch(self.split, source, captions, self.device, config.negatives == "consistent")
