"""`evaluate` module: Visual Genome dense-captioning mAP (DenseCap / GRiT protocol)."""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.dense_captions import evaluate_dense_captions

_DESCRIPTION = (
    "Dense captioning mAP over IoU {0.3..0.7} x METEOR {0..0.25}, GT merged at IoU 0.7. Caption "
    "similarity is METEOR 1.5 with Java + jar, otherwise an exact-match fallback named in the output."
)
_KWARGS = """
Args:
    predictions: per image `{"boxes": [[x0, y0, x1, y1]], "scores": [float], "captions": [str]}`.
    references: per image `{"boxes": [[x0, y0, x1, y1]], "captions": [str]}`.
    meteor_jar (`str`, *optional*): meteor-1.5.jar (else $PIXTOK_METEOR_JAR).
Returns:
    `{"mAP", "detection_AP", "num_predictions", "num_ground_truth", "similarity"}`.
"""

_BOXES = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
_CAPTIONS = datasets.Sequence(datasets.Value("string"))


class DenseCaptionMap(evaluate.Metric):
    """Dense captioning mAP."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Johnson et al., DenseCap, CVPR 2016.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": {
                        "boxes": _BOXES,
                        "scores": datasets.Sequence(datasets.Value("float64")),
                        "captions": _CAPTIONS,
                    },
                    "references": {"boxes": _BOXES, "captions": _CAPTIONS},
                }
            ),
        )

    def _compute(
        self, predictions: list[dict], references: list[dict], meteor_jar: str | None = None
    ) -> dict:
        out = evaluate_dense_captions(predictions, references, meteor_jar=meteor_jar)
        out.pop("ap_per_threshold")
        return out


__all__ = ["DenseCaptionMap"]
