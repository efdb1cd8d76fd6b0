"""A task's ``generate`` option: the decoding keywords its evaluation passes to ``model.generate``."""

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.processing_pixtok import PixtokProcessor
from pixtok.tasks import build_task
from pixtok.tasks.base import Example


class Stop(Exception):
    pass


class SpyModel:
    """Records ``generate``'s keywords, then stops (the post-processing is not under test)."""

    device = torch.device("cpu")

    def __init__(self):
        self.kwargs = None

    def generate(self, **kwargs):
        self.kwargs = kwargs
        raise Stop


@pytest.fixture(scope="module")
def processor():
    return PixtokProcessor.from_preset("tiny", class_names=["circle", "square"])


def _decoding(task, processor, **options):
    example = Example(image=Image.fromarray(np.zeros((32, 32, 3), np.uint8)), target={}, image_id="0")
    model = SpyModel()
    with pytest.raises(Stop):
        task.predict(model, processor, [example], max_new_tokens=11, **options)
    return {k: v for k, v in model.kwargs.items() if not torch.is_tensor(v)}


def test_task_generate_option_reaches_generate_and_a_call_overrides_it(processor):
    plain = build_task("detection")
    assert _decoding(plain, processor) == {"max_new_tokens": 11}  # the model's defaults
    greedy = build_task("detection", generate={"do_sample": False, "rank_against_noise": False})
    assert _decoding(greedy, processor) == {
        "max_new_tokens": 11,
        "do_sample": False,
        "rank_against_noise": False,
    }
    assert _decoding(greedy, processor, do_sample=True)["do_sample"] is True


@pytest.mark.parametrize("bad", [{"beams": 4}, ["do_sample"], {"do_sample": False, "top_k": 5}])
def test_unknown_generate_keywords_are_refused_up_front(bad):
    with pytest.raises(ValueError, match="option 'generate'"):
        build_task("detection", generate=bad)
