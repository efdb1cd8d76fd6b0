import numpy as np
import pytest
import torch

from pixtok.evaluation.referring import evaluate_referring, paired_box_iou, pairwise_box_iou


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(paired_box_iou(a, b), [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(pairwise_box_iou(a[:1], b), [[1.0, 50 / 150, 0.0]])


def test_precision_at_half_counts_hits():
    gt = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float)
    pred = gt.clone()
    pred[1] = torch.tensor([0, 0, 10, 5])  # IoU 0.5 -> a hit (>=)
    pred[2] = torch.tensor([0, 0, 10, 4])  # IoU 0.4 -> miss
    pred[3] = torch.tensor([50, 50, 60, 60])  # miss
    scores = evaluate_referring(pred, gt)
    assert scores["precision@0.5"] == pytest.approx(0.5)
    assert scores["mean_box_iou"] == pytest.approx((1 + 0.5 + 0.4 + 0) / 4)
    assert "cIoU" not in scores


def test_cumulative_and_mean_iou_differ_as_defined():
    gt1 = np.zeros((10, 10), bool)
    gt1[:, :] = True  # 100 px
    pred1 = gt1.copy()
    pred1[:5] = False  # I=50, U=100
    gt2 = np.zeros((4, 4), bool)
    gt2[:2, :2] = True  # 4 px
    pred2 = gt2.copy()  # I=4, U=4
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    scores = evaluate_referring(boxes, boxes, [pred1, pred2], [gt1, gt2])
    assert scores["cIoU"] == pytest.approx((50 + 4) / (100 + 4))
    assert scores["mIoU"] == pytest.approx((0.5 + 1.0) / 2)
    perfect = evaluate_referring(boxes, boxes, [gt1, gt2], [gt1, gt2])
    assert perfect["cIoU"] == 1.0 and perfect["mIoU"] == 1.0 and perfect["precision@0.5"] == 1.0
    missing = evaluate_referring(boxes, boxes, [None, gt2], [gt1, gt2])
    assert missing["mIoU"] == pytest.approx(0.5) and missing["cIoU"] == pytest.approx(4 / 104)


def test_bad_input_is_a_clear_error():
    box = np.array([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="differ in size"):
        evaluate_referring(box, box, [np.ones((3, 3), bool)], [np.ones((4, 4), bool)])
    with pytest.raises(ValueError, match="empty"):
        evaluate_referring(box, box, [np.ones((3, 3), bool)], [np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="both"):
        evaluate_referring(box, box, [np.ones((3, 3), bool)], None)
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_referring(box, np.zeros((2, 4)))


def test_referring_task_scores_the_token_box_beside_the_head_box():
    """The task's headline is the box head's box; the decoder's own coordinate tokens get
    ``token_*`` scores, so a head that lags the tokens (or the reverse) shows in the metrics."""
    from pixtok.tasks.base import Example
    from pixtok.tasks.referring import ReferringTask

    gt = np.array([10.0, 10.0, 50.0, 50.0])
    examples = [Example(image=None, reference={"box": gt, "mask": None}) for _ in range(2)]
    predictions = [
        {"box": torch.tensor([60.0, 60.0, 90.0, 90.0]), "token_box": torch.tensor([10.0, 10.0, 50.0, 50.0])},
        {"box": torch.tensor([10.0, 10.0, 50.0, 50.0]), "token_box": torch.tensor([12.0, 10.0, 50.0, 50.0])},
    ]
    scores = ReferringTask().score(predictions, examples)
    assert scores["precision@0.5"] == pytest.approx(0.5)
    assert scores["token_precision@0.5"] == pytest.approx(1.0)
    assert scores["token_mean_box_iou"] == pytest.approx((1.0 + 38 * 40 / 1600) / 2)
    assert "token_num_expressions" not in scores
    # predictions without token boxes (an older processor) score the head's box only
    plain = ReferringTask().score([{"box": p["box"]} for p in predictions], examples)
    assert not any(key.startswith("token_") for key in plain)
