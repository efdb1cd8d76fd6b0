"""Panoptic quality (PQ, SQ, RQ; all / things / stuff) exactly as panopticapi defines it.

Per image (Kirillov et al. 2019, ``panopticapi/evaluation.py``):
- a ground-truth segment and a predicted segment of the same category match when
  IoU > 0.5, where the union leaves out the predicted pixels that fall on VOID (id 0) ground truth;
  crowd ground-truth segments never match;
- unmatched non-crowd ground truth = false negatives;
- an unmatched prediction is a false positive unless more than half of it lies on VOID or on the
  crowd region of its own category (then it is ignored).
Per category ``PQ = Σ IoU / (TP + FP/2 + FN/2)``, ``SQ = Σ IoU / TP``, ``RQ = TP / (TP + FP/2 +
FN/2)``; the reported numbers average over categories that occur (TP + FP + FN > 0), over all,
things only and stuff only. Values are fractions in [0, 1] (panopticapi prints them ×100).

Segmentations are (H, W) integer id maps (COCO panoptic PNGs decode to ``R + 256 G + 256² B``);
``segments_info`` lists ``{"id", "category_id", "iscrowd"?, "area"?}`` per segment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VOID = 0
_OFFSET = 256 * 256 * 256


def rgb_to_id(rgb: Any) -> np.ndarray:
    """COCO panoptic PNG colours (H, W, 3) uint8 → segment ids (H, W) ``R + 256 G + 256² B``."""
    array = np.asarray(rgb)
    if array.ndim == 2:
        return array.astype(np.int64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) panoptic PNG, got shape {array.shape}")
    array = array.astype(np.int64)
    return array[..., 0] + 256 * array[..., 1] + 256 * 256 * array[..., 2]


def id_to_rgb(ids: Any) -> np.ndarray:
    """Segment ids (H, W) → COCO panoptic PNG colours (H, W, 3) uint8 (inverse of :func:`rgb_to_id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


@dataclass
class _CategoryStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PanopticStats:
    """Per-category sums (IoU, TP, FP, FN) accumulated over images; add images with :meth:`update`."""

    categories: dict[int, dict[str, Any]]
    per_category: dict[int, _CategoryStat] = field(default_factory=dict)

    def _stat(self, category_id: int) -> _CategoryStat:
        if category_id not in self.categories:
            raise ValueError(f"category id {category_id} is not among the {len(self.categories)} categories")
        return self.per_category.setdefault(category_id, _CategoryStat())

    def update(
        self,
        gt_segmentation: Any,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_segmentation: Any,
        pred_segments: Sequence[Mapping[str, Any]],
        image: str = "",
    ) -> None:
        """Add one image.

        Args:
            gt_segmentation: (H, W) ground-truth ids (0 = VOID).
            gt_segments: ``[{"id", "category_id", "iscrowd", "area"?}]``; ``area`` taken from the
                annotation when present (as panopticapi), else counted.
            pred_segmentation: (H, W) predicted ids (0 = nothing predicted).
            pred_segments: ``[{"id", "category_id"}]``.
            image: a name for error messages.
        """
        gt = np.asarray(gt_segmentation, dtype=np.int64)
        pred = np.asarray(pred_segmentation, dtype=np.int64)
        if gt.shape != pred.shape:
            raise ValueError(
                f"image {image}: prediction {pred.shape} and ground truth {gt.shape} differ in size"
            )
        gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
        pred_segms = {int(s["id"]): dict(s) for s in pred_segments}
        if VOID in pred_segms:
            raise ValueError(f"image {image}: segment id {VOID} is reserved for VOID")

        ids, counts = np.unique(pred, return_counts=True)
        unlisted = set(pred_segms)
        for segment_id, count in zip(ids.tolist(), counts.tolist()):
            if segment_id == VOID:
                continue
            if segment_id not in pred_segms:
                raise ValueError(
                    f"image {image}: segment {segment_id} is in the prediction map but not in segments_info"
                )
            pred_segms[segment_id]["area"] = count
            unlisted.discard(segment_id)
            self._stat(int(pred_segms[segment_id]["category_id"]))
        if unlisted:
            raise ValueError(
                f"image {image}: segments {sorted(unlisted)} are in segments_info but cover no pixel"
            )

        gt_ids, gt_counts = np.unique(gt, return_counts=True)
        gt_area = dict(zip(gt_ids.tolist(), gt_counts.tolist()))
        for segment_id, segment in gt_segms.items():
            segment.setdefault("area", gt_area.get(segment_id, 0))
            segment.setdefault("iscrowd", 0)

        joint = gt * _OFFSET + pred
        pair_ids, pair_counts = np.unique(joint, return_counts=True)
        intersections = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pair_ids, pair_counts)}

        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), inter in intersections.items():
            if gt_id not in gt_segms or pred_id not in pred_segms:
                continue
            g, p = gt_segms[gt_id], pred_segms[pred_id]
            if g["iscrowd"] == 1 or g["category_id"] != p["category_id"]:
                continue
            union = p["area"] + g["area"] - inter - intersections.get((VOID, pred_id), 0)
            iou = inter / union
            if iou > 0.5:
                stat = self._stat(int(g["category_id"]))
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_by_category: dict[int, int] = {}
        for gt_id, g in gt_segms.items():
            if gt_id in gt_matched:
                continue
            if g["iscrowd"] == 1:
                crowd_by_category[int(g["category_id"])] = gt_id
                continue
            self._stat(int(g["category_id"])).fn += 1

        for pred_id, p in pred_segms.items():
            if pred_id in pred_matched:
                continue
            ignored = intersections.get((VOID, pred_id), 0)
            crowd_id = crowd_by_category.get(int(p["category_id"]))
            if crowd_id is not None:
                ignored += intersections.get((crowd_id, pred_id), 0)
            if ignored / p["area"] > 0.5:
                continue
            self._stat(int(p["category_id"])).fp += 1

    def average(self, isthing: bool | None = None) -> dict[str, float]:
        """``{"PQ", "SQ", "RQ", "n"}`` over categories present (things, stuff, or all when None)."""
        pq = sq = rq = 0.0
        n = 0
        for category_id, category in self.categories.items():
            if isthing is not None and bool(category.get("isthing", 1)) != isthing:
                continue
            stat = self.per_category.get(category_id, _CategoryStat())
            if stat.tp + stat.fp + stat.fn == 0:
                continue
            n += 1
            denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
            pq += stat.iou / denominator
            sq += stat.iou / stat.tp if stat.tp else 0.0
            rq += stat.tp / denominator
        if n == 0:
            return {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "n": 0.0}
        return {"PQ": pq / n, "SQ": sq / n, "RQ": rq / n, "n": float(n)}

    def summary(self) -> dict[str, float]:
        """Flat ``{"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", …}``."""
        out: dict[str, float] = {}
        for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
            for key, value in self.average(isthing).items():
                out[f"{key}{suffix}"] = value
        return out


def _categories(categories: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]]) -> dict[int, dict]:
    if isinstance(categories, Mapping):
        return {int(k): dict(v) for k, v in categories.items()}
    return {int(c["id"]): dict(c) for c in categories}


def pixtok_segments(
    prediction: Mapping[str, Any], label_to_category: Sequence[int] | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """pixtok's ``{"segmentation": (H, W), "segments_info"}`` → (ids with 0 = VOID, segments).

    ``segments_info`` entries carry ``"category_id"`` (COCO id) or ``"label_id"`` (pixtok label,
    mapped through ``label_to_category``). Negative ids in the map (-1 = no segment) become VOID.
    """
    segmentation = prediction["segmentation"]
    if hasattr(segmentation, "detach"):
        segmentation = segmentation.detach().cpu().numpy()
    ids = np.asarray(segmentation, dtype=np.int64).copy()
    ids[ids < 0] = VOID
    segments = []
    for s in prediction.get("segments_info", []):
        if "category_id" in s:
            category = int(s["category_id"])
        elif "label_id" in s:
            if label_to_category is None:
                raise ValueError("segments carry 'label_id'; pass label_to_category to map them to COCO ids")
            label = int(s["label_id"])
            if not 0 <= label < len(label_to_category):
                raise ValueError(
                    f"segment {s['id']} has label_id {label} outside the {len(label_to_category)} known categories"
                )
            category = int(label_to_category[label])
        else:
            raise ValueError(f"segment {s} has neither 'category_id' nor 'label_id'")
        segments.append({"id": int(s["id"]), "category_id": category})
    return ids, segments


def load_coco_panoptic(annotations: str | Path, masks: str | Path) -> tuple[list[dict[str, Any]], list[dict]]:
    """Read COCO panoptic ground truth.

    Args:
        annotations: ``panoptic_*.json`` path.
        masks: folder of the PNGs named in each annotation's ``file_name``.

    Returns:
        ``(images, categories)`` with ``images = [{"image_id", "segmentation": (H, W) ids,
        "segments_info"}]`` in the JSON's order.
    """
    annotations, masks = Path(annotations), Path(masks)
    if not annotations.is_file():
        raise FileNotFoundError(f"panoptic annotation file not found: {annotations}")
    if not masks.is_dir():
        raise FileNotFoundError(f"panoptic PNG folder not found: {masks}")
    data = json.loads(annotations.read_text())
    images = []
    for ann in data["annotations"]:
        png = masks / ann["file_name"]
        if not png.is_file():
            raise FileNotFoundError(f"panoptic PNG for image {ann['image_id']} not found: {png}")
        with Image.open(png) as im:
            ids = rgb_to_id(np.asarray(im.convert("RGB")))
        images.append(
            {"image_id": ann["image_id"], "segmentation": ids, "segments_info": ann["segments_info"]}
        )
    return images, data["categories"]


def evaluate_panoptic(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]],
    label_to_category: Sequence[int] | None = None,
) -> dict[str, float]:
    """PQ / SQ / RQ (all, things ``_th``, stuff ``_st``) of pixtok panoptic outputs.

    Args:
        predictions: per image ``{"segmentation": (H, W) ids, "segments_info": [...]}``
            (``post_process_panoptic_segmentation``'s format; see :func:`pixtok_segments`).
        ground_truth: per image ``{"segmentation": (H, W) ids, "segments_info": [...]}``
            (:func:`load_coco_panoptic`), same order.
        categories: COCO panoptic categories (``id``, ``isthing``).
        label_to_category: COCO category id of each pixtok label, when segments carry ``label_id``.

    Returns:
        ``{"PQ", "SQ", "RQ", "n", "PQ_th", …, "PQ_st", …}``, fractions in [0, 1].
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truth)} ground-truth images")
    stats = PanopticStats(_categories(categories))
    for pred, gt in zip(predictions, ground_truth):
        pred_ids, pred_segments = pixtok_segments(pred, label_to_category)
        gt_ids = gt["segmentation"]
        if hasattr(gt_ids, "detach"):
            gt_ids = gt_ids.detach().cpu().numpy()
        stats.update(gt_ids, gt["segments_info"], pred_ids, pred_segments, image=str(gt.get("image_id", "")))
    return stats.summary()


__all__ = [
    "VOID",
    "PanopticStats",
    "evaluate_panoptic",
    "id_to_rgb",
    "load_coco_panoptic",
    "pixtok_segments",
    "rgb_to_id",
]
