import numpy as np
import pytest

from pixtok.evaluation.traces import trace_l1


def test_perfect_trace_scores_zero_and_words_without_points_are_skipped():
    gt = np.array([[10.0, 20.0], [np.nan, np.nan], [30.0, 40.0]])
    pred = np.array([[10.0, 20.0], [99.0, 99.0], [30.0, 40.0]])
    out = trace_l1([pred], [gt], image_sizes=[(100, 200)])
    assert out["trace_l1"] == 0.0 and out["num_words"] == 2


def test_shifted_trace_normalizes_by_width_and_height():
    # image h=100, w=200; the first word is off by 20 px in x (0.1) and 10 px in y (0.1)
    gt = np.array([[10.0, 20.0], [30.0, 40.0]])
    pred = np.array([[30.0, 30.0], [30.0, 40.0]])
    out = trace_l1([pred], [gt], image_sizes=[(100, 200)])
    assert out["trace_l1"] == pytest.approx((0.1 + 0.1 + 0 + 0) / 4)
    assert out["trace_point_l1"] == pytest.approx((0.2 + 0.0) / 2)


def test_missing_predicted_point_is_the_worst_case_and_counted():
    gt = np.array([[0.2, 0.2]])
    out = trace_l1([np.array([[np.nan, np.nan]])], [gt])
    assert out["trace_l1"] == 1.0 and out["num_missing"] == 1


def test_mismatched_words_raise():
    with pytest.raises(ValueError, match="word by word"):
        trace_l1([np.zeros((2, 2))], [np.zeros((3, 2))])
    with pytest.raises(ValueError, match="undefined"):
        trace_l1([np.zeros((1, 2))], [np.full((1, 2), np.nan)])
