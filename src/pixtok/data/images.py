"""Reading image files into RGB, and checking them once at load time.

:func:`load_image` is the one way pixtok turns a file into pixels: EXIF orientation applied, any mode
(grayscale, palette, CMYK, RGBA, 16-bit, float) converted to 8-bit RGB. Loaders call
:func:`inspect_image` on every referenced file so that a missing, unreadable or truncated image is
skipped with a counted message at load time, never discovered by a crash deep in a training run.

Rows store images as ``datasets.Image(mode="RGB")``: usually just the file path (datasets decodes it
lazily, applying EXIF orientation and ``convert("RGB")`` exactly as :func:`load_image` does for
those modes). Modes that ``convert("RGB")`` would get wrong — 16-bit and float images (values
clipped, not rescaled) and images with transparency (hidden colours revealed) — are repaired once at
load time and the row carries the repaired PNG bytes instead of the path (see
:func:`needs_repair`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps

from .report import LoadReport

CHECK_MODES = ("decode", "header", "exists", "none")
"""How thoroughly loaders check image files: ``decode`` (default) decodes every image at reduced
resolution, catching truncation; ``header`` reads headers only (size, mode, EXIF); ``exists`` only
stats the file; ``none`` touches no file (path = ``images/file_name``, size from the annotation)."""

_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # rotations by 90 / 270 degrees swap w and h


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageCheck:
    """What :func:`inspect_image` learned about one file.

    Args:
        width, height (`int`): size in pixels as pixtok decodes it (after EXIF orientation);
            0 when ``check="exists"``/``"none"`` read nothing.
        mode (`str`): PIL mode of the stored pixels (``"RGB"``, ``"L"``, ``"I;16"``, …).
        exif_orientation (`int`): EXIF orientation tag (1 = upright; 0 = absent or not read).
    """

    width: int
    height: int
    mode: str
    exif_orientation: int = 0

    @property
    def needs_repair(self) -> bool:
        return needs_repair(self.mode)


def needs_repair(mode: str) -> bool:
    """Whether a PIL ``mode`` needs :func:`to_rgb` (not just ``convert("RGB")``) to look right."""
    return mode in _WIDE_MODES or mode in _ALPHA_MODES


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit integer images are rescaled (``v / 257``), 32-bit integer images are read as 16-bit data
    when their maximum fits in 16 bits and min-max scaled otherwise, float images are taken as
    ``[0, 1]`` when their maximum is at most 1 and clipped to ``[0, 255]`` otherwise; transparent
    pixels are composited over white; every other mode goes through ``convert("RGB")``.
    """
    mode = image.mode
    if mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
            values = np.nan_to_num(values) * scale
        elif mode == "I" and values.size and (values.max() > 65535 or values.min() < 0):
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / max(high - low, 1.0))
        else:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike | io.BytesIO) -> PIL.Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image.

    Args:
        path: file path (or a binary file object).

    Returns:
        A loaded ``PIL.Image`` in mode ``"RGB"``, EXIF orientation applied.

    Raises:
        ImageError: the file is missing, not an image, or truncated.
    """
    name = getattr(path, "name", path)
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            upright = PIL.ImageOps.exif_transpose(opened)
            return to_rgb(upright)
    except FileNotFoundError:
        raise ImageError(f"image file not found: {name}") from None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read image {name}: {err}") from None


def inspect_image(path: str | os.PathLike, check: str = "decode") -> ImageCheck:
    """Check one image file the way loaders do before emitting its row.

    Args:
        path: the image file.
        check: one of :data:`CHECK_MODES`.

    Returns:
        :class:`ImageCheck` with the upright size (after EXIF orientation).

    Raises:
        ImageError: missing file, unreadable header or (``check="decode"``) truncated data.
    """
    if check not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {', '.join(CHECK_MODES)}, got {check!r}")
    if check == "none":
        return ImageCheck(0, 0, "")
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    if check == "exists":
        return ImageCheck(0, 0, "")
    try:
        with PIL.Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 0) or 0)
            if check == "decode":
                if image.format == "JPEG":  # decode at 1/8 scale: reads every byte, 10x cheaper
                    image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
                image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read image {path}: {err}") from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageCheck(width, height, mode, orientation)


def encode_png(image: PIL.Image.Image) -> bytes:
    """PNG bytes of ``image`` (lossless; what repaired rows carry)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_cell(path: str, check: ImageCheck) -> dict:
    """The ``datasets.Image`` value for a checked file: its path, or repaired PNG bytes if needed."""
    if check.needs_repair:
        return {"path": None, "bytes": encode_png(load_image(path))}
    return {"path": os.fspath(path), "bytes": None}


def panoptic_ids(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: ``id = R + 256 * G + 256**2 * B``.

    Args:
        image: the RGB panoptic PNG as PIL image or ``(H, W, 3)`` uint8 array.

    Returns:
        ``(H, W)`` int64 array of segment ids (0 = unlabeled).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"panoptic image must be (H, W, 3) RGB, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def ids_to_panoptic_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`panoptic_ids`: ``(H, W)`` ids → ``(H, W, 3)`` uint8 RGB."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("panoptic ids must lie in [0, 256**3)")
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def find_image_file(images: str | os.PathLike, file_name: str) -> str | None:
    """Locate ``file_name`` (as written in an annotation file) under the ``images`` folder.

    Tries ``images/file_name``, then the last two path components (``patch8/x.jpg`` for Objects365's
    ``images/v1/patch8/x.jpg``), then the base name. Returns the first existing path or ``None``.
    """
    parts = str(file_name).replace("\\", "/").split("/")
    for tail in (parts, parts[-2:], parts[-1:]):
        candidate = os.path.join(images, *tail)
        if os.path.isfile(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class RowImage:
    """The image part of a row: ``cell`` for the ``image`` column (``None`` = no pixels) and the
    size in pixels the row's coordinates refer to."""

    cell: dict | None
    width: int | None
    height: int | None


def _pixels(value: object) -> int | None:
    """An annotation's width/height as a positive int, or None when absent or not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return int(round(value))


def row_image(
    images: str | os.PathLike | None,
    file_name: str,
    width: int | None,
    height: int | None,
    check: str,
    report: LoadReport,
    what: str,
) -> RowImage | None:
    """Find, check and (if needed) repair the image of one annotation record.

    Args:
        images: image folder, or ``None`` when the caller has no pixels (rows get ``image=None``).
        file_name: the file name the annotation gives.
        width, height: the size the annotation gives (may be ``None``).
        check: one of :data:`CHECK_MODES`.
        report: receives the counted messages.
        what: names the record in messages.

    Returns:
        A :class:`RowImage`, or ``None`` when the record must be skipped (already reported): file
        missing or unreadable. A size that disagrees with the annotation is replaced by the file's
        size (counted): row coordinates are then clipped to the real image.
    """
    width, height = _pixels(width), _pixels(height)
    if images is None:
        return RowImage(None, width, height)
    if check == "none":  # no filesystem access at all: trust the annotation file
        return RowImage({"path": os.path.join(images, file_name), "bytes": None}, width, height)
    path = find_image_file(images, file_name)
    if path is None:
        report.skip("image file missing", f"{what}: {file_name!r} not found under {images}")
        return None
    try:
        info = inspect_image(path, check)
        if not info.width:  # check "exists"/"none": trust the annotation's size
            return RowImage({"path": path, "bytes": None}, width, height)
        cell = image_cell(path, info)
    except ImageError as err:
        report.skip("unreadable image", f"{what}: {err}")
        return None
    if info.needs_repair:
        report.repair(f"{info.mode} image converted to 8-bit RGB", f"{what}: {path}")
    elif info.mode != "RGB":
        report.note(f"{info.mode} image decoded as RGB", f"{what}: {path}")
    if info.exif_orientation > 1:
        report.note(
            "EXIF-rotated image decoded upright", f"{what}: {path} (orientation {info.exif_orientation})"
        )
    if width and height and (int(width), int(height)) != (info.width, info.height):
        report.repair(
            "annotation size differs from image file",
            f"{what}: annotation says {width}x{height}, {path} decodes to {info.width}x{info.height}",
        )
    return RowImage(cell, info.width, info.height)


__all__ = [
    "CHECK_MODES",
    "ImageCheck",
    "ImageError",
    "RowImage",
    "encode_png",
    "find_image_file",
    "ids_to_panoptic_rgb",
    "image_cell",
    "inspect_image",
    "load_image",
    "needs_repair",
    "panoptic_ids",
    "row_image",
    "to_rgb",
]
