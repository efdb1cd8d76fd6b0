"""Panoptic segmentation by bit diffusion (Pix2Seq-D) on COCO panoptic rows.

The panoptic sibling (:class:`~pixtok.model.modeling_pixtok_panoptic.PixtokForPanopticSegmentation`)
reads pixels and a packed ``(class, instance)`` map, not tokens, so its batches come from
:class:`PanopticProcessor` — the image processor of the towers plus the bit codec's packing — while
everything else (sampling, checkpoints, resume, evaluation) is the shared loop's. Instance ids are
shuffled by the model itself in training (ids are grouping labels, not identities). Geometric
augmentation is off for this task: the loop feeds whole images, the model learns at mask resolution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import BatchFeature

from .base import Example, Task


class PanopticProcessor:
    """Pixels for both towers + packed panoptic targets, and post-processing, for a panoptic config.

    Args:
        config: a :class:`~pixtok.model.configuration_pixtok_panoptic.PixtokPanopticConfig`.
    """

    def __init__(self, config: Any) -> None:
        from ..model.image_processing_pixtok import PixtokImageProcessor

        self.config = config
        self.image_processor = PixtokImageProcessor.from_pixtok_config(config)

    def __call__(
        self,
        images: Any,
        task: str = "panoptic",
        targets: Sequence[dict[str, Any]] | None = None,
        return_tensors: str = "pt",
        rng: np.random.Generator | None = None,
        **unused: Any,
    ) -> BatchFeature:
        if task != "panoptic":
            raise ValueError(f"PanopticProcessor handles task='panoptic' only, got {task!r}")
        pixels = self.image_processor(images, return_tensors="pt")
        data = {
            "pixel_values": pixels["pixel_values"],
            "eva_pixel_values": pixels["eva_pixel_values"],
            "image_sizes": pixels["image_sizes"],
        }
        if targets is not None:
            data["panoptic_ids"] = torch.stack([torch.as_tensor(t["panoptic_ids"]) for t in targets])
        return BatchFeature(data=data)

    def post_process_panoptic_segmentation(self, outputs: Any, target_sizes: Any = None) -> list[dict]:
        from ..model.panoptic_postprocess import post_process_panoptic_segmentation

        return post_process_panoptic_segmentation(
            outputs,
            target_sizes=target_sizes,
            min_area=int(getattr(self.config, "min_segment_area", 0)),
            thing_label_ids=self.config.thing_label_ids,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        self.image_processor.save_pretrained(save_directory)


class PanopticTask(Task):
    """``task="panoptic"``: image → ``{"segmentation": (H, W) ids, "segments_info"}``, scored by PQ."""

    name: ClassVar[str] = "panoptic"
    main_metric: ClassVar[str] = "PQ"
    synthetic_kind: ClassVar[str] = "coco_panoptic"
    needs_class_names: ClassVar[bool] = True
    model_family: ClassVar[str] = "panoptic"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.codec = None
        self.mask_size: int | None = None
        self.categories: list[dict] = []

    def bind(self, model_config: Any) -> None:
        """Take the bit codec and mask size of the model this task trains."""
        from ..model.bit_diffusion import PanopticBitCodec

        self.codec = PanopticBitCodec(
            model_config.class_bits, model_config.instance_bits, model_config.bit_scale
        )
        self.mask_size = int(model_config.mask_size)

    def items(self, dataset: Any) -> list[tuple[int, int]]:
        from ..data import categories

        self.categories = categories(dataset)
        return super().items(dataset)

    def example(self, row: dict[str, Any], sub_index: int, rng: np.random.Generator | None) -> Example:
        from ..model.panoptic_postprocess import panoptic_maps_from_row, rgb_to_panoptic_id

        if self.codec is None:
            raise RuntimeError("PanopticTask.bind(model_config) must run before examples are built")
        class_map, instance_map, _ = panoptic_maps_from_row(row, self.codec.max_instance_id, self.mask_size)
        reference = {
            "segmentation": rgb_to_panoptic_id(row["panoptic"]),
            "segments_info": [dict(s) for s in row["segments_info"]],
        }
        return Example(
            image=row["image"],
            target={"panoptic_ids": self.codec.pack(class_map, instance_map)},
            reference=reference,
            image_id=str(row.get("image_id", "")),
        )

    def post_process(self, processor: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict]:
        return processor.post_process_panoptic_segmentation(outputs, target_sizes=target_sizes)

    def score(self, predictions: Sequence[dict], examples: Sequence[Example]) -> dict[str, float]:
        from ..evaluation.panoptic_quality import evaluate_panoptic

        label_to_category = [int(c["id"]) for c in self.categories]
        metrics = evaluate_panoptic(
            predictions, [e.reference for e in examples], self.categories, label_to_category=label_to_category
        )
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


__all__ = ["PanopticProcessor", "PanopticTask"]
