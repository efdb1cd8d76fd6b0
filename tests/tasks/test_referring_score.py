"""ReferringTask.score: P@0.5 split by relational and attribute-only expressions."""

import numpy as np

from pixtok.tasks import build_task
from pixtok.tasks.base import Example
from pixtok.tasks.referring import has_relation


def test_relation_words_are_whole_words():
    assert has_relation("the red square left of the blue circle")
    assert has_relation("Man on the RIGHT")
    assert not has_relation("the bright red square")  # "bright" is not "right"
    assert not has_relation("the small hexagon")


def test_score_splits_precision_by_relation():
    task = build_task("referring")
    gt = np.array([0, 0, 10, 10], dtype=np.float64)
    texts = ["the square", "the red square", "the square left of the circle", "the circle above the square"]
    examples = [Example(image=None, text=t, target={}, reference={"box": gt, "mask": None}) for t in texts]
    far = gt + 20
    predictions = [{"box": gt}, {"box": far}, {"box": gt}, {"box": gt}]  # one miss, attribute-only
    scores = task.score(predictions, examples)
    assert scores["precision@0.5"] == 0.75
    assert scores["precision@0.5/attribute"] == 0.5 and scores["num_expressions/attribute"] == 2
    assert scores["precision@0.5/relation"] == 1.0 and scores["num_expressions/relation"] == 2
    assert scores["far_miss_rate"] == 0.25 and scores["near_miss_rate"] == 0.0  # the miss is 20 px away
    loose = [{"box": np.array([0, 0, 10, 30.0])}] * 4  # IoU 1/3 with every ground truth
    scores = task.score(loose, examples)
    assert scores["near_miss_rate"] == 1.0 and scores["far_miss_rate"] == 0.0


def test_mask_box_is_the_masks_tight_box_and_is_scored_beside_the_head_box():
    import torch

    from pixtok.model.processing_pixtok import mask_box

    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[4:9, 10:13] = True  # rows 4-8, columns 10-12
    assert mask_box(mask).tolist() == [10, 4, 13, 9]
    assert mask_box(torch.zeros(5, 5, dtype=torch.bool)) is None and mask_box(None) is None
    task = build_task("referring")
    gt = np.array([10, 4, 13, 9], dtype=np.float64)
    examples = [Example(image=None, text="the dot", target={}, reference={"box": gt, "mask": None})] * 2
    predictions = [
        {"box": gt + 5, "mask_box": mask_box(mask)},  # head box off, mask box right
        {"box": gt, "mask_box": None},  # no mask: the head's box stands in
    ]
    scores = task.score(predictions, examples)
    assert scores["precision@0.5"] == 0.5 and scores["mask_box_precision@0.5"] == 1.0
