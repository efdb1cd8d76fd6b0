"""Referring expression metrics as RefCOCO papers report them.

- ``precision@0.5``: fraction of expressions whose predicted box has IoU >= 0.5 with the
  ground-truth box (boxes xyxy, absolute pixels, continuous coordinates: area = w * h).
- ``cIoU``: cumulative IoU of masks, sum of intersections over sum of unions over the whole set.
- ``mIoU``: mean of per-expression mask IoUs.
- ``mean_box_iou``: mean box IoU (a diagnostic beside P@0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_numpy(value: Any, dtype: Any | None = None) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def paired_box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """IoU of row ``i`` of ``boxes_a`` with row ``i`` of ``boxes_b``.

    Args:
        boxes_a: (N, 4) xyxy pixels.
        boxes_b: (N, 4) xyxy pixels.

    Returns:
        (N,) IoU in [0, 1]; degenerate pairs (both zero area) give 0.
    """
    a = _as_numpy(boxes_a, np.float64).reshape(-1, 4)
    b = _as_numpy(boxes_b, np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"box arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pairwise_box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """IoU of every box of ``boxes_a`` (N, 4) with every box of ``boxes_b`` (M, 4), xyxy → (N, M)."""
    a = _as_numpy(boxes_a, np.float64).reshape(-1, 4)
    b = _as_numpy(boxes_b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_intersection_union(pred_mask: Any, gt_mask: Any) -> tuple[int, int]:
    """Pixel counts ``(|pred ∧ gt|, |pred ∨ gt|)`` of two (H, W) masks; ``pred`` None = empty."""
    gt = _as_numpy(gt_mask).astype(bool)
    if gt.ndim != 2:
        raise ValueError(f"ground-truth mask must be (H, W), got shape {gt.shape}")
    if pred_mask is None:
        return 0, int(gt.sum())
    pred = _as_numpy(pred_mask).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask {pred.shape} and ground-truth mask {gt.shape} differ in size")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def evaluate_referring(
    pred_boxes: Any,
    gt_boxes: Any,
    pred_masks: Sequence[Any] | None = None,
    gt_masks: Sequence[Any] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Referring localization (P@0.5) and segmentation (cIoU, mIoU) scores.

    Args:
        pred_boxes: (N, 4) xyxy pixels, one predicted box per expression.
        gt_boxes: (N, 4) xyxy pixels.
        pred_masks: N masks (H_i, W_i) bool, or ``None`` entries where the model gave no mask.
        gt_masks: N masks (H_i, W_i) bool (same sizes as the predictions); omit both for boxes only.
        iou_threshold: box IoU needed for a hit (0.5 in every RefCOCO paper).

    Returns:
        ``{"precision@0.5", "mean_box_iou", "num_expressions"}`` plus ``"cIoU"``, ``"mIoU"`` with masks
        (key name follows ``iou_threshold``).
    """
    ious = paired_box_iou(pred_boxes, gt_boxes)
    if len(ious) == 0:
        raise ValueError("no referring expressions to evaluate")
    scores: dict[str, float] = {
        f"precision@{iou_threshold:g}": float(np.mean(ious >= iou_threshold)),
        "mean_box_iou": float(np.mean(ious)),
        "num_expressions": float(len(ious)),
    }
    if gt_masks is None and pred_masks is None:
        return scores
    if gt_masks is None or pred_masks is None:
        raise ValueError("pass both pred_masks and gt_masks, or neither")
    if len(pred_masks) != len(gt_masks) or len(gt_masks) != len(ious):
        raise ValueError(f"{len(pred_masks)} predicted masks, {len(gt_masks)} GT masks, {len(ious)} boxes")
    inters, unions = [], []
    for i, (pred, gt) in enumerate(zip(pred_masks, gt_masks)):
        if not _as_numpy(gt).any():
            raise ValueError(f"ground-truth mask {i} is empty; a referred object needs at least one pixel")
        inter, union = mask_intersection_union(pred, gt)
        inters.append(inter)
        unions.append(union)
    inters_a, unions_a = np.asarray(inters, np.float64), np.asarray(unions, np.float64)
    scores["cIoU"] = float(inters_a.sum() / unions_a.sum())
    scores["mIoU"] = float(np.mean(inters_a / unions_a))
    return scores


__all__ = [
    "evaluate_referring",
    "mask_intersection_union",
    "paired_box_iou",
    "pairwise_box_iou",
]
