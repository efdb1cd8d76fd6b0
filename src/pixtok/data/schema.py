"""The row schema every loader emits, and how to read class names and reports back from a dataset.

Common columns (every source): ``image`` (``datasets.Image(mode="RGB")``, decoded lazily; ``None``
when the source ships no pixels), ``image_id`` (str), ``width``, ``height`` (int32 pixels, ``None``
only when neither an image nor the annotation gives a size). Task columns by source:

* detection (coco, objects365): ``objects = {"boxes": [[x0, y0, x1, y1]], "labels": [ClassLabel],
  "iscrowd": [int], "ids": [int]}`` — boxes absolute-pixel xyxy float32, labels contiguous indices
  into :func:`class_names`, ``ids`` the annotation ids of the file.
* captions (localized_narratives, video_localized_narratives): ``caption`` str, ``words`` list[str],
  ``points`` list[[x, y]] float32 pixels (NaN = no trace point for that word), ``sentence_ids``
  list[int] (sentence index of each word), ``annotator_id`` str.
* refcoco: ``expressions`` list[str], ``box`` [4] xyxy pixels, ``segmentation`` (see
  :mod:`pixtok.data.masks`), ``label`` ClassLabel, ``split`` str, ``ref_id``/``ann_id`` int.
* visual_genome: ``regions = {"boxes": [[4]], "captions": [str], "ids": [int]}``.
* coco_panoptic: ``panoptic`` (the RGB id PNG as ``datasets.Image``), ``segments_info`` list of
  ``{"id", "category_id", "label" (ClassLabel), "iscrowd", "bbox" (xyxy px), "area", "isthing"}``.

Dataset-level metadata (category table, :class:`~pixtok.data.report.LoadReport`) is stored as one
JSON object in ``dataset.info.description``; read it with :func:`class_names`, :func:`categories`
and :func:`load_report`, never by parsing the description yourself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import datasets

from .report import LoadReport

IMAGE_FEATURE = datasets.Image(mode="RGB")
_META_KEY = "pixtok"


def _box() -> datasets.List:
    return datasets.Sequence(datasets.Value("float32"), length=4)


def _common() -> dict:
    return {
        "image": IMAGE_FEATURE,
        "image_id": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
    }


def detection_features(names: Sequence[str]) -> datasets.Features:
    """Features of a detection row; ``names`` = class names in label order."""
    objects = {
        "boxes": datasets.Sequence(_box()),
        "labels": datasets.Sequence(datasets.ClassLabel(names=list(names))),
        "iscrowd": datasets.Sequence(datasets.Value("int8")),
        "ids": datasets.Sequence(datasets.Value("int64")),
    }
    return datasets.Features({**_common(), "objects": objects})


def caption_features(extra: dict | None = None) -> datasets.Features:
    """Features of a (video) localized narrative row; ``extra`` adds source-specific columns."""
    fields = {
        **_common(),
        "caption": datasets.Value("string"),
        "words": datasets.Sequence(datasets.Value("string")),
        "points": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=2)),
        "sentence_ids": datasets.Sequence(datasets.Value("int32")),
        "annotator_id": datasets.Value("string"),
    }
    return datasets.Features({**fields, **(extra or {})})


def segmentation_feature() -> dict:
    """``{"polygons": [[x0, y0, x1, y1, …]], "counts": str, "size": [h, w]}`` (see masks.py)."""
    return {
        "polygons": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "counts": datasets.Value("string"),
        "size": datasets.Sequence(datasets.Value("int32"), length=2),
    }


def refcoco_features(names: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            **_common(),
            "expressions": datasets.Sequence(datasets.Value("string")),
            "box": _box(),
            "segmentation": segmentation_feature(),
            "label": datasets.ClassLabel(names=list(names)),
            "split": datasets.Value("string"),
            "ref_id": datasets.Value("int64"),
            "ann_id": datasets.Value("int64"),
        }
    )


def visual_genome_features() -> datasets.Features:
    regions = {
        "boxes": datasets.Sequence(_box()),
        "captions": datasets.Sequence(datasets.Value("string")),
        "ids": datasets.Sequence(datasets.Value("int64")),
    }
    return datasets.Features({**_common(), "regions": regions})


def panoptic_features(names: Sequence[str]) -> datasets.Features:
    segment = {
        "id": datasets.Value("int64"),
        "category_id": datasets.Value("int64"),
        "label": datasets.ClassLabel(names=list(names)),
        "iscrowd": datasets.Value("int8"),
        "bbox": _box(),
        "area": datasets.Value("int64"),
        "isthing": datasets.Value("bool"),
    }
    return datasets.Features({**_common(), "panoptic": IMAGE_FEATURE, "segments_info": [segment]})


def build_dataset(
    columns: dict[str, list],
    features: datasets.Features,
    report: LoadReport,
    categories: Sequence[dict] | None = None,
) -> datasets.Dataset:
    """Assemble the in-memory dataset, attach the metadata JSON and log the report.

    Args:
        columns: column name → values (one per row), names matching ``features``.
        features: the row schema.
        report: the loader's report; its ``rows`` is set here.
        categories: category table in label order (``{"id", "name", …}`` per class), if any.
    """
    report.rows = len(next(iter(columns.values()))) if columns else 0
    meta = {
        _META_KEY: {"source": report.source, "report": report.to_dict(), "categories": list(categories or [])}
    }
    info = datasets.DatasetInfo(description=json.dumps(meta, sort_keys=True), features=features)
    dataset = datasets.Dataset.from_dict(columns, features=features, info=info)
    report.log()
    return dataset


def _meta(dataset: datasets.Dataset) -> dict:
    try:
        meta = json.loads(dataset.info.description or "")[_META_KEY]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            "this dataset was not built by pixtok.data.load (no pixtok metadata in its info)"
        ) from None
    return meta


def load_report(dataset: datasets.Dataset) -> LoadReport:
    """The :class:`LoadReport` of the ``load`` call that built ``dataset``."""
    return LoadReport.from_dict(_meta(dataset)["report"])


def categories(dataset: datasets.Dataset) -> list[dict]:
    """Category table in label order: ``{"id": original id, "name": str, …}`` (+ ``isthing`` for
    panoptic, ``supercategory`` when the file has it). Empty for sources without classes."""
    return list(_meta(dataset)["categories"])


def _find_class_label(feature) -> datasets.ClassLabel | None:
    if isinstance(feature, datasets.ClassLabel):
        return feature
    if isinstance(feature, dict):
        children = feature.values()
    elif isinstance(feature, list):
        children = feature
    elif hasattr(feature, "feature"):  # Sequence / List / LargeList
        children = [feature.feature]
    else:
        return None
    for child in children:
        found = _find_class_label(child)
        if found is not None:
            return found
    return None


def class_names(dataset: datasets.Dataset) -> list[str]:
    """Class names of a detection / referring / panoptic dataset, index = label id.

    Read from the ``datasets.ClassLabel`` feature (``objects.labels``, ``label`` or
    ``segments_info.label``), so they survive ``map``/``save_to_disk`` with the data.

    Raises:
        ValueError: the dataset has no class labels (captions, Visual Genome regions).
    """
    found = _find_class_label(dict(dataset.features))
    if found is None:
        raise ValueError(
            f"dataset has no ClassLabel feature (columns: {', '.join(dataset.column_names)}); "
            "class names exist only for detection, refcoco and coco_panoptic rows"
        )
    return list(found.names)


__all__ = [
    "IMAGE_FEATURE",
    "build_dataset",
    "caption_features",
    "categories",
    "class_names",
    "detection_features",
    "load_report",
    "panoptic_features",
    "refcoco_features",
    "segmentation_feature",
    "visual_genome_features",
]
