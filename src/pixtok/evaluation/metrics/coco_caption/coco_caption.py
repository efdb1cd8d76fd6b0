"""`evaluate` module: every COCO caption number at once (BLEU-1…4, METEOR, ROUGE-L, CIDEr-D)."""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.captions import evaluate_captions

_DESCRIPTION = "BLEU-1..4, METEOR (when Java + jar exist), ROUGE-L, CIDEr-D with coco-caption's protocol."
_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
    meteor_jar (`str`, *optional*): path of meteor-1.5.jar (else $PIXTOK_METEOR_JAR).
Returns:
    `{"BLEU-1", …, "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "num_captions"}` (+ `"METEOR_note"`).
"""


class CocoCaption(evaluate.Metric):
    """All coco-caption metrics."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self, predictions: list[str], references: list[list[str]], meteor_jar: str | None = None
    ) -> dict[str, float | str | None]:
        return evaluate_captions(predictions, references, meteor_jar=meteor_jar)


__all__ = ["CocoCaption"]
