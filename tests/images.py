"""Small image files for tests, made on the fly."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (64, 48), image_format: str = "JPEG", colour=(200, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=image_format)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    write_image(path, size=(128, 128))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
