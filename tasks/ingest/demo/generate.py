"""`generate_demo`: the demo data set's images, captions and true triplets, a pure function of the seed."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.ingest.demo.drawing import render
from tasks.ingest.demo.scenes import (
    GROUP_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    NO_CAST,
    PASSIVE_TEMPLATES,
    SPLITS,
    TEMPLATES,
    allocate_group_splits,
    caption,
    plan_captions,
    twin_scenes,
)

_GROUP_STREAM, _SPLIT_STREAM, _IMAGE_STREAM = 0, 1, 2  # independent seeded random streams


def generate_demo(image_dir: Path, n_images: int, image_size: int, seed: int,
                  split_fractions: Mapping[str, float],
                  passive_voice: bool = True,
                  colour_cast: Sequence[float] = NO_CAST) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the demo scenes into image_dir (PNG files, created if missing) and return
    (captions, true_triplets); passive_voice=False leaves out the passive caption templates;
    colour_cast multiplies the finished image's red, green and blue values.

    `split_fractions` (the keys of SPLITS, summing to 1) and `colour_cast` (three gains in [0, MAX_CAST_GAIN]) are
    not checked here: from params.yaml they are checked as data.demo (tasks/ingest/config.py).
    """
    _check_counts(n_images, image_size, seed)
    fractions = {name: float(split_fractions[name]) for name in SPLITS}
    gains = np.array(list(colour_cast), dtype=np.float64)
    templates = [name for name in TEMPLATES if passive_voice or name not in PASSIVE_TEMPLATES]
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    n_groups = math.ceil(n_images / GROUP_SIZE)
    group_splits = allocate_group_splits(n_groups, fractions, np.random.default_rng([seed, _SPLIT_STREAM]))
    caption_rows: list[dict[str, str]] = []
    triplet_rows: list[dict[str, object]] = []
    for group in range(n_groups):
        # Per-group streams: the first groups do not change when n_images grows.
        rng = np.random.default_rng([seed, _GROUP_STREAM, group])
        members = min(GROUP_SIZE, n_images - group * GROUP_SIZE)
        scenes = twin_scenes(rng)[:members]
        plans = plan_captions(rng, templates, same_noun=scenes[0].agent.noun == scenes[0].patient.noun)
        for member, scene in enumerate(scenes):
            image_id = f"demo_{group * GROUP_SIZE + member:05d}"
            image_path = image_dir / f"{image_id}.png"
            image = render(scene, image_size, np.random.default_rng([seed, _IMAGE_STREAM, group, member]), gains)
            image.save(image_path, format="PNG", optimize=False)
            for index, plan in enumerate(plans):
                text, triplets = caption(scene, plan)
                caption_id = f"{image_id}#{index}"
                caption_rows.append({"image_id": image_id, "image_path": str(image_path), "caption_id": caption_id,
                                     "caption": text, "split": group_splits[group]})
                triplet_rows.append({"caption_id": caption_id, "triplets": triplets})
    return pd.DataFrame(caption_rows), pd.DataFrame(triplet_rows)


def _check_counts(n_images: int, image_size: int, seed: int) -> None:
    """The generator's own range; tasks/base_clip.py passes clip.scratch.corpus_images and corpus_seed unchecked."""
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < GROUP_SIZE:
        raise ValueError(f"n_images must be an integer >= {GROUP_SIZE}, got {n_images!r}")
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise ValueError(f"image_size must be an integer between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, "
                         f"got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
