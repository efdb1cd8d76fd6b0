"""The Task interface: how a dataset row becomes model inputs, predictions and a score.

Each task is one small class. The training loop only ever calls the five methods below, so adding
a task means adding a file and a line in :data:`pixtok.tasks.TASK_CLASSES` — never editing the loop.

* :meth:`Task.items` — the training/evaluation units of a dataset (an image, or one sentence of an
  image's caption, or one referring expression …) as ``(row_index, sub_index)`` pairs.
* :meth:`Task.example` — one unit as an :class:`Example` (pixels, prompt, targets), augmented when
  training with the generator it is given (so the same generator gives the same example).
* :meth:`Task.collate` — a list of examples → the processor's ``BatchFeature`` with targets.
* :meth:`Task.predict` — generate and post-process a batch.
* :meth:`Task.score` — predictions vs. the examples' references → ``{metric: value}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Example:
    """One processor-ready unit. Geometry is in absolute pixels of ``image``.

    Attributes:
        image: the (possibly augmented) RGB image, ``PIL.Image``.
        text: the text prompt (referring expression), or ``None``.
        box: a prompt box ``(4,)`` xyxy, or ``None``.
        point: a prompt point ``(2,)`` xy, or ``None``.
        target: the processor target dict of this task (see docs/ARCHITECTURE.md), or ``None``.
        reference: ground truth kept for scoring (pixels of ``image``).
        image_id: the source row's id.
    """

    image: Any
    text: str | None = None
    box: Sequence[float] | None = None
    point: Sequence[float] | None = None
    target: dict[str, Any] | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    image_id: str = ""


GENERATE_OPTIONS = (
    "do_sample",
    "top_p",
    "temperature",
    "eos_logit_offset",
    "rank_against_noise",
    "coordinate_window",
)
"""The decoding keywords of ``model.generate`` a task's ``generate`` option may set."""

AUGMENTATION_OPTIONS = ("scale_range", "flip_prob", "color_jitter")
"""The :class:`~pixtok.data.augment.AugmentConfig` fields a task's ``augmentation`` option may set."""


def _augmentation_settings(task: str, settings: Any) -> dict[str, Any]:
    """A task's ``augmentation`` option, checked (keys and values) and with ``scale_range`` a tuple."""
    from ..data.augment import AugmentConfig

    if not isinstance(settings, dict) or set(settings) - set(AUGMENTATION_OPTIONS):
        raise ValueError(
            f"task {task!r}: option 'augmentation' must map some of {', '.join(AUGMENTATION_OPTIONS)} "
            f"to values, got {settings!r}"
        )
    settings = dict(settings)
    if "scale_range" in settings:
        scale = settings["scale_range"]
        if not isinstance(scale, (list, tuple)) or len(scale) != 2:
            raise ValueError(f"task {task!r}: augmentation.scale_range must be [low, high], got {scale!r}")
        settings["scale_range"] = (float(scale[0]), float(scale[1]))
    AugmentConfig(**settings)  # range checks: raises ValueError with the allowed ranges
    return settings


AUGMENT_ATTEMPTS = 10
"""Draws :meth:`Task.augment_image` makes with ``keep_boxes`` before it only resizes the image."""

_RESIZE_ONLY = {"scale_range": (1.0, 1.0), "flip_prob": 0.0, "color_jitter": 0.0}


class Task(ABC):
    """Base class of every pixtok task.

    Args:
        augment: apply :mod:`pixtok.data.augment`'s training augmentation (geometry moves with pixels).
        image_size: the augmentation's output size (large-scale jitter target), or ``None`` to keep sizes.
        **options: task options from the recipe file (kept in ``self.options``). Every task reads
            ``generate``: ``model.generate`` keywords its evaluation decodes with (one of
            :data:`GENERATE_OPTIONS`, e.g. ``{do_sample: false}``); the model's per-task defaults
            fill the rest. Every task that augments reads ``augmentation``: the fields of
            :data:`AUGMENTATION_OPTIONS` its training examples use instead of
            :class:`~pixtok.data.augment.AugmentConfig`'s defaults (e.g. ``{scale_range: [0.8, 1.0]}``:
            milder large-scale jitter and no crop, so a referring expression's anchor object stays
            in the picture). Both are checked here, before any data is read.
    """

    name: ClassVar[str]
    """The ``task=`` string the processor and the model understand."""

    main_metric: ClassVar[str]
    """The metric a recipe reports first (e.g. ``AP``, ``CIDEr-D``)."""

    synthetic_kind: ClassVar[str] = ""
    """Which annotation file of the synthetic benchmark this task reads (``pixtok.data.load``'s ``kind``)."""

    needs_class_names: ClassVar[bool] = False
    """Whether the model's ``id2label`` must come from this task's dataset (closed-set classes)."""

    model_family: ClassVar[str] = "pixtok"
    """Which model trains it: ``pixtok`` (the sequence model) or ``panoptic`` (Pix2Seq-D)."""

    def __init__(self, augment: bool = False, image_size: int | None = None, **options: Any) -> None:
        self.augment = augment
        self.image_size = image_size
        self.options = options
        generate = options.get("generate", {})
        if not isinstance(generate, dict) or set(generate) - set(GENERATE_OPTIONS):
            raise ValueError(
                f"task {self.name!r}: option 'generate' must map some of {', '.join(GENERATE_OPTIONS)} "
                f"to values, got {generate!r}"
            )
        self.augmentation = _augmentation_settings(self.name, options.get("augmentation", {}))

    def augment_image(
        self, image: Any, rng: np.random.Generator, *, keep_boxes: bool = False, **annotations: Any
    ) -> tuple[Any, dict[str, Any]]:
        """:func:`~pixtok.tasks.geometry.augment_example_image` with this task's canvas size and
        ``augmentation`` settings; ``annotations`` are its ``boxes`` / ``points`` / ``masks`` / ``words``.

        ``keep_boxes``: the unit's target is every box passed (a referred object, a prompt region),
        so a draw whose crop loses one is drawn again, up to :data:`AUGMENT_ATTEMPTS` times, and then
        the image is only resized to the canvas (no crop, flip or colour change). Without it a
        lost target would leave its old coordinates on a cropped image.
        """
        from .geometry import augment_example_image

        wanted = len(annotations["boxes"]) if annotations.get("boxes") is not None else 0
        for _ in range(AUGMENT_ATTEMPTS if keep_boxes else 1):
            out = augment_example_image(
                image, rng, self.image_size, settings=self.augmentation, **annotations
            )
            if not keep_boxes or len(out[1]["keep"]) == wanted:
                return out
        return augment_example_image(image, rng, self.image_size, settings=_RESIZE_ONLY, **annotations)

    def bind(self, model_config: Any) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Called once the model exists, for tasks whose examples depend on its config."""

    # --- data ------------------------------------------------------------------------------------
    def items(self, dataset: Any) -> list[tuple[int, int]]:
        """Units of ``dataset``: by default one per row."""
        return [(i, 0) for i in range(len(dataset))]

    @abstractmethod
    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        """Build one example; ``rng`` is ``None`` at evaluation (no augmentation, fixed choices)."""

    def collate(
        self,
        examples: Sequence[Example],
        processor: Any,
        with_targets: bool = True,
        rng: np.random.Generator | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> Any:
        """Examples → the processor's batch (inputs, and targets when ``with_targets``).

        ``rng`` drives the processor's object order and sequence augmentation; the loop passes the
        micro-batch's own generator so that a batch is a pure function of the run's seed.
        ``pad_to_multiple_of`` rounds the batch's sequence lengths up (``train.pad_to_multiple_of``).
        """
        kwargs: dict[str, Any] = {}
        if pad_to_multiple_of is not None:
            kwargs["pad_to_multiple_of"] = pad_to_multiple_of
        if any(e.text is not None for e in examples):
            kwargs["text"] = [e.text or "" for e in examples]
        if any(e.box is not None for e in examples):
            kwargs["boxes"] = [e.box for e in examples]
        if any(e.point is not None for e in examples):
            kwargs["points"] = [e.point for e in examples]
        if with_targets:
            kwargs["targets"] = [e.target for e in examples]
            if rng is not None:
                kwargs["rng"] = rng
        return processor(images=[e.image for e in examples], task=self.name, return_tensors="pt", **kwargs)

    # --- inference and scoring -------------------------------------------------------------------
    def predict(
        self,
        model: Any,
        processor: Any,
        examples: Sequence[Example],
        max_new_tokens: int = 64,
        **options: Any,
    ) -> list[dict]:
        """Generate for ``examples`` and post-process into this task's output format.

        Decoding options (``model.generate``'s keywords, :data:`GENERATE_OPTIONS`): ``options``, then
        the task's ``generate`` option, then the model's per-task defaults
        (``GenerationOptions.for_task``: nucleus sampling for detection, greedy for the text tasks)."""
        import torch

        options = {**self.options.get("generate", {}), **options}
        batch = self.collate(examples, processor, with_targets=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, **options)
        sizes = [(e.image.height, e.image.width) for e in examples]
        return self.post_process(processor, out, sizes)

    @abstractmethod
    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        """The processor's ``post_process_*`` of this task."""

    def forward_metrics(self, batch: Any, outputs: Any) -> dict[str, tuple[float, float]]:
        """Teacher-forced metrics of one validation batch as ``{name: (sum, count)}`` (default none)."""
        return {}

    def draw_kwargs(self, example: Example, prediction: dict) -> dict[str, Any]:
        """Extra arguments of :func:`pixtok.visualize.render` for one example (prompt, labels …)."""
        return {}

    def draw(self, examples: Sequence[Example], predictions: Sequence[dict], path: Any) -> bool:
        """Save one PNG of ``predictions`` drawn on ``examples``, side by side, at ``path``."""
        from PIL import Image

        from ..visualize import render, save_png

        if not examples:
            return False
        panels = [
            render(self.name, e.image, p, **self.draw_kwargs(e, p)) for e, p in zip(examples, predictions)
        ]
        height = max(p.height for p in panels)
        panels = [p.resize((max(1, round(p.width * height / p.height)), height)) for p in panels]
        sheet = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), "white")
        x = 0
        for panel in panels:
            sheet.paste(panel, (x, 0))
            x += panel.width + 8
        save_png(sheet, path)
        return True

    @abstractmethod
    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        """Metrics of ``predictions`` against ``examples[i].reference``."""

    def records(self, predictions: Sequence[dict], examples: Sequence[Example]) -> list[dict] | None:
        """One JSON-ready row per validation example — what was asked, what was expected, what was
        predicted, how it scored — for reading the misses one by one (the training loop writes them
        to ``val_<task>_records.jsonl``). ``None`` (the default): the task keeps none."""
        return None


__all__ = ["GENERATE_OPTIONS", "Example", "Task"]
