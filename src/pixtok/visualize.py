"""Pictures of what a pixtok model wrote: boxes, captions with per-word points, referred
boxes and masks, panoptic segments, decoder cross-attention.

Every ``draw_*`` function takes a PIL image (or an (H, W, 3) uint8 array) and the matching
``post_process_*`` output, all coordinates in absolute pixels of that image (boxes xyxy, points
xy), and returns a new RGB ``PIL.Image``; :func:`render` picks the drawing for a task and
:func:`save_png` writes it. Only Pillow, numpy and matplotlib's bundled DejaVu font are used.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TASK_DRAWINGS = ("detection", "caption", "referring", "region_caption", "dense_caption", "panoptic")
"""Tasks :func:`render` knows how to draw."""


# --- colours and fonts -------------------------------------------------------------------------
def palette(n: int, saturation: float = 0.75, value: float = 0.95) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hue steps), deterministic."""
    colours = []
    for i in range(n):
        hue = (0.08 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _darker(colour: tuple[int, int, int], factor: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's bundled DejaVu Sans at ``size`` px (Pillow's default font if unavailable)."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont(
            font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"),
            fallback_to_default=True,
        )
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size=size)


def _font_size(image: Image.Image) -> int:
    return max(11, round(min(image.size) / 36))


def _as_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _numpy(value: Any, dtype: Any | None = None) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy() if dtype is not None else value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _label_box(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    font: Any,
    bounds: tuple[int, int],
) -> None:
    """A filled label whose bottom-left sits at ``xy`` (moved inside the image when needed)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 8, bottom - top + 6
    x = min(max(0.0, xy[0]), max(0.0, bounds[0] - w))
    y = xy[1] - h
    if y < 0:
        y = xy[1]
    y = min(y, max(0.0, bounds[1] - h))
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + 4 - left, y + 3 - top), text, fill=_text_colour(colour), font=font)


def _blend_mask(
    image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int], alpha: float
) -> Image.Image:
    base = np.asarray(image, dtype=np.float32)
    m = mask.astype(bool)
    if m.shape != base.shape[:2]:
        raise ValueError(f"mask {m.shape} does not match the image {base.shape[:2]} (H, W)")
    base[m] = (1 - alpha) * base[m] + alpha * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(base.astype(np.uint8))


def _mask_outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    edge = np.zeros_like(m)
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    return edge & m


# --- detection ---------------------------------------------------------------------------------
def draw_detections(
    image: Any,
    prediction: Mapping[str, Any],
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    score_threshold: float = 0.0,
    max_objects: int = 100,
) -> Image.Image:
    """Boxes with ``label score`` tags, one colour per class.

    Args:
        image: the original image.
        prediction: ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,)}``.
        id2label: class names by label id (else the id is printed).
        score_threshold: hide detections below this score.
        max_objects: draw at most this many (highest scores).
    """
    canvas = _as_image(image)
    boxes = _numpy(prediction.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    scores = _numpy(prediction.get("scores", np.ones(len(boxes))), np.float64).reshape(-1)
    labels = _numpy(prediction.get("labels", np.zeros(len(boxes))), np.int64).reshape(-1)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold][:max_objects]
    draw = ImageDraw.Draw(canvas)
    font = _font(_font_size(canvas))
    width = max(2, round(min(canvas.size) / 200))
    colours = palette(max(int(labels.max()) + 1 if len(labels) else 1, 1))
    for i in reversed(order):  # best box drawn last, on top
        colour = colours[labels[i]] if labels[i] >= 0 else (255, 255, 255)
        x0, y0, x1, y1 = boxes[i].tolist()
        draw.rectangle((x0, y0, x1, y1), outline=_darker(colour, 0.35), width=width + 2)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        names = prediction.get("names")  # open vocabulary: the generated class text
        name = str(names[i]) if names is not None else _class_name(id2label, int(labels[i]))
        _label_box(draw, (x0, y0), f"{name} {scores[i]:.2f}", colour, font, canvas.size)
    return canvas


def _class_name(id2label: Mapping[int, str] | Sequence[str] | None, label: int) -> str:
    if id2label is None:
        return str(label)
    if isinstance(id2label, Mapping):
        return str(id2label.get(label, id2label.get(str(label), label)))  # type: ignore[call-overload]
    return str(id2label[label]) if 0 <= label < len(id2label) else str(label)


# --- caption with per-word points --------------------------------------------------------------
def _wrap_words(
    widths: Sequence[float], space: float, width: int, margin: int
) -> list[list[tuple[int, float]]]:
    """Greedy line breaking of items of the given pixel widths: lines of ``(item index, x)``."""
    lines: list[list[tuple[int, float]]] = [[]]
    x = float(margin)
    for i, w in enumerate(widths):
        if lines[-1] and x + w > width - margin:
            lines.append([])
            x = float(margin)
        lines[-1].append((i, x))
        x += w + space
    return lines


def draw_caption(
    image: Any,
    caption: Mapping[str, Any],
    title: str | None = None,
    prompt_box: Sequence[float] | None = None,
) -> Image.Image:
    """The image with each word's point as a numbered dot in the word's colour, the caption below
    with every word in that colour (its number as a superscript).

    Args:
        image: the original image.
        caption: ``{"text", "words": [W str], "points": (W, 2) xy px}`` (``post_process_caption``);
            NaN points or a missing ``"points"`` draw the text only.
        title: an optional first line above the caption (e.g. the task or prompt).
        prompt_box: for region captions, the prompt box (xyxy px) drawn dashed.
    """
    canvas = _as_image(image)
    words = list(caption.get("words") or str(caption.get("text", "")).split())
    points = caption.get("points")
    points_a = (
        _numpy(points, np.float64).reshape(-1, 2) if points is not None else np.full((len(words), 2), np.nan)
    )
    if len(points_a) != len(words):
        raise ValueError(
            f"caption has {len(words)} words but {len(points_a)} points; expected one point per word"
        )
    colours = palette(max(len(words), 1))
    size = _font_size(canvas)
    draw = ImageDraw.Draw(canvas)
    if prompt_box is not None:
        _dashed_rectangle(draw, [float(v) for v in prompt_box], (255, 255, 255), max(2, size // 6))
    radius = max(6, round(size * 0.62))
    small = _font(max(8, round(radius * 1.05)), bold=True)
    # connect consecutive points with a faint trace, then the dots on top
    valid = [(i, p) for i, p in enumerate(points_a) if not np.isnan(p).any()]
    for (_, a), (_, b) in zip(valid, valid[1:]):
        draw.line(
            (float(a[0]), float(a[1]), float(b[0]), float(b[1])),
            fill=(255, 255, 255),
            width=max(1, radius // 4),
        )
    for i, (x, y) in valid:
        colour = colours[i]
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0), width=2
        )
        draw.text((x, y), str(i + 1), fill=_text_colour(colour), font=small, anchor="mm")

    font = _font(size + 2)
    sup = _font(max(8, size // 2 + 2))
    margin = max(8, size // 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_point = [not np.isnan(p).any() for p in points_a]
    word_widths = [measure.textlength(w, font=font) for w in words]
    widths = [
        ww + (measure.textlength(str(i + 1), font=sup) + 2 if has_point[i] else 0)
        for i, ww in enumerate(word_widths)
    ]
    lines = _wrap_words(widths, measure.textlength(" ", font=font), canvas.width, margin)
    line_height = round((size + 2) * 1.6)
    head = line_height if title else 0
    panel = Image.new("RGB", (canvas.width, head + line_height * len(lines) + margin * 2), (250, 250, 250))
    pdraw = ImageDraw.Draw(panel)
    y = margin
    if title:
        pdraw.text((margin, y), title, fill=(90, 90, 90), font=_font(size + 2, bold=True))
        y += line_height
    for line in lines:
        for i, x in line:
            ink = _darker(colours[i], 0.75) if has_point[i] else (120, 120, 120)
            pdraw.text((x, y), words[i], fill=ink, font=font)
            if has_point[i]:
                pdraw.text((x + word_widths[i] + 2, y - size * 0.25), str(i + 1), fill=ink, font=sup)
        y += line_height
    out = Image.new("RGB", (canvas.width, canvas.height + panel.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(panel, (0, canvas.height))
    return out


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, int, int], width: int
) -> None:
    x0, y0, x1, y1 = box
    dash = max(6, width * 4)
    for (ax, ay), (bx, by) in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = math.hypot(bx - ax, by - ay)
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min(1.0, (s + 1) / steps)
            draw.line(
                (ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
                fill=colour,
                width=width,
            )


# --- referring ---------------------------------------------------------------------------------
def draw_referring(
    image: Any,
    prediction: Mapping[str, Any],
    expression: str | None = None,
    colour: tuple[int, int, int] = (30, 144, 255),
    alpha: float = 0.45,
) -> Image.Image:
    """The referred box and (when present) its mask as a translucent overlay with an outline.

    Args:
        image: the original image.
        prediction: ``{"box": (4,) xyxy px, "mask": (H, W) bool | None}`` (``post_process_referring``).
        expression: the referring expression, written as the box's tag.
    """
    canvas = _as_image(image)
    mask = prediction.get("mask")
    if mask is not None:
        m = _numpy(mask).astype(bool)
        canvas = _blend_mask(canvas, m, colour, alpha)
        outline = _mask_outline(m)
        array = np.asarray(canvas).copy()
        array[outline] = (255, 255, 255)
        canvas = Image.fromarray(array)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = _numpy(prediction["box"], np.float64).reshape(4).tolist()
    width = max(3, round(min(canvas.size) / 150))
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=width + 2)
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
    if expression:
        _label_box(draw, (x0, y0), f'"{expression}"', colour, _font(_font_size(canvas)), canvas.size)
    return canvas


# --- dense captions ----------------------------------------------------------------------------
def draw_dense_captions(image: Any, prediction: Mapping[str, Any], max_regions: int = 10) -> Image.Image:
    """Region boxes tagged with their captions (best ``max_regions`` by score).

    Args:
        prediction: ``{"boxes": (N, 4) xyxy px, "scores": (N,), "captions": [N str]}``.
    """
    canvas = _as_image(image)
    boxes = _numpy(prediction.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    scores = _numpy(prediction.get("scores", np.ones(len(boxes))), np.float64).reshape(-1)
    captions = list(prediction.get("captions", []))
    if not len(boxes) == len(scores) == len(captions):
        raise ValueError(
            f"{len(boxes)} boxes, {len(scores)} scores, {len(captions)} captions; expected one each"
        )
    order = list(np.argsort(-scores, kind="stable"))[:max_regions]
    colours = palette(max(len(order), 1))
    draw = ImageDraw.Draw(canvas)
    font = _font(_font_size(canvas))
    width = max(2, round(min(canvas.size) / 200))
    for rank, i in reversed(list(enumerate(order))):
        x0, y0, x1, y1 = boxes[i].tolist()
        draw.rectangle((x0, y0, x1, y1), outline=colours[rank], width=width)
        _label_box(draw, (x0, y0), f"{captions[i]} ({scores[i]:.2f})", colours[rank], font, canvas.size)
    return canvas


# --- panoptic ----------------------------------------------------------------------------------
def draw_panoptic(
    image: Any,
    prediction: Mapping[str, Any],
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    alpha: float = 0.55,
) -> Image.Image:
    """Every segment filled in its own colour with white boundaries and a class tag at its centre.

    Args:
        prediction: ``{"segmentation": (H, W) ids (<= 0 = none), "segments_info": [{"id",
            "label_id" | "category_id", …}]}`` (``post_process_panoptic_segmentation``).
        id2label: names by ``label_id`` (or by ``category_id`` when segments carry that).
    """
    canvas = _as_image(image)
    seg = _numpy(prediction["segmentation"]).astype(np.int64)
    if seg.shape != (canvas.height, canvas.width):
        raise ValueError(
            f"segmentation {seg.shape} does not match the image (H, W) = {(canvas.height, canvas.width)}"
        )
    infos = list(prediction.get("segments_info", []))
    colours = palette(max(len(infos), 1), saturation=0.65)
    base = np.asarray(canvas, dtype=np.float32)
    overlay = base.copy()
    for k, info in enumerate(infos):
        m = seg == int(info["id"])
        overlay[m] = (1 - alpha) * base[m] + alpha * np.asarray(colours[k], dtype=np.float32)
    boundary = np.zeros(seg.shape, dtype=bool)
    boundary[1:, :] |= seg[1:, :] != seg[:-1, :]
    boundary[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    overlay[boundary] = 255.0
    canvas = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, _font_size(canvas) - 2))
    for k, info in enumerate(infos):
        ys, xs = np.nonzero(seg == int(info["id"]))
        if len(xs) < 0.002 * seg.size:
            continue  # too small to label legibly
        label = info.get("label_id", info.get("category_id", "?"))
        name = _class_name(id2label, int(label)) if label != "?" else "?"
        j = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))  # a pixel inside the segment
        _label_box(draw, (float(xs[j]), float(ys[j])), name, colours[k], font, canvas.size)
    return canvas


# --- attention ---------------------------------------------------------------------------------
def draw_attention(
    image: Any,
    maps: Sequence[Any],
    titles: Sequence[str] | None = None,
    columns: int = 4,
    tile: int = 256,
) -> Image.Image:
    """A grid of the image with one attention heat map each (as Pix2Seq's figure shows them).

    Args:
        image: the original image.
        maps: per panel an (h, w) non-negative attention map over the image (any grid size; it is
            stretched over the image); e.g. cross-attention averaged over layers and heads.
        titles: a caption per panel.
        columns: panels per row.
        tile: panel size in pixels (long side).
    """
    from matplotlib import colormaps

    canvas = _as_image(image)
    scale = tile / max(canvas.size)
    size = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
    small = canvas.resize(size, Image.BILINEAR)
    cmap = colormaps["inferno"]
    panels = []
    font = _font(13)
    for k, att in enumerate(maps):
        a = _numpy(att, np.float64)
        if a.ndim != 2:
            raise ValueError(f"attention map {k} must be (h, w), got shape {a.shape}")
        a = a - a.min()
        a = a / a.max() if a.max() > 0 else a
        heat = Image.fromarray((a * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
        colour = (cmap(np.asarray(heat) / 255.0)[..., :3] * 255).astype(np.float32)
        blend = 0.45 * np.asarray(small, dtype=np.float32) + 0.55 * colour
        panel = Image.new("RGB", (size[0], size[1] + 20), (255, 255, 255))
        panel.paste(Image.fromarray(blend.astype(np.uint8)), (0, 20))
        if titles is not None and k < len(titles):
            ImageDraw.Draw(panel).text((4, 3), titles[k], fill=(20, 20, 20), font=font)
        panels.append(panel)
    if not panels:
        raise ValueError("no attention maps to draw")
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    pw, ph = panels[0].size
    grid = Image.new("RGB", (cols * pw + (cols - 1) * 4, rows * ph + (rows - 1) * 4), (255, 255, 255))
    for k, panel in enumerate(panels):
        grid.paste(panel, ((k % cols) * (pw + 4), (k // cols) * (ph + 4)))
    return grid


# --- dispatch ----------------------------------------------------------------------------------
def render(task: str, image: Any, prediction: Mapping[str, Any], **kwargs: Any) -> Image.Image:
    """Draw ``prediction`` (the task's ``post_process_*`` output for one image) on ``image``.

    Args:
        task: one of :data:`TASK_DRAWINGS`.
        kwargs: passed to the drawing (``id2label``, ``expression``, ``title``, …).
    """
    if task == "detection":
        return draw_detections(image, prediction, **kwargs)
    if task in ("caption", "region_caption"):
        return draw_caption(image, prediction, **kwargs)
    if task == "referring":
        return draw_referring(image, prediction, **kwargs)
    if task == "dense_caption":
        return draw_dense_captions(image, prediction, **kwargs)
    if task == "panoptic":
        return draw_panoptic(image, prediction, **kwargs)
    raise ValueError(f"no drawing for task {task!r}; expected one of {', '.join(TASK_DRAWINGS)}")


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


__all__ = [
    "TASK_DRAWINGS",
    "draw_attention",
    "draw_caption",
    "draw_dense_captions",
    "draw_detections",
    "draw_panoptic",
    "draw_referring",
    "palette",
    "render",
    "save_png",
]
