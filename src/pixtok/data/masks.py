"""COCO segmentations in rows: one record type for polygons and RLE, and decoding to a mask.

A row's ``segmentation`` is ``{"polygons": [[x0, y0, x1, y1, …], …], "counts": str, "size": [h, w]}``:
polygons (absolute pixels, x before y) when the file had polygons, else ``counts`` holds the
compressed COCO RLE string (uncompressed RLE count lists are compressed on load). ``size`` is always
the image's ``[height, width]``. :func:`decode_segmentation` turns either form into a bool mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_record(segmentation: Any, height: int, width: int) -> dict | None:
    """Normalize a COCO ``segmentation`` value into the row record; ``None`` if unusable.

    Args:
        segmentation: list of polygons, or an RLE dict (``counts`` list or string, ``size``).
        height, width: image size in pixels.

    Returns:
        The record described in the module docstring, or ``None`` when no valid polygon/RLE remains.
    """
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        size = segmentation.get("size") or [height, width]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != int(size[0]) * int(size[1]):
                return None
            counts = mask_utils.frPyObjects({"counts": counts, "size": list(size)}, *size)["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if not isinstance(counts, str) or not counts:
            return None
        return {"polygons": [], "counts": counts, "size": [int(size[0]), int(size[1])]}
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            try:
                coords = [float(v) for v in polygon]
            except (TypeError, ValueError):
                continue
            if len(coords) >= 6 and len(coords) % 2 == 0 and all(math.isfinite(v) for v in coords):
                polygons.append(coords)
        if polygons:
            return {"polygons": polygons, "counts": "", "size": [int(height), int(width)]}
    return None


def decode_segmentation(record: dict) -> np.ndarray:
    """``(H, W)`` bool mask of a row's segmentation record (H, W = ``record["size"]``).

    Raises:
        ValueError: the record holds neither polygons nor RLE (the loader's placeholder for an
            annotation without a usable mask: "no mask", which is not "an empty mask").
    """
    height, width = (int(v) for v in record["size"])
    if record.get("counts"):
        rle = {"counts": record["counts"].encode("ascii"), "size": [height, width]}
    elif record.get("polygons"):
        rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in record["polygons"]], height, width))
    else:
        raise ValueError(
            "segmentation record holds no polygon and no RLE (the annotation had no usable mask)"
        )
    return mask_utils.decode(rle).astype(bool)


def encode_mask(mask: np.ndarray) -> dict:
    """Segmentation record (RLE form) of an ``(H, W)`` bool mask."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"polygons": [], "counts": rle["counts"].decode("ascii"), "size": [int(v) for v in rle["size"]]}


__all__ = ["decode_segmentation", "encode_mask", "segmentation_record"]
