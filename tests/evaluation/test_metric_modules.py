"""Every metric loads as an `evaluate` module by local path (offline) and agrees with the library."""

from pathlib import Path

import evaluate
import numpy as np
import pytest

import pixtok.evaluation
from pixtok.evaluation.captions import evaluate_captions

METRICS = Path(pixtok.evaluation.__file__).parent / "metrics"
CANDS = ["a red car parked on the street", "two dogs play with a ball"]
REFS = [["a red car parked on a street", "a car"], ["two dogs playing with a ball"]]


def _load(name: str) -> evaluate.EvaluationModule:
    return evaluate.load(str(METRICS / name))


def test_every_metric_folder_holds_its_module():
    names = sorted(p.name for p in METRICS.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert names == sorted(
        [
            "caption_bleu",
            "caption_cider",
            "caption_meteor",
            "caption_rouge",
            "coco_caption",
            "coco_detection",
            "dense_caption_map",
            "panoptic_quality",
            "referring",
            "trace_l1",
        ]
    )
    for name in names:
        assert (METRICS / name / f"{name}.py").is_file()


def test_caption_metrics_combine_and_match_the_library(monkeypatch):
    monkeypatch.delenv("PIXTOK_METEOR_JAR", raising=False)
    combined = evaluate.combine(
        [str(METRICS / n) for n in ("caption_bleu", "caption_rouge", "caption_cider", "caption_meteor")]
    )
    got = combined.compute(predictions=CANDS, references=REFS)
    expected = evaluate_captions(CANDS, REFS, use_meteor=False)
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert got[key] == pytest.approx(expected[key]), key
    assert got["METEOR"] is None and "jar" in got["METEOR_note"]
    whole = _load("coco_caption")
    whole.add_batch(predictions=CANDS[:1], references=REFS[:1])
    whole.add_batch(predictions=CANDS[1:], references=REFS[1:])
    with pytest.warns(UserWarning, match="METEOR"):
        out = whole.compute()
    assert out["CIDEr-D"] == pytest.approx(expected["CIDEr-D"])


def test_detection_module_perfect_and_shifted():
    metric = _load("coco_detection")
    refs = [
        {"boxes": [[10, 10, 50, 50]], "labels": [0], "iscrowd": [0]},
        {"boxes": [[5, 5, 60, 40]], "labels": [1], "iscrowd": [0]},
    ]
    perfect = [{"boxes": r["boxes"], "scores": [1.0], "labels": r["labels"]} for r in refs]
    out = metric.compute(predictions=perfect, references=refs)
    assert out["AP"] == pytest.approx(1.0) and out["AR100"] == pytest.approx(1.0)
    shifted = [{"boxes": [[10, 10, 50, 60]], "scores": [1.0], "labels": [0]}, perfect[1]]  # IoU 0.8
    assert metric.compute(predictions=shifted, references=refs)["AP"] == pytest.approx((0.7 + 1.0) / 2)


def test_referring_trace_dense_panoptic_modules(monkeypatch):
    monkeypatch.delenv("PIXTOK_METEOR_JAR", raising=False)  # the dense-caption check expects the fallback
    ref = _load("referring").compute(
        predictions=[{"box": [0, 0, 10, 5]}, {"box": [0, 0, 10, 10]}],
        references=[{"box": [0, 0, 10, 10]}] * 2,
    )
    assert ref["precision@0.5"] == 1.0 and ref["mean_box_iou"] == pytest.approx(0.75)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    ref_m = evaluate.load(str(METRICS / "referring"), "masks").compute(
        predictions=[{"box": [0, 0, 4, 2], "mask": mask[:1].repeat(4, 0).tolist()}],
        references=[{"box": [0, 0, 4, 2], "mask": mask.tolist()}],
    )
    assert ref_m["cIoU"] == pytest.approx(0.5) and ref_m["mIoU"] == pytest.approx(0.5)

    trace = _load("trace_l1").compute(
        predictions=[[[0.1, 0.2], [0.5, 0.5]]], references=[[[0.1, 0.2], [0.3, 0.5]]]
    )
    assert trace["trace_l1"] == pytest.approx(0.2 / 4)

    dense = _load("dense_caption_map").compute(
        predictions=[{"boxes": [[0, 0, 10, 10]], "scores": [0.5], "captions": ["a cat on a mat"]}],
        references=[{"boxes": [[0, 0, 10, 10]], "captions": ["a cat on a mat"]}],
    )
    assert dense["mAP"] == pytest.approx(1.0) and "fallback" in dense["similarity"]

    seg = np.zeros((6, 6), np.int64)
    seg[:, 3:] = 2
    seg[:, :3] = 1
    info = [{"id": 1, "category_id": 5, "iscrowd": 0}, {"id": 2, "category_id": 9, "iscrowd": 0}]
    pq = _load("panoptic_quality").compute(
        predictions=[
            {
                "segmentation": seg.tolist(),
                "segments_info": [{"id": 1, "category_id": 5}, {"id": 2, "category_id": 9}],
            }
        ],
        references=[{"segmentation": seg.tolist(), "segments_info": info}],
        categories=[{"id": 5, "isthing": 1}, {"id": 9, "isthing": 0}],
    )
    assert pq["PQ"] == 1.0 and pq["PQ_th"] == 1.0 and pq["PQ_st"] == 1.0
