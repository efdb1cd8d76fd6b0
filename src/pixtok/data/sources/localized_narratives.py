"""Localized Narratives (image) JSONL: captions with one mouse-trace point per word.

A record (one JSON object per line) is ``{dataset_id, image_id, annotator_id, caption,
timed_caption: [{utterance, start_time, end_time}], traces: [[{x, y, t}, …], …], voice_recording}``
with ``x, y`` normalized to the image and ``t``/times in seconds on one clock.

How words get points (the PixelLLM trace target):

1. All trace points of the record are pooled and sorted by time; ``x, y`` outside ``[0, 1]`` are
   clamped (counted per point), then scaled to pixels (``x * width``, ``y * height``).
2. Each utterance is split on whitespace into ``n`` words; its time window ``[start, end]`` is cut
   into ``n`` equal half-open slices (the last one closed), word ``k`` taking slice ``k`` (speech is
   taken as uniform within an utterance). The word's point is the mean of the trace points in its
   slice (a zero-length window gives every word the mean of the points at that instant).
3. A word whose slice holds no point takes the point of its utterance window nearest in time to
   its slice centre; a word whose whole utterance window holds no point gets ``[NaN, NaN]`` —
   masked in the loss, never dropped.

``sentence_ids`` numbers sentences: a word ending in ``.``, ``!`` or ``?`` (before closing quotes or
brackets) ends one; PixelLLM trains each sentence as its own target. Rows without images (no
``images=`` folder) have ``width = height = None`` and points normalized to ``[0, 1]``.

Bad records: malformed lines, captions without timing (words from ``caption``, all points NaN),
traces with no points (all NaN), utterances with invalid times (their words NaN), missing or
unreadable images (row skipped) — each counted in the report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import datasets
import numpy as np

from ..images import row_image
from ..report import LoadReport
from ..schema import build_dataset, caption_features
from .json_files import iter_jsonl

NAN_POINT = (math.nan, math.nan)
_SENTENCE_END = (".", "!", "?")
_CLOSERS = "\"')]}»”’"


def sentence_ids(words: Sequence[str]) -> list[int]:
    """Sentence index of each word (a word ending in ``.``/``!``/``?`` closes its sentence)."""
    ids, current = [], 0
    for word in words:
        ids.append(current)
        if word.rstrip(_CLOSERS).endswith(_SENTENCE_END):
            current += 1
    return ids


def clamp_trace(points: np.ndarray, report: LoadReport, what: str) -> np.ndarray:
    """Clamp ``(N, >=2)`` normalized ``x, y`` columns into ``[0, 1]``, counting moved points."""
    xy = points[:, :2]
    outside = int(np.count_nonzero(np.any((xy < 0.0) | (xy > 1.0), axis=1)))
    if outside:
        report.repair("trace points outside [0, 1] clamped", f"{what}: {outside} points", count=outside)
        points = points.copy()
        points[:, :2] = np.clip(xy, 0.0, 1.0)
    return points


def utterance_points(
    trace: np.ndarray, start: float, end: float, num_words: int
) -> list[tuple[float, float]]:
    """One normalized point per word of an utterance spoken over ``[start, end]`` (see module doc)."""
    in_window = trace[(trace[:, 2] >= start) & (trace[:, 2] <= end)]
    if not len(in_window):
        return [NAN_POINT] * num_words
    step = (end - start) / num_words
    slot = (
        np.minimum(((in_window[:, 2] - start) / step).astype(np.int64), num_words - 1) if step > 0 else None
    )
    result = []
    for k in range(num_words):
        lo, hi = start + k * step, start + (k + 1) * step
        inside = in_window[slot == k] if slot is not None else in_window
        point = (float(inside[:, 0].mean()), float(inside[:, 1].mean())) if len(inside) else None
        if point is None:
            nearest = int(np.argmin(np.abs(in_window[:, 2] - (lo + hi) / 2)))
            point = (float(in_window[nearest, 0]), float(in_window[nearest, 1]))
        result.append(point)
    return result


def read_trace(traces: object, report: LoadReport, what: str, time_key: str = "t") -> np.ndarray:
    """Pool a record's trace segments into ``(N, 3)`` float64 ``[x, y, t]`` sorted by ``t``.

    Points lacking finite ``x``, ``y`` or time are dropped (counted); coordinates are clamped.
    """
    rows, bad = [], 0
    for segment in traces if isinstance(traces, list) else []:
        for point in segment if isinstance(segment, list) else []:
            try:
                row = (float(point["x"]), float(point["y"]), float(point[time_key]))
            except (KeyError, TypeError, ValueError):
                bad += 1
                continue
            if all(math.isfinite(v) for v in row):
                rows.append(row)
            else:
                bad += 1
    if bad:
        report.skip("malformed trace point", f"{what}: {bad} points without finite x, y, time", count=bad)
    trace = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    trace = trace[np.argsort(trace[:, 2], kind="stable")]
    return clamp_trace(trace, report, what)


def narrative_words(
    record: dict, report: LoadReport, what: str
) -> tuple[list[str], list[tuple[float, float]]]:
    """Words and normalized per-word points of one image narrative record."""
    trace = read_trace(record.get("traces"), report, what)
    timed = record.get("timed_caption")
    if not isinstance(timed, list) or not timed:
        words = str(record.get("caption") or "").split()
        report.repair("caption without timing: points masked", what)
        return words, [NAN_POINT] * len(words)
    if not len(trace):
        report.repair("traces with no points: points masked", what)
    words: list[str] = []
    points: list[tuple[float, float]] = []
    for utterance in timed:
        text = str(utterance.get("utterance", "")) if isinstance(utterance, dict) else ""
        piece = text.split()
        if not piece:
            continue
        try:
            start, end = float(utterance["start_time"]), float(utterance["end_time"])
            valid = math.isfinite(start) and math.isfinite(end) and end >= start
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            report.repair("utterance without valid timing: points masked", f"{what}: {text!r}")
            points += [NAN_POINT] * len(piece)
        else:
            points += utterance_points(trace, start, end, len(piece))
        words += piece
    return words, points


def to_pixels(
    points: Sequence[tuple[float, float]], width: int | None, height: int | None
) -> list[list[float]]:
    """Normalized points → pixels (unchanged when the size is unknown)."""
    sx, sy = (float(width), float(height)) if width and height else (1.0, 1.0)
    return [[x * sx, y * sy] for x, y in points]


def image_candidates(image_id: str) -> list[str]:
    """File names tried for an LN ``image_id``: as is (+ .jpg/.png), and COCO's zero-padded name."""
    names = [image_id, f"{image_id}.jpg", f"{image_id}.png"]
    if image_id.isdigit():
        names.append(f"{int(image_id):012d}.jpg")
    return names


def load_localized_narratives(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
) -> datasets.Dataset:
    """Load an image Localized Narratives JSONL file (one row per narrative).

    Args:
        annotations: the ``*_localized_narratives.jsonl`` file.
        images: folder with the images (``<image_id>.jpg`` or COCO's ``000000xxxxxx.jpg``).
        check_images: :data:`pixtok.data.images.CHECK_MODES`; the size is always read (points
            need it), so ``"exists"``/``"none"`` act as ``"header"``.

    Returns:
        Rows ``image, image_id, width, height, caption, words, points, sentence_ids, annotator_id``.
    """
    report = LoadReport("localized_narratives")
    check = "header" if check_images in ("exists", "none") else check_images
    names = (
        "image",
        "image_id",
        "width",
        "height",
        "caption",
        "words",
        "points",
        "sentence_ids",
        "annotator_id",
    )
    columns: dict[str, list] = {k: [] for k in names}
    if images is None:
        report.note("no image folder given: rows have image=None, points normalized", str(annotations))
    for number, record in iter_jsonl(annotations, report):
        image_id = str(record.get("image_id", ""))
        what = f"{os.path.basename(annotations)}:{number} (image {image_id})"
        if not image_id:
            report.skip("record without image_id", what)
            continue
        words, points = narrative_words(record, report, what)
        if not words:
            report.skip("empty caption", what)
            continue
        located = None
        if images is None:
            located = row_image(None, "", None, None, check, report, what)
        else:
            for name in image_candidates(image_id):
                if os.path.isfile(os.path.join(images, name)):
                    located = row_image(images, name, None, None, check, report, what)
                    break
            else:
                report.skip("image file missing", f"{what}: no {image_id}.jpg/.png under {images}")
            if located is None:
                continue
        if all(math.isnan(x) for x, _ in points):
            report.note("narrative with no word points", what)
        columns["image"].append(located.cell)
        columns["image_id"].append(image_id)
        columns["width"].append(located.width)
        columns["height"].append(located.height)
        columns["caption"].append(str(record.get("caption") or " ".join(words)))
        columns["words"].append(words)
        columns["points"].append(to_pixels(points, located.width, located.height))
        columns["sentence_ids"].append(sentence_ids(words))
        columns["annotator_id"].append(str(record.get("annotator_id", "")))
    return build_dataset(columns, caption_features(), report)


__all__ = [
    "image_candidates",
    "load_localized_narratives",
    "narrative_words",
    "read_trace",
    "sentence_ids",
    "to_pixels",
    "utterance_points",
]
