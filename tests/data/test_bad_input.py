"""Bad records are repaired or skipped with counted, readable messages; one never stops a load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import pixtok.data as D
from tests.data.sample_files import save_rgb, write_coco


def _image_entry(image_id: int, name: str, width: int = 32, height: int = 24) -> dict:
    return {"id": image_id, "file_name": name, "width": width, "height": height}


def _ann(ann_id: int, image_id: int, bbox: list, category: int = 1, **extra: object) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": 0, **extra}


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    save_rgb(folder / "ok.png")
    return folder


def test_box_policy(tmp_path: Path, image_dir: Path) -> None:
    anns = [
        _ann(1, 1, [2, 3, 10, 5]),  # fine
        _ann(2, 1, [-5, 2, 10, 5]),  # overhangs left by 5 px -> clipped
        _ann(3, 1, [40, 30, 5, 5]),  # entirely outside the 32x24 image -> skipped
        _ann(4, 1, [4, 4, 0, 6]),  # zero width -> skipped
        _ann(5, 1, [float("nan"), 1, 2, 2]),  # NaN -> skipped
        _ann(6, 1, [1, 2, 3]),  # three numbers -> skipped
        _ann(7, 1, [5, 5, -2, 3]),  # negative size -> skipped
        _ann(8, 1, [0, 0, 32.2, 24.1]),  # sub-pixel overhang -> clipped silently
    ]
    path = write_coco(tmp_path / "a.json", [_image_entry(1, "ok.png")], anns)
    ds = D.load("coco", annotations=path, images=image_dir)
    row = ds[0]
    assert row["objects"]["ids"] == [1, 2, 8]
    np.testing.assert_allclose(row["objects"]["boxes"], [[2, 3, 12, 8], [0, 2, 5, 7], [0, 0, 32, 24]])
    report = D.load_report(ds)
    assert report.repaired == {"box clipped to image": 1}
    assert report.skipped == {
        "box outside image": 1,
        "zero-area box": 1,
        "malformed or NaN box": 2,
        "negative box size": 1,
    }
    assert "annotation 3 of image 1" in report.examples["box outside image"][0]


def test_ids_categories_and_empty_annotations(tmp_path: Path, image_dir: Path) -> None:
    save_rgb(image_dir / "second.png")
    images = [_image_entry(1, "ok.png"), _image_entry(1, "second.png"), _image_entry(2, "second.png")]
    anns = [
        _ann(1, 1, [1, 1, 4, 4]),
        _ann(1, 1, [2, 2, 4, 4]),  # duplicate annotation id
        _ann(2, 1, [1, 1, 4, 4], category=7),  # unknown category
        _ann(3, 99, [1, 1, 4, 4]),  # unknown image
        _ann(4, 1, [1, 1, 5, 5], category=3),
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 3, "name": "again"}]
    path = write_coco(tmp_path / "a.json", images, anns, cats)
    ds = D.load("coco", annotations=path, images=image_dir)
    assert ds["image_id"] == ["1", "2"]
    assert D.class_names(ds) == ["cat", "dog"]
    assert ds[0]["objects"]["labels"] == [0, 1]  # contiguous: id 1 -> 0, id 3 -> 1
    assert ds[1]["objects"]["boxes"] == []  # image 2 kept as a negative, noted
    report = D.load_report(ds)
    assert report.skipped == {
        "duplicate image id": 1,
        "duplicate annotation id": 1,
        "unknown category id": 1,
        "annotation of unknown image": 1,
        "duplicate category id": 1,
    }
    assert report.notes["image without annotations"] == 1
    dropped = D.load("coco", annotations=path, images=image_dir, drop_empty=True)
    assert dropped["image_id"] == ["1"] and D.load_report(dropped).skipped["image without annotations"] == 1


def test_unreadable_images_are_skipped_and_odd_modes_repaired(tmp_path: Path, image_dir: Path) -> None:
    full = image_dir / "noise.jpg"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (image_dir / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
    (image_dir / "text.jpg").write_text("hello")
    PIL.Image.fromarray(np.full((24, 32), 40000, np.uint16)).save(image_dir / "deep.png")
    PIL.Image.new("L", (32, 24), 77).save(image_dir / "gray.png")
    PIL.Image.new("RGB", (40, 24)).save(image_dir / "wider.png")  # JSON says 32x24
    names = ["ok.png", "truncated.jpg", "text.jpg", "absent.jpg", "deep.png", "gray.png", "wider.png"]
    images = [_image_entry(i + 1, n) for i, n in enumerate(names)]
    anns = [_ann(i + 1, i + 1, [1, 1, 8, 8]) for i in range(len(names))]
    path = write_coco(tmp_path / "a.json", images, anns)
    ds = D.load("coco", annotations=path, images=image_dir)
    assert ds["image_id"] == ["1", "5", "6", "7"]
    report = D.load_report(ds)
    assert report.skipped["unreadable image"] == 2 and report.skipped["image file missing"] == 1
    assert report.skipped["annotation of skipped image"] == 3
    assert report.repaired["I;16 image converted to 8-bit RGB"] == 1
    assert report.notes["L image decoded as RGB"] == 1
    assert report.repaired["annotation size differs from image file"] == 1
    deep = ds[1]["image"]
    assert deep.mode == "RGB" and np.asarray(deep)[0, 0].tolist() == [156, 156, 156]  # 40000 / 257
    assert ds[3]["width"] == 40  # the file's size wins
    every = [np.asarray(img).shape for img in ds["image"]]  # decoding every kept row works
    assert all(shape[2] == 3 for shape in every)


def test_malformed_whole_file_raises_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        D.load("coco", annotations=bad)
    with pytest.raises(FileNotFoundError, match="instances JSON not found"):
        D.load("coco", annotations=tmp_path / "nothing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        D.load("coco", annotations=tmp_path / "list.json")


def _narrative(image_id: str, **fields: object) -> dict:
    base = {
        "dataset_id": "test",
        "image_id": image_id,
        "annotator_id": 7,
        "caption": "A dog. A cat",
        "timed_caption": [
            {"utterance": "A dog.", "start_time": 0.0, "end_time": 1.0},
            {"utterance": "A cat", "start_time": 2.0, "end_time": 3.0},
        ],
        "traces": [
            [
                {"x": 0.25, "y": 0.5, "t": 0.2},
                {"x": 0.25, "y": 0.5, "t": 0.8},
                {"x": 1.4, "y": -0.2, "t": 2.5},
            ]
        ],
        "voice_recording": "",
    }
    return {**base, **fields}


def test_localized_narratives_bad_records(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c", "d"):
        save_rgb(images / f"{name}.jpg", width=40, height=20)
    lines = [
        json.dumps(_narrative("a")),
        "{not json",
        json.dumps(["a list"]),
        json.dumps(_narrative("b", timed_caption=[])),  # caption without timing
        json.dumps(_narrative("c", traces=[[]])),  # traces with no points
        json.dumps(_narrative("missing")),  # image absent
        json.dumps(_narrative("d", caption="", timed_caption=None)),  # nothing to say
        "",
    ]
    path = tmp_path / "ln.jsonl"
    path.write_text("\n".join(lines))
    ds = D.load("localized_narratives", annotations=path, images=images)
    assert ds["image_id"] == ["a", "b", "c"]
    report = D.load_report(ds)
    assert report.skipped == {"malformed JSON line": 2, "image file missing": 1, "empty caption": 1}
    assert report.repaired["caption without timing: points masked"] == 2  # b and d
    assert report.repaired["traces with no points: points masked"] == 1
    # one (1.4, -0.2) point in each record whose trace is read: a, b, d and the skipped "missing"
    assert report.repaired["trace points outside [0, 1] clamped"] == 4
    a, b, c = ds
    assert a["words"] == ["A", "dog.", "A", "cat"] and a["sentence_ids"] == [0, 0, 1, 1]
    assert a["points"][0] == pytest.approx([10.0, 10.0])  # (0.25, 0.5) * (40, 20)
    assert a["points"][2] == pytest.approx([40.0, 0.0])  # (1.4, -0.2) clamped to (1, 0)
    assert b["words"] == ["A", "dog.", "A", "cat"] and all(math.isnan(p[0]) for p in b["points"])
    assert all(math.isnan(p[0]) for p in c["points"])


def test_rgba_cmyk_and_exif_rotated_images_in_a_loader(tmp_path: Path, image_dir: Path) -> None:
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white after repair
    PIL.Image.fromarray(rgba, "RGBA").save(image_dir / "rgba.png")
    PIL.Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(image_dir / "cmyk.jpg")
    exif = PIL.Image.Exif()
    exif[0x0112] = 8  # stored 24 wide x 32 high, displayed rotated to 32 x 24
    PIL.Image.new("RGB", (24, 32), (0, 0, 200)).save(image_dir / "rotated.jpg", exif=exif)
    names = ["rgba.png", "cmyk.jpg", "rotated.jpg"]
    images = [_image_entry(i + 1, n) for i, n in enumerate(names)]
    anns = [_ann(i + 1, i + 1, [1, 1, 30, 20]) for i in range(len(names))]
    ds = D.load("coco", annotations=write_coco(tmp_path / "a.json", images, anns), images=image_dir)
    assert ds["image_id"] == ["1", "2", "3"]
    report = D.load_report(ds)
    assert report.repaired["RGBA image converted to 8-bit RGB"] == 1
    assert report.notes["CMYK image decoded as RGB"] == 1
    assert report.notes["EXIF-rotated image decoded upright"] == 1
    assert "annotation size differs from image file" not in report.repaired  # 32x24 upright = JSON
    white, red, rotated = (ds[i]["image"] for i in range(3))
    assert np.asarray(white)[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(red)[5, 5, 0] > 200 and rotated.size == (32, 24)
    assert ds[2]["objects"]["boxes"] == [[1.0, 1.0, 31.0, 21.0]]


def test_check_modes_trade_speed_for_thoroughness(tmp_path: Path, image_dir: Path) -> None:
    full = image_dir / "noise.jpg"
    PIL.Image.fromarray(np.random.default_rng(2).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (image_dir / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
    images = [_image_entry(1, "truncated.jpg"), _image_entry(2, "absent.jpg")]
    path = write_coco(tmp_path / "a.json", images, [])
    assert D.load("coco", annotations=path, images=image_dir)["image_id"] == []
    exists = D.load("coco", annotations=path, images=image_dir, check_images="exists")
    assert exists["image_id"] == ["1"]  # truncation is not seen without decoding
    assert exists["width"] == [32]  # the JSON size is trusted (reading the column decodes no image)
    assert D.load("coco", annotations=path, images=image_dir, check_images="none")["image_id"] == ["1", "2"]
    with pytest.raises(ValueError, match="check_images must be one of"):
        D.load("coco", annotations=path, images=image_dir, check_images="fast")


def test_annotations_without_ids_and_odd_sizes(tmp_path: Path, image_dir: Path) -> None:
    images = [{"id": 1, "file_name": "ok.png", "width": "wide", "height": 24}]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},  # no "id": not a duplicate of the next
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4]},
    ]
    cats = [{"id": "x", "name": "broken"}, {"id": 1, "name": "cat"}]
    ds = D.load("coco", annotations=write_coco(tmp_path / "a.json", images, anns, cats))
    assert len(ds[0]["objects"]["boxes"]) == 2 and ds[0]["objects"]["ids"] == [-1, -1]
    assert ds[0]["width"] is None and ds[0]["height"] == 24
    report = D.load_report(ds)
    assert report.repaired["invalid image size in annotation file"] == 1
    assert report.skipped["malformed category"] == 1
