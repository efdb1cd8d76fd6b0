"""`evaluate` module: RefCOCO metrics — P@0.5 of boxes, cIoU and mIoU of masks."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from pixtok.evaluation.referring import evaluate_referring

_DESCRIPTION = (
    "Referring expressions: precision@0.5 (box IoU >= 0.5), mean box IoU; with masks cIoU and mIoU."
)
_KWARGS = """
Args:
    predictions: per expression `{"box": [x0, y0, x1, y1]}` pixels; with the "masks" configuration
        (`evaluate.load(path, "masks")`) also `"mask": (H, W)` nested bool lists ([] = no mask).
    references: same structure, ground truth.
Returns:
    `{"precision@0.5", "mean_box_iou", "num_expressions"}` (+ `"cIoU"`, `"mIoU"` with masks).
"""

_BOX = datasets.Sequence(datasets.Value("float64"))
_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))


class Referring(evaluate.Metric):
    """P@0.5, cIoU, mIoU."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Yu et al., Modeling Context in Referring Expressions, ECCV 2016.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": {"box": _BOX, "mask": _MASK}, "references": {"box": _BOX, "mask": _MASK}}
                if self.config_name == "masks"
                else {"predictions": {"box": _BOX}, "references": {"box": _BOX}}
            ),
        )

    def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, float]:
        pred_boxes = np.asarray([p["box"] for p in predictions], dtype=np.float64).reshape(-1, 4)
        gt_boxes = np.asarray([r["box"] for r in references], dtype=np.float64).reshape(-1, 4)
        if predictions and "mask" in predictions[0]:
            pred_masks = [np.asarray(p["mask"], dtype=bool) if len(p["mask"]) else None for p in predictions]
            gt_masks = [np.asarray(r["mask"], dtype=bool) for r in references]
            return evaluate_referring(pred_boxes, gt_boxes, pred_masks, gt_masks)
        return evaluate_referring(pred_boxes, gt_boxes)


__all__ = ["Referring"]
