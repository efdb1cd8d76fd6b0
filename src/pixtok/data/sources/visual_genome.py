"""Visual Genome region descriptions: boxes with free-text captions (dense / region captioning).

``region_descriptions.json`` is a list of ``{"id": image_id, "regions": [{region_id, image_id, x, y,
width, height, phrase}]}``; ``image_data.json`` a list of ``{image_id (or id), width, height, url,
coco_id, flickr_id}``. One row per image; ``regions = {"boxes": xyxy px, "captions", "ids"}``.
Images live in ``VG_100K/`` and ``VG_100K_2/``: pass their common parent (or a merged folder) as
``images=``; the file is found from the ``url`` tail (``VG_100K_2/1.jpg``) or ``<image_id>.jpg``.
Without ``images=`` rows have ``image = None`` and the sizes of ``image_data.json``.
"""

from __future__ import annotations

import os

import datasets

from ..boxes import clean_box
from ..images import row_image
from ..report import LoadReport
from ..schema import build_dataset, visual_genome_features
from .json_files import read_json


def load_visual_genome(
    regions: str | os.PathLike,
    image_data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
) -> datasets.Dataset:
    """Load Visual Genome region descriptions as rows with ``regions``.

    Args:
        regions: ``region_descriptions.json``.
        image_data: ``image_data.json`` (sizes, urls).
        images: folder containing ``VG_100K*/`` or the images themselves; ``None`` → no pixels.
        check_images: :data:`pixtok.data.images.CHECK_MODES`.
    """
    report = LoadReport("visual_genome")
    meta_list = read_json(image_data, "Visual Genome image_data.json")
    region_list = read_json(regions, "Visual Genome region_descriptions.json")
    if not isinstance(meta_list, list) or not isinstance(region_list, list):
        raise ValueError("Visual Genome region_descriptions.json and image_data.json must both be JSON lists")
    meta: dict[int, dict] = {}
    for entry in meta_list:
        image_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
        if image_id is None:
            report.skip("malformed image_data entry", str(entry)[:80])
        elif image_id in meta:
            report.skip("duplicate image id", f"image_data lists image {image_id} twice; the first is used")
        else:
            meta[image_id] = entry
    if images is None:
        report.note("no image folder given: rows have image=None", str(regions))
    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "width", "height", "regions")}
    seen_images: set = set()
    seen_regions: set = set()
    for entry in region_list:
        region_items = entry.get("regions") if isinstance(entry, dict) else None
        if not isinstance(region_items, list):
            report.skip("malformed region entry", str(entry)[:80])
            continue
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None and region_items:
            image_id = region_items[0].get("image_id")
        what = f"image {image_id}"
        if image_id in seen_images:
            report.skip("duplicate image id", f"{what} has two region lists; the first is used")
            continue
        seen_images.add(image_id)
        info = meta.get(image_id)
        if info is None:
            report.skip("image without image_data entry", what, count=1)
            report.skip("region of skipped image", what, count=len(region_items))
            continue
        url_tail = "/".join(str(info.get("url") or f"{image_id}.jpg").split("/")[-2:])
        located = row_image(
            images, url_tail, info.get("width"), info.get("height"), check_images, report, what
        )
        if located is None:
            report.skip("region of skipped image", what, count=len(region_items))
            continue
        boxes, captions, ids = [], [], []
        for region in region_items:
            region_what = f"region {region.get('region_id')} of {what}" if isinstance(region, dict) else what
            if not isinstance(region, dict):
                report.skip("malformed region", region_what)
                continue
            if region.get("region_id") in seen_regions:
                report.skip("duplicate region id", region_what)
                continue
            seen_regions.add(region.get("region_id"))
            phrase = " ".join(str(region.get("phrase") or "").split())
            if not phrase:
                report.skip("region without caption", region_what)
                continue
            raw = [region.get(k) for k in ("x", "y", "width", "height")]
            box = clean_box(raw, located.width, located.height, report, region_what, fmt="xywh")
            if box is None:
                continue
            boxes.append(box)
            captions.append(phrase)
            ids.append(int(region.get("region_id", -1)))
        if not boxes:
            report.note("image without regions", what)
        columns["image"].append(located.cell)
        columns["image_id"].append(str(image_id))
        columns["width"].append(located.width)
        columns["height"].append(located.height)
        columns["regions"].append({"boxes": boxes, "captions": captions, "ids": ids})
    return build_dataset(columns, visual_genome_features(), report)


__all__ = ["load_visual_genome"]
