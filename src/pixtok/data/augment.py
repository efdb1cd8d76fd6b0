"""Image augmentation that moves boxes, points and masks with the pixels.

:func:`augment` applies, in order: large-scale jitter (resize so the long side is
``s * canvas_size`` with ``s ~ U(scale_range)``, default 0.3–2.0), a random crop of at most
``canvas_size x canvas_size`` pixels, a horizontal flip of the cropped content, colour jitter
(brightness, contrast, saturation; no geometry), and padding bottom/right to the square canvas
(Pix2Seq / LSJ style, so shrunken images keep small objects small after the processor's resize).

Geometry, for every coordinate (absolute pixels, xy): ``x' = x * sx - crop_x`` (then
``x'' = content_w - x'`` when flipped), ``y' = y * sy - crop_y``. Boxes (xyxy) are clipped to the
kept content; a box left with no area is dropped and ``keep`` tells which survived (index its
labels / captions / masks with it). Points leaving the content become ``NaN`` (masked, as elsewhere).
Masks use the same map with nearest-neighbour sampling.

Flip and text: a flipped image swaps the words ``left`` and ``right`` (also ``leftmost``,
``left-hand``, ``lefthand``, …, case kept) in every text passed (captions, referring expressions), so
"the dog left of the cat" stays true; texts are returned in ``texts``. Pass ``flip_prob=0`` to
disable flipping instead (e.g. for evaluation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageEnhance

_LEFT_RIGHT = re.compile(r"\b(left|right)(?=(?:most|ward|wards|side|-hand|hand|-most)?\b)", re.IGNORECASE)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings.

    Args:
        canvas_size (`int`, *optional*, defaults to 1024): side of the square output canvas, pixels.
        scale_range (`tuple[float, float]`, *optional*, defaults to (0.3, 2.0)): large-scale jitter
            range for the long side relative to ``canvas_size``.
        flip_prob (`float`, *optional*, defaults to 0.5): probability of a horizontal flip.
        color_jitter (`float`, *optional*, defaults to 0.4): brightness / contrast / saturation
            factors drawn from ``[1 - c, 1 + c]``; 0 disables.
        fill (`int`, *optional*, defaults to 0): padding value of the canvas.
    """

    canvas_size: int = 1024
    scale_range: tuple[float, float] = (0.3, 2.0)
    flip_prob: float = 0.5
    color_jitter: float = 0.4
    fill: int = 0

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.canvas_size < 1 or not 0 <= self.flip_prob <= 1 or not 0 <= self.color_jitter < 1:
            raise ValueError("need canvas_size >= 1, 0 <= flip_prob <= 1, 0 <= color_jitter < 1")


@dataclass(frozen=True)
class Augmented:
    """Result of :func:`augment` (all coordinates absolute pixels of the canvas).

    Args:
        image: ``canvas_size x canvas_size`` RGB PIL image (content top-left, padding bottom/right).
        boxes: ``(M, 4)`` float32 xyxy of the kept boxes, or ``None``.
        keep: ``(N,)`` bool, which input boxes survived (``None`` without boxes).
        points: ``(P, 2)`` float32 xy, NaN where the point left the content, or ``None``.
        masks: ``(M, canvas, canvas)`` bool masks of the kept boxes (or all ``N`` masks when no
            boxes were given), or ``None``.
        texts: the texts, left/right swapped when flipped.
        content_size: ``(h, w)`` of the non-padded content.
        flipped: whether the flip was applied.
    """

    image: PIL.Image.Image
    boxes: np.ndarray | None
    keep: np.ndarray | None
    points: np.ndarray | None
    masks: np.ndarray | None
    texts: list[str]
    content_size: tuple[int, int]
    flipped: bool


def swap_left_right(text: str) -> str:
    """Swap ``left``/``right`` (and ``leftmost``/``rightmost``, …) in ``text``, keeping case."""

    def replace(match: re.Match) -> str:
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(replace, text)


def _color_jitter(image: PIL.Image.Image, strength: float, rng: np.random.Generator) -> PIL.Image.Image:
    for enhancer in (PIL.ImageEnhance.Brightness, PIL.ImageEnhance.Contrast, PIL.ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    return image


def augment(
    image: PIL.Image.Image,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    *,
    boxes: np.ndarray | Sequence | None = None,
    points: np.ndarray | Sequence | None = None,
    masks: np.ndarray | None = None,
    texts: Sequence[str] = (),
) -> Augmented:
    """Augment one image and everything annotated on it.

    Args:
        image: RGB PIL image, ``W x H``.
        rng: the generator all random draws come from.
        config: :class:`AugmentConfig`.
        boxes: ``(N, 4)`` xyxy pixels.
        points: ``(P, 2)`` xy pixels (NaN rows stay NaN).
        masks: ``(N, H, W)`` or ``(H, W)`` bool.
        texts: captions / expressions to flip-correct.

    Returns:
        :class:`Augmented`.
    """
    width, height = image.size
    canvas = config.canvas_size
    scale = float(rng.uniform(*config.scale_range)) * canvas / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = new_w / width, new_h / height
    crop_x = int(rng.integers(0, new_w - canvas + 1)) if new_w > canvas else 0
    crop_y = int(rng.integers(0, new_h - canvas + 1)) if new_h > canvas else 0
    content_w, content_h = min(new_w, canvas), min(new_h, canvas)
    flipped = bool(rng.random() < config.flip_prob)

    def map_x(x: np.ndarray) -> np.ndarray:
        x = x * sx - crop_x
        return content_w - x if flipped else x

    def map_y(y: np.ndarray) -> np.ndarray:
        return y * sy - crop_y

    resized = image.convert("RGB").resize((new_w, new_h), PIL.Image.Resampling.BILINEAR)
    content = resized.crop((crop_x, crop_y, crop_x + content_w, crop_y + content_h))
    if flipped:
        content = content.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    if config.color_jitter:
        content = _color_jitter(content, config.color_jitter, rng)
    out = PIL.Image.new("RGB", (canvas, canvas), (config.fill,) * 3)
    out.paste(content, (0, 0))

    new_boxes = keep = None
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xs = np.sort(np.stack([map_x(b[:, 0]), map_x(b[:, 2])], axis=1), axis=1)
        ys = np.stack([map_y(b[:, 1]), map_y(b[:, 3])], axis=1)
        xs, ys = np.clip(xs, 0, content_w), np.clip(ys, 0, content_h)
        keep = (xs[:, 1] > xs[:, 0]) & (ys[:, 1] > ys[:, 0])
        new_boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)[keep].astype(np.float32)

    new_points = None
    if points is not None:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        mapped = np.stack([map_x(p[:, 0]), map_y(p[:, 1])], axis=1)
        inside = (
            (mapped[:, 0] >= 0)
            & (mapped[:, 0] <= content_w)
            & (mapped[:, 1] >= 0)
            & (mapped[:, 1] <= content_h)
        )
        new_points = np.where(inside[:, None], mapped, math.nan).astype(np.float32)

    new_masks = None
    if masks is not None:
        m = np.asarray(masks, dtype=bool)
        single = m.ndim == 2
        m = m[None] if single else m
        # nearest source pixel of every content pixel centre (inverse of the map above)
        cols = np.arange(content_w) + 0.5
        cols = (content_w - cols if flipped else cols) + crop_x
        src_x = np.clip(np.floor(cols / sx).astype(np.int64), 0, width - 1)
        src_y = np.clip(np.floor((np.arange(content_h) + 0.5 + crop_y) / sy).astype(np.int64), 0, height - 1)
        new_masks = np.zeros((m.shape[0], canvas, canvas), dtype=bool)
        new_masks[:, :content_h, :content_w] = m[:, src_y[:, None], src_x[None, :]]
        if keep is not None and len(keep) == len(new_masks):
            new_masks = new_masks[keep]
        if single:
            new_masks = new_masks[0]

    new_texts = [swap_left_right(t) if flipped else t for t in texts]
    return Augmented(out, new_boxes, keep, new_points, new_masks, new_texts, (content_h, content_w), flipped)


__all__ = ["AugmentConfig", "Augmented", "augment", "swap_left_right"]
