import numpy as np
import pytest

from pixtok.evaluation.dense_captions import evaluate_dense_captions, inclusive_box_iou, merge_ground_truth


def test_ground_truth_merges_at_iou_0_7():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]]  # first two: IoU 100/110
    merged, refs = merge_ground_truth(boxes, ["a cat", "the cat", "a dog"])
    order = np.argsort(merged[:, 0])
    np.testing.assert_allclose(merged[order], [[0, 0, 10, 10.5], [50, 50, 60, 60]])
    assert sorted(map(sorted, refs)) == [["a cat", "the cat"], ["a dog"]]


def test_perfect_predictions_score_one():
    gt = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "captions": ["a red apple", "a green bowl"]},
        {"boxes": [[5, 5, 50, 50]], "captions": ["a man riding a bike"]},
    ]
    preds = [
        {
            "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]],
            "scores": [0.9, 0.8],
            "captions": ["a red apple", "a green bowl"],
        },
        {"boxes": [[5, 5, 50, 50]], "scores": [0.7], "captions": ["a man riding a bike"]},
    ]
    out = evaluate_dense_captions(preds, gt, use_meteor=False)
    assert out["mAP"] == pytest.approx(1.0) and out["detection_AP"] == pytest.approx(1.0)
    assert out["num_ground_truth"] == 3 and len(out["ap_per_threshold"]) == 30
    assert "fallback" in out["similarity"]


def test_inclusive_iou_is_densecaps():
    # pixel-inclusive: [0, 0, 10, 10] has area 11 * 11 = 121; [0, 0, 10, 3.5] has 11 * 4.5 = 49.5
    np.testing.assert_allclose(
        inclusive_box_iou([[0, 0, 10, 10]], [[0, 0, 10, 3.5], [20, 20, 30, 30]]), [[49.5 / 121, 0.0]]
    )


def test_loose_box_and_duplicate_count_only_at_low_iou():
    gt = [{"boxes": [[0, 0, 10, 10]], "captions": ["a red apple"]}]
    # IoU 49.5 / 121 = 0.41: a hit at IoU thresholds 0.3 and 0.4 only;
    # the second prediction takes the same GT box again: a duplicate, never a hit.
    preds = [
        {"boxes": [[0, 0, 10, 3.5], [0, 0, 10, 10]], "scores": [0.9, 0.8], "captions": ["a red apple"] * 2}
    ]
    out = evaluate_dense_captions(preds, gt, use_meteor=False)
    assert out["mAP"] == pytest.approx(2 / 5)
    assert out["ap_per_threshold"]["iou=0.4,meteor=0.25"] == pytest.approx(1.0)
    assert out["ap_per_threshold"]["iou=0.5,meteor=0"] == pytest.approx(0.0)


def test_prediction_overlapping_nothing_does_not_take_a_box():
    gt = [{"boxes": [[0, 0, 10, 10]], "captions": ["a red apple"]}]
    preds = [
        {"boxes": [[50, 50, 60, 60], [0, 0, 10, 10]], "scores": [0.9, 0.8], "captions": ["a red apple"] * 2}
    ]
    # first: no overlap -> false positive (and the GT box stays free); second: true positive at rank 2
    assert evaluate_dense_captions(preds, gt, use_meteor=False)["mAP"] == pytest.approx(0.5)


def test_caption_similarity_thresholds():
    gt = [{"boxes": [[0, 0, 10, 10]], "captions": ["a man riding a red bike down the street"]}]
    preds = [{"boxes": [[0, 0, 10, 10]], "scores": [1.0], "captions": ["a dog"]}]
    # exact-match fallback: 1 match, P = 1/2, R = 1/9, F = 10PR / (R + 9P), 1 chunk -> x (1 - 0.5)
    p, r = 1 / 2, 1 / 9
    similarity = 10 * p * r / (r + 9 * p) * 0.5
    assert 0.05 < similarity < 0.1
    out = evaluate_dense_captions(preds, gt, use_meteor=False)
    assert out["mAP"] == pytest.approx(2 / 6)  # passes METEOR thresholds 0 and 0.05 only
    assert out["detection_AP"] == pytest.approx(1.0)


def test_false_positive_ranked_first_halves_precision():
    gt = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "captions": ["a cat", "a dog"]},
        {"boxes": [], "captions": []},
    ]
    preds = [
        {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "captions": ["a cat"]},
        {"boxes": [[0, 0, 5, 5]], "scores": [0.95], "captions": ["a cat"]},  # image without GT
    ]
    out = evaluate_dense_captions(preds, gt, use_meteor=False)
    # precision 0.5 at recall 0.5 -> interpolated 0.5 for r in {0, …, 0.5} (51 of 101 points)
    assert out["mAP"] == pytest.approx(0.5 * 51 / 101)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="one of each per region"):
        evaluate_dense_captions(
            [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "captions": []}], [{"boxes": [], "captions": []}]
        )
    with pytest.raises(ValueError, match="ground-truth images"):
        evaluate_dense_captions([], [{"boxes": [], "captions": []}])
