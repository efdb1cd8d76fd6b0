"""Dense captioning (Visual Genome): detect regions with the proposal head, caption each one.

Training trains both parts on one example: the proposal head on all of the image's regions and
the captioner on one region (the prompt box) drawn per visit. Scored by the VG-protocol mAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Example, Task


class DenseCaptionTask(Task):
    """``task="dense_caption"``: image → ``{"boxes", "scores", "captions"}``."""

    name: ClassVar[str] = "dense_caption"
    main_metric: ClassVar[str] = "mAP"
    synthetic_kind: ClassVar[str] = "visual_genome"

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        regions = row["regions"]
        boxes = np.asarray(regions["boxes"], dtype=np.float32).reshape(-1, 4)
        captions = list(regions["captions"])
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = self.augment_image(image, rng, boxes=boxes, words=captions)
            boxes = geometry["boxes"]
            captions = [geometry["words"][i] for i in geometry["keep"]]
        pick = int(rng.integers(len(captions))) if (rng is not None and captions) else 0
        target = {"boxes": boxes, "captions": captions}
        return Example(
            image=image,
            box=boxes[pick] if len(captions) else None,
            target={**target, "text": captions[pick] if captions else ""},
            reference=target,
            image_id=str(row.get("image_id", "")),
        )

    def collate(
        self,
        examples: Sequence[Example],
        processor: Any,
        with_targets: bool = True,
        rng: np.random.Generator | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> Any:
        if not with_targets:  # inference: no prompt box, the proposal head finds the regions
            return processor(images=[e.image for e in examples], task=self.name, return_tensors="pt")
        return super().collate(examples, processor, with_targets, rng, pad_to_multiple_of)

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_dense_caption(outputs, target_sizes=target_sizes)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        from ..evaluation.dense_captions import evaluate_dense_captions

        metrics = evaluate_dense_captions(predictions, [e.reference for e in examples], use_meteor=False)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


__all__ = ["DenseCaptionTask"]
