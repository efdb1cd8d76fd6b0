"""Per-word point assignment of image Localized Narratives (the PixelLLM trace target)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import pixtok.data as D
from pixtok.data.report import LoadReport
from pixtok.data.sources.localized_narratives import narrative_words, sentence_ids, utterance_points
from tests.data.sample_files import save_rgb


def test_words_split_the_utterance_window_in_time_order() -> None:
    # x runs 0.0 .. 0.9 over t = 0.05 .. 0.95; a 3-word utterance over [0, 0.9]
    t = np.arange(10) * 0.1 + 0.05
    trace = np.stack([t - 0.05, np.zeros(10), t], axis=1)
    points = utterance_points(trace, 0.0, 0.9, 3)
    # slices [0, .3], [.3, .6], [.6, .9] hold t = .05 .15 .25 | .35 .45 .55 | .65 .75 .85
    assert [p[0] for p in points] == pytest.approx([0.1, 0.4, 0.7])


def test_empty_slice_takes_nearest_point_of_its_utterance() -> None:
    trace = np.array([[0.2, 0.3, 0.1], [0.8, 0.9, 0.15]])
    points = utterance_points(trace, 0.0, 1.0, 4)  # slices of 0.25 s; only the first holds points
    assert points[0] == pytest.approx((0.5, 0.6))
    assert points[3] == pytest.approx((0.8, 0.9))  # nearest in time to t = 0.875 is t = 0.15
    assert all(not math.isnan(x) for x, _ in points)
    empty = utterance_points(trace, 2.0, 3.0, 2)
    assert all(math.isnan(x) and math.isnan(y) for x, y in empty)


def test_sentence_ids() -> None:
    words = ["A", "dog.", "It", 'runs!"', "Then", "what?", "Nothing"]
    assert sentence_ids(words) == [0, 0, 1, 1, 2, 2, 3]


def test_bad_utterance_timing_masks_only_its_words() -> None:
    record = {
        "caption": "a b c",
        "timed_caption": [
            {"utterance": "a", "start_time": 0.0, "end_time": 1.0},
            {"utterance": "b", "start_time": "soon", "end_time": 2.0},
            {"utterance": "c", "start_time": 3.0, "end_time": 2.0},
        ],
        "traces": [[{"x": 0.5, "y": 0.5, "t": 0.5}, {"x": "?", "y": 0.1, "t": 0.6}]],
    }
    report = LoadReport("localized_narratives")
    words, points = narrative_words(record, report, "test")
    assert words == ["a", "b", "c"]
    assert points[0] == pytest.approx((0.5, 0.5))
    assert math.isnan(points[1][0]) and math.isnan(points[2][0])
    assert report.repaired["utterance without valid timing: points masked"] == 2
    assert report.skipped["malformed trace point"] == 1


def test_rows_without_images_keep_normalized_points(tmp_path: Path) -> None:
    record = {
        "image_id": "397133",
        "caption": "In this picture",
        "timed_caption": [{"utterance": "In this picture", "start_time": 1.0, "end_time": 1.6}],
        "traces": [[{"x": 0.1 * k, "y": 0.2, "t": 1.05 + 0.1 * k} for k in range(6)]],
    }
    path = tmp_path / "ln.jsonl"
    path.write_text(json.dumps(record) + "\n")
    ds = D.load("localized_narratives", annotations=path)
    row = ds[0]
    assert row["image"] is None and row["width"] is None
    assert [p[0] for p in row["points"]] == pytest.approx([0.05, 0.25, 0.45], abs=1e-6)
    images = tmp_path / "images"
    images.mkdir()
    save_rgb(images / "000000397133.jpg", width=100, height=50)  # COCO file naming is found
    ds = D.load("localized_narratives", annotations=path, images=images)
    assert ds[0]["width"] == 100 and ds[0]["points"][0] == pytest.approx([5.0, 10.0], abs=1e-4)
