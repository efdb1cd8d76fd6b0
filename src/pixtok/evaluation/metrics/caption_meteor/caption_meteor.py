"""`evaluate` module: METEOR 1.5 through Java, as coco-caption runs it.

Needs ``java`` and ``meteor-1.5.jar`` (``meteor_jar=`` at compute time or ``$PIXTOK_METEOR_JAR``);
without them the result is ``{"METEOR": None, "METEOR_note": <reason>}``.
"""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.captions import meteor

_DESCRIPTION = "METEOR 1.5 (java -jar meteor-1.5.jar - - -stdio -l en -norm) on PTB-tokenized captions."
_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
    meteor_jar (`str`, *optional*): path of meteor-1.5.jar (else $PIXTOK_METEOR_JAR).
Returns:
    `{"METEOR": float | None}` (+ `"METEOR_note"` when it could not run).
"""


class CaptionMeteor(evaluate.Metric):
    """METEOR 1.5 (coco-caption protocol), or None with the reason."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Denkowski and Lavie, Meteor Universal, WMT 2014.",
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
        value, reason = meteor(predictions, references, meteor_jar=meteor_jar)
        return {"METEOR": value} if value is not None else {"METEOR": None, "METEOR_note": reason}


__all__ = ["CaptionMeteor"]
