"""The detection task's validation pictures: class names, noise objects hidden."""

import numpy as np
from PIL import Image

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.tasks import build_task
from pixtok.tasks.base import Example


def test_pictures_name_classes_and_hide_low_scores(tmp_path):
    task = build_task("detection")
    task.bind(PixtokConfig.from_preset("tiny", id2label={0: "circle", 1: "square"}))
    image = Image.fromarray(np.full((64, 64, 3), 90, np.uint8))
    example = Example(image=image, target={}, reference={}, image_id="1")
    confident = {
        "boxes": np.array([[5.0, 5.0, 30.0, 30.0]]),
        "scores": np.array([0.9]),
        "labels": np.array([1]),
    }
    with_noise = {
        "boxes": np.array([[5.0, 5.0, 30.0, 30.0], [35.0, 35.0, 60.0, 60.0]]),
        "scores": np.array([0.9, 0.02]),
        "labels": np.array([1, 0]),
    }
    kwargs = task.draw_kwargs(example, with_noise)
    assert kwargs["id2label"] == {0: "circle", 1: "square"} and kwargs["score_threshold"] == 0.3
    assert task.draw([example], [with_noise], tmp_path / "a.png")
    assert task.draw([example], [confident], tmp_path / "b.png")
    drawn = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("a", "b")]
    assert np.array_equal(drawn[0], drawn[1])  # the 0.02 noise object is not drawn
    assert not np.array_equal(drawn[0], np.asarray(image))  # the confident one is
