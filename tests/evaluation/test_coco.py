import json

import numpy as np
import pytest

from pixtok.evaluation.coco import COCO_STAT_NAMES, evaluate_detection, load_coco, to_coco_results

COCO_TINY = "/work/shared/data/coco_tiny_train/annotations/instances_train2017.json"


def _gt() -> dict:
    """Two 100x100 images; boxes are medium-sized (area 32²..96²) so APs/APl are -1."""
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 20, 40, 50], "area": 2000, "iscrowd": 0},
        ],
    }


def test_perfect_predictions_score_one():
    preds = [
        {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]},  # label 0 -> category 3
        {"boxes": [[50, 20, 90, 70]], "scores": [0.8], "labels": [1]},  # label 1 -> category 7
    ]
    stats = evaluate_detection(preds, _gt(), image_ids=[1, 2])
    assert list(stats) == list(COCO_STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "APm", "AR1", "AR10", "AR100", "ARm"):
        assert stats[name] == pytest.approx(1.0), name
    # no small/large ground truth: COCOeval reports -1
    assert stats["APs"] == -1 and stats["APl"] == -1


def test_shifted_box_scores_what_cocoeval_defines():
    # prediction [10, 10, 50, 60] vs GT [10, 10, 50, 50]: IoU = 1600 / 2000 = 0.8
    # -> a hit at thresholds 0.50 … 0.80 (7 of 10): AP = 0.7 for that class; the other class perfect.
    preds = [
        {"boxes": [[10, 10, 50, 60]], "scores": [0.9], "labels": [0]},
        {"boxes": [[50, 20, 90, 70]], "scores": [0.8], "labels": [1]},
    ]
    stats = evaluate_detection(preds, _gt(), image_ids=[1, 2])
    assert stats["AP"] == pytest.approx((0.7 + 1.0) / 2)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_missing_and_wrong_class_predictions():
    # image 2 gets nothing; the box on image 1 has the wrong class (category 7).
    preds = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [1]}, {"boxes": np.zeros((0, 4))}]
    stats = evaluate_detection(preds, _gt(), image_ids=[1, 2])
    assert stats["AP"] == pytest.approx(0.0) and stats["AR100"] == pytest.approx(0.0)


def test_half_recall_is_101_point_interpolated():
    # one category, two GT boxes, only one found: precision 1 up to recall 0.5 -> 51/101.
    gt = _gt()
    gt["annotations"][1]["category_id"] = 3
    preds = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]}, {"boxes": np.zeros((0, 4))}]
    stats = evaluate_detection(preds, gt, image_ids=[1, 2])
    assert stats["AP"] == pytest.approx(51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)


def test_no_detections_at_all_scores_zero():
    stats = evaluate_detection([{"boxes": []}, {"boxes": []}], _gt(), image_ids=[1, 2])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_results_format_is_xywh_with_category_ids():
    results = to_coco_results(
        {"boxes": [[1, 2, 11, 22]], "scores": [0.5], "labels": [1]}, "000000000042", [3, 7]
    )
    assert results == [{"image_id": 42, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    json.dumps(results)


def test_mask_ap_segm():
    gt = _gt()
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[10:50, 10:50] = 1
    # polygon ground truth for image 1 only, evaluated on image 1
    gt["annotations"][0]["segmentation"] = [[10, 10, 50, 10, 50, 50, 10, 50]]
    gt["annotations"][1]["segmentation"] = [[50, 20, 90, 20, 90, 70, 50, 70]]
    good = [{"boxes": [[10, 10, 50, 50]], "scores": [1.0], "labels": [0], "masks": mask[None].astype(bool)}]
    assert evaluate_detection(good, gt, image_ids=[1], iou_type="segm")["AP"] == pytest.approx(1.0)
    half = mask.copy()
    half[30:50] = 0  # IoU = 800 / 1600 = 0.5 -> hit only at threshold 0.5
    bad = [{"boxes": [[10, 10, 50, 50]], "scores": [1.0], "labels": [0], "masks": half[None].astype(bool)}]
    stats = evaluate_detection(bad, gt, image_ids=[1], iou_type="segm")
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP"] == pytest.approx(0.1)


def test_real_coco_ground_truth_as_predictions_scores_one():
    coco = load_coco(COCO_TINY)
    cat_ids = sorted(coco.getCatIds())
    image_ids = coco.getImgIds()[:20]
    preds = []
    for image_id in image_ids:
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        preds.append(
            {
                "boxes": np.asarray(boxes).reshape(-1, 4),
                "scores": [1.0] * len(anns),
                "labels": [cat_ids.index(a["category_id"]) for a in anns],
            }
        )
    stats = evaluate_detection(preds, coco, image_ids=image_ids)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_coco(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_detection([{"boxes": []}], _gt(), image_ids=[99])
    with pytest.raises(ValueError, match="label 5 outside"):
        evaluate_detection([{"boxes": [[0, 0, 1, 1]], "labels": [5], "scores": [1]}], _gt(), image_ids=[1])
    with pytest.raises(ValueError, match="not a COCO integer id"):
        evaluate_detection([{"boxes": []}], _gt(), image_ids=["cat.jpg"])


def test_evaluate_detection_on_boxes_perfect_and_missing():
    import numpy as np

    from pixtok.evaluation.coco import evaluate_detection_on_boxes

    refs = [
        {"boxes": [[10, 10, 60, 50], [70, 20, 120, 90]], "labels": [0, 2], "iscrowd": [0, 0]},
        {"boxes": [[5, 5, 40, 40]], "labels": [1]},
    ]
    perfect = [
        {
            "boxes": np.array(r["boxes"], float),
            "labels": np.array(r["labels"]),
            "scores": np.ones(len(r["labels"])),
        }
        for r in refs
    ]
    assert evaluate_detection_on_boxes(perfect, refs)["AP"] == pytest.approx(1.0)
    missing = [
        dict(perfect[0], boxes=perfect[0]["boxes"][:1], labels=perfect[0]["labels"][:1], scores=np.ones(1)),
        perfect[1],
    ]
    scores = evaluate_detection_on_boxes(missing, refs)
    assert scores["AR100"] < 1.0 and scores["AP"] < 1.0
