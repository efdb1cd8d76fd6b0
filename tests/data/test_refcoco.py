"""RefCOCO: restricted unpickling of refs(*).p, rows from refs + instances, JSON exports."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import pixtok.data as D
from pixtok.data.masks import decode_segmentation
from pixtok.data.sources.refcoco import RestrictedUnpickler, restricted_load


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "refs(evil).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Evil()}], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused to load global (posix|os).system"):
        restricted_load(path)
    with pytest.raises(ValueError, match="refused to load global"):
        D.load("refcoco", refs=path, instances=tmp_path / "unused.json")
    safe = tmp_path / "refs(ok).p"
    refs = [{"ref_id": 1, "tags": {"a", "b"}, "t": (1, 2.5), "sentences": [{"raw": "the cat"}]}]
    safe.write_bytes(pickle.dumps(refs, protocol=2))  # protocol 2 is what the Python 2 release used
    assert restricted_load(safe) == refs
    safe.write_bytes(pickle.dumps([{"s": b"x"}], protocol=4))  # native bytes opcodes need no global
    assert restricted_load(safe) == [{"s": b"x"}]
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)


def _coco_tiny(fixtures: Path) -> dict:
    with gzip.open(fixtures / "coco_tiny_instances_train2017.json.gz", "rt") as handle:
        return json.load(handle)


def _refs_for(data: dict) -> list[dict]:
    """RefCOCO-style refs over a few real coco_tiny annotations (polygon and RLE ones)."""
    polygon = next(a for a in data["annotations"] if not a["iscrowd"])
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    return [
        {"ref_id": 10, "ann_id": polygon["id"], "image_id": polygon["image_id"], "split": "train",
         "category_id": polygon["category_id"], "sentences": [{"raw": "the  umbrella ", "sent": "umbrella"}, {"sent": "top"}]},
        {"ref_id": 11, "ann_id": crowd["id"], "image_id": crowd["image_id"], "split": "testA",
         "category_id": crowd["category_id"], "sentences": [{"raw": "the crowd"}]},
        {"ref_id": 12, "ann_id": 123, "image_id": 1, "split": "train", "sentences": [{"raw": "ghost"}]},
        {"ref_id": 10, "ann_id": polygon["id"], "image_id": polygon["image_id"], "split": "train", "sentences": []},
        {"ref_id": 13, "ann_id": polygon["id"], "image_id": polygon["image_id"], "split": "val", "sentences": []},
    ]  # fmt: skip


def test_refcoco_rows_from_pickle_and_json(tmp_path: Path, fixtures: Path) -> None:
    data = _coco_tiny(fixtures)
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(data))
    refs = _refs_for(data)
    pickled = tmp_path / "refs(unc).p"
    pickled.write_bytes(pickle.dumps(refs, protocol=2))
    exported = tmp_path / "refs(unc).json"
    exported.write_text(json.dumps(refs))
    for path in (pickled, exported):
        ds = D.load("refcoco", refs=path, instances=instances)
        assert ds["ref_id"] == [10, 11]
        report = D.load_report(ds)
        assert report.skipped == {
            "ref of unknown annotation": 1,
            "duplicate ref id": 1,
            "ref without expressions": 1,
        }
        first, crowd = ds
        assert first["expressions"] == ["the umbrella", "top"]
        polygon = next(a for a in data["annotations"] if a["id"] == first["ann_id"])
        x, y, w, h = polygon["bbox"]
        np.testing.assert_allclose(first["box"], [x, y, x + w, y + h], atol=1e-3)
        assert D.class_names(ds)[first["label"]] == next(
            c["name"] for c in data["categories"] if c["id"] == polygon["category_id"]
        )
        mask = decode_segmentation(first["segmentation"])
        assert mask.shape == (first["height"], first["width"])
        assert abs(int(mask.sum()) - polygon["area"]) < 0.05 * polygon["area"]
        assert crowd["segmentation"]["counts"] and not crowd["segmentation"]["polygons"]  # RLE kept
        crowd_mask = decode_segmentation(crowd["segmentation"])
        assert crowd_mask.shape == (crowd["height"], crowd["width"]) and crowd_mask.any()
    only = D.load("refcoco", refs=pickled, instances=instances, split="testA")
    assert only["ref_id"] == [11] and only["split"] == ["testA"]


def test_refcoco_corrupt_pickle_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]q\x00(")  # cut short
    with pytest.raises(ValueError, match="not a readable refs pickle"):
        D.load("refcoco", refs=path, instances=tmp_path / "x.json")


def test_segmentation_records() -> None:
    from pixtok.data.masks import encode_mask, segmentation_record

    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    np.testing.assert_array_equal(decode_segmentation(encode_mask(mask)), mask)
    square = segmentation_record([[2, 1, 7, 1, 7, 4, 2, 4]], 6, 8)
    assert square["polygons"] and decode_segmentation(square)[2, 4]
    uncompressed = {"counts": [8, 3, 3, 3, 31], "size": [6, 8]}  # column-major runs: 0s, 1s, 0s, …
    record = segmentation_record(uncompressed, 6, 8)
    assert isinstance(record["counts"], str) and decode_segmentation(record).sum() == 6
    assert segmentation_record({"counts": [1, 2], "size": [6, 8]}, 6, 8) is None  # runs != h * w
    assert segmentation_record([[1, 2, 3]], 6, 8) is None  # fewer than 3 points
    with pytest.raises(ValueError, match="no polygon and no RLE"):
        decode_segmentation({"polygons": [], "counts": "", "size": [6, 8]})
