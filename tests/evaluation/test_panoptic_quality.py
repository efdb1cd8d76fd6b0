import numpy as np
import pytest

from pixtok.evaluation.panoptic_quality import evaluate_panoptic, id_to_rgb, load_coco_panoptic, rgb_to_id

SAMPLE = "/work/shared/data/coco_panoptic_sample"
CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}, {"id": 3, "isthing": 1}]


def _halves():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1
    gt[:, 5:] = 2
    return {
        "segmentation": gt,
        "segments_info": [
            {"id": 1, "category_id": 1, "iscrowd": 0},
            {"id": 2, "category_id": 2, "iscrowd": 0},
        ],
    }


def test_real_coco_panoptic_sample_scores_one_against_itself():
    images, categories = load_coco_panoptic(f"{SAMPLE}/panoptic_examples.json", f"{SAMPLE}/panoptic_examples")
    assert len(images) == 2
    preds = [{"segmentation": im["segmentation"], "segments_info": im["segments_info"]} for im in images]
    out = evaluate_panoptic(preds, images, categories)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert out[key] == pytest.approx(1.0), key
    assert out["n_th"] > 0 and out["n_st"] > 0


def test_real_sample_with_one_segment_dropped():
    images, categories = load_coco_panoptic(f"{SAMPLE}/panoptic_examples.json", f"{SAMPLE}/panoptic_examples")
    image = images[0]
    dropped = next(s for s in image["segments_info"] if not s["iscrowd"])
    seg = image["segmentation"].copy()
    seg[seg == dropped["id"]] = 0
    pred = {
        "segmentation": seg,
        "segments_info": [s for s in image["segments_info"] if s["id"] != dropped["id"]],
    }
    out = evaluate_panoptic([pred], [image], categories)
    # that category: one FN more. If it has t matched segments, its PQ = RQ = t / (t + 0.5)
    same = [
        s for s in image["segments_info"] if s["category_id"] == dropped["category_id"] and not s["iscrowd"]
    ]
    t = len(same) - 1
    present = {s["category_id"] for s in image["segments_info"] if not s["iscrowd"]}
    expected_pq = (len(present) - 1 + t / (t + 0.5)) / len(present)
    assert out["PQ"] == pytest.approx(expected_pq)
    assert out["SQ"] == pytest.approx((len(present) - 1 + (1.0 if t else 0.0)) / len(present))


def test_shifted_boundary_hand_computed():
    gt = _halves()
    pred = np.zeros((10, 10), np.int64)
    pred[:, :6] = 7  # 60 px, 50 on GT segment 1 -> IoU 50/60
    pred[:, 6:] = 9  # 40 px, all on GT segment 2 (50 px) -> IoU 40/50
    out = evaluate_panoptic(
        [{"segmentation": pred, "segments_info": [{"id": 7, "category_id": 1}, {"id": 9, "category_id": 2}]}],
        [gt],
        CATEGORIES,
    )
    assert out["PQ"] == pytest.approx((50 / 60 + 40 / 50) / 2) and out["RQ"] == 1.0
    assert out["PQ_th"] == pytest.approx(50 / 60) and out["PQ_st"] == pytest.approx(0.8)
    assert out["n"] == 2  # category 3 never occurs and is not averaged


def test_void_pixels_leave_the_union_and_wrong_class_is_fp_and_fn():
    gt = _halves()
    gt["segmentation"][:2, :] = 0  # VOID rows; GT areas now 40 and 40
    pred = np.full((10, 10), 5, np.int64)
    pred[:, 5:] = 6
    segs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]  # right half: wrong class
    out = evaluate_panoptic([{"segmentation": pred, "segments_info": segs}], [gt], CATEGORIES)
    # left: I = 40, U = 50 + 40 - 40 - 10 (void) = 40 -> IoU 1. Right: class 3 FP, class 2 FN.
    assert out["PQ"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert out["SQ"] == pytest.approx(1 / 3) and out["RQ"] == pytest.approx(1 / 3)


def test_unmatched_prediction_on_crowd_is_ignored():
    gt = _halves()
    gt["segments_info"][0]["iscrowd"] = 1  # left half: a crowd of category 1
    pred = np.zeros((10, 10), np.int64)
    pred[:, :4] = 3  # category 1 prediction inside the crowd: ignored, not a FP
    pred[:, 5:] = 4
    segs = [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 2}]
    out = evaluate_panoptic([{"segmentation": pred, "segments_info": segs}], [gt], CATEGORIES)
    assert out["PQ"] == pytest.approx(1.0) and out["n"] == 1


def test_pixtok_label_ids_and_negative_void():
    gt = _halves()
    pred = gt["segmentation"].copy()
    pred[0, 0] = -1
    segs = [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 1}]
    out = evaluate_panoptic(
        [{"segmentation": pred, "segments_info": segs}], [gt], CATEGORIES, label_to_category=[1, 2]
    )
    assert out["PQ"] == pytest.approx((49 / 50 + 1.0) / 2)
    with pytest.raises(ValueError, match="label_to_category"):
        evaluate_panoptic([{"segmentation": pred, "segments_info": segs}], [gt], CATEGORIES)


def test_rgb_ids_round_trip_and_bad_input():
    ids = np.array([[0, 1, 256], [65536, 3937500, 7]])
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    gt = _halves()
    with pytest.raises(ValueError, match="not in segments_info"):
        evaluate_panoptic(
            [{"segmentation": gt["segmentation"], "segments_info": [{"id": 1, "category_id": 1}]}],
            [gt],
            CATEGORIES,
        )
    with pytest.raises(ValueError, match="differ in size"):
        evaluate_panoptic([{"segmentation": np.zeros((3, 3)), "segments_info": []}], [gt], CATEGORIES)
    with pytest.raises(FileNotFoundError):
        load_coco_panoptic("/nonexistent.json", SAMPLE)


def test_label_outside_the_categories_is_a_clear_error():
    gt = _halves()
    segs = [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 7}]
    with pytest.raises(ValueError, match="label_id 7 outside the 2 known categories"):
        evaluate_panoptic(
            [{"segmentation": gt["segmentation"], "segments_info": segs}], [gt], CATEGORIES, [1, 2]
        )
