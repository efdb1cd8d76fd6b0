"""Object detection as language (Pix2Seq): boxes and classes as tokens, COCO AP.

Crowd boxes (``iscrowd``) stay out of the targets but in the references, where COCOeval ignores
matches to them as the COCO protocol does. Sequence augmentation (noise objects) is the
processor's, switched by the ``sequence_augmentation`` option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Example, Task


class DetectionTask(Task):
    """``task="detection"``: image → ``[ymin xmin ymax xmax class]*``."""

    name: ClassVar[str] = "detection"
    main_metric: ClassVar[str] = "AP"
    synthetic_kind: ClassVar[str] = "coco"
    needs_class_names: ClassVar[bool] = True
    draw_score_threshold: ClassVar[float] = 0.3
    """Validation pictures hide detections scored below this (Pix2Seq's noise objects score ~0.02)."""

    id2label: dict[int, str] | None = None

    def bind(self, model_config: Any) -> None:
        """Keep the model's class names for the validation pictures."""
        names = getattr(model_config, "id2label", None)
        self.id2label = {int(k): str(v) for k, v in names.items()} if names else None

    def draw_kwargs(self, example: Example, prediction: dict) -> dict[str, Any]:
        return {"id2label": self.id2label, "score_threshold": self.draw_score_threshold}

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        objects = row["objects"]
        boxes = np.asarray(objects["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(objects["labels"], dtype=np.int64)
        crowd = np.asarray(objects.get("iscrowd", [0] * len(labels)), dtype=bool)
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = self.augment_image(image, rng, boxes=boxes)
            boxes, keep = geometry["boxes"], geometry["keep"]
            labels, crowd = labels[keep], crowd[keep]
        target = {"boxes": boxes[~crowd], "labels": labels[~crowd]}
        if rng is not None and self.options.get("sequence_augmentation", True):
            target["augment"] = True
        return Example(
            image=image,
            target=target,
            reference={"boxes": boxes, "labels": labels, "iscrowd": crowd},
            image_id=str(row.get("image_id", "")),
        )

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_object_detection(outputs, target_sizes=target_sizes, threshold=0.0)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        from ..evaluation.coco import evaluate_detection_on_boxes

        return evaluate_detection_on_boxes(predictions, [e.reference for e in examples])


__all__ = ["DetectionTask"]
