"""Dense captioning mAP on Visual Genome, as DenseCap (Johnson et al. 2016) and GRiT evaluate it.

Per image:
1. Ground-truth boxes overlapping at IoU >= 0.7 are merged: repeatedly the box with the most such
   neighbours takes them as a group; the group becomes one box (the mean of its boxes) whose
   references are all of the group's captions.
2. Predictions, best score first, are assigned to the merged box of highest IoU (none when they
   overlap no box: a false positive); a box already taken makes the later prediction a duplicate
   (never a true positive).
3. Each prediction's caption is scored against its box's references with METEOR.
Over the whole set, for each IoU threshold {0.3, 0.4, 0.5, 0.6, 0.7} and each METEOR threshold
{0, 0.05, 0.1, 0.15, 0.2, 0.25}, a prediction is a true positive when IoU >= t_iou, it is not a
duplicate and METEOR > t_meteor; AP is precision interpolated at 101 recall points
(max precision at recall >= r, r = 0, 0.01, …, 1); mAP is the mean of the 30 APs. The detection-
only AP (METEOR threshold -1, i.e. any caption) is reported beside it. IoU uses DenseCap's
pixel-inclusive convention (width = x1 - x0 + 1), in merging and in matching.

Caption similarity: METEOR 1.5 through Java when the jar is available
(:func:`pixtok.evaluation.captions.find_meteor_jar`); otherwise :func:`meteor_exact` (exact unigram
matches only) and the result says so in ``"similarity"`` — fallback numbers are not comparable
with published ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .captions import MeteorScorer, find_meteor_jar, meteor_exact, ptb_tokenize

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
MERGE_IOU = 0.7


def inclusive_box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU (N, M) of xyxy pixel boxes with DenseCap's pixel-inclusive areas ((x1 - x0 + 1) × …)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def merge_ground_truth(
    boxes: Any, captions: Sequence[str], threshold: float = MERGE_IOU
) -> tuple[np.ndarray, list[list[str]]]:
    """Merge overlapping ground-truth regions (DenseCap's rule).

    Args:
        boxes: (M, 4) xyxy pixels.
        captions: M captions.
        threshold: IoU at which two boxes belong together.

    Returns:
        ``(merged_boxes (K, 4) xyxy, references: K lists of captions)``.
    """
    boxes_a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes_a) != len(captions):
        raise ValueError(f"{len(boxes_a)} ground-truth boxes but {len(captions)} captions")
    close = inclusive_box_iou(boxes_a, boxes_a) >= threshold
    remaining = np.ones(len(boxes_a), dtype=bool)
    merged, references = [], []
    while remaining.any():
        neighbours = close & remaining[None, :] & remaining[:, None]
        seed = int(np.argmax(neighbours.sum(axis=1)))
        group = np.flatnonzero(neighbours[seed])
        merged.append(boxes_a[group].mean(axis=0))
        references.append([captions[j] for j in group])
        remaining[group] = False
    return np.asarray(merged, dtype=np.float64).reshape(-1, 4), references


@dataclass
class _Record:
    score: float
    iou: float
    is_first: bool
    candidate: str
    references: list[str] | None


def _average_precision(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_cum / max(num_positives, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
    total = 0.0
    thresholds = np.linspace(0.0, 1.0, 101)
    for r in thresholds:
        reached = precision[recall >= r]
        total += float(reached.max()) if len(reached) else 0.0
    return total / len(thresholds)


def evaluate_dense_captions(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    meteor_jar: str | os.PathLike | None = None,
    use_meteor: bool = True,
) -> dict[str, Any]:
    """Visual Genome dense-captioning mAP.

    Args:
        predictions: per image ``{"boxes": (N, 4) xyxy pixels, "scores": (N,), "captions": [N str]}``
            (``post_process_dense_caption``'s format).
        ground_truth: per image ``{"boxes": (M, 4) xyxy pixels, "captions": [M str]}``.
        meteor_jar: METEOR 1.5 jar (else ``$PIXTOK_METEOR_JAR``); missing → exact-match fallback.
        use_meteor: ``False`` forces the fallback similarity.

    Returns:
        ``{"mAP", "detection_AP", "ap_per_threshold": {"iou=0.3,meteor=0": …}, "num_predictions",
        "num_ground_truth" (merged boxes), "similarity": "meteor-1.5" | "exact-match fallback (…)"}``.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truth)} ground-truth images")
    records: list[_Record] = []
    num_positives = 0
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth)):
        gt_boxes, refs = merge_ground_truth(gt.get("boxes", []), list(gt.get("captions", [])))
        num_positives += len(gt_boxes)
        boxes = np.asarray(_numpy(pred.get("boxes", [])), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(_numpy(pred.get("scores", np.ones(len(boxes)))), dtype=np.float64).reshape(-1)
        captions = list(pred.get("captions", []))
        if not len(boxes) == len(scores) == len(captions):
            raise ValueError(
                f"image {i}: {len(boxes)} boxes, {len(scores)} scores, {len(captions)} captions; "
                "expected one of each per region"
            )
        ious = inclusive_box_iou(boxes, gt_boxes) if len(gt_boxes) else np.zeros((len(boxes), 0))
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in np.argsort(-scores, kind="stable"):
            if len(gt_boxes) == 0 or ious[d].max() <= 0:  # overlaps nothing: a false positive
                records.append(_Record(float(scores[d]), 0.0, False, captions[d], None))
                continue
            j = int(np.argmax(ious[d]))
            first = not taken[j]
            taken[j] = True
            records.append(_Record(float(scores[d]), float(ious[d, j]), first, captions[d], refs[j]))

    similarity, similarities = _caption_similarities(records, meteor_jar, use_meteor)
    order = np.argsort(-np.asarray([r.score for r in records]), kind="stable")
    has_refs = np.asarray([records[k].references is not None for k in order], dtype=bool)
    ious_sorted = np.asarray([records[k].iou for k in order])
    first_sorted = np.asarray([records[k].is_first for k in order], dtype=bool)
    sims_sorted = np.asarray([similarities[k] for k in order])

    def ap_at(t_iou: float, t_meteor: float) -> float:
        if len(records) == 0:
            return 0.0
        tp = has_refs & first_sorted & (ious_sorted >= t_iou) & (sims_sorted > t_meteor)
        return _average_precision(tp.astype(np.float64), (~tp).astype(np.float64), num_positives)

    per_threshold = {
        f"iou={t:g},meteor={m:g}": ap_at(t, m) for t in IOU_THRESHOLDS for m in METEOR_THRESHOLDS
    }
    detection = [ap_at(t, -1.0) for t in IOU_THRESHOLDS]
    return {
        "mAP": float(np.mean(list(per_threshold.values()))),
        "detection_AP": float(np.mean(detection)),
        "ap_per_threshold": per_threshold,
        "num_predictions": float(len(records)),
        "num_ground_truth": float(num_positives),
        "similarity": similarity,
    }


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _caption_similarities(
    records: list[_Record], meteor_jar: str | os.PathLike | None, use_meteor: bool
) -> tuple[str, list[float]]:
    scored = [r for r in records if r.references is not None]
    jar, reason = find_meteor_jar(meteor_jar) if use_meteor else (None, "use_meteor=False")
    values: dict[int, float] = {}
    if jar is not None and scored:
        with MeteorScorer(jar) as scorer:
            _, per_item = scorer.score(
                [" ".join(ptb_tokenize(r.candidate)) for r in scored],
                [[" ".join(ptb_tokenize(c)) for c in r.references or []] for r in scored],
            )
        values = {id(r): s for r, s in zip(scored, per_item)}
        name = "meteor-1.5"
    else:
        for r in scored:
            values[id(r)] = meteor_exact(
                ptb_tokenize(r.candidate), [ptb_tokenize(c) for c in r.references or []]
            )
        name = f"exact-match fallback ({reason}); not comparable with published METEOR-based mAP"
        if jar is not None:
            name = "meteor-1.5"
    return name, [values.get(id(r), 0.0) for r in records]


__all__ = [
    "IOU_THRESHOLDS",
    "MERGE_IOU",
    "METEOR_THRESHOLDS",
    "evaluate_dense_captions",
    "inclusive_box_iou",
    "merge_ground_truth",
]
