"""The one bridge from tasks to :mod:`pixtok.data.augment`: augment an example's image and its
geometry together, with the example's own generator (so a sample is a pure function of its seed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.augment import AugmentConfig, augment


def augment_example_image(
    image: Any,
    rng: np.random.Generator,
    image_size: int | None,
    *,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    words: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Large-scale jitter, crop, flip (left/right words swapped) and colour jitter.

    Args:
        image: RGB PIL image.
        rng: the example's generator.
        image_size: the square canvas side; ``None`` keeps the image's long side.
        boxes: ``(N, 4)`` xyxy pixels.
        points: ``(P, 2)`` xy pixels (NaN = none).
        masks: ``(N, H, W)`` bool, one per box.
        words: texts to flip-correct (caption words, expressions, region captions).
        settings: :class:`~pixtok.data.augment.AugmentConfig` fields other than ``canvas_size``
            (a task's ``augmentation`` option); the defaults where absent.

    Returns:
        ``(image, {"boxes": (M, 4), "keep": (M,) indices of surviving boxes, "points", "masks",
        "words"})`` — coordinates in pixels of the returned image.
    """
    config = AugmentConfig(canvas_size=int(image_size or max(image.size)), **(settings or {}))
    out = augment(image, rng, config, boxes=boxes, points=points, masks=masks, texts=list(words or ()))
    keep = np.flatnonzero(out.keep) if out.keep is not None else np.zeros(0, dtype=np.int64)
    return out.image, {
        "boxes": out.boxes,
        "keep": keep,
        "points": out.points,
        "masks": out.masks,
        "words": list(out.texts),
    }


__all__ = ["augment_example_image"]
