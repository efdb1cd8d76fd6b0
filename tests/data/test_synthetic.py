"""The synthetic benchmark: deterministic bytes, real formats, read back through the real loaders."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import pixtok.data as D
from pixtok.data import synthetic
from pixtok.data.images import panoptic_ids
from pixtok.data.masks import decode_segmentation


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic.write_benchmark(a, seed=7, num_images=6, image_size=48)
    synthetic.write_benchmark(b, seed=7, num_images=6, image_size=48)
    synthetic.write_benchmark(c, seed=8, num_images=6, image_size=48)
    assert _digest(a) == _digest(b)
    assert _digest(a)["images/train/000000000001.jpg"] != _digest(c)["images/train/000000000001.jpg"]


def test_workers_do_not_change_a_byte(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    summary = synthetic.write_benchmark(one, seed=2, num_images=12, image_size=64, workers=1)
    parallel = synthetic.write_benchmark(two, seed=2, num_images=12, image_size=64, workers=2)
    assert summary["workers"] == 1 and parallel["workers"] == 2
    digest = _digest(one)
    assert len(digest) == 2 * 12 + 3 * 5 + 3 + 1  # JPEG + PNG per image, 5 per split, refcoco, summary
    assert _digest(two) == digest  # images (workers), annotations and refs (main process, running ids)
    assert {k: v for k, v in parallel.items() if k not in ("seconds", "cpu_seconds", "workers")} == {
        k: v for k, v in summary.items() if k not in ("seconds", "cpu_seconds", "workers")
    }


@pytest.mark.parametrize("workers", [-1, 1.5, "2", True])
def test_bad_workers_raise(tmp_path: Path, workers: object) -> None:
    with pytest.raises(ValueError, match="workers must be"):
        synthetic.write_benchmark(tmp_path, num_images=2, image_size=32, workers=workers)  # type: ignore[arg-type]


def test_recipe_cache_key_ignores_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pixtok.training import recipe as recipe_module
    from pixtok.training.config import RecipeConfig

    calls = []

    def fake_write(out: Path, **options: object) -> dict:
        calls.append(options)
        Path(out).mkdir(parents=True)
        return {}

    monkeypatch.setattr(synthetic, "write_benchmark", fake_write)
    config = RecipeConfig()
    config.data.cache_dir = str(tmp_path)
    config.data.synthetic = {"num_images": 6}
    default_root = recipe_module.synthetic_root(config)
    config.data.synthetic = {"num_images": 6, "workers": 3}
    assert recipe_module.synthetic_root(config) == default_root  # cached: same key, not rewritten
    assert len(calls) == 1 and 1 <= calls[0].pop("workers") <= 16  # type: ignore[operator]
    assert calls[0] == {"seed": 0, "num_images": 6, "image_size": 128}
    assert json.loads((default_root / "COMPLETE").read_text()) == calls[0]
    config.data.cache_dir = str(tmp_path / "other")
    recipe_module.synthetic_root(config)
    assert calls[1]["workers"] == 3


def test_splits_are_fixed_by_index() -> None:
    splits = [synthetic.split_of(i, 20) for i in range(20)]
    assert splits == ["train"] * 16 + ["val"] * 2 + ["test"] * 2


def test_every_kind_reads_back_with_the_written_counts(synthetic_root: Path) -> None:
    summary = json.loads((synthetic_root / "benchmark.json").read_text())
    for split, counts in summary["splits"].items():
        coco = D.load("synthetic", root=synthetic_root, split=split, kind="coco")
        assert len(coco) == counts["images"]
        assert sum(len(o["boxes"]) for o in coco["objects"]) == counts["objects"]
        assert D.class_names(coco) == list(synthetic.SHAPES)
        refs = D.load("synthetic", root=synthetic_root, split=split, kind="refcoco")
        assert len(refs) == counts["refs"]
        vg = D.load("synthetic", root=synthetic_root, split=split, kind="visual_genome")
        assert sum(len(r["boxes"]) for r in vg["regions"]) == counts["regions"]
        for kind in ("coco_panoptic", "localized_narratives"):
            ds = D.load("synthetic", root=synthetic_root, split=split, kind=kind)
            assert len(ds) == counts["images"]
        for ds in (coco, refs, vg):
            assert D.load_report(ds).num_skipped == 0 and D.load_report(ds).num_repaired == 0


def test_panoptic_png_matches_instances(synthetic_root: Path) -> None:
    coco = D.load("synthetic", root=synthetic_root, split="train", kind="coco")
    pan = D.load("synthetic", root=synthetic_root, split="train", kind="coco_panoptic", verify_segments=True)
    report = D.load_report(pan)
    assert not report.notes.get("listed segment absent from PNG") and not report.notes.get(
        "PNG segment not in segments_info"
    )
    instances = json.loads((synthetic_root / "annotations/instances_train.json").read_text())
    masks = {a["id"]: a for a in instances["annotations"]}
    row, det = pan[0], coco[0]
    ids = panoptic_ids(row["panoptic"])
    assert (ids > 0).all()  # things + stuff cover every pixel
    things = [s for s in row["segments_info"] if s["isthing"]]
    stuff = [s for s in row["segments_info"] if not s["isthing"]]
    assert len(things) == len(det["objects"]["boxes"]) and 1 <= len(stuff) <= 2
    for segment, ann_id in zip(things, det["objects"]["ids"]):
        mask = decode_segmentation({"polygons": [], **masks[ann_id]["segmentation"]})
        np.testing.assert_array_equal(mask, ids == segment["id"])


def test_narrative_words_point_at_the_objects_they_name(synthetic_root: Path) -> None:
    coco = D.load("synthetic", root=synthetic_root, split="train", kind="coco")
    ln = D.load("synthetic", root=synthetic_root, split="train", kind="localized_narratives")
    names = D.class_names(coco)
    checked = 0
    for det, narrative in zip(coco, ln):
        assert det["image_id"] == narrative["image_id"]
        shape_words = [
            (i, w.rstrip(",.")) for i, w in enumerate(narrative["words"]) if w.rstrip(",.") in names
        ]
        boxes = [b for b, label in zip(det["objects"]["boxes"], det["objects"]["labels"])]
        labels = [names[label] for label in det["objects"]["labels"]]
        for (index, word), box, label in zip(shape_words, boxes, labels):
            assert word == label  # objects are named in drawing order = annotation order
            x, y = narrative["points"][index]
            assert box[0] <= x <= box[2] and box[1] <= y <= box[3]
            checked += 1
        assert sum(1 for s in set(narrative["sentence_ids"])) == 2
    assert checked >= len(coco)


def test_referring_expressions_are_unambiguous() -> None:
    rng = np.random.default_rng(0)
    relations = 0
    for _ in range(40):
        scene = synthetic.render_scene(rng, 64)
        things = scene.things
        for index, target in enumerate(things):
            for text in synthetic.referring_expressions(index, things):
                words = text.split()
                cut = next(
                    (k for k, w in enumerate(words) if w in ("left", "right", "above", "below")), len(words)
                )
                subject = words[1:cut]
                matching = [t for t in things if all(w in (t.shape, t.color, t.size) for w in subject)]
                assert target in matching
                if cut == len(words):
                    assert matching == [target]
                    continue
                relations += 1
                relation = " ".join(words[cut : cut + (2 if words[cut] in ("left", "right") else 1)])
                anchor_words = words[cut + len(relation.split()) + 1 :]  # skip "the"
                anchors = [t for t in things if all(w in (t.shape, t.color, t.size) for w in anchor_words)]
                assert len(anchors) == 1 and anchors[0] is not target
                holds = [
                    t
                    for t in matching
                    if t is not anchors[0] and synthetic._relation(t, anchors[0]) == relation
                ]
                assert holds == [target]
    assert relations > 20


def test_cli_arguments_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = synthetic.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--out", str(tmp_path / "s"), "--seed", "1", "--num-images", "4", "--image-size", "40"]
    )
    assert synthetic.run(args) == 0
    out = capsys.readouterr().out
    assert "wrote 4 images of 40px" in out and "images/s" in out
    assert args.workers == 0  # default: every available CPU (capped at the image count)
    assert parser.parse_args(["--out", "x", "--workers", "3"]).workers == 3
    assert (tmp_path / "s/refcoco/refs(synthetic).p").is_file()
    with pytest.raises(ValueError, match="kind must be one of"):
        D.load("synthetic", root=tmp_path / "s", kind="cityscapes")
    with pytest.raises(FileNotFoundError, match="not a synthetic benchmark"):
        D.load("synthetic", root=tmp_path)
    assert not math.isnan(synthetic.DEFAULT_IMAGE_SIZE)


def test_extra_train_images_grow_train_and_leave_val_and_test_alone(tmp_path: Path) -> None:
    plain, grown = tmp_path / "plain", tmp_path / "grown"
    synthetic.write_benchmark(plain, seed=5, num_images=10, image_size=48)
    summary = synthetic.write_benchmark(
        grown, seed=5, num_images=10, image_size=48, extra_train_images=4, workers=2
    )
    assert summary["extra_train_images"] == 4
    assert summary["splits"]["train"]["images"] == 8 + 4
    assert synthetic.split_of(10, 10) == synthetic.split_of(13, 10) == "train"
    for split in ("val", "test"):  # the same files, byte for byte: images, ids, refs
        for sub in (f"annotations/instances_{split}.json", f"annotations/panoptic_{split}.json"):
            assert (plain / sub).read_bytes() == (grown / sub).read_bytes(), sub
        names = sorted(p.name for p in (plain / "images" / split).iterdir())
        assert names == sorted(p.name for p in (grown / "images" / split).iterdir())
        for name in names:
            assert (plain / "images" / split / name).read_bytes() == (
                grown / "images" / split / name
            ).read_bytes()
        plain_refs = D.load("synthetic", root=plain, split=split, kind="refcoco")
        grown_refs = D.load("synthetic", root=grown, split=split, kind="refcoco")
        assert plain_refs.remove_columns("image").to_dict() == grown_refs.remove_columns("image").to_dict()
    train = D.load("synthetic", root=grown, split="train", kind="coco")
    assert len(train) == 12
    with pytest.raises(ValueError, match="extra_train_images"):
        synthetic.write_benchmark(tmp_path / "bad", num_images=2, image_size=32, extra_train_images=-1)
