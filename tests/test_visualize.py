import numpy as np
import pytest
import torch
from PIL import Image

from pixtok import visualize as V


def _grey(h: int = 120, w: int = 160) -> Image.Image:
    return Image.new("RGB", (w, h), (128, 128, 128))


def test_palette_is_distinct_and_deterministic():
    colours = V.palette(12)
    assert len(set(colours)) == 12 and colours == V.palette(12)


def test_detection_box_is_drawn_in_its_class_colour():
    pred = {
        "boxes": torch.tensor([[20.0, 60.0, 100.0, 110.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
    }
    out = np.asarray(V.draw_detections(_grey(), pred, id2label=["a", "b", "car"]))
    colour = V.palette(3)[2]
    assert tuple(out[85, 20]) == colour  # left edge, below the label tag
    assert tuple(out[85, 60]) == (128, 128, 128)  # inside untouched
    hidden = np.asarray(V.draw_detections(_grey(), pred, score_threshold=0.95))
    assert (hidden == 128).all()


def test_caption_points_are_dots_in_word_colours_and_text_panel_added():
    img = _grey()
    words = ["a", "dog", "runs"]
    points = np.array([[30.0, 30.0], [np.nan, np.nan], [120.0, 90.0]])
    out = V.draw_caption(img, {"text": "a dog runs", "words": words, "points": points})
    assert out.width == img.width and out.height > img.height  # caption panel below
    arr = np.asarray(out)
    colours = V.palette(3)
    # the dot's rim (inside the circle, away from the centred number) has the word's colour
    assert tuple(arr[30, 30 - 5]) == colours[0]
    assert tuple(arr[90, 120 - 5]) == colours[2]
    assert tuple(arr[5, 5]) == (128, 128, 128)
    with pytest.raises(ValueError, match="one point per word"):
        V.draw_caption(img, {"words": words, "points": points[:2]})


def test_referring_mask_overlay_only_inside_the_mask():
    mask = np.zeros((120, 160), bool)
    mask[40:80, 50:100] = True
    out = np.asarray(
        V.draw_referring(_grey(), {"box": [50, 40, 100, 80], "mask": mask}, expression="the thing")
    )
    assert tuple(out[60, 75]) != (128, 128, 128)  # inside: tinted
    assert tuple(out[110, 10]) == (128, 128, 128)  # far outside: untouched
    with pytest.raises(ValueError, match="does not match the image"):
        V.draw_referring(_grey(), {"box": [0, 0, 1, 1], "mask": np.ones((10, 10), bool)})


def test_panoptic_segments_get_distinct_colours():
    seg = np.zeros((120, 160), np.int64)
    seg[:, 80:] = 5
    seg[:, :80] = 3
    infos = [{"id": 3, "label_id": 0}, {"id": 5, "label_id": 1}]
    out = np.asarray(
        V.draw_panoptic(_grey(), {"segmentation": seg, "segments_info": infos}, id2label=["sky", "grass"])
    )
    assert tuple(out[110, 10]) != tuple(out[110, 150])
    assert tuple(out[60, 80]) == (255, 255, 255)  # boundary
    with pytest.raises(ValueError, match="does not match"):
        V.draw_panoptic(_grey(), {"segmentation": seg[:10], "segments_info": infos})


def test_attention_grid_and_render_dispatch(tmp_path):
    grid = V.draw_attention(_grey(), [np.eye(4), np.ones((4, 4))], titles=["obj 1", "obj 2"], tile=64)
    assert grid.width > 64 * 2 - 1
    path = V.save_png(
        V.render("dense_caption", _grey(), {"boxes": [[1, 1, 50, 50]], "scores": [0.5], "captions": ["x"]}),
        tmp_path / "a" / "b.png",
    )
    assert Image.open(path).format == "PNG"
    with pytest.raises(ValueError, match="no drawing for task"):
        V.render("segmentation!", _grey(), {})


def test_open_vocabulary_names_are_drawn():
    pred = {"boxes": [[20.0, 60.0, 100.0, 110.0]], "scores": [0.9], "labels": [-1], "names": ["zebra"]}
    out = np.asarray(V.draw_detections(_grey(), pred))
    assert tuple(out[85, 20]) == (255, 255, 255)  # unknown label: white box
