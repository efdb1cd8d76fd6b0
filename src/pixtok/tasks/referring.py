"""Referring localization and segmentation (RefCOCO/+/g): expression → box (+ mask).

The units are ``(row, expression)`` pairs. The decoder writes the box as four coordinate tokens
and the box head regresses it from the first output step's state (the state before any coordinate
token is read back; PixelLLM's EOS state of an empty answer); the SAM mask decoder, prompted with the
predicted box, gives the mask. The head's box is the prediction; the tokens' box is scored beside it
(``token_precision@0.5``, ``token_mean_box_iou``), as is the predicted mask's own tight box
(``mask_box_precision@0.5``, ``mask_box_mean_box_iou``), and P@0.5 is split by whether the expression
names a spatial relation (``precision@0.5/relation`` and ``/attribute``, with their counts), and
the misses by how far the box is (``near_miss_rate``: IoU 0.25–0.5; ``far_miss_rate``: under
0.25). The splits tell failures apart: words not tied to one object against two objects and a
direction; a loose box on the right object against a box elsewhere. Flips are off for this task unless the augmentation swaps left/right words (see
:mod:`pixtok.data.augment`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Example, Task

RELATION_WORDS = frozenset(
    {
        "left",
        "right",
        "above",
        "below",
        "under",
        "over",
        "behind",
        "front",
        "next",
        "near",
        "beside",
        "between",
    }
)
"""Words that make an expression relational for the ``/relation`` split of P@0.5."""


def has_relation(text: str) -> bool:
    """Whether ``text`` names a spatial relation (one of :data:`RELATION_WORDS`)."""
    return not RELATION_WORDS.isdisjoint(re.findall(r"[a-z]+", text.lower()))


def _boxes(predictions: Sequence[dict], key: str) -> np.ndarray:
    """(N, 4) float64 boxes ``prediction[key]`` of every prediction."""
    return np.stack([np.asarray(p[key], dtype=np.float64) for p in predictions])


def _reference_boxes(examples: Sequence[Example]) -> np.ndarray:
    """(N, 4) float64 target boxes of every example."""
    return np.stack([np.asarray(e.reference["box"], dtype=np.float64) for e in examples])


def _row_mask(row: dict[str, Any]) -> np.ndarray | None:
    segmentation = row.get("segmentation")
    if not segmentation:
        return None
    from ..data.masks import decode_segmentation

    try:
        return decode_segmentation(segmentation).astype(bool)
    except ValueError:
        return None


class ReferringTask(Task):
    """``task="referring"``: text prompt → the referred box and mask."""

    name: ClassVar[str] = "referring"
    main_metric: ClassVar[str] = "precision@0.5"
    synthetic_kind: ClassVar[str] = "refcoco"

    def items(self, dataset: Any) -> list[tuple[int, int]]:
        return [
            (r, k) for r, expressions in enumerate(dataset["expressions"]) for k in range(len(expressions))
        ]

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        text = row["expressions"][sub_index]
        box = np.asarray(row["box"], dtype=np.float32).reshape(1, 4)
        mask = _row_mask(row)
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = self.augment_image(
                image,
                rng,
                keep_boxes=True,  # the referred object stays in the picture
                boxes=box,
                masks=None if mask is None else mask[None],
                words=[text],
            )
            box, text = geometry["boxes"], geometry["words"][0]
            mask = None if mask is None else geometry["masks"][0]
        return Example(
            image=image,
            text=text,
            target={"box": box[0], "mask": mask},
            reference={"box": box[0], "mask": mask},
            image_id=str(row.get("image_id", "")),
        )

    def draw_kwargs(self, example: Example, prediction: dict) -> dict[str, Any]:
        return {"expression": example.text}

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_referring(outputs, target_sizes=target_sizes)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        from ..evaluation.referring import evaluate_referring

        pred_boxes, gt_boxes = _boxes(predictions, "box"), _reference_boxes(examples)
        with_masks = all(e.reference["mask"] is not None for e in examples)
        if with_masks:
            scores = evaluate_referring(
                pred_boxes,
                gt_boxes,
                [p.get("mask") for p in predictions],
                [e.reference["mask"] for e in examples],
            )
        else:
            scores = evaluate_referring(pred_boxes, gt_boxes)
        from ..evaluation.referring import paired_box_iou

        ious = paired_box_iou(pred_boxes, gt_boxes)
        hits = ious >= 0.5
        # the misses in two bands: a box near the object (IoU 0.25-0.5: the right object, loosely
        # boxed) or far from it (under 0.25: mostly another object, or none)
        scores["near_miss_rate"] = float(((ious >= 0.25) & ~hits).mean())
        scores["far_miss_rate"] = float((ious < 0.25).mean())
        relational = np.array([has_relation(e.text or "") for e in examples], dtype=bool)
        for name, rows in (("relation", relational), ("attribute", ~relational)):
            if rows.any():
                scores[f"precision@0.5/{name}"] = float(hits[rows].mean())
                scores[f"num_expressions/{name}"] = float(rows.sum())
        if any(p.get("mask_box") is not None for p in predictions):
            # the predicted mask's own tight box (the box head's where the mask is empty): SAM's
            # decoder, prompted with the head's box, may snap to the object's edges
            mask_boxes = np.stack(
                [
                    np.asarray(p["mask_box"] if p.get("mask_box") is not None else p["box"], dtype=np.float64)
                    for p in predictions
                ]
            )
            for key, value in evaluate_referring(mask_boxes, gt_boxes).items():
                if key != "num_expressions":
                    scores[f"mask_box_{key}"] = value
        if all("token_box" in p for p in predictions):
            # the decoder's own coordinate tokens, scored beside the box head's regression
            tokens = _boxes(predictions, "token_box")
            for key, value in evaluate_referring(tokens, gt_boxes).items():
                if key != "num_expressions":
                    scores[f"token_{key}"] = value
        return scores

    def records(self, predictions: Sequence[dict], examples: Sequence[Example]) -> list[dict]:
        """Per expression: the text, the target and predicted boxes (pixels, xyxy), their IoU, the
        decoder tokens' box and IoU when there are any, and whether the text names a relation."""
        from ..evaluation.referring import paired_box_iou

        pred, gt = _boxes(predictions, "box"), _reference_boxes(examples)
        ious = paired_box_iou(pred, gt)
        with_tokens = all("token_box" in p for p in predictions)
        if with_tokens:
            tokens = _boxes(predictions, "token_box")
            token_ious = paired_box_iou(tokens, gt)
        rows = []
        for i, e in enumerate(examples):
            row = {
                "image_id": e.image_id,
                "expression": e.text,
                "relation": has_relation(e.text or ""),
                "box": [round(float(v), 2) for v in gt[i]],
                "predicted_box": [round(float(v), 2) for v in pred[i]],
                "iou": round(float(ious[i]), 4),
            }
            if with_tokens:
                row["token_box"] = [round(float(v), 2) for v in tokens[i]]
                row["token_iou"] = round(float(token_ious[i]), 4)
            rows.append(row)
        return rows


__all__ = ["ReferringTask"]
