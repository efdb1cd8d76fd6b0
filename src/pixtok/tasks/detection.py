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
from .geometry import augment_example_image


class DetectionTask(Task):
    """``task="detection"``: image → ``[ymin xmin ymax xmax class]*``."""

    name: ClassVar[str] = "detection"
    main_metric: ClassVar[str] = "AP"
    synthetic_kind: ClassVar[str] = "coco"
    needs_class_names: ClassVar[bool] = True

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        objects = row["objects"]
        boxes = np.asarray(objects["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(objects["labels"], dtype=np.int64)
        crowd = np.asarray(objects.get("iscrowd", [0] * len(labels)), dtype=bool)
        image = row["image"]
        if rng is not None and self.augment:
            image, geometry = augment_example_image(image, rng, self.image_size, boxes=boxes)
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
        from ..evaluation.coco import evaluate_detection

        num_classes = 1 + max([int(max(e.reference["labels"], default=-1)) for e in examples] + [0])
        for p in predictions:
            if len(p["labels"]):
                num_classes = max(num_classes, int(max(p["labels"])) + 1)
        images, annotations = [], []
        for i, e in enumerate(examples, start=1):
            images.append({"id": i, "width": e.image.width, "height": e.image.height})
            for box, label, crowd in zip(e.reference["boxes"], e.reference["labels"], e.reference["iscrowd"]):
                x0, y0, x1, y1 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": int(label) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": int(crowd),
                    }
                )
        gt = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        ids = list(range(1, len(examples) + 1))
        return evaluate_detection(predictions, gt, ids, category_ids=list(range(1, num_classes + 1)))


__all__ = ["DetectionTask"]
