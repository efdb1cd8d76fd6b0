"""Reading a synthetic benchmark folder (written by :mod:`pixtok.data.synthetic`) back.

``load("synthetic", root=DIR, split="train", kind="coco")`` reads one split in one of the formats the
benchmark is written in, through the same loader real data goes through. This module holds only the
reading side so that ``pixtok.data.load`` does not import the scene renderer.
"""

from __future__ import annotations

import os

import datasets

from .coco import load_coco
from .coco_panoptic import load_coco_panoptic
from .localized_narratives import load_localized_narratives
from .refcoco import load_refcoco
from .visual_genome import load_visual_genome

KINDS: tuple[str, ...] = ("coco", "coco_panoptic", "localized_narratives", "refcoco", "visual_genome")
"""What ``load_synthetic(kind=…)`` can read back."""

SPLITS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
"""Split names and the fraction of image indices each takes, in index order."""


def load_synthetic(
    root: str | os.PathLike,
    split: str = "train",
    kind: str = "coco",
    *,
    check_images: str = "decode",
    verify_segments: bool = False,
) -> datasets.Dataset:
    """Read one split of a ``write_benchmark`` folder through the real loader of ``kind``.

    Args:
        root: the folder ``pixtok synth --out`` wrote.
        split: ``train``, ``val`` or ``test``.
        kind: one of :data:`KINDS` — which format to read (coco = detection rows, …).
        check_images: :data:`pixtok.data.images.CHECK_MODES`.
        verify_segments: ``kind="coco_panoptic"`` only: cross-check PNG ids with ``segments_info``.
    """
    root = os.fspath(root)
    if not os.path.isfile(os.path.join(root, "benchmark.json")):
        raise FileNotFoundError(
            f"{root} is not a synthetic benchmark folder (no benchmark.json); write one with `pixtok synth`"
        )
    names = [name for name, _ in SPLITS]
    if split not in names:
        raise ValueError(f"split must be one of {', '.join(names)}, got {split!r}")
    ann = os.path.join(root, "annotations")
    images = os.path.join(root, "images")
    if kind == "coco":
        return load_coco(os.path.join(ann, f"instances_{split}.json"), images, check_images=check_images)
    if kind == "coco_panoptic":
        return load_coco_panoptic(
            os.path.join(ann, f"panoptic_{split}.json"),
            os.path.join(root, "panoptic", split),
            images,
            check_images=check_images,
            verify_segments=verify_segments,
        )
    if kind == "localized_narratives":
        return load_localized_narratives(
            os.path.join(ann, f"localized_narratives_{split}.jsonl"),
            os.path.join(images, split),
            check_images=check_images,
        )
    if kind == "refcoco":
        return load_refcoco(
            os.path.join(root, "refcoco", "refs(synthetic).p"),
            os.path.join(root, "refcoco", "instances.json"),
            images,
            split=split,
            check_images=check_images,
        )
    if kind == "visual_genome":
        vg = os.path.join(root, "visual_genome")
        return load_visual_genome(
            os.path.join(vg, f"region_descriptions_{split}.json"),
            os.path.join(vg, f"image_data_{split}.json"),
            images,
            check_images=check_images,
        )
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


__all__ = ["KINDS", "SPLITS", "load_synthetic"]
