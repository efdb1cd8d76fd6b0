"""RefCOCO, RefCOCO+ and RefCOCOg: referring expressions with their object's box and mask.

Reads the original release — ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p`` (a Python 2
pickle of a list of dicts) next to ``instances.json`` (COCO train2014 images, annotations,
categories) — and the common JSON exports of the same refs (a ``.json`` list or ``.jsonl`` lines of
the same dicts). Each ref is ``{ref_id, ann_id, image_id, split, category_id, sentences: [{raw,
sent, …}], …}``; one row per ref with all its expressions (``raw`` text, else ``sent``), the box of
its annotation (xyxy pixels) and its segmentation (:mod:`pixtok.data.masks`).

The pickle is read with :class:`RestrictedUnpickler`: it rebuilds only plain containers and scalars
and refuses every other global, so a crafted ``.p`` file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle

import datasets

from ..boxes import clean_box
from ..images import row_image
from ..masks import segmentation_record
from ..report import LoadReport
from ..schema import build_dataset, refcoco_features
from .coco import read_categories, read_images
from .json_files import iter_jsonl, read_json

_SAFE_BUILTINS = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "bool",
        "complex",
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only builtin containers and scalars.

    Any other global (``os.system``, ``builtins.eval``, ``copy_reg._reconstructor``, classes…) raises
    ``pickle.UnpicklingError`` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str) -> type:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refused to load global {module}.{name}: refs pickles may hold only plain containers and scalars"
        )


def restricted_load(path: str | os.PathLike) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python 2 strings read as latin-1)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_refs(path: str | os.PathLike, report: LoadReport) -> list[dict]:
    """The refs list from a ``.p`` pickle, a ``.json`` list or a ``.jsonl`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"refs file not found: {path}")
    if path.endswith(".jsonl"):
        return [record for _, record in iter_jsonl(path, report)]
    if path.endswith(".json"):
        refs = read_json(path, "RefCOCO refs JSON (a list of refs)")
    else:
        try:
            refs = restricted_load(path)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: {err}") from None
        except Exception as err:  # corrupted pickle: opcode errors, EOF, …
            raise ValueError(f"{path} is not a readable refs pickle: {err}") from None
    if isinstance(refs, dict) and "refs" in refs:
        refs = refs["refs"]
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def _expressions(ref: dict) -> list[str]:
    found = []
    for sentence in ref.get("sentences") or []:
        if isinstance(sentence, dict):
            text = sentence.get("raw") or sentence.get("sent") or ""
        else:
            text = str(sentence)
        text = " ".join(str(text).split())
        if text:
            found.append(text)
    return found


def load_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    check_images: str = "decode",
) -> datasets.Dataset:
    """Load a RefCOCO-family release as referring rows (one per ref).

    Args:
        refs: ``refs(unc).p`` (or ``.json``/``.jsonl`` export).
        instances: the matching ``instances.json``.
        images: the COCO image folder (``train2014/``); ``None`` → rows without pixels.
        split: keep only refs of this split (``train``, ``val``, ``testA``, ``testB``, ``test``).
        check_images: :data:`pixtok.data.images.CHECK_MODES`.

    Returns:
        Rows ``image, image_id, width, height, expressions, box, segmentation, label, split,
        ref_id, ann_id``.
    """
    report = LoadReport("refcoco")
    ref_list = read_refs(refs, report)
    data = read_json(instances, "RefCOCO instances.json")
    if not isinstance(data, dict):
        raise ValueError(f"{instances}: expected a COCO JSON object")
    cats = read_categories(data.get("categories"), report)
    label_of = {int(c["id"]): index for index, c in enumerate(cats)}
    image_table = read_images(data.get("images", []), report)
    annotations: dict = {}
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and "id" in ann:
            annotations.setdefault(ann["id"], ann)

    if images is None:
        report.note("no image folder given: rows have image=None", str(instances))
    columns: dict[str, list] = {k: [] for k in refcoco_features([])}
    located_cache: dict = {}
    seen: set = set()
    for index, ref in enumerate(ref_list):
        if not isinstance(ref, dict):
            report.skip("malformed ref", f"ref #{index} is {type(ref).__name__}, not a dict")
            continue
        what = f"ref {ref.get('ref_id', f'#{index}')}"
        if split is not None and ref.get("split") != split:
            continue
        if ref.get("ref_id") in seen:
            report.skip("duplicate ref id", what)
            continue
        seen.add(ref.get("ref_id"))
        ann = annotations.get(ref.get("ann_id"))
        if ann is None:
            report.skip("ref of unknown annotation", f"{what}: ann_id {ref.get('ann_id')!r} not in instances")
            continue
        image_id = ann.get("image_id", ref.get("image_id"))
        entry = image_table.get(image_id)
        if entry is None:
            report.skip("ref of unknown image", f"{what}: image id {image_id!r} not in instances")
            continue
        try:
            label = label_of[int(ann.get("category_id"))]
        except (KeyError, TypeError, ValueError):
            report.skip("unknown category id", f"{what}: category id {ann.get('category_id')!r}")
            continue
        expressions = _expressions(ref)
        if not expressions:
            report.skip("ref without expressions", what)
            continue
        if image_id not in located_cache:
            located_cache[image_id] = row_image(
                images,
                entry["file_name"],
                entry.get("width"),
                entry.get("height"),
                check_images,
                report,
                what,
            )
        located = located_cache[image_id]
        if located is None:
            report.skip("ref of skipped image", what)
            continue
        box = clean_box(ann.get("bbox"), located.width, located.height, report, what, fmt="xywh")
        if box is None:
            continue
        segmentation = segmentation_record(ann.get("segmentation"), located.height or 0, located.width or 0)
        if segmentation is None:
            report.repair("missing or invalid segmentation: no mask (decode_segmentation raises)", what)
            segmentation = {"polygons": [], "counts": "", "size": [located.height or 0, located.width or 0]}
        columns["image"].append(located.cell)
        columns["image_id"].append(str(image_id))
        columns["width"].append(located.width)
        columns["height"].append(located.height)
        columns["expressions"].append(expressions)
        columns["box"].append(box)
        columns["segmentation"].append(segmentation)
        columns["label"].append(label)
        columns["split"].append(str(ref.get("split", "")))
        columns["ref_id"].append(int(ref.get("ref_id", -1)))
        columns["ann_id"].append(int(ann["id"]))
    return build_dataset(columns, refcoco_features([c["name"] for c in cats]), report, cats)


__all__ = ["RestrictedUnpickler", "load_refcoco", "read_refs", "restricted_load"]
