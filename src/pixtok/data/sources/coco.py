"""COCO-format detection files: COCO instances, Objects365, any user folder in COCO format.

Reads ``{"images", "annotations", "categories"}``; one row per image (images without annotations
are kept — they are valid negatives — and counted as a note). Labels are contiguous indices in
ascending category-id order (COCO's 80 ids 1…90 → 0…79); :func:`pixtok.data.categories` keeps the
original ids for evaluation. ``iscrowd`` objects stay in the row with ``iscrowd = 1``: tasks drop
them from training targets, evaluation keeps them. Box policy: :mod:`pixtok.data.boxes`.
"""

from __future__ import annotations

import os

import datasets

from ..boxes import clean_box
from ..images import row_image
from ..report import LoadReport
from ..schema import build_dataset, detection_features
from .json_files import read_json


def read_categories(raw: object, report: LoadReport) -> list[dict]:
    """Validated category table in ascending id order (duplicates and malformed entries counted)."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("a COCO file needs a non-empty 'categories' list of {'id', 'name'}")
    table: dict[int, dict] = {}
    for entry in raw:
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            report.skip("malformed category", f"category {entry!r} lacks 'id' or 'name'")
            continue
        try:
            cid = int(entry["id"])
        except (TypeError, ValueError):
            report.skip("malformed category", f"category {entry!r} has a non-integer id")
            continue
        if cid in table:
            report.skip("duplicate category id", f"category id {cid} ({entry['name']!r}) seen before")
            continue
        table[cid] = {key: entry[key] for key in ("id", "name", "supercategory", "isthing") if key in entry}
    return [table[cid] for cid in sorted(table)]


def read_images(raw: object, report: LoadReport) -> dict[int | str, dict]:
    """``image id → image entry`` (first of duplicates kept; entries without id/file_name skipped)."""
    if not isinstance(raw, list):
        raise ValueError("a COCO file needs an 'images' list")
    table: dict[int | str, dict] = {}
    for entry in raw:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            report.skip("malformed image entry", f"image entry {str(entry)[:80]} lacks 'id' or 'file_name'")
            continue
        if entry["id"] in table:
            report.skip("duplicate image id", f"image id {entry['id']} listed twice; the first entry is used")
            continue
        entry = dict(entry)
        for key in ("width", "height"):
            value = entry.get(key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                report.repair(
                    "invalid image size in annotation file", f"image {entry['id']}: {key}={value!r} ignored"
                )
                entry[key] = None
        table[entry["id"]] = entry
    return table


def load_coco(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
    drop_empty: bool = False,
    source: str = "coco",
) -> datasets.Dataset:
    """Load a COCO-format instances file as detection rows.

    Args:
        annotations: the instances JSON (``instances_train2017.json``, ``zhiyuan_objv2_train.json``, …).
        images: folder holding the ``file_name``s (``None``: rows without pixels, sizes from the JSON).
        check_images: how thoroughly to check image files (:data:`pixtok.data.images.CHECK_MODES`).
        drop_empty: leave out images with no usable annotation (counted) instead of keeping them.
        source: name recorded in the report (``"coco"`` or ``"objects365"``).

    Returns:
        ``datasets.Dataset`` with columns ``image, image_id, width, height, objects``.
    """
    report = LoadReport(source)
    data = read_json(annotations, f"{source} instances JSON")
    if not isinstance(data, dict):
        raise ValueError(
            f"{annotations}: a COCO file is a JSON object with 'images', 'annotations', 'categories'"
        )
    cats = read_categories(data.get("categories"), report)
    label_of = {int(c["id"]): index for index, c in enumerate(cats)}
    image_table = read_images(data.get("images", []), report)

    per_image: dict[int | str, list[dict]] = {image_id: [] for image_id in image_table}
    seen_ids: set = set()
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict) or "image_id" not in ann:
            report.skip("malformed annotation", f"annotation {str(ann)[:80]} lacks 'image_id'")
            continue
        ann_id = ann.get("id")
        if ann_id is not None:
            if ann_id in seen_ids:
                report.skip(
                    "duplicate annotation id", f"annotation id {ann_id} seen before; the first is used"
                )
                continue
            seen_ids.add(ann_id)
        if ann["image_id"] not in per_image:
            report.skip(
                "annotation of unknown image",
                f"annotation {ann_id}: image id {ann['image_id']} not in 'images'",
            )
            continue
        per_image[ann["image_id"]].append(ann)

    if images is None:
        report.note("no image folder given: rows have image=None", str(annotations))
    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "width", "height", "objects")}
    for image_id, entry in image_table.items():
        what = f"image {image_id}"
        located = row_image(
            images, entry["file_name"], entry.get("width"), entry.get("height"), check_images, report, what
        )
        if located is None:
            report.skip("annotation of skipped image", what, count=len(per_image[image_id]))
            continue
        boxes, labels, crowd, ids = [], [], [], []
        for ann in per_image[image_id]:
            ann_what = f"annotation {ann.get('id')} of {what}"
            try:
                label = label_of[int(ann.get("category_id"))]
            except (KeyError, TypeError, ValueError):
                report.skip("unknown category id", f"{ann_what}: category id {ann.get('category_id')!r}")
                continue
            box = clean_box(ann.get("bbox"), located.width, located.height, report, ann_what, fmt="xywh")
            if box is None:
                continue
            boxes.append(box)
            labels.append(label)
            crowd.append(int(bool(ann.get("iscrowd", 0))))
            ids.append(int(ann["id"]) if isinstance(ann.get("id"), int) else -1)
        if not boxes:
            if drop_empty:
                report.skip("image without annotations", what)
                continue
            report.note("image without annotations", what)
        columns["image"].append(located.cell)
        columns["image_id"].append(str(image_id))
        columns["width"].append(located.width)
        columns["height"].append(located.height)
        columns["objects"].append({"boxes": boxes, "labels": labels, "iscrowd": crowd, "ids": ids})
    features = detection_features([c["name"] for c in cats])
    return build_dataset(columns, features, report, cats)


def load_objects365(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
    drop_empty: bool = False,
) -> datasets.Dataset:
    """Objects365 (v1/v2, COCO format): :func:`load_coco` with ``source="objects365"``.

    ``file_name``s such as ``images/v1/patch8/objects365_v1_00420917.jpg`` are found under
    ``images/patch8/`` or ``images/`` as well (see :func:`pixtok.data.images.find_image_file`).
    """
    return load_coco(
        annotations, images, check_images=check_images, drop_empty=drop_empty, source="objects365"
    )


__all__ = ["load_coco", "load_objects365", "read_categories", "read_images"]
