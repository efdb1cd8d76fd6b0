"""Panoptic maps <-> segments: training targets from COCO panoptic, and post-processing.

Both directions of the Pix2Seq-D panoptic "token grid" live here, side by side:

- **targets**: a COCO panoptic PNG (RGB-encoded segment ids, ``id = R + 256 G + 256**2 B``) and its
  ``segments_info`` become a ``class_map`` and an ``instance_map`` (``(Hm, Wm)`` long) in the
  padded-square model frame at mask resolution (:func:`panoptic_maps_from_coco`). Class value
  ``0`` is void, ``label_id + 1`` otherwise; things get instance ids ``1 .. k``, stuff and void
  ``0``. Every problem in the input is counted and described in a :class:`PanopticTargetReport`.
- **post-processing**: generated (class, instance) maps become ``{"segmentation", "segments_info"}``
  per image at the original image size (:func:`post_process_panoptic_segmentation`).

Geometry: the processor pads each image bottom/right to a square of side ``max(h, w)``; the mask
covers that square. Targets are padded, then resized; outputs are resized to ``max(h, w)`` then
cropped to ``(h, w)``. Resizing is nearest-neighbour at pixel centres (``"nearest-exact"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bit_diffusion import PanopticBitCodec

VOID = 0
"""Class value (and segment id) of unlabelled pixels."""


# --- geometry ------------------------------------------------------------------------------------


def resize_label_map(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer maps, sampling at pixel centres.

    Args:
        labels: (..., H, W) integer tensor.
        size: output (height, width).

    Returns:
        (..., height, width) tensor of the same dtype.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    lead = labels.shape[:-2]
    flat = labels.reshape(-1, 1, *labels.shape[-2:]).double()  # float64 holds ids < 2**53 exactly
    out = F.interpolate(flat, size=size, mode="nearest-exact")
    return out.reshape(*lead, *size).to(labels.dtype)


def pad_to_square(labels: torch.Tensor, fill: int = VOID) -> torch.Tensor:
    """Pad (..., H, W) bottom/right with ``fill`` to (..., S, S), ``S = max(H, W)`` (the processor's frame)."""
    h, w = labels.shape[-2:]
    side = max(h, w)
    return F.pad(labels, (0, side - w, 0, side - h), value=fill)


# --- targets from COCO panoptic ------------------------------------------------------------------


def rgb_to_panoptic_id(png: np.ndarray | Any) -> np.ndarray:
    """COCO panoptic PNG -> segment ids.

    Args:
        png: (H, W, 3) uint8 array or PIL image, RGB.

    Returns:
        (H, W) int64, ``R + 256 * G + 256**2 * B``.
    """
    arr = np.asarray(png)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"a COCO panoptic PNG must be RGB (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3].astype(np.int64)
    return arr[..., 0] + 256 * arr[..., 1] + 256 * 256 * arr[..., 2]


@dataclass
class PanopticTargetReport:
    """What :func:`panoptic_maps_from_coco` had to repair in one or more images (all counts).

    Attributes:
        images: images converted.
        segments: segments written to the maps.
        unknown_ids: distinct PNG ids absent from ``segments_info`` (their pixels become void).
        unknown_categories: segments whose ``category_id`` has no label (made void).
        empty_segments: ``segments_info`` entries with no pixel in the PNG (skipped).
        duplicate_segments: ids listed more than once in ``segments_info`` — overlapping
            segments; the first entry is kept.
        overlapping_pixels: pixels claimed by more than one mask (mask input; made void).
        dropped_instances: thing segments beyond the ``max_instance_id`` the id bits hold (the
            smallest ones are made void).
        crowd_segments: ``iscrowd`` segments (made void: PQ ignores them too).
        vanished_segments: segments with no pixel left after resizing to mask resolution.
        messages: one readable line per problem.
    """

    images: int = 0
    segments: int = 0
    unknown_ids: int = 0
    unknown_categories: int = 0
    empty_segments: int = 0
    duplicate_segments: int = 0
    overlapping_pixels: int = 0
    dropped_instances: int = 0
    crowd_segments: int = 0
    vanished_segments: int = 0
    messages: list[str] = field(default_factory=list)

    COUNTS = (
        "unknown_ids",
        "unknown_categories",
        "empty_segments",
        "duplicate_segments",
        "overlapping_pixels",
        "dropped_instances",
        "crowd_segments",
        "vanished_segments",
    )

    def add(self, other: PanopticTargetReport) -> PanopticTargetReport:
        """Accumulate ``other`` into this report (in place) and return it."""
        self.images += other.images
        self.segments += other.segments
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.messages.extend(other.messages)
        return self

    @property
    def num_problems(self) -> int:
        """Sum of the problem counts (crowd and vanished segments are expected, not counted)."""
        return sum(getattr(self, n) for n in self.COUNTS if n not in ("crowd_segments", "vanished_segments"))

    def summary(self) -> str:
        """One line: images, segments, and every non-zero count."""
        parts = [f"{n}={getattr(self, n)}" for n in self.COUNTS if getattr(self, n)]
        return f"panoptic targets: {self.images} images, {self.segments} segments" + (
            "; " + ", ".join(parts) if parts else "; no problems"
        )


def panoptic_maps_from_segments(
    segment_ids: torch.Tensor | np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    thing_label_ids: Iterable[int],
    max_instance_id: int,
    mask_size: int | None = None,
    image_key: str = "",
) -> tuple[torch.Tensor, torch.Tensor, PanopticTargetReport]:
    """Segment-id map + segment list -> (class_map, instance_map) in the model frame.

    Args:
        segment_ids: (H, W) integer segment id of each pixel (0 or any unlisted id = void).
        segments: one mapping per segment: ``id`` (int), ``label_id`` (int, contiguous label or
            ``None`` for an unknown category), optional ``iscrowd`` (int).
        thing_label_ids: labels whose segments are instances; the others are stuff (instance 0).
        max_instance_id: instance ids available (``2**instance_bits - 1``).
        mask_size: output side: the map is padded bottom/right to a square (the processor's
            frame), then resized to ``(mask_size, mask_size)``; ``None`` keeps the padded square.
        image_key: name of the image in messages.

    Returns:
        ``class_map`` (Hm, Wm) long (0 void, label + 1), ``instance_map`` (Hm, Wm) long,
        ``Hm = Wm = mask_size or max(H, W)``,
        and the report of what was repaired.
    """
    ids = torch.as_tensor(np.asarray(segment_ids), dtype=torch.long)
    if ids.dim() != 2:
        raise ValueError(f"segment id map must be (H, W), got shape {tuple(ids.shape)}")
    things = {int(t) for t in thing_label_ids}
    report = PanopticTargetReport(images=1)
    where = f"image {image_key!r}: " if image_key else ""

    present, areas = torch.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), areas.tolist()))
    listed: dict[int, Mapping[str, Any]] = {}
    for seg in segments:
        sid = int(seg["id"])
        if sid in listed:
            report.duplicate_segments += 1
            report.messages.append(
                f"{where}segment id {sid} listed twice in segments_info (overlap); kept the first"
            )
            continue
        listed[sid] = seg
    unknown = [i for i in area_of if i != VOID and i not in listed]
    if unknown:
        report.unknown_ids += len(unknown)
        pixels = sum(area_of[i] for i in unknown)
        report.messages.append(
            f"{where}{len(unknown)} PNG ids not in segments_info ({pixels} px, e.g. {unknown[:3]}); made void"
        )

    class_map = torch.zeros_like(ids)
    instance_map = torch.zeros_like(ids)
    thing_segments: list[tuple[int, int]] = []  # (area, id)
    for sid, seg in listed.items():
        area = area_of.get(sid, 0)
        if area == 0:
            report.empty_segments += 1
            report.messages.append(f"{where}segment {sid} has no pixels in the PNG; skipped")
            continue
        label = seg.get("label_id")
        if label is None:
            report.unknown_categories += 1
            report.messages.append(f"{where}segment {sid} has an unknown category; made void")
            continue
        if int(seg.get("iscrowd", 0)):
            report.crowd_segments += 1
            continue
        mask = ids == sid
        class_map[mask] = int(label) + 1
        report.segments += 1
        if int(label) in things:
            thing_segments.append((area, sid))
    thing_segments.sort(key=lambda a: (-a[0], a[1]))  # largest first
    for rank, (_, sid) in enumerate(thing_segments):
        mask = ids == sid
        if rank < max_instance_id:
            instance_map[mask] = rank + 1
        else:
            class_map[mask] = VOID
            report.segments -= 1
    extra = len(thing_segments) - max_instance_id
    if extra > 0:
        report.dropped_instances += extra
        report.messages.append(
            f"{where}{len(thing_segments)} instances but the id bits hold {max_instance_id}; "
            f"the {extra} smallest made void"
        )

    class_map, instance_map = pad_to_square(class_map), pad_to_square(instance_map)
    if mask_size is not None:
        before = _segment_keys(class_map, instance_map)
        class_map = resize_label_map(class_map, (mask_size, mask_size))
        instance_map = resize_label_map(instance_map, (mask_size, mask_size))
        lost = sorted(before - _segment_keys(class_map, instance_map))
        if lost:
            report.vanished_segments += len(lost)
            report.messages.append(
                f"{where}{len(lost)} segments too small to survive resizing to {mask_size} px (class, instance): {lost[:3]}"
            )
    return class_map, instance_map, report


def _segment_keys(class_map: torch.Tensor, instance_map: torch.Tensor) -> set[tuple[int, int]]:
    """Distinct non-void (class, instance) pairs of one image."""
    pairs = torch.stack([class_map.flatten(), instance_map.flatten()], 1)
    pairs = pairs[pairs[:, 0] != VOID]
    return {tuple(p) for p in torch.unique(pairs, dim=0).tolist()}


def panoptic_maps_from_coco(
    panoptic: np.ndarray | Any,
    segments_info: Sequence[Mapping[str, Any]],
    category_to_label: Mapping[int, int] | None,
    thing_label_ids: Iterable[int],
    max_instance_id: int,
    mask_size: int | None = None,
    image_key: str = "",
) -> tuple[torch.Tensor, torch.Tensor, PanopticTargetReport]:
    """A COCO panoptic annotation -> (class_map, instance_map) at mask resolution.

    Args:
        panoptic: the annotation PNG, (H, W, 3) uint8 array or PIL image.
        segments_info: COCO ``segments_info`` dicts (``id``, ``category_id``, optional ``iscrowd``).
        category_to_label: COCO category id -> contiguous label id; ``None`` when the
            ``category_id`` values already are label ids. Unmapped categories are counted, void.
        thing_label_ids: labels that are things.
        max_instance_id: ``2**instance_bits - 1``.
        mask_size: output side (padded square, resized); ``None`` keeps the padded square.
        image_key: image name for messages.

    Returns:
        ``class_map`` (Hm, Wm) long, ``instance_map`` (Hm, Wm) long, :class:`PanopticTargetReport`.
    """
    segments = []
    for seg in segments_info:
        cat = int(seg["category_id"])
        label = cat if category_to_label is None else category_to_label.get(cat)
        segments.append({"id": int(seg["id"]), "label_id": label, "iscrowd": int(seg.get("iscrowd", 0))})
    return panoptic_maps_from_segments(
        rgb_to_panoptic_id(panoptic), segments, thing_label_ids, max_instance_id, mask_size, image_key
    )


def panoptic_maps_from_row(
    row: Mapping[str, Any],
    max_instance_id: int,
    mask_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, PanopticTargetReport]:
    """A ``pixtok.data.load("coco_panoptic", ...)`` row -> (class_map, instance_map) at mask resolution.

    The loader's ``segments_info`` entries carry ``label`` (contiguous label id), ``isthing`` and
    ``iscrowd``; things are taken from ``isthing``.

    Args:
        row: a dataset row with ``panoptic`` (PNG image), ``segments_info`` and ``image_id``.
        max_instance_id: ``2**instance_bits - 1``.
        mask_size: output side (padded square, resized); ``None`` keeps the padded square.

    Returns:
        As :func:`panoptic_maps_from_segments`.
    """
    for key in ("panoptic", "segments_info"):
        if key not in row:
            raise ValueError(f"a coco_panoptic row needs {key!r}; got keys {sorted(row)}")
    segments = [
        {"id": int(s["id"]), "label_id": s.get("label"), "iscrowd": int(s.get("iscrowd", 0))}
        for s in row["segments_info"]
    ]
    things = {
        int(s["label"]) for s in row["segments_info"] if s.get("isthing") and s.get("label") is not None
    }
    return panoptic_maps_from_segments(
        rgb_to_panoptic_id(row["panoptic"]),
        segments,
        things,
        max_instance_id,
        mask_size,
        str(row.get("image_id", "")),
    )


def panoptic_target_from_row(
    row: Mapping[str, Any], config: Any
) -> tuple[torch.Tensor, PanopticTargetReport]:
    """A coco_panoptic row -> the ``panoptic_ids`` training target of one image (what a recipe collates).

    Args:
        row: a ``pixtok.data.load("coco_panoptic", ...)`` row (see :func:`panoptic_maps_from_row`).
        config: a :class:`~.configuration_pixtok_panoptic.PixtokPanopticConfig` (``class_bits``,
            ``instance_bits``, ``bit_scale``, ``mask_size``, ``id2label``).

    Returns:
        ``panoptic_ids`` (mask_size, mask_size) long, packed ``class_value * 2**instance_bits +
        instance_id`` in the padded-square frame, and the report of repairs.

    Raises:
        ValueError: a segment's label is outside ``config.id2label``.
    """
    codec = PanopticBitCodec(config.class_bits, config.instance_bits, config.bit_scale)
    cls, ins, report = panoptic_maps_from_row(row, codec.max_instance_id, config.mask_size)
    if cls.numel() and int(cls.max()) > len(config.id2label):
        raise ValueError(
            f"image {row.get('image_id', '')!r}: label {int(cls.max()) - 1} is outside the config's "
            f"{len(config.id2label)} labels (id2label must match the dataset's categories)"
        )
    return codec.pack(cls, ins), report


def panoptic_maps_from_masks(
    masks: torch.Tensor | np.ndarray,
    labels: Sequence[int],
    thing_label_ids: Iterable[int],
    max_instance_id: int,
    mask_size: int | None = None,
    image_key: str = "",
) -> tuple[torch.Tensor, torch.Tensor, PanopticTargetReport]:
    """Binary masks, one per segment -> (class_map, instance_map); overlaps are counted and voided.

    Args:
        masks: (N, H, W) bool, one mask per segment.
        labels: (N,) label ids.
        thing_label_ids, max_instance_id, mask_size, image_key: as :func:`panoptic_maps_from_segments`.

    Returns:
        As :func:`panoptic_maps_from_segments`.
    """
    m = torch.as_tensor(np.asarray(masks)).bool()
    if m.dim() != 3 or m.shape[0] != len(labels):
        raise ValueError(
            f"masks must be (N, H, W) with N = len(labels) = {len(labels)}, got {tuple(m.shape)}"
        )
    claims = m.sum(0)
    overlap = claims > 1
    ids = torch.zeros(m.shape[1:], dtype=torch.long)
    for i in range(m.shape[0]):
        ids[m[i]] = i + 1
    ids[overlap] = VOID
    segments = [{"id": i + 1, "label_id": int(lab)} for i, lab in enumerate(labels)]
    class_map, instance_map, report = panoptic_maps_from_segments(
        ids, segments, thing_label_ids, max_instance_id, mask_size, image_key
    )
    n_overlap = int(overlap.sum())
    if n_overlap:
        report.overlapping_pixels += n_overlap
        report.messages.append(f"image {image_key!r}: {n_overlap} pixels claimed by several masks; made void")
    return class_map, instance_map, report


# --- post-processing -----------------------------------------------------------------------------


def _field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def post_process_panoptic_segmentation(
    outputs: Any,
    target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
    min_area: int = 0,
    label_ids_to_fuse: Iterable[int] | None = None,
    *,
    thing_label_ids: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Generated (class, instance) maps -> panoptic segments per image.

    Args:
        outputs: :class:`~.modeling_pixtok_panoptic.PixtokPanopticGenerateOutput` (or a mapping with
            the same names): ``class_ids`` (B, Hm, Wm) long (0 void, label + 1), ``instance_ids``
            (B, Hm, Wm) long; optional ``pixel_scores`` (B, Hm, Wm) float in [0, 1] (segment score =
            their mean), ``image_sizes`` (B, 2) (default ``target_sizes``), ``thing_label_ids``.
            A ``(class_ids, instance_ids)`` tuple also works.
        target_sizes: (h, w) per image, original pixels. The mask covers the padded square of side
            ``max(h, w)``: it is resized to that square (nearest) and cropped to ``(h, w)``.
            ``None``: ``outputs.image_sizes`` if present, else the mask as is.
        min_area: segments with fewer pixels (at the output size) are dropped (become 0).
        label_ids_to_fuse: labels whose instances are merged into one segment per image (stuff).
            ``None``: every label not in ``thing_label_ids`` when that is known, else none (pixels
            with instance id 0 form one segment per label anyway).
        thing_label_ids: labels that are things; defaults to ``outputs.thing_label_ids``. When
            known, each segment also gets ``"isthing"``.

    Returns:
        One dict per image: ``"segmentation"`` (h, w) long, segment ids from 1 (0 = void or
        dropped), and ``"segments_info"``: list of ``{"id", "label_id", "score", "area",
        "isthing"?}`` ordered by id; ``area`` in output pixels.
    """
    if isinstance(outputs, tuple | list) and len(outputs) == 2:
        class_ids, instance_ids, scores, sizes, things_default = outputs[0], outputs[1], None, None, None
    else:
        class_ids, instance_ids = _field(outputs, "class_ids"), _field(outputs, "instance_ids")
        scores = _field(outputs, "pixel_scores")
        sizes = _field(outputs, "image_sizes")
        things_default = _field(outputs, "thing_label_ids")
    if class_ids is None or instance_ids is None:
        raise ValueError(
            "outputs must carry class_ids and instance_ids (B, Hm, Wm) — the output of generate()"
        )
    if class_ids.dim() != 3 or class_ids.shape != instance_ids.shape:
        raise ValueError(
            f"class_ids and instance_ids must both be (B, Hm, Wm), got {tuple(class_ids.shape)}, {tuple(instance_ids.shape)}"
        )
    batch = class_ids.shape[0]
    if target_sizes is None:
        target_sizes = sizes
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"got {len(target_sizes)} target sizes for {batch} images")
    if thing_label_ids is None and things_default is not None:
        thing_label_ids = things_default.tolist() if torch.is_tensor(things_default) else things_default
    things = None if thing_label_ids is None else {int(t) for t in thing_label_ids}
    if label_ids_to_fuse is not None:
        fuse: set[int] | None = {int(t) for t in label_ids_to_fuse}
    else:
        fuse = None

    results = []
    for b in range(batch):
        cls, ins = class_ids[b].long().cpu(), instance_ids[b].long().cpu()
        score_map = None if scores is None else scores[b].float().cpu()
        if target_sizes is not None:
            h, w = (int(v) for v in target_sizes[b])
            side = max(h, w)
            cls = resize_label_map(cls, (side, side))[:h, :w]
            ins = resize_label_map(ins, (side, side))[:h, :w]
            if score_map is not None:
                score_map = F.interpolate(score_map[None, None], size=(side, side), mode="nearest-exact")[
                    0, 0, :h, :w
                ]
        results.append(_segments_of(cls, ins, score_map, min_area, fuse, things))
    return results


def _segments_of(
    cls: torch.Tensor,
    ins: torch.Tensor,
    score_map: torch.Tensor | None,
    min_area: int,
    fuse: set[int] | None,
    things: set[int] | None,
) -> dict[str, Any]:
    """One image's (class, instance) maps (h, w) -> ``{"segmentation", "segments_info"}``."""
    labels = cls - 1  # -1 = void
    inst = ins.clone()
    if fuse is None and things is not None:
        is_fused = ~torch.isin(labels, torch.tensor(sorted(things), dtype=torch.long))
    elif fuse:
        is_fused = torch.isin(labels, torch.tensor(sorted(fuse), dtype=torch.long))
    else:
        is_fused = torch.zeros_like(labels, dtype=torch.bool)
    inst[is_fused] = 0
    valid = labels >= 0
    key = labels * (int(inst.max()) + 1) + inst
    key[~valid] = -1
    uniq, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    segmentation = torch.zeros_like(key)
    info = []
    next_id = 1
    base = int(inst.max()) + 1
    for u, k in enumerate(uniq.tolist()):
        if k < 0 or int(counts[u]) < max(min_area, 1):
            continue
        mask = inverse == u
        segmentation[mask] = next_id
        label = k // base
        entry: dict[str, Any] = {"id": next_id, "label_id": label, "area": int(counts[u])}
        entry["score"] = float(score_map[mask].mean()) if score_map is not None else 1.0
        if things is not None:
            entry["isthing"] = label in things
        info.append(entry)
        next_id += 1
    return {"segmentation": segmentation, "segments_info": info}


__all__ = [
    "VOID",
    "PanopticTargetReport",
    "pad_to_square",
    "panoptic_maps_from_coco",
    "panoptic_maps_from_masks",
    "panoptic_maps_from_row",
    "panoptic_target_from_row",
    "panoptic_maps_from_segments",
    "post_process_panoptic_segmentation",
    "resize_label_map",
    "rgb_to_panoptic_id",
]
