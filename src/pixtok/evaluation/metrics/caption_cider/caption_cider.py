"""`evaluate` module: CIDEr-D with the COCO caption protocol (pixtok's implementation)."""

from __future__ import annotations

import datasets
import evaluate

from pixtok.evaluation.captions import cider_d

_DESCRIPTION = (
    "CIDEr-D as coco-caption computes it: document frequencies from the evaluated references, "
    "sigma 6, clipping, x10 (a perfect distinctive caption scores 10)."
)
_KWARGS = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image.
Returns:
    `{"CIDEr-D": float}` on coco-caption's x10 scale.
"""


class CaptionCider(evaluate.Metric):
    """CIDEr-D (coco-caption protocol)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Vedantam et al., CIDEr, CVPR 2015.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self, predictions: list[str], references: list[list[str]], sigma: float = 6.0
    ) -> dict[str, float]:
        return {"CIDEr-D": cider_d(predictions, references, sigma=sigma)}


__all__ = ["CaptionCider"]
