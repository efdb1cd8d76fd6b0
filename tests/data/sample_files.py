"""Writers of small annotation and image files for pixtok.data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image


def write_coco(
    path: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None
) -> Path:
    """Write a small COCO instances JSON."""
    categories = categories or [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def save_rgb(
    path: Path, width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)
) -> Path:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[...] = color
    PIL.Image.fromarray(array).save(path)
    return path
