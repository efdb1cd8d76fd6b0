"""COCO detection and instance-mask AP/AR through pycocotools' ``COCOeval``.

pixtok predictions (``post_process_object_detection``: ``{"scores": (N,), "labels": (N,),
"boxes": (N, 4)}`` with boxes xyxy in absolute pixels, labels indices into the config's
``id2label``) are converted to the COCO results format (``bbox`` = ``[x, y, w, h]`` pixels,
``category_id`` = the dataset's COCO category id, ``image_id`` = the COCO integer id) and scored
against a COCO ground-truth file with the twelve standard numbers.

Label → category id: a pixtok label ``i`` is the ``i``-th category of the ground truth sorted by
COCO id (``sorted(coco.getCatIds())[i]``), unless ``category_ids`` is given explicitly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
"""Names of the twelve numbers ``COCOeval.summarize`` prints, in its order (fractions in [0, 1];
-1 where the ground truth has no object of that area range)."""

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")


def coco_image_id(image_id: Any) -> int:
    """Turn a pixtok ``image_id`` (``str`` in data rows, e.g. ``"000000142238"``) into COCO's int."""
    if isinstance(image_id, (int, np.integer)):
        return int(image_id)
    text = str(image_id)
    stem = Path(text).stem
    if not stem.isdigit():
        raise ValueError(f"image_id {image_id!r} is not a COCO integer id (expected digits like '42')")
    return int(stem)


def _as_numpy(value: Any, dtype: Any | None = None) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def encode_mask(mask: Any) -> dict[str, Any]:
    """Run-length encode one ``(H, W)`` boolean mask the way COCO results store it (JSON-safe)."""
    array = np.asfortranarray(_as_numpy(mask).astype(np.uint8))
    if array.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {array.shape}")
    rle = mask_utils.encode(array)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_coco_results(
    prediction: Mapping[str, Any],
    image_id: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """One image's pixtok detections as COCO result dicts.

    Args:
        prediction: ``{"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": (N,)}`` and optionally
            ``"masks": (N, H, W) bool`` (instance masks) — tensors, arrays or lists.
        image_id: the COCO image id (int, or a digit string).
        category_ids: COCO category id of each pixtok label (``category_ids[label]``).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"(, "segmentation")}]``.
    """
    boxes = _as_numpy(prediction.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    scores = _as_numpy(prediction.get("scores", np.ones(len(boxes))), np.float64).reshape(-1)
    labels = _as_numpy(prediction.get("labels", np.zeros(len(boxes))), np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"prediction has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
            "expected one of each per object"
        )
    masks = prediction.get("masks")
    if masks is not None:
        masks = _as_numpy(masks)
        if len(masks) != len(boxes):
            raise ValueError(f"prediction has {len(masks)} masks for {len(boxes)} boxes")
    cid = coco_image_id(image_id)
    results = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        if not 0 <= label < len(category_ids):
            raise ValueError(f"label {label} outside the {len(category_ids)} known categories")
        x0, y0, x1, y1 = (float(v) for v in box)
        result = {
            "image_id": cid,
            "category_id": int(category_ids[label]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if masks is not None:
            result["segmentation"] = encode_mask(masks[i])
        results.append(result)
    return results


def load_coco(ground_truth: COCO | str | Path | Mapping[str, Any]) -> COCO:
    """A pycocotools ``COCO`` from a path to an instances JSON, a parsed dict, or a ``COCO``."""
    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, (str, Path)):
        path = Path(ground_truth)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        dataset = json.loads(path.read_text())
    else:
        dataset = copy.deepcopy(dict(ground_truth))
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"COCO ground truth lacks the {key!r} list")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results_coco(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """The detections as a ``COCO`` object; ``loadRes`` cannot take an empty list, we can."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(results))
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_coco_results(
    results: list[dict[str, Any]],
    ground_truth: COCO | str | Path | Mapping[str, Any],
    image_ids: Sequence[Any] | None = None,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """The twelve COCO numbers for detections already in the COCO results format.

    Args:
        results: COCO result dicts (``bbox`` xywh pixels; ``segmentation`` RLE for ``segm``).
        ground_truth: instances JSON path, parsed dict or ``COCO``.
        image_ids: images that were evaluated (those without detections count their misses);
            defaults to every image of the ground truth.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{name: value}`` for :data:`COCO_STAT_NAMES`, fractions in [0, 1] (-1 = no such GT).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_gt = load_coco(ground_truth)
    ids = sorted({coco_image_id(i) for i in image_ids}) if image_ids is not None else coco_gt.getImgIds()
    unknown = sorted(set(ids) - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"image ids {unknown[:5]} are not in the ground truth")
    stray = sorted({r["image_id"] for r in results} - set(ids))
    if stray:
        raise ValueError(f"detections for image ids {stray[:5]} that are not being evaluated")
    if iou_type == "segm" and any("segmentation" not in r for r in results):
        raise ValueError("iou_type='segm' needs a 'segmentation' (masks) in every detection")
    coco_dt = _results_coco(coco_gt, results, iou_type)
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    evaluator.params.imgIds = ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def evaluate_detection(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: COCO | str | Path | Mapping[str, Any],
    image_ids: Sequence[Any],
    category_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """COCO AP/AR of pixtok detections (box AP, or mask AP with ``iou_type="segm"``).

    Args:
        predictions: one ``post_process_object_detection`` dict per image (boxes xyxy pixels;
            ``"masks": (N, H, W)`` bool for ``segm``).
        ground_truth: COCO instances JSON path, parsed dict or ``COCO``.
        image_ids: the COCO image id of each prediction, same order.
        category_ids: COCO category id per pixtok label; defaults to the ground truth's ids sorted.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"AP", "AP50", …, "ARl"}`` (:data:`COCO_STAT_NAMES`) as fractions in [0, 1].
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    coco_gt = load_coco(ground_truth)
    if category_ids is None:
        category_ids = sorted(coco_gt.getCatIds())
    results: list[dict[str, Any]] = []
    for prediction, image_id in zip(predictions, image_ids):
        results.extend(to_coco_results(prediction, image_id, category_ids))
    return evaluate_coco_results(results, coco_gt, image_ids=image_ids, iou_type=iou_type)


def ground_truth_from_boxes(references: Sequence[Mapping[str, Any]], num_labels: int) -> dict[str, Any]:
    """A COCO instances dict from per-image references (no annotation file at hand).

    Args:
        references: per image ``{"boxes": (N, 4) xyxy pixels, "labels": (N,), "iscrowd": (N,) optional}``.
        num_labels: number of pixtok labels (category id = label + 1).

    Returns:
        ``{"images", "categories", "annotations"}`` with image ids ``1..len(references)``; object areas
        are box areas (COCO files use mask areas, which moves the small/medium/large split slightly).
    """
    annotations: list[dict[str, Any]] = []
    for image_id, ref in enumerate(references, start=1):
        boxes = np.asarray(ref.get("boxes", []), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(ref.get("labels", []), dtype=np.int64).reshape(-1)
        crowd = ref.get("iscrowd")
        crowd = np.zeros(len(boxes), dtype=np.int64) if crowd is None else np.asarray(crowd).reshape(-1)
        for (x0, y0, x1, y1), label, iscrowd in zip(boxes.tolist(), labels.tolist(), crowd.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(iscrowd),
                }
            )
    return {
        "images": [{"id": i} for i in range(1, len(references) + 1)],
        "categories": [{"id": c + 1} for c in range(max(num_labels, 1))],
        "annotations": annotations,
    }


def evaluate_detection_on_boxes(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    num_labels: int | None = None,
) -> dict[str, float]:
    """COCO AP/AR of predictions against per-image reference boxes (see :func:`ground_truth_from_boxes`).

    ``num_labels`` defaults to one more than the largest label among references and predictions.
    """
    if num_labels is None:
        largest = [
            int(np.max(np.asarray(r.get("labels", []), dtype=np.int64), initial=-1)) for r in references
        ]
        largest += [
            int(np.max(np.asarray(p.get("labels", []), dtype=np.int64), initial=-1)) for p in predictions
        ]
        num_labels = max(largest, default=-1) + 1
    ground_truth = ground_truth_from_boxes(references, num_labels)
    ids = list(range(1, len(references) + 1))
    return evaluate_detection(
        predictions, ground_truth, ids, category_ids=list(range(1, max(num_labels, 1) + 1))
    )


__all__ = [
    "COCO_STAT_NAMES",
    "IOU_TYPES",
    "coco_image_id",
    "encode_mask",
    "evaluate_coco_results",
    "evaluate_detection",
    "evaluate_detection_on_boxes",
    "ground_truth_from_boxes",
    "load_coco",
    "to_coco_results",
]
