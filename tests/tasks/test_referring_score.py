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
