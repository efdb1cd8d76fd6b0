"""Tasks: how rows become examples, batches, predictions and scores. One file per task; this map
is the only place that lists them."""

from __future__ import annotations

from typing import Any

from .base import Example, Task
from .caption import CaptionTask
from .dense_caption import DenseCaptionTask
from .detection import DetectionTask
from .panoptic import PanopticProcessor, PanopticTask
from .referring import ReferringTask
from .region_caption import RegionCaptionTask

TASK_CLASSES: dict[str, type[Task]] = {
    "detection": DetectionTask,
    "caption": CaptionTask,
    "referring": ReferringTask,
    "region_caption": RegionCaptionTask,
    "dense_caption": DenseCaptionTask,
    "panoptic": PanopticTask,
}


def build_task(name: str, **options: Any) -> Task:
    """Instantiate the task called ``name`` (raises ``ValueError`` listing the known ones)."""
    try:
        cls = TASK_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_CLASSES)}") from None
    return cls(**options)


__all__ = ["TASK_CLASSES", "Example", "PanopticProcessor", "Task", "build_task"]
