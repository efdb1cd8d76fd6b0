"""Augmentation moves boxes, points and masks with the pixels (property tests)."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixtok.data.augment import AugmentConfig, augment, swap_left_right

CONFIG = AugmentConfig(canvas_size=96, color_jitter=0.3)


@st.composite
def scene(draw: st.DrawFn) -> tuple[int, int, list[float], list[float]]:
    width = draw(st.integers(8, 120))
    height = draw(st.integers(8, 120))
    x0 = draw(st.floats(0, width - 2))
    y0 = draw(st.floats(0, height - 2))
    x1 = draw(st.floats(x0 + 1, width))
    y1 = draw(st.floats(y0 + 1, height))
    px = draw(st.floats(x0, x1))
    py = draw(st.floats(y0, y1))
    return width, height, [x0, y0, x1, y1], [px, py]


@settings(max_examples=60, deadline=None)
@given(scene(), st.integers(0, 2**32 - 1))
def test_point_inside_box_stays_inside(case: tuple, seed: int) -> None:
    width, height, box, point = case
    image = PIL.Image.new("RGB", (width, height))
    out = augment(image, np.random.default_rng(seed), CONFIG, boxes=[box], points=[point])
    assert out.image.size == (96, 96)
    x, y = out.points[0]
    if out.keep[0] and not math.isnan(x):
        bx0, by0, bx1, by1 = out.boxes[0]
        tol = 1e-3
        assert bx0 - tol <= x <= bx1 + tol and by0 - tol <= y <= by1 + tol
    if not math.isnan(x):  # a surviving point is inside the content
        h, w = out.content_size
        assert 0 <= x <= w and 0 <= y <= h


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_pixels_boxes_and_masks_move_together(seed: int) -> None:
    # a white rectangle on black: its augmented pixels, box and mask must coincide
    width, height = 80, 50
    array = np.zeros((height, width, 3), np.uint8)
    box = [20, 10, 60, 30]
    array[10:30, 20:60] = 255
    mask = np.zeros((height, width), bool)
    mask[10:30, 20:60] = True
    config = AugmentConfig(canvas_size=64, color_jitter=0.0)
    out = augment(
        PIL.Image.fromarray(array), np.random.default_rng(seed), config, boxes=[box], masks=mask[None]
    )
    bright = np.asarray(out.image.convert("L")) > 127
    if not out.keep[0]:
        assert out.masks.shape == (0, 64, 64)
        return
    moved = out.masks[0]
    assert moved.any()
    agreement = np.count_nonzero(moved == bright) / moved.size
    assert agreement > 0.97  # only resampling edges may differ
    ys, xs = np.nonzero(moved)
    x0, y0, x1, y1 = out.boxes[0]
    assert xs.min() >= math.floor(x0) - 1 and xs.max() <= math.ceil(x1) and ys.min() >= math.floor(y0) - 1
    assert ys.max() <= math.ceil(y1)


def test_flip_mirrors_and_swaps_words() -> None:
    image = PIL.Image.new("RGB", (100, 50))
    config = AugmentConfig(canvas_size=100, scale_range=(1.0, 1.0), flip_prob=1.0, color_jitter=0.0)
    out = augment(image, np.random.default_rng(0), config, boxes=[[10, 5, 30, 25]], points=[[10, 5]],
                  texts=["the cup left of the Leftmost plate", "Right-hand side"])  # fmt: skip
    assert out.flipped
    np.testing.assert_allclose(out.boxes[0], [70, 5, 90, 25])
    np.testing.assert_allclose(out.points[0], [90, 5])
    assert out.texts == ["the cup right of the Rightmost plate", "Left-hand side"]
    assert swap_left_right("bright leftover") == "bright leftover"


def test_scale_jitter_range_and_padding() -> None:
    image = PIL.Image.new("RGB", (200, 100), (255, 255, 255))
    sizes = []
    for seed in range(40):
        config = AugmentConfig(canvas_size=100, flip_prob=0.0, color_jitter=0.0)
        out = augment(image, np.random.default_rng(seed), config)
        h, w = out.content_size
        sizes.append(w)
        pixels = np.asarray(out.image)
        assert (pixels[:h, :w] > 200).all() and (pixels[h:, :] == 0).all() and (pixels[:, w:] == 0).all()
    assert min(sizes) < 60 and max(sizes) == 100  # shrunk (0.3x) to padded, and cropped when > 1x


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
