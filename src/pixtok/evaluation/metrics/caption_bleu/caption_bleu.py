"""`evaluate` module: corpus BLEU-1…4 with the COCO caption protocol (pixtok's implementation).

Load by path: ``evaluate.load(".../pixtok/evaluation/metrics/caption_bleu")``.
"""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.captions import bleu_scores

_DESCRIPTION = "Corpus BLEU-1..4 as coco-caption computes it (PTB tokenization, closest reference length)."
_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
Returns:
    `{"BLEU-1": float, …, "BLEU-4": float}` in [0, 1].
"""


class CaptionBleu(evaluate.Metric):
    """BLEU-1…4 (coco-caption protocol)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Papineni et al., BLEU, ACL 2002; Chen et al., Microsoft COCO Captions, 2015.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return {f"BLEU-{n}": v for n, v in enumerate(bleu_scores(predictions, references), start=1)}


__all__ = ["CaptionBleu"]
