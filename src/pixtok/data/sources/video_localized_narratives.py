"""Video Localized Narratives JSONL: one caption per actor, words timed, traces on keyframes.

A record is one video narrative ``{vidln_id, dataset_id, video_id, keyframe_names, annotator_id,
actor_narratives: [{actor_name, caption, traces: [[{x, y, time_ms_since_epoch, kf_idx}]],
time_alignment: [{referenced_word, referenced_word_start_idx, start_ms, end_ms}],
recording_start_time_ms_since_epoch, keyframe_selection_indices, noun_segments, …}]}``.

One row per actor narrative. ``words`` are the caption split on whitespace; a word is timed by the
``time_alignment`` entry whose ``referenced_word_start_idx`` falls inside it, its window being
``recording_start_time_ms_since_epoch + [start_ms, end_ms]`` on the traces' clock. The word's point
is the mean of the trace points inside that window (clamped to ``[0, 1]``); an untimed word or an
empty window gives ``[NaN, NaN]`` (masked). ``keyframes`` gives, per word, the ``kf_idx`` most of
those points were drawn on (``-1`` when none).

Keyframe images are not part of the annotation release: with ``images=None`` rows have
``image = None``, ``width = height = None`` and points normalized to ``[0, 1]`` (counted as a note).
With ``images=`` (a folder of ``<video_id>/<keyframe_name>.jpg``), the row's image is the keyframe
holding most of the actor's trace points and points are in its pixels.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import datasets
import numpy as np

from ..images import row_image
from ..report import LoadReport
from ..schema import build_dataset, caption_features
from .json_files import iter_jsonl
from .localized_narratives import NAN_POINT, clamp_trace, sentence_ids, to_pixels

VIDEO_EXTRA_FEATURES = {
    "video_id": datasets.Value("string"),
    "dataset_id": datasets.Value("string"),
    "actor_name": datasets.Value("string"),
    "keyframe_names": datasets.Sequence(datasets.Value("string")),
    "keyframes": datasets.Sequence(datasets.Value("int32")),
}


def _actor_trace(traces: object, report: LoadReport, what: str) -> np.ndarray:
    """``(N, 4)`` float64 ``[x, y, t_ms, kf_idx]`` sorted by time, clamped to ``[0, 1]``."""
    rows, bad = [], 0
    for segment in traces if isinstance(traces, list) else []:
        for point in segment if isinstance(segment, list) else []:
            try:
                row = (float(point["x"]), float(point["y"]), float(point["time_ms_since_epoch"]))
                kf = float(point.get("kf_idx", -1))
            except (KeyError, TypeError, ValueError, AttributeError):
                bad += 1
                continue
            if all(math.isfinite(v) for v in row):
                rows.append((*row, kf))
            else:
                bad += 1
    if bad:
        report.skip("malformed trace point", f"{what}: {bad} points", count=bad)
    trace = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return clamp_trace(trace[np.argsort(trace[:, 2], kind="stable")], report, what)


def actor_words(
    actor: dict, report: LoadReport, what: str
) -> tuple[list[str], list[tuple[float, float]], list[int]]:
    """Words, normalized per-word points and per-word keyframe index of one actor narrative."""
    caption = str(actor.get("caption") or "")
    spans, words = [], []
    position = 0
    for word in caption.split():
        start = caption.index(word, position)
        spans.append((start, start + len(word)))
        words.append(word)
        position = start + len(word)
    trace = _actor_trace(actor.get("traces"), report, what)
    if not len(trace):
        report.repair("traces with no points: points masked", what)
    alignment = actor.get("time_alignment")
    origin = actor.get("recording_start_time_ms_since_epoch")
    if not isinstance(alignment, list) or not alignment or not isinstance(origin, (int, float)):
        report.repair("caption without timing: points masked", what)
        return words, [NAN_POINT] * len(words), [-1] * len(words)
    windows: dict[int, tuple[float, float]] = {}
    for entry in alignment:
        try:
            char = int(entry["referenced_word_start_idx"])
            window = (origin + float(entry["start_ms"]), origin + float(entry["end_ms"]))
        except (KeyError, TypeError, ValueError):
            report.repair("malformed time alignment entry", f"{what}: {str(entry)[:80]}")
            continue
        for index, (lo, hi) in enumerate(spans):
            if lo <= char < hi:
                windows.setdefault(index, window)
                break
    points, keyframes = [], []
    for index in range(len(words)):
        window = windows.get(index)
        inside = (
            (trace[:, 2] >= window[0]) & (trace[:, 2] <= window[1]) if window else np.zeros(len(trace), bool)
        )
        if not inside.any():
            points.append(NAN_POINT)
            keyframes.append(-1)
            continue
        x, y = trace[inside, :2].mean(axis=0)
        points.append((float(x), float(y)))
        keyframes.append(int(Counter(trace[inside, 3].astype(int).tolist()).most_common(1)[0][0]))
    untimed = len(words) - len(windows)
    if untimed:
        report.note("word without time alignment (no point)", f"{what}: {untimed} words", count=untimed)
    return words, points, keyframes


def load_video_localized_narratives(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: str = "decode",
) -> datasets.Dataset:
    """Load a Video Localized Narratives JSONL file (one row per actor narrative).

    Args:
        annotations: e.g. ``OVIS_train.jsonl`` / ``oops_train.jsonl``.
        images: optional folder of keyframes ``<video_id>/<keyframe_name>.jpg`` (or ``.png``).
        check_images: :data:`pixtok.data.images.CHECK_MODES` (``exists``/``none`` act as ``header``).

    Returns:
        Caption rows (see :mod:`pixtok.data.schema`) plus ``video_id, dataset_id, actor_name,
        keyframe_names, keyframes``; ``image_id`` is ``"<video_id>/<keyframe_name>"`` of the row's
        keyframe (``"<video_id>"`` when no keyframe holds a point).
    """
    report = LoadReport("video_localized_narratives")
    check = "header" if check_images in ("exists", "none") else check_images
    columns: dict[str, list] = {k: [] for k in caption_features(VIDEO_EXTRA_FEATURES)}
    for number, record in iter_jsonl(annotations, report):
        video_id = str(record.get("video_id", ""))
        keyframe_names = [str(n) for n in record.get("keyframe_names") or []]
        actors = record.get("actor_narratives")
        if not video_id or not isinstance(actors, list) or not actors:
            report.skip("video narrative without video_id or actors", f"{annotations}:{number}")
            continue
        for a_index, actor in enumerate(actors):
            what = f"{os.path.basename(annotations)}:{number} video {video_id} actor {a_index}"
            if not isinstance(actor, dict) or not str(actor.get("caption") or "").strip():
                report.skip("empty caption", what)
                continue
            words, points, keyframes = actor_words(actor, report, what)
            counts = Counter(k for k in keyframes if k >= 0)
            keyframe = counts.most_common(1)[0][0] if counts else -1
            name = keyframe_names[keyframe] if 0 <= keyframe < len(keyframe_names) else ""
            image_id = f"{video_id}/{name}" if name else video_id
            if images is None:
                report.note("keyframe images absent: image=None, points normalized", what)
                located = row_image(None, "", None, None, check, report, what)
            elif not name:
                report.skip("no keyframe to show the actor on", what)
                continue
            else:
                folder = os.path.join(images, video_id)
                file_name = next(
                    (
                        f
                        for f in (f"{name}.jpg", f"{name}.png", name)
                        if os.path.isfile(os.path.join(folder, f))
                    ),
                    f"{name}.jpg",
                )
                located = row_image(folder, file_name, None, None, check, report, what)
                if located is None:
                    continue
            columns["image"].append(located.cell)
            columns["image_id"].append(image_id)
            columns["width"].append(located.width)
            columns["height"].append(located.height)
            columns["caption"].append(str(actor["caption"]))
            columns["words"].append(words)
            columns["points"].append(to_pixels(points, located.width, located.height))
            columns["sentence_ids"].append(sentence_ids(words))
            columns["annotator_id"].append(str(record.get("annotator_id", "")))
            columns["video_id"].append(video_id)
            columns["dataset_id"].append(str(record.get("dataset_id", "")))
            columns["actor_name"].append(str(actor.get("actor_name", "")))
            columns["keyframe_names"].append(keyframe_names)
            columns["keyframes"].append(keyframes)
    return build_dataset(columns, caption_features(VIDEO_EXTRA_FEATURES), report)


__all__ = ["VIDEO_EXTRA_FEATURES", "actor_words", "load_video_localized_narratives"]
