"""A small demo for the backbone and feature stages: captions with their images, knowledge, a tiny CLIP."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks import schemas
from tasks.ingest.demo import generate_demo

TINY_CLIP = "ViT-Tiny-Test"  # configs/clip/ViT-Tiny-Test.json: 32 px images, 2 layers per tower
SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def write_demo(root: Path, n_images: int = 32, image_size: int = 32) -> tuple[Path, pd.DataFrame]:
    """Demo captions.parquet (and its images) under root; returns its path and the true triplets."""
    captions, truth = generate_demo(root / "images", n_images, image_size, 0, SPLITS)
    schemas.write(captions, schemas.CAPTIONS, root / "captions.parquet")
    return root / "captions.parquet", truth


def knowledge_from_truth(captions: pd.DataFrame, truth: pd.DataFrame, empty_every: int = 4) -> pd.DataFrame:
    """knowledge.parquet rows made of the true triplets; every `empty_every`-th caption has none (status empty)."""
    triplets = dict(zip(truth["caption_id"], truth["triplets"]))
    rows = []
    for index, (caption_id, caption) in enumerate(zip(captions["caption_id"], captions["caption"])):
        kept = [] if index % empty_every == 0 else list(triplets[caption_id])
        rows.append({"caption_id": caption_id, "caption": caption, "triplets": kept,
                     "states": [f"the {t['subject']} moves with visible effort" for t in kept],
                     "status": "ok" if kept else "empty", "model": "truth", "prompt_version": "test", "attempts": 1})
    return pd.DataFrame(rows, columns=schemas.KNOWLEDGE.names)
