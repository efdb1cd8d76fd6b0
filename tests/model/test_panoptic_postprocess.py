"""Panoptic targets from COCO PNGs and post-processing to segments (pixtok.model.panoptic_postprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.panoptic_postprocess import (
    pad_to_square,
    panoptic_maps_from_coco,
    panoptic_maps_from_masks,
    post_process_panoptic_segmentation,
    resize_label_map,
    rgb_to_panoptic_id,
)

SAMPLE = Path("/work/shared/data/coco_panoptic_sample")


def _png(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 COCO panoptic RGB."""
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)


def test_rgb_ids() -> None:
    ids = np.array([[0, 1, 256], [65536 + 513, 3937500, 7]])
    assert np.array_equal(rgb_to_panoptic_id(_png(ids)), ids)
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_panoptic_id(np.zeros((4, 4)))


def test_resize_and_pad() -> None:
    m = torch.arange(6).reshape(2, 3)
    sq = pad_to_square(m)
    assert sq.shape == (3, 3) and sq[2].tolist() == [0, 0, 0] and torch.equal(sq[:2], m)
    up = resize_label_map(m, (4, 6))
    assert torch.equal(up[::2, ::2], m) and up.dtype == m.dtype
    assert torch.equal(resize_label_map(up, (2, 3)), m)  # centre sampling inverts an integer upscale


def _toy() -> tuple[np.ndarray, list[dict]]:
    ids = np.zeros((6, 8), dtype=np.int64)
    ids[:, :4] = 10  # stuff "sky", label 2
    ids[1:3, 5:7] = 20  # thing label 0
    ids[4:6, 5:8] = 30  # thing label 0
    ids[0, 7] = 99  # not listed
    info = [
        {"id": 10, "category_id": 103},
        {"id": 20, "category_id": 1},
        {"id": 30, "category_id": 1},
        {"id": 40, "category_id": 1},  # empty
        {"id": 20, "category_id": 1},  # listed twice
    ]
    return ids, info


CATS = {1: 0, 7: 1, 103: 2}


def test_maps_from_coco_counts_every_problem() -> None:
    ids, info = _toy()
    cls, ins, rep = panoptic_maps_from_coco(
        _png(ids), info, CATS, thing_label_ids=[0, 1], max_instance_id=7, image_key="toy"
    )
    assert cls.shape == (8, 8) and (cls[6:] == 0).all()  # padded bottom to the square frame
    assert (cls[:6, :4] == 3).all() and (ins[:, :4] == 0).all()  # stuff: label + 1, no instance
    assert (cls[1:3, 5:7] == 1).all() and (cls[4:6, 5:8] == 1).all()
    # things get distinct ids, the larger (id 30, 6 px) first
    assert int(ins[4, 5]) == 1 and int(ins[1, 5]) == 2
    assert int(cls[0, 7]) == 0  # the unlisted id became void
    assert (rep.unknown_ids, rep.empty_segments, rep.duplicate_segments, rep.segments) == (1, 1, 1, 3)
    assert rep.num_problems == 3
    assert any("not in segments_info" in m and "toy" in m for m in rep.messages)
    assert "duplicate_segments=1" in rep.summary()


def test_unknown_category_crowd_and_instance_overflow() -> None:
    ids = np.zeros((4, 4), dtype=np.int64)
    ids[0, :] = 1
    ids[1, :] = 2
    ids[2, :2] = 3
    ids[2, 2:] = 4
    ids[3, :] = 5
    info = [
        {"id": 1, "category_id": 1},
        {"id": 2, "category_id": 1},
        {"id": 3, "category_id": 1},
        {"id": 4, "category_id": 555},  # unknown category
        {"id": 5, "category_id": 1, "iscrowd": 1},
    ]
    cls, ins, rep = panoptic_maps_from_coco(_png(ids), info, CATS, [0], max_instance_id=2)
    assert rep.unknown_categories == 1 and rep.crowd_segments == 1 and rep.dropped_instances == 1
    assert (cls[3] == 0).all() and (cls[2, 2:] == 0).all()
    assert (cls[2, :2] == 0).all()  # the smallest of 3 instances did not fit in 2 ids
    assert set(ins[:2].flatten().tolist()) == {1, 2}
    assert any("id bits hold 2" in m for m in rep.messages)


def test_masks_overlap_is_counted() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    cls, ins, rep = panoptic_maps_from_masks(masks, [0, 1], [0, 1], 7)
    assert rep.overlapping_pixels == 4 and cls.shape == (4, 4)
    assert (cls[1] == 0).all() and (cls[0] == 1).all() and (cls[2] == 2).all()
    with pytest.raises(ValueError, match="N = len"):
        panoptic_maps_from_masks(masks, [0], [0], 7)


def test_mask_size_pads_to_square_frame() -> None:
    ids = np.zeros((4, 8), dtype=np.int64)
    ids[:, 4:] = 5
    cls, ins, rep = panoptic_maps_from_coco(
        _png(ids), [{"id": 5, "category_id": 7}], CATS, [1], 7, mask_size=4
    )
    # 4 x 8 image in an 8 x 8 square -> 4 x 4 mask: top half holds the image, bottom half is padding
    assert cls.shape == (4, 4)
    assert cls[:2, 2:].eq(2).all() and cls[:2, :2].eq(0).all() and cls[2:].eq(0).all()
    assert ins[:2, 2:].eq(1).all()
    tiny = np.zeros((16, 16), dtype=np.int64)
    tiny[0, 0] = 5
    _, _, rep = panoptic_maps_from_coco(_png(tiny), [{"id": 5, "category_id": 7}], CATS, [1], 7, mask_size=4)
    assert rep.vanished_segments == 1


def test_post_process_segments_fuse_and_min_area() -> None:
    cls = torch.zeros(1, 4, 4, dtype=torch.long)
    ins = torch.zeros(1, 4, 4, dtype=torch.long)
    cls[0, :2] = 1  # label 0 (thing), two instances
    ins[0, 0] = 3
    ins[0, 1] = 5
    cls[0, 2:, :2] = 3  # label 2 (stuff) with two instance ids -> fused
    ins[0, 2, :2] = 1
    ins[0, 3, :2] = 2
    cls[0, 3, 3] = 2  # a 1-pixel segment of label 1
    scores = torch.full((1, 4, 4), 0.5)
    scores[0, 0] = 1.0
    out = {
        "class_ids": cls,
        "instance_ids": ins,
        "pixel_scores": scores,
        "thing_label_ids": torch.tensor([0, 1]),
    }
    res = post_process_panoptic_segmentation(out, min_area=2)[0]
    seg, info = res["segmentation"], res["segments_info"]
    assert seg.shape == (4, 4) and seg.dtype == torch.long
    by_label = sorted((s["label_id"], s["area"], s["isthing"]) for s in info)
    assert by_label == [(0, 4, True), (0, 4, True), (2, 4, False)]
    assert len(info) == 3 and [s["id"] for s in info] == [1, 2, 3]
    assert int(seg[3, 3]) == 0  # dropped under min_area
    assert int(seg[2, 0]) == int(seg[3, 0]) != 0  # stuff instances fused
    assert int(seg[0, 0]) != int(seg[1, 0])  # thing instances kept apart
    first = next(s for s in info if s["id"] == int(seg[0, 0]))
    assert first["score"] == pytest.approx(1.0)
    for s in info:
        assert int((seg == s["id"]).sum()) == s["area"]
    # explicit fuse list overrides: fuse label 0 too
    res2 = post_process_panoptic_segmentation(out, min_area=0, label_ids_to_fuse=[0, 2])[0]
    assert sorted(s["label_id"] for s in res2["segments_info"]) == [0, 1, 2]


def test_post_process_target_size_crops_padding() -> None:
    cls = torch.zeros(1, 4, 4, dtype=torch.long)
    cls[0, :2, :] = 1  # the image occupies the top half of the padded square
    cls[0, 2:, :] = 2  # padding area (should be cropped away)
    res = post_process_panoptic_segmentation((cls, torch.zeros_like(cls)), target_sizes=[(4, 8)])[0]
    assert res["segmentation"].shape == (4, 8)
    assert [s["label_id"] for s in res["segments_info"]] == [0]
    assert res["segments_info"][0]["area"] == 32
    with pytest.raises(ValueError, match="target sizes"):
        post_process_panoptic_segmentation((cls, cls), target_sizes=[(4, 8), (2, 2)])
    with pytest.raises(ValueError, match="class_ids"):
        post_process_panoptic_segmentation({"class_ids": cls})


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared COCO panoptic sample not present")
def test_real_coco_panoptic_sample_round_trips_exactly() -> None:
    """The real sample -> maps -> segments reproduces every ground-truth segment (PQ 1.0 against itself)."""
    cats = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    cat_to_label = {c["id"]: i for i, c in enumerate(sorted(cats, key=lambda c: c["id"]))}
    things = [cat_to_label[c["id"]] for c in cats if c["isthing"]]
    anns = json.loads((SAMPLE / "panoptic_examples.json").read_text())["annotations"]
    assert len(anns) == 2
    for ann in anns:
        png = np.asarray(Image.open(SAMPLE / "panoptic_examples" / ann["file_name"]).convert("RGB"))
        h, w = png.shape[:2]
        cls, ins, rep = panoptic_maps_from_coco(
            png, ann["segments_info"], cat_to_label, things, 255, image_key=ann["file_name"]
        )
        assert rep.num_problems == 0, rep.messages
        res = post_process_panoptic_segmentation(
            {"class_ids": cls[None], "instance_ids": ins[None], "thing_label_ids": things},
            target_sizes=[(h, w)],
        )[0]
        gt_ids = rgb_to_panoptic_id(png)
        pred = res["segmentation"].numpy()
        info = {s["id"]: s for s in res["segments_info"]}
        gt = [s for s in ann["segments_info"] if not s["iscrowd"]]
        assert len(info) == len(gt)
        for seg in gt:
            gmask = gt_ids == seg["id"]
            pid = np.unique(pred[gmask])
            assert len(pid) == 1 and pid[0] != 0
            assert np.array_equal(pred == pid[0], gmask)  # IoU 1
            assert info[int(pid[0])]["label_id"] == cat_to_label[seg["category_id"]]
            assert info[int(pid[0])]["area"] == seg["area"]
            assert info[int(pid[0])]["isthing"] == (cat_to_label[seg["category_id"]] in things)


@pytest.mark.skipif(not SAMPLE.exists(), reason="shared COCO panoptic sample not present")
def test_real_sample_via_loader_scores_pq_one() -> None:
    """pixtok.data rows -> maps -> post-processing -> pixtok.evaluation PQ = 1.0 against the ground truth."""
    from pixtok.data import load
    from pixtok.evaluation.panoptic_quality import evaluate_panoptic, load_coco_panoptic
    from pixtok.model.panoptic_postprocess import panoptic_maps_from_row

    rows = load(
        "coco_panoptic",
        annotations=str(SAMPLE / "panoptic_examples.json"),
        masks=str(SAMPLE / "panoptic_examples"),
        images=str(SAMPLE / "input_images"),
    )
    gt_images, categories = load_coco_panoptic(
        SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples"
    )
    label_to_category = sorted(c["id"] for c in categories)
    things = [
        i for i, cid in enumerate(label_to_category) if {c["id"]: c for c in categories}[cid]["isthing"]
    ]
    by_id = {str(g["image_id"]): g for g in gt_images}
    preds, gts = [], []
    for row in rows:
        cls, ins, rep = panoptic_maps_from_row(row, max_instance_id=255)
        assert rep.num_problems == 0, rep.messages
        out = {"class_ids": cls[None], "instance_ids": ins[None], "thing_label_ids": things}
        preds += post_process_panoptic_segmentation(out, target_sizes=[(row["height"], row["width"])])
        gts.append(by_id[str(row["image_id"])])
    assert len(preds) == 2
    scores = evaluate_panoptic(preds, gts, categories, label_to_category=label_to_category)
    assert scores["PQ"] == pytest.approx(1.0) and scores["SQ"] == pytest.approx(1.0)
    # at a coarse mask resolution the same pipeline loses detail: PQ drops below 1 but stays high
    low = []
    for row in rows:
        cls, ins, _ = panoptic_maps_from_row(row, max_instance_id=255, mask_size=128)
        out = {"class_ids": cls[None], "instance_ids": ins[None], "thing_label_ids": things}
        low += post_process_panoptic_segmentation(out, target_sizes=[(row["height"], row["width"])])
    coarse = evaluate_panoptic(low, gts, categories, label_to_category=label_to_category)["PQ"]
    assert 0.3 < coarse < 1.0
    # the recipe's one-call target: packed ids that unpack to the same maps
    from pixtok.model.bit_diffusion import PanopticBitCodec
    from pixtok.model.configuration_pixtok_panoptic import PixtokPanopticConfig
    from pixtok.model.panoptic_postprocess import panoptic_target_from_row

    names = {i: str(i) for i in range(len(label_to_category))}
    config = PixtokPanopticConfig.from_preset(
        "tiny", id2label=names, thing_label_ids=things, class_bits=8, instance_bits=8
    )
    ids, rep = panoptic_target_from_row(rows[0], config)
    assert ids.shape == (32, 32) and rep.num_problems == 0
    cls, ins, _ = panoptic_maps_from_row(rows[0], max_instance_id=255, mask_size=32)
    assert torch.equal(PanopticBitCodec(8, 8).unpack(ids)[0], cls) and torch.equal(
        PanopticBitCodec(8, 8).unpack(ids)[1], ins
    )
    small = PixtokPanopticConfig.from_preset("tiny", class_bits=8, instance_bits=8)  # 3 labels only
    with pytest.raises(ValueError, match="outside the config's 3 labels"):
        panoptic_target_from_row(rows[0], small)
