"""Checking and repairing one annotation box on its way into a row (absolute pixels, xyxy).

Annotation files write boxes as ``[x, y, w, h]`` (COCO, Visual Genome) or ``[x0, y0, x1, y1]``;
rows carry ``[x0, y0, x1, y1]`` float pixels inside ``[0, width] x [0, height]``. The policy,
applied by every loader through :func:`clean_box`:

* not four finite numbers (NaN, inf, strings, wrong length) → skipped, ``"malformed or NaN box"``;
* negative width/height → skipped, ``"negative box size"``;
* overhanging the image by more than :data:`CLIP_TOLERANCE_PX` → clipped and counted
  (``"box clipped to image"``); sub-pixel overhang (float rounding in the files) is clipped silently;
* zero area after clipping (entirely outside, or a degenerate line/point) → skipped,
  ``"zero-area box"`` / ``"box outside image"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .report import LoadReport

CLIP_TOLERANCE_PX = 0.5
"""Overhang (pixels) clipped without a report entry: float rounding in real annotation files."""


def clean_box(
    box: Sequence[float] | None,
    width: float | None,
    height: float | None,
    report: LoadReport,
    what: str,
    fmt: str = "xywh",
) -> list[float] | None:
    """Validate one box and return it as xyxy pixels clipped to the image, or ``None`` if skipped.

    Args:
        box: the annotation's numbers, ``fmt`` order, absolute pixels.
        width, height: image size in pixels; ``None`` disables clipping (size unknown).
        report: receives a counted message for every skip or repair.
        what: names the record in messages (``"annotation 17 of image 42"``).
        fmt: ``"xywh"`` or ``"xyxy"``.

    Returns:
        ``[x0, y0, x1, y1]`` floats, or ``None`` when the box was skipped.
    """
    try:
        values = [float(v) for v in box]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        report.skip("malformed or NaN box", f"{what}: box {box!r} is not four finite numbers")
        return None
    if fmt == "xywh":
        x0, y0, w, h = values
        x1, y1 = x0 + w, y0 + h
    elif fmt == "xyxy":
        x0, y0, x1, y1 = values
    else:
        raise ValueError(f"box format must be 'xywh' or 'xyxy', got {fmt!r}")
    if x1 < x0 or y1 < y0:
        report.skip("negative box size", f"{what}: box {box!r} has negative width or height")
        return None
    if width is not None and height is not None:
        overhang = max(-x0, -y0, x1 - width, y1 - height)
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 <= cx0 or cy1 <= cy0:
            reason = "zero-area box" if x1 <= x0 or y1 <= y0 else "box outside image"
            report.skip(reason, f"{what}: box {box!r} has no area inside the {width}x{height} image")
            return None
        if overhang > CLIP_TOLERANCE_PX:
            report.repair("box clipped to image", f"{what}: box {box!r} overhangs the {width}x{height} image")
        x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    elif x1 <= x0 or y1 <= y0:
        report.skip("zero-area box", f"{what}: box {box!r} has zero area")
        return None
    return [x0, y0, x1, y1]


__all__ = ["CLIP_TOLERANCE_PX", "clean_box"]
