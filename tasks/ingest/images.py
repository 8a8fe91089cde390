"""Locating the images (re-rooting paths written on another machine) and checking that each one decodes."""
from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image
from tqdm import tqdm

from tasks.ingest.readers import SourceRows


def relocate_images(source: SourceRows, image_root: Path | None, workers: int = 0) -> dict[str, str]:
    """Point `source`'s image paths that do not exist at the file found under `image_root` by a trailing part of
    the annotation's own path, longest first (`val2014/COCO_val2014_x.jpg`, then the file name `x.jpg`); returns
    {old path: found path}.

    Annotations written on another machine (the official LAMP lists carry their authors' absolute paths) then
    work once `data.image_root` names the local image folder. A path found neither way stays, and is "missing".
    """
    moved = _relocations(source.frame, image_root, workers)
    if moved:
        source.frame["image_path"] = source.frame["image_path"].map(moved).fillna(source.frame["image_path"])
    return moved


def _relocations(frame: pd.DataFrame, image_root: Path | None, workers: int) -> dict[str, str]:
    """{path: found} for image paths that do not exist but are found under `image_root`."""
    if image_root is None:
        return {}
    annotated = frame.drop_duplicates("image_path").set_index("image_path")["image_id"]
    with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
        found = pool.map(_relocated, annotated.index, annotated.values, [image_root] * len(annotated), chunksize=256)
        moved = dict(zip(annotated.index, found))
    return {path: new for path, new in moved.items() if new is not None}


def _relocated(path: str, annotated: str, image_root: Path) -> str | None:
    if os.path.isfile(path):
        return None
    parts = PurePosixPath(annotated.replace("\\", "/")).parts  # lists written on Windows, too
    parts = parts[1:] if parts and parts[0] == "/" else parts
    for start in range(len(parts)):
        candidate = image_root.joinpath(*parts[start:])
        if str(candidate) != path and candidate.is_file():
            return str(candidate)
    return None


def _workers(workers: int) -> int:
    """File checks wait on the disk, not the CPU: more threads than cores."""
    return workers or min(32, 4 * (os.cpu_count() or 1))


def check_image(path: str, min_side: int) -> str | None:
    """Why the image at `path` is unusable, or None when it is fine."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) < min_side:
                return f"too small ({width}x{height} px, minimum side {min_side})"
            # JPEG decodes at a reduced scale: still reads every byte, so truncation is caught, 8x cheaper.
            image.draft("RGB", (min_side, min_side))
            image.load()
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types for corrupt files; all mean the same here
        return f"undecodable ({type(exc).__name__}: {exc})"
    return None


def check_images(image_paths: Iterable[str], min_side: int, workers: int = 0) -> dict[str, str]:
    """{path: reason} for every unusable image, checked in parallel (Pillow decodes without the GIL)."""
    unique = sorted(set(image_paths))
    with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
        verdicts = pool.map(check_image, unique, [min_side] * len(unique), chunksize=64)
        reasons = list(tqdm(verdicts, total=len(unique), desc="checking images", unit="img", mininterval=2, disable=None))
    return {path: reason for path, reason in zip(unique, reasons) if reason is not None}
