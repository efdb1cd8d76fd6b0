"""`evaluate` module: ROUGE-L with the COCO caption protocol (pixtok's implementation)."""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.captions import rouge_l

_DESCRIPTION = "ROUGE-L as coco-caption computes it (PTB tokenization, beta 1.2, max P/R over references)."
_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
Returns:
    `{"ROUGE-L": float}` in [0, 1], mean over images.
"""


class CaptionRouge(evaluate.Metric):
    """ROUGE-L (coco-caption protocol)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE, 2004; Chen et al., Microsoft COCO Captions, 2015.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return {"ROUGE-L": rouge_l(predictions, references)}


__all__ = ["CaptionRouge"]
