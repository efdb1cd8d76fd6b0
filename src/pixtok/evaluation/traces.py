"""Trace accuracy: L1 between predicted and ground-truth per-word points (PixelLLM's measure).

Points are compared in image-normalized coordinates (``x / width``, ``y / height``, the
Localized Narratives convention), so the number does not depend on image size. The L1 is the mean
absolute coordinate difference (``torch.nn.functional.l1_loss`` with mean reduction) over every
word that has a ground-truth point (NaN = no point: the annotator's mouse was idle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_points(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be (W, 2) xy points, got shape {array.shape}")
    return array


def trace_l1(
    pred_points: Sequence[Any],
    gt_points: Sequence[Any],
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, float]:
    """Mean L1 between per-word points over all words with a ground-truth point.

    Args:
        pred_points: per image, (W, 2) predicted xy points for the ground-truth caption's words
            (pixels when ``image_sizes`` is given, else already normalized to [0, 1]).
        gt_points: per image, (W, 2) ground-truth xy points, NaN rows for words without a point.
        image_sizes: per image ``(height, width)`` in pixels to normalize both point sets.

    Returns:
        ``{"trace_l1": mean |Δ| over coordinates, "trace_point_l1": mean |Δx| + |Δy| per word,
        "num_words": words scored, "num_missing": GT-pointed words the prediction left NaN}``;
        a missing predicted point is scored as the farthest possible one (|Δ| = 1 per coordinate).
    """
    if len(pred_points) != len(gt_points):
        raise ValueError(f"{len(pred_points)} predicted traces but {len(gt_points)} ground-truth traces")
    if image_sizes is not None and len(image_sizes) != len(gt_points):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(gt_points)} traces")
    diffs, missing = [], 0
    for i, (pred, gt) in enumerate(zip(pred_points, gt_points)):
        pred_a, gt_a = _as_points(pred, "pred_points"), _as_points(gt, "gt_points")
        if len(pred_a) != len(gt_a):
            raise ValueError(
                f"image {i}: {len(pred_a)} predicted points for {len(gt_a)} words; trace L1 compares "
                "points word by word for the ground-truth caption"
            )
        if image_sizes is not None:
            height, width = image_sizes[i]
            scale = np.array([width, height], dtype=np.float64)
            pred_a, gt_a = pred_a / scale, gt_a / scale
        has_gt = ~np.isnan(gt_a).any(axis=1)
        pred_a, gt_a = pred_a[has_gt], gt_a[has_gt]
        no_pred = np.isnan(pred_a).any(axis=1)
        missing += int(no_pred.sum())
        diff = np.abs(pred_a - gt_a)
        diff[no_pred] = 1.0
        diffs.append(diff)
    all_diffs = np.concatenate(diffs) if diffs else np.zeros((0, 2))
    if len(all_diffs) == 0:
        raise ValueError("no word has a ground-truth point; trace L1 is undefined")
    return {
        "trace_l1": float(all_diffs.mean()),
        "trace_point_l1": float(all_diffs.sum(axis=1).mean()),
        "num_words": float(len(all_diffs)),
        "num_missing": float(missing),
    }


__all__ = ["trace_l1"]
