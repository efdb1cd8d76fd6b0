"""`evaluate` module: COCO box AP/AR (the twelve numbers) through pycocotools.

References are per-image ground truth in pixtok's row format; an in-memory COCO ground truth is
built from them (category id = label + 1, annotation area = box area, so the small/medium/large
split uses box areas — for official numbers on COCO itself use
:func:`pixtok.evaluation.coco.evaluate_detection` with the instances JSON).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from pixtok.evaluation.coco import evaluate_detection

_DESCRIPTION = "COCO AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l of xyxy pixel boxes (pycocotools COCOeval)."
_KWARGS = """
Args:
    predictions: per image `{"boxes": [[x0, y0, x1, y1]], "scores": [float], "labels": [int]}`.
    references: per image `{"boxes": [[x0, y0, x1, y1]], "labels": [int], "iscrowd": [int]}`.
Returns:
    `{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}`.
"""

_BOXES = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))


class CocoDetection(evaluate.Metric):
    """COCO detection AP/AR."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": {
                        "boxes": _BOXES,
                        "scores": datasets.Sequence(datasets.Value("float64")),
                        "labels": datasets.Sequence(datasets.Value("int64")),
                    },
                    "references": {
                        "boxes": _BOXES,
                        "labels": datasets.Sequence(datasets.Value("int64")),
                        "iscrowd": datasets.Sequence(datasets.Value("int64")),
                    },
                }
            ),
        )

    def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, float]:
        labels = {int(v) for item in list(predictions) + list(references) for v in item["labels"]}
        num_labels = max(labels) + 1 if labels else 1
        annotations = []
        for index, ref in enumerate(references):
            boxes = np.asarray(ref["boxes"], dtype=np.float64).reshape(-1, 4)
            crowd = list(ref["iscrowd"]) or [0] * len(boxes)
            for box, label, iscrowd in zip(boxes, ref["labels"], crowd):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": int(label) + 1,
                        "bbox": [float(box[0]), float(box[1]), w, h],
                        "area": w * h,
                        "iscrowd": int(iscrowd),
                    }
                )
        ground_truth = {
            "images": [{"id": i + 1} for i in range(len(references))],
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_labels)],
            "annotations": annotations,
        }
        return evaluate_detection(
            predictions,
            ground_truth,
            image_ids=list(range(1, len(references) + 1)),
            category_ids=list(range(1, num_labels + 1)),
        )


__all__ = ["CocoDetection"]
