"""``pixtok.data.load(source, **paths)``: the one entry point to every dataset pixtok reads.

Sources and their path keywords (DESIGN.md):

=============================  ===============================================================
``coco``, ``objects365``       ``annotations=``, ``images=``
``coco_panoptic``              ``annotations=``, ``masks=``, ``images=``
``localized_narratives``       ``annotations=``, ``images=``
``video_localized_narratives`` ``annotations=``, ``images=``
``refcoco``                    ``refs=``, ``instances=``, ``images=`` (+ ``split=`` filter)
``visual_genome``              ``regions=``, ``image_data=``, ``images=``
``synthetic``                  ``root=`` (a folder written by ``pixtok synth``), ``split=``,
                               ``kind=`` one of :data:`pixtok.data.sources.synthetic.KINDS`
=============================  ===============================================================

Every source also takes ``check_images=`` (:data:`pixtok.data.images.CHECK_MODES`). Each call
returns a ``datasets.Dataset`` whose report (:func:`pixtok.data.load_report`) counts what was
skipped or repaired.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import datasets

from .sources.coco import load_coco, load_objects365
from .sources.coco_panoptic import load_coco_panoptic
from .sources.localized_narratives import load_localized_narratives
from .sources.refcoco import load_refcoco
from .sources.synthetic import load_synthetic
from .sources.video_localized_narratives import load_video_localized_narratives
from .sources.visual_genome import load_visual_genome

LOADERS: dict[str, Callable[..., datasets.Dataset]] = {
    "coco": load_coco,
    "objects365": load_objects365,
    "coco_panoptic": load_coco_panoptic,
    "localized_narratives": load_localized_narratives,
    "video_localized_narratives": load_video_localized_narratives,
    "refcoco": load_refcoco,
    "visual_genome": load_visual_genome,
    "synthetic": load_synthetic,
}
"""Source name → loader; the explicit list of what :func:`load` reads."""

SOURCES: tuple[str, ...] = tuple(LOADERS)


def load(source: str, **paths: str | os.PathLike | bool | None) -> datasets.Dataset:
    """Load ``source`` as pixtok rows (see the module table for the keywords of each source).

    Args:
        source: one of :data:`SOURCES`.
        **paths: the source's path keywords and options (``check_images``, ``split``, …).

    Returns:
        A ``datasets.Dataset`` in the schema of :mod:`pixtok.data.schema`.

    Raises:
        ValueError: unknown source, unknown keyword, or a required path missing — the message lists
            what the source expects.
    """
    loader = LOADERS.get(source)
    if loader is None:
        raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(paths) - set(parameters))
    required = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty]
    missing = [n for n in required if paths.get(n) is None]
    if unknown or missing:
        accepted = ", ".join(f"{n}=" for n in parameters)
        problems = []
        if unknown:
            problems.append(f"unknown keyword(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"missing required {', '.join(f'{n}=' for n in missing)}")
        raise ValueError(f"load({source!r}): {'; '.join(problems)}; {source} accepts {accepted}")
    return loader(**paths)


__all__ = ["LOADERS", "SOURCES", "load"]
