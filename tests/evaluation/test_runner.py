"""The dataset runner scores an oracle predictor (it returns the ground truth) perfectly on real and
synthetic data, and a degraded one below that."""

import argparse

import numpy as np
import pytest

import pixtok.data as D
from pixtok.data import synthetic
from pixtok.data.masks import decode_segmentation
from pixtok.evaluation.dense_captions import merge_ground_truth
from pixtok.evaluation.runner import evaluate_on_dataset

COCO = "/work/shared/data/coco_tiny_train"
PAN = "/work/shared/data/coco_panoptic_sample"


class Oracle:
    """Returns prepared outputs in call order; records the prompts it saw."""

    def __init__(self, outputs, traces=None):
        self.outputs = list(outputs)
        self.traces = list(traces or [])
        self.prompts = []

    def predict(self, task, images, prompts):
        self.prompts.extend(prompts)
        out, self.outputs = self.outputs[: len(images)], self.outputs[len(images) :]
        return out

    def trace(self, images, words):
        return [self.traces.pop(0) for _ in images]


@pytest.fixture(scope="module")
def coco_rows():
    ds = D.load(
        "coco", annotations=f"{COCO}/annotations/instances_train2017.json", images=f"{COCO}/train2017"
    )
    return ds.select(range(12))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.run(argparse.Namespace(out=str(root), seed=0, num_images=8, image_size=64, max_objects=4))
    return root


def _gt_detection(row, shift=0.0):
    o = row["objects"]
    keep = [i for i, c in enumerate(o["iscrowd"]) if not c]
    boxes = np.asarray(o["boxes"], dtype=np.float64).reshape(-1, 4)[keep] + shift
    return {"boxes": boxes, "scores": np.ones(len(keep)), "labels": np.asarray(o["labels"])[keep]}


def test_detection_on_real_coco_with_and_without_the_file(coco_rows):
    annotations = f"{COCO}/annotations/instances_train2017.json"
    perfect = [_gt_detection(r) for r in coco_rows]
    with_file = evaluate_on_dataset(
        coco_rows, "detection", Oracle(perfect), annotations=annotations, progress=False, batch_size=4
    )
    assert with_file.metrics["AP"] == pytest.approx(1.0) and with_file.num_images == 12
    assert any("instances_train2017.json" in n for n in with_file.notes)
    rebuilt = evaluate_on_dataset(coco_rows, "detection", Oracle(perfect), progress=False)
    assert rebuilt.metrics["AP"] == pytest.approx(1.0)
    shifted = evaluate_on_dataset(
        coco_rows,
        "detection",
        Oracle([_gt_detection(r, 8.0) for r in coco_rows]),
        annotations=annotations,
        progress=False,
    )
    assert 0.0 < shifted.metrics["AP"] < 0.9
    assert "AP" in shifted.table() and "detection: 12 images" in shifted.table()


def test_bad_rows_are_skipped_and_counted(coco_rows):
    rows = [dict(r) for r in coco_rows.select(range(3))]
    rows[1]["image"] = None
    out = evaluate_on_dataset(
        rows, "detection", Oracle([_gt_detection(rows[0]), _gt_detection(rows[2])]), progress=False
    )
    assert out.num_images == 2 and len(out.skipped) == 1 and "no image" in out.skipped[0]
    assert out.to_dict()["num_skipped"] == 1
    with pytest.raises(ValueError, match="no image could be evaluated"):
        evaluate_on_dataset([rows[1]], "detection", Oracle([]), progress=False)


def test_panoptic_real_sample_scores_one():
    ds = D.load(
        "coco_panoptic",
        annotations=f"{PAN}/panoptic_examples.json",
        masks=f"{PAN}/panoptic_examples",
        images=f"{PAN}/input_images",
    )
    outputs = []
    for row in ds:
        ids = D.panoptic_ids(row["panoptic"])
        outputs.append(
            {
                "segmentation": ids,
                "segments_info": [{"id": s["id"], "label_id": s["label"]} for s in row["segments_info"]],
            }
        )
    out = evaluate_on_dataset(ds, "panoptic", Oracle(outputs), progress=False)
    assert out.metrics["PQ"] == pytest.approx(1.0) and out.metrics["PQ_st"] == pytest.approx(1.0)


def test_caption_and_trace_on_synthetic(synth_root):
    ds = D.load("synthetic", root=str(synth_root), kind="localized_narratives")
    outputs = [{"text": r["caption"], "words": r["words"], "points": r["points"]} for r in ds]
    traces = [np.asarray(r["points"], dtype=np.float64) for r in ds]
    out = evaluate_on_dataset(ds, "caption", Oracle(outputs, traces), progress=False)
    assert out.metrics["BLEU-4"] == pytest.approx(1.0) and out.metrics["ROUGE-L"] == pytest.approx(1.0)
    assert out.metrics["trace_l1"] == pytest.approx(0.0)
    off = [t + np.array([6.4, 0.0]) for t in traces]  # 10% of the 64 px width in x
    shifted = evaluate_on_dataset(ds, "caption", Oracle(outputs, off), progress=False)
    assert shifted.metrics["trace_l1"] == pytest.approx(0.05, abs=0.01)


def test_referring_region_and_dense_captions_on_synthetic(synth_root):
    refs = D.load("synthetic", root=str(synth_root), kind="refcoco")
    outputs = []
    for r in refs:
        for _ in r["expressions"][:2]:
            outputs.append({"box": np.asarray(r["box"]), "mask": decode_segmentation(r["segmentation"])})
    oracle = Oracle(outputs)
    out = evaluate_on_dataset(refs, "referring", oracle, max_prompts=2, progress=False)
    assert out.metrics["precision@0.5"] == 1.0 and out.metrics["cIoU"] == pytest.approx(1.0)
    assert oracle.prompts[0]["text"] == refs[0]["expressions"][0]

    vg = D.load("synthetic", root=str(synth_root), kind="visual_genome")
    region_outputs = [{"text": c} for r in vg for c in r["regions"]["captions"][:3]]
    out = evaluate_on_dataset(vg, "region_caption", Oracle(region_outputs), max_prompts=3, progress=False)
    assert out.metrics["BLEU-1"] == pytest.approx(1.0)

    dense = []
    for r in vg:
        boxes, groups = merge_ground_truth(r["regions"]["boxes"], r["regions"]["captions"])
        dense.append(
            {"boxes": boxes, "scores": np.linspace(1, 0.5, len(boxes)), "captions": [g[0] for g in groups]}
        )
    out = evaluate_on_dataset(vg, "dense_caption", Oracle(dense), progress=False)
    assert out.metrics["mAP"] == pytest.approx(1.0)
    assert any("fallback" in n or "meteor" in n for n in out.notes)


def test_unknown_task_is_a_clear_error(coco_rows):
    with pytest.raises(ValueError, match="cannot evaluate task"):
        evaluate_on_dataset(coco_rows, "segmentation!", Oracle([]), progress=False)
