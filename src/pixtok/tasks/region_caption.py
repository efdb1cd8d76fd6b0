"""Location-conditioned captioning: a box (or point) prompt → the caption of that region.

Units are ``(row, region)`` pairs of Visual Genome–style region descriptions. The prompt is the
region's box; with the ``point_prompt_ratio`` option a fraction of training examples use the box
centre as a point prompt instead (PixelLLM trains both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Example, Task
from .caption import score_captions


class RegionCaptionTask(Task):
    """``task="region_caption"``: image + box/point prompt → caption."""

    name: ClassVar[str] = "region_caption"
    main_metric: ClassVar[str] = "CIDEr-D"
    synthetic_kind: ClassVar[str] = "visual_genome"

    def items(self, dataset: Any) -> list[tuple[int, int]]:
        return [
            (r, k) for r, regions in enumerate(dataset["regions"]) for k in range(len(regions["captions"]))
        ]

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        regions = row["regions"]
        box = np.asarray(regions["boxes"][sub_index], dtype=np.float32).reshape(1, 4)
        caption = regions["captions"][sub_index]
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = self.augment_image(image, rng, keep_boxes=True, boxes=box, words=[caption])
            box, caption = geometry["boxes"], geometry["words"][0]
        point = None
        ratio = float(self.options.get("point_prompt_ratio", 0.0))
        if rng is not None and ratio > 0 and rng.random() < ratio:
            point = [(box[0, 0] + box[0, 2]) / 2, (box[0, 1] + box[0, 3]) / 2]
        return Example(
            image=image,
            box=None if point is not None else box[0],
            point=point,
            target={"text": caption},
            reference={"text": caption, "box": box[0]},
            image_id=str(row.get("image_id", "")),
        )

    def draw_kwargs(self, example: Example, prediction: dict) -> dict[str, Any]:
        return {"prompt_box": example.reference["box"], "title": "region caption"}

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_caption(outputs, target_sizes=target_sizes)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        return score_captions(predictions, examples)


__all__ = ["RegionCaptionTask"]
