"""pixtok.data: every dataset pixtok trains on, read into one row schema.

Entry points:

* :func:`load` — ``load(source, **paths) -> datasets.Dataset`` (sources in :data:`SOURCES`);
* :func:`class_names`, :func:`categories`, :func:`load_report` — what a loaded dataset carries;
* :mod:`pixtok.data.synthetic` — the synthetic benchmark (``pixtok synth``);
* :mod:`pixtok.data.augment` — joint image / box / point / mask augmentation;
* :mod:`pixtok.data.collate` — batching processor outputs, padding to the longest sequence;
* :func:`load_image` — any image file as upright 8-bit RGB.
"""

from __future__ import annotations

from .images import load_image, panoptic_ids
from .load import LOADERS, SOURCES, load
from .masks import decode_segmentation
from .report import LoadReport
from .schema import categories, class_names, load_report

__all__ = [
    "LOADERS",
    "SOURCES",
    "LoadReport",
    "categories",
    "class_names",
    "decode_segmentation",
    "load",
    "load_image",
    "load_report",
    "panoptic_ids",
]
