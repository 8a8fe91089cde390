"""Ingest at COCO scale: a synthetic Karpathy JSON (123,287 images, 5 captions each) over real-size JPEGs.

    python bench/ingest_scale.py [--images 123287] [--sample 3000]

Prints the time of each part of the stage, and the parallel image check against a sequential loop
measured side by side on the same sample.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tasks.config import from_params, load_params  # noqa: E402
from tasks.ingest.config import IngestConfig  # noqa: E402
from tasks.ingest.images import check_image, check_images  # noqa: E402
from tasks.ingest.readers import read_source  # noqa: E402
from tasks.ingest.stage import assemble, write_outputs  # noqa: E402

COCO_IMAGES = 123_287
COCO_SIZE = (640, 480)
LINKS_PER_FILE = 50_000


def make_dataset(root: Path, n_images: int) -> Path:
    """One noisy real-size JPEG hard-linked under every file name (disk stays small, decoding cost is real)."""
    rng = np.random.default_rng(0)
    (root / "val2014").mkdir()
    images = []
    for index in range(n_images):
        if index % LINKS_PER_FILE == 0:  # file systems cap the links to one inode (ext4: 65,000)
            master = root / f"master{index // LINKS_PER_FILE}.jpg"
            Image.fromarray(rng.integers(0, 255, (*COCO_SIZE[::-1], 3), dtype=np.uint8)).save(master, quality=90)
        name = f"COCO_val2014_{index:012d}.jpg"
        os.link(master, root / "val2014" / name)
        sentids = list(range(5 * index, 5 * index + 5))
        images.append({"filepath": "val2014", "filename": name, "imgid": index, "sentids": sentids,
                       "split": ("train", "restval", "val", "test")[index % 4],
                       "sentences": [{"raw": f"A person riding a horse next to dog number {s} .", "sentid": s,
                                      "tokens": ["a", "person"], "imgid": index} for s in sentids]})
    annotations = root / "dataset_coco.json"
    annotations.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return annotations


def timed(label: str, function, *args):
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    print(f"{label:<42} {seconds:8.2f} s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=COCO_IMAGES)
    parser.add_argument("--sample", type=int, default=3000, help="images for the parallel-vs-sequential check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        annotations, _ = timed(f"make {args.images} images + JSON", make_dataset, root, args.images)
        print(f"annotations: {annotations.stat().st_size / 2**20:.0f} MiB, {5 * args.images} captions")
        params = load_params(REPO / "params.yaml")
        data = {**params["data"], "source": "karpathy", "annotations": str(annotations), "image_root": str(root)}
        config = from_params(IngestConfig, {**params, "data": data})

        sample = [str(p) for p in sorted((root / "val2014").iterdir())[: args.sample]]
        _, sequential = timed(f"check {len(sample)} images, sequential loop", lambda: [check_image(p, 32) for p in sample])
        _, parallel = timed(f"check {len(sample)} images, check_images", check_images, sample, 32)
        print(f"parallel / sequential time: {parallel / sequential:.2f}x ({os.cpu_count()} cores)")

        source, read_s = timed("read (stream) Karpathy JSON", read_source, config)
        bad, check_s = timed("check every image", check_images, source.frame["image_path"], 32)
        result, assemble_s = timed("checks, split, report", assemble, config, source, bad)
        _, write_s = timed("write captions.parquet + report", write_outputs, result,
                           root / "captions.parquet", root / "triplets.parquet", root / "ingest.json", root / "demo")
        total = read_s + check_s + assemble_s + write_s
        print(f"{'total stage':<42} {total:8.2f} s  ({result.report['captions']['kept']} captions kept)")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
