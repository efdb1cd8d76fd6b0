"""`evaluate` module: PixelLLM's trace L1 between predicted and ground-truth per-word points."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from pixtok.evaluation.traces import trace_l1

_DESCRIPTION = "Mean L1 of per-word points in image-normalized coordinates over words with a GT point."
_KWARGS = """
Args:
    predictions (`list[list[[x, y]]]`): per image, one point per ground-truth word.
    references (`list[list[[x, y]]]`): per image, GT points (NaN = the word has no point).
    image_sizes (`list[[h, w]]`, *optional*): pixel sizes; without them points are already in [0, 1].
Returns:
    `{"trace_l1", "trace_point_l1", "num_words", "num_missing"}`.
"""

_POINTS = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))


class TraceL1(evaluate.Metric):
    """Trace L1 (PixelLLM)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Xu et al., Pixel Aligned Language Models, CVPR 2024.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": _POINTS, "references": _POINTS}),
        )

    def _compute(
        self,
        predictions: list[list[list[float]]],
        references: list[list[list[float]]],
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, float]:
        preds = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in predictions]
        refs = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in references]
        return trace_l1(preds, refs, image_sizes=image_sizes)


__all__ = ["TraceL1"]
