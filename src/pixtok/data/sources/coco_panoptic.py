"""COCO panoptic: per-image RGB id PNGs plus ``segments_info`` (Pix2Seq-D's target).

The JSON (``panoptic_train2017.json``) holds ``images``, ``categories`` (``id, name, isthing,
color``) and ``annotations: [{image_id, file_name (the PNG), segments_info: [{id, category_id,
iscrowd, bbox (xywh), area}]}]``. The PNG stores each pixel's segment id as
``R + 256 G + 256² B`` (:func:`pixtok.data.images.panoptic_ids`; 0 = unlabeled). One row per
image; ``panoptic`` is the PNG (decoded as RGB), ``segments_info`` lists segments with ``label`` =
contiguous class index (ascending category id) and ``isthing`` from the category table; bboxes are
converted to xyxy pixels. ``verify_segments=True`` decodes every PNG and checks that each listed
segment id occurs in it and every non-zero id in it is listed (slow on all of COCO; counted).
"""

from __future__ import annotations

import os

import datasets
import numpy as np
import PIL.Image

from ..boxes import clean_box
from ..images import find_image_file, panoptic_ids, row_image
from ..report import LoadReport
from ..schema import build_dataset, panoptic_features
from .coco import read_categories, read_images
from .json_files import read_json


def _read_png(path: str, report: LoadReport, what: str, decode: bool) -> np.ndarray | None:
    """Open the panoptic PNG; the id map when ``decode``, an empty array otherwise; None if bad."""
    try:
        with PIL.Image.open(path) as png:
            if png.mode not in ("RGB", "RGBA"):
                report.skip("panoptic PNG is not RGB", f"{what}: {path} has mode {png.mode}")
                return None
            return panoptic_ids(png.convert("RGB")) if decode else np.zeros((0, 0), np.int64)
    except (OSError, SyntaxError, ValueError) as err:
        report.skip("unreadable panoptic PNG", f"{what}: {path}: {err}")
        return None


def load_coco_panoptic(
    annotations: str | os.PathLike,
    masks: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
    verify_segments: bool = False,
) -> datasets.Dataset:
    """Load COCO panoptic annotations.

    Args:
        annotations: the panoptic JSON.
        masks: folder of the panoptic PNGs (``panoptic_train2017/``).
        images: folder of the input images; ``None`` → ``image = None`` (sizes from the JSON).
        check_images: :data:`pixtok.data.images.CHECK_MODES` for the input images.
        verify_segments: decode each PNG and cross-check its ids against ``segments_info``.

    Returns:
        Rows ``image, image_id, width, height, panoptic, segments_info``.
    """
    report = LoadReport("coco_panoptic")
    data = read_json(annotations, "COCO panoptic JSON")
    if not isinstance(data, dict):
        raise ValueError(f"{annotations}: expected a JSON object with 'images', 'annotations', 'categories'")
    cats = read_categories(data.get("categories"), report)
    by_id = {int(c["id"]): (index, c) for index, c in enumerate(cats)}
    image_table = read_images(data.get("images", []), report)
    if images is None:
        report.note("no image folder given: rows have image=None", str(annotations))
    columns: dict[str, list] = {
        k: [] for k in ("image", "image_id", "width", "height", "panoptic", "segments_info")
    }
    seen: set = set()
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict) or "image_id" not in ann or "file_name" not in ann:
            report.skip("malformed annotation", str(ann)[:80])
            continue
        image_id = ann["image_id"]
        what = f"image {image_id}"
        if image_id in seen:
            report.skip("duplicate image id", f"{what} has two panoptic annotations; the first is used")
            continue
        seen.add(image_id)
        entry = image_table.get(image_id)
        if entry is None:
            report.skip("annotation of unknown image", what)
            continue
        located = row_image(
            images, entry["file_name"], entry.get("width"), entry.get("height"), check_images, report, what
        )
        if located is None:
            continue
        png_path = find_image_file(masks, ann["file_name"])
        if png_path is None:
            report.skip("panoptic PNG missing", f"{what}: {ann['file_name']!r} not under {masks}")
            continue
        ids = _read_png(png_path, report, what, decode=verify_segments)
        if ids is None:
            continue
        segments, segment_ids = [], set()
        for segment in ann.get("segments_info") or []:
            seg_what = f"segment {segment.get('id')} of {what}" if isinstance(segment, dict) else what
            if not isinstance(segment, dict) or "id" not in segment:
                report.skip("malformed segment", seg_what)
                continue
            if segment["id"] in segment_ids:
                report.skip("duplicate segment id", seg_what)
                continue
            try:
                label, category = by_id[int(segment.get("category_id"))]
            except (KeyError, TypeError, ValueError):
                report.skip("unknown category id", f"{seg_what}: category id {segment.get('category_id')!r}")
                continue
            box = clean_box(segment.get("bbox"), located.width, located.height, report, seg_what, fmt="xywh")
            if box is None:
                continue
            segment_ids.add(segment["id"])
            segments.append(
                {
                    "id": int(segment["id"]),
                    "category_id": int(category["id"]),
                    "label": label,
                    "iscrowd": int(bool(segment.get("iscrowd", 0))),
                    "bbox": box,
                    "area": int(segment.get("area", 0)),
                    "isthing": bool(category.get("isthing", 1)),
                }
            )
        if verify_segments:
            present = set(np.unique(ids).tolist()) - {0}
            if segment_ids - present:
                report.note(
                    "listed segment absent from PNG", f"{what}: ids {sorted(segment_ids - present)[:5]}"
                )
            if present - segment_ids:
                report.note(
                    "PNG segment not in segments_info", f"{what}: ids {sorted(present - segment_ids)[:5]}"
                )
        if not segments:
            report.note("image without segments", what)
        columns["image"].append(located.cell)
        columns["image_id"].append(str(image_id))
        columns["width"].append(located.width)
        columns["height"].append(located.height)
        columns["panoptic"].append({"path": png_path, "bytes": None})
        columns["segments_info"].append(segments)
    return build_dataset(columns, panoptic_features([c["name"] for c in cats]), report, cats)


__all__ = ["load_coco_panoptic"]
