"""Captioning with one trace point per word (PixelLLM on Localized Narratives).

Each sentence of a narrative is a separate target, as PixelLLM trains: the units of a dataset are
``(row, sentence)`` pairs. Words keep their trace point (NaN = none: masked, not dropped).

Task option ``units``: ``"sentence"`` (default, as above) or ``"narrative"`` — one unit per image
whose target is the whole narrative. Use ``"narrative"`` where nothing in the prompt says which
sentence is wanted and the metric compares against one reference per unit (the synthetic
benchmark's two sentences per image: greedy decoding can only ever produce one of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Example, Task


def score_captions(predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
    """coco-caption metrics of generated ``text`` against each example's reference ``text``
    (METEOR left out: it needs Java and the jar)."""
    from ..evaluation.captions import evaluate_captions

    metrics = evaluate_captions(
        [p["text"] for p in predictions], [[e.reference["text"]] for e in examples], use_meteor=False
    )
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class CaptionTask(Task):
    """``task="caption"``: image → caption, every word with an (x, y) point."""

    name: ClassVar[str] = "caption"
    main_metric: ClassVar[str] = "CIDEr-D"
    synthetic_kind: ClassVar[str] = "localized_narratives"

    UNITS: ClassVar[tuple[str, ...]] = ("sentence", "narrative")
    WHOLE: ClassVar[int] = -1  # sub-index of a whole-narrative unit

    def items(self, dataset: Any) -> list[tuple[int, int]]:
        units = self.options.get("units", "sentence")
        if units not in self.UNITS:
            raise ValueError(f"caption task: units must be one of {self.UNITS}, got {units!r}")
        if units == "narrative":
            return [(row, self.WHOLE) for row, ids in enumerate(dataset["sentence_ids"]) if len(ids)]
        items = []
        for row, ids in enumerate(dataset["sentence_ids"]):
            items += [(row, int(s)) for s in sorted(set(ids))]
        return items

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        ids = np.asarray(row["sentence_ids"])
        keep = np.arange(len(ids)) if sub_index == self.WHOLE else np.flatnonzero(ids == sub_index)
        words = [row["words"][i] for i in keep]
        points = np.asarray(row["points"], dtype=np.float32).reshape(-1, 2)[keep]
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = self.augment_image(image, rng, points=points, words=words)
            points, words = geometry["points"], geometry["words"]
        return Example(
            image=image,
            target={"words": words, "points": points},
            reference={"words": words, "points": points, "text": " ".join(words)},
            image_id=str(row.get("image_id", "")),
        )

    def forward_metrics(self, batch: Any, outputs: Any) -> dict[str, tuple[float, float]]:
        """``trace_l1``: mean |predicted - true| point coordinate over words with a point, teacher-forced
        on the reference caption, in model space (coordinates / the image's long side)."""
        points, mask = getattr(outputs, "points", None), batch.get("point_mask")
        if points is None or mask is None or not bool(mask.any()):
            return {}
        diff = (points - batch["point_targets"]).abs()[mask.bool()]
        return {"trace_l1": (float(diff.sum()), float(diff.numel()))}

    def draw_kwargs(self, example: Example, prediction: dict) -> dict[str, Any]:
        return {"title": "reference: " + example.reference["text"]}

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_caption(outputs, target_sizes=target_sizes)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        return score_captions(predictions, examples)


__all__ = ["CaptionTask", "score_captions"]
