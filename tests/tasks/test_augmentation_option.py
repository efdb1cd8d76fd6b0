"""Training augmentation as tasks use it: the per-task ``augmentation`` option, and targets that
must stay in the picture (a referred object, a region prompt)."""

import numpy as np
import pytest
from PIL import Image

from pixtok.tasks import build_task
from pixtok.tasks.base import AUGMENT_ATTEMPTS

SIZE = 128
BOX = np.array([100.0, 6.0, 122.0, 28.0], dtype=np.float32)  # top-right corner: crops often cut it


def _scene() -> Image.Image:
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    x0, y0, x1, y1 = BOX.astype(int)
    pixels[y0:y1, x0:x1] = (230, 20, 20)  # the target, the only red in the picture
    pixels[60:90, 10:40] = (20, 20, 230)  # another object, blue
    return Image.fromarray(pixels)


def _red_fraction(image: Image.Image, box: np.ndarray) -> float:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    x0, y0 = np.floor(box[:2]).astype(int)
    x1, y1 = np.ceil(box[2:]).astype(int)
    inside = pixels[max(y0, 0) : y1, max(x0, 0) : x1]
    if inside.size == 0:
        return 0.0
    red = (inside[..., 0] > inside[..., 2] + 60) & (inside[..., 0] > 60)
    return float(red.mean())


def _blue_center_x(image: Image.Image) -> float:
    """x of the blue object's centroid; NaN when a crop left it out (every comparison is then False)."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((pixels[..., 2] > pixels[..., 0] + 60) & (pixels[..., 2] > 60))
    return float(xs.mean()) if len(xs) else float("nan")


def test_referring_target_always_sits_on_its_object_after_augmentation():
    task = build_task("referring", augment=True, image_size=SIZE)
    row = {"image": _scene(), "expressions": ["the red square right of the blue square"], "box": BOX.tolist()}
    flipped = 0
    for seed in range(60):
        example = task.example(row, 0, np.random.default_rng(seed))
        box = np.asarray(example.target["box"])
        assert example.image.size == (SIZE, SIZE)
        assert 0 <= box[0] < box[2] <= SIZE and 0 <= box[1] < box[3] <= SIZE, (seed, box)
        # the box covers red pixels: a crop that lost the object must not keep its old coordinates
        assert _red_fraction(example.image, box) > 0.5, (seed, box)
        # a flip swaps the relation word with the pixels
        flipped += "left of" in example.text
        anchor = _blue_center_x(example.image)
        if not np.isnan(anchor):  # the default jitter's crop may leave the anchor out
            assert ("left of" in example.text) == ((box[0] + box[2]) / 2 < anchor), (seed, example.text, box)
    assert 0 < flipped < 60


def test_region_prompt_box_always_sits_on_its_region_after_augmentation():
    task = build_task("region_caption", augment=True, image_size=SIZE)
    row = {"image": _scene(), "regions": {"boxes": [BOX.tolist()], "captions": ["a red square on the right"]}}
    for seed in range(60):
        example = task.example(row, 0, np.random.default_rng(seed))
        assert _red_fraction(example.image, np.asarray(example.box)) > 0.5, seed
        anchor = _blue_center_x(example.image)
        if not np.isnan(anchor):
            assert ("on the left" in example.target["text"]) == (
                (example.box[0] + example.box[2]) / 2 < anchor
            ), seed


def test_keep_boxes_falls_back_to_a_plain_resize_when_no_draw_keeps_the_target(monkeypatch):
    import pixtok.tasks.geometry as geometry

    task = build_task("referring", augment=True, image_size=64)
    real = geometry.augment_example_image
    calls = []

    def losing(image, rng, image_size, *, settings=None, **annotations):
        calls.append(settings)
        image, out = real(image, rng, image_size, settings=settings, **annotations)
        if settings is task.augmentation:  # every random draw "loses" the target
            out = {**out, "keep": np.zeros(0, dtype=np.int64)}
        return image, out

    monkeypatch.setattr(geometry, "augment_example_image", losing)
    row = {"image": _scene(), "expressions": ["the red square right of the blue square"], "box": BOX.tolist()}
    example = task.example(row, 0, np.random.default_rng(0))
    assert len(calls) == AUGMENT_ATTEMPTS + 1
    np.testing.assert_allclose(example.target["box"], BOX / 2, atol=1e-4)  # 128 -> 64, nothing else
    assert example.text == row["expressions"][0]
    assert example.image.size == (64, 64)


def test_augmentation_option_sets_the_jitter():
    row = {"image": _scene(), "objects": {"boxes": [BOX.tolist()], "labels": [0]}}
    identity = build_task(
        "detection",
        augment=True,
        augmentation={"scale_range": [1.0, 1.0], "flip_prob": 0.0, "color_jitter": 0.0},
    )
    for seed in range(5):
        example = identity.example(row, 0, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.asarray(example.image), np.asarray(row["image"]))
        np.testing.assert_allclose(example.target["boxes"], BOX[None])
    half = build_task("detection", augment=True, augmentation={"scale_range": [0.5, 0.5], "flip_prob": 0.0})
    example = half.example(row, 0, np.random.default_rng(0))
    assert example.image.size == (SIZE, SIZE)  # shrunk content, padded to the canvas
    np.testing.assert_allclose(example.target["boxes"], BOX[None] / 2, atol=1e-4)
    default = build_task("detection", augment=True)
    heights = set()
    for seed in range(20):
        boxes = default.example(row, 0, np.random.default_rng(seed)).target["boxes"]
        heights |= {round(float(b[3] - b[1]), 1) for b in boxes if b[1] > 0 and b[3] < SIZE}  # uncut
    assert len(heights) > 3  # the default large-scale jitter varies the scale


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": [0.5, 1.0]},
        {"scale_range": 0.5},
        {"scale_range": [1.0, 0.5]},
        {"flip_prob": 2.0},
        {"color_jitter": 1.0},
        ["scale_range"],
    ],
)
def test_bad_augmentation_options_are_refused_up_front(bad):
    with pytest.raises(ValueError, match="augmentation|scale_range|flip_prob"):
        build_task("referring", augmentation=bad)
