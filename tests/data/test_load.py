"""load(): argument checking, objects365 paths, metadata survival, the stats command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pixtok.data as D
from pixtok.data import stats
from tests.data.sample_files import save_rgb, write_coco


def test_unknown_source_and_keywords_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown data source 'cityscapes'; expected one of coco, objects365"
    ):
        D.load("cityscapes", annotations="x")
    with pytest.raises(
        ValueError, match=r"missing required annotations=.*coco accepts annotations=, images="
    ):
        D.load("coco", images=tmp_path)
    with pytest.raises(ValueError, match="unknown keyword\\(s\\) regions"):
        D.load("coco", annotations=tmp_path / "a.json", regions="r.json")
    assert set(D.SOURCES) == {
        "coco", "objects365", "coco_panoptic", "localized_narratives", "video_localized_narratives",
        "refcoco", "visual_genome", "synthetic",
    }  # fmt: skip


def test_objects365_file_names_and_metadata_survive_map(tmp_path: Path) -> None:
    patch = tmp_path / "images" / "patch8"
    patch.mkdir(parents=True)
    save_rgb(patch / "objects365_v1_00420917.jpg", width=40, height=30)
    images = [
        {"id": 420917, "file_name": "images/v1/patch8/objects365_v1_00420917.jpg", "width": 40, "height": 30}
    ]
    anns = [{"id": 1, "image_id": 420917, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}]
    cats = [{"id": 1, "name": "Person"}, {"id": 2, "name": "Sneakers"}]
    path = write_coco(tmp_path / "zhiyuan_objv2_train.json", images, anns, cats)
    ds = D.load("objects365", annotations=path, images=tmp_path / "images")
    assert len(ds) == 1 and ds[0]["image"].size == (40, 30)
    assert D.load_report(ds).source == "objects365"
    mapped = ds.map(lambda row: {"n": len(row["objects"]["boxes"])})
    assert D.class_names(mapped) == ["Person", "Sneakers"] and D.load_report(mapped).rows == 1
    saved = tmp_path / "saved"
    ds.save_to_disk(str(saved))
    import datasets

    reloaded = datasets.load_from_disk(str(saved))
    assert D.class_names(reloaded) == ["Person", "Sneakers"] and D.categories(reloaded)[1]["id"] == 2


def test_foreign_dataset_has_no_pixtok_metadata() -> None:
    import datasets

    with pytest.raises(ValueError, match="not built by pixtok.data.load"):
        D.load_report(datasets.Dataset.from_dict({"a": [1]}))


def test_stats_command_prints_counts(fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = stats.main(
        ["coco", "--annotations", str(fixtures / "coco_tiny_instances_train2017.json.gz"), "--top", "2"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "rows: 80" in out and "objects: 705" in out and "iscrowd: 6" in out and "classes: 80" in out
    assert "person: " in out
    stats.main(["visual_genome", "--regions", str(fixtures / "vg_region_descriptions_first100.json.gz"),
                "--image-data", str(fixtures / "vg_image_data_first100.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert "regions: 7278" in out and "repaired 4 × box clipped to image" in out


def test_report_examples_are_bounded(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(10)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    ds = D.load("coco", annotations=path, images=tmp_path)
    report = D.load_report(ds)
    assert report.skipped["image file missing"] == 10 and len(report.examples["image file missing"]) == 3
    assert "10 × image file missing" in report.summary()
