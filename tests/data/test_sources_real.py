"""Every loader on the real sample files (copies in tests/fixtures, provenance in data_cards/)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import pixtok.data as D
from pixtok.data.images import panoptic_ids
from pixtok.data.stats import dataset_statistics

SHARED = Path("/work/shared/data")


def test_coco_tiny_counts_without_images(fixtures: Path) -> None:
    ds = D.load("coco", annotations=fixtures / "coco_tiny_instances_train2017.json.gz")
    stats = dataset_statistics(ds)
    assert stats["rows"] == 80
    assert stats["objects"] == 705
    assert stats["iscrowd"] == 6
    assert stats["rows_without_image"] == 80
    names = D.class_names(ds)
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    cats = D.categories(ds)
    assert [c["name"] for c in cats] == names and cats[-1]["id"] == 90
    report = D.load_report(ds)
    assert report.rows == 80 and report.num_skipped == 0


def test_coco_tiny_boxes_are_xyxy_pixels(fixtures: Path) -> None:
    ds = D.load("coco", annotations=fixtures / "coco_tiny_instances_train2017.json.gz")
    row = ds[ds["image_id"].index("262145")]
    # annotation 284647 of image 262145: bbox xywh [212.6, 55.62, 53.04, 53.46], category 28 (umbrella)
    k = row["objects"]["ids"].index(284647)
    np.testing.assert_allclose(row["objects"]["boxes"][k], [212.6, 55.62, 265.64, 109.08], atol=1e-3)
    assert D.class_names(ds)[row["objects"]["labels"][k]] == "umbrella"
    for objects, w, h in zip(ds["objects"], ds["width"], ds["height"]):
        boxes = np.asarray(objects["boxes"]).reshape(-1, 4)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_coco_with_partial_image_folder_counts_missing(fixtures: Path) -> None:
    ds = D.load(
        "coco",
        annotations=fixtures / "coco_tiny_instances_train2017.json.gz",
        images=fixtures / "coco_tiny_images",
    )
    assert sorted(ds["image_id"]) == ["188421", "425989"]
    report = D.load_report(ds)
    assert report.skipped["image file missing"] == 78
    assert report.skipped["annotation of skipped image"] + sum(len(o["boxes"]) for o in ds["objects"]) == 705
    image = ds[0]["image"]
    assert image.mode == "RGB" and image.size == (ds[0]["width"], ds[0]["height"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared sample data not on this machine")
def test_coco_tiny_full_folder_decodes_every_image() -> None:
    root = SHARED / "coco_tiny_train"
    ds = D.load("coco", annotations=root / "annotations/instances_train2017.json", images=root / "train2017")
    assert len(ds) == 80 and D.load_report(ds).num_skipped == 0


def test_coco_panoptic_sample(fixtures: Path) -> None:
    root = fixtures / "coco_panoptic"
    ds = D.load(
        "coco_panoptic",
        annotations=root / "panoptic_examples.json",
        masks=root / "panoptic_examples",
        verify_segments=True,
    )
    assert len(ds) == 2
    by_id = dict(zip(ds["image_id"], ds["segments_info"]))
    assert len(by_id["142238"]) == 18 and len(by_id["439180"]) == 32
    assert len(D.class_names(ds)) == 133
    report = D.load_report(ds)
    assert not report.notes.get("listed segment absent from PNG") and not report.notes.get(
        "PNG segment not in segments_info"
    )
    row = ds[ds["image_id"].index("142238")]
    ids = panoptic_ids(row["panoptic"])
    assert ids.shape == (row["height"], row["width"])
    for segment in row["segments_info"]:
        assert np.count_nonzero(ids == segment["id"]) == segment["area"]
        assert segment["isthing"] == (segment["category_id"] < 92)  # COCO: things 1..90, stuff 92..200


def test_visual_genome_sample(fixtures: Path) -> None:
    ds = D.load(
        "visual_genome",
        regions=fixtures / "vg_region_descriptions_first100.json.gz",
        image_data=fixtures / "vg_image_data_first100.json",
    )
    assert len(ds) == 100
    assert dataset_statistics(ds)["regions"] == 7278
    report = D.load_report(ds)
    assert report.repaired == {"box clipped to image": 4} and report.num_skipped == 0
    first = ds[ds["image_id"].index("1")]
    assert first["width"] == 800 and first["height"] == 600 and first["image"] is None
    k = first["regions"]["ids"].index(1382)  # x 421, y 57, w 82, h 139, "the clock is green in colour"
    assert first["regions"]["captions"][k] == "the clock is green in colour"
    np.testing.assert_allclose(first["regions"]["boxes"][k], [421, 57, 503, 196])
    with pytest.raises(ValueError, match="no ClassLabel"):
        D.class_names(ds)


def test_video_localized_narratives_sample(fixtures: Path) -> None:
    rows = []
    for name in ("vidln_OVIS_train_sample.jsonl.gz", "vidln_oops_train_sample.jsonl.gz"):
        ds = D.load("video_localized_narratives", annotations=fixtures / name)
        report = D.load_report(ds)
        assert report.num_skipped == 0
        assert report.notes["keyframe images absent: image=None, points normalized"] == len(ds)
        assert "word without time alignment (no point)" not in report.notes  # every word is aligned
        rows += list(ds)
    assert len(rows) == 22  # 6 video narratives, 22 actor narratives
    assert sum(len(r["words"]) for r in rows) == 482  # = the sample's word-time alignments
    assert len({r["video_id"] for r in rows}) == 6
    with_point = [p for r in rows for p in r["points"] if not math.isnan(p[0])]
    assert 0.5 * 482 < len(with_point) < 482
    assert all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in with_point)
    first = rows[0]
    assert first["caption"] == "A group of people is cycling on the grey road."
    assert first["words"][1] == "group" and first["image"] is None and first["width"] is None
    assert all(k == -1 or 0 <= k < len(first["keyframe_names"]) for k in first["keyframes"])
    assert first["image_id"].startswith("c1a40349/")


def test_video_narratives_with_keyframes_use_pixels(tmp_path: Path, fixtures: Path) -> None:
    import PIL.Image

    path = fixtures / "vidln_OVIS_train_sample.jsonl.gz"
    plain = D.load("video_localized_narratives", annotations=path)
    first = plain[0]
    video, name = first["image_id"].split("/")
    folder = tmp_path / video
    folder.mkdir()
    PIL.Image.new("RGB", (200, 100)).save(folder / f"{name}.jpg")
    ds = D.load("video_localized_narratives", annotations=path, images=tmp_path)
    assert ds[0]["image_id"] == first["image_id"] and ds[0]["image"].size == (200, 100)
    for (x, y), (nx, ny) in zip(ds[0]["points"], first["points"]):
        if not math.isnan(nx):
            assert x == pytest.approx(nx * 200, rel=1e-5) and y == pytest.approx(ny * 100, rel=1e-5)
    # the other actors' keyframes are absent: skipped and counted, never fatal
    assert D.load_report(ds).skipped["image file missing"] == len(plain) - 1
