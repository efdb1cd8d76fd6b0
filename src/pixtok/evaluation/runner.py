"""Score a predictor on any dataset ``pixtok.data.load`` reads: rows → prompts → predictions →
the task's metrics (what ``pixtok evaluate`` runs).

The predictor is anything with ``predict(task, images, prompts) -> outputs`` returning the
processor's ``post_process_*`` dicts (one per image, pixels), and optionally
``trace(images, words) -> points`` (per image (W, 2) xy px, the points the model writes for a
given caption — teacher forced) for the trace metric. The runner never imports the model, so it
is tested with a predictor that returns the ground truth.

Which rows each task reads:

=================  ==================================  ==========================================
task               source rows                         metrics
=================  ==================================  ==========================================
detection          ``objects``                         COCO AP/AR (:mod:`.coco`)
caption            ``caption`` (+ ``words``/``points``)  coco-caption (:mod:`.captions`) + trace L1
region_caption     VG ``regions`` / refcoco            coco-caption, one caption per region prompt
dense_caption      VG ``regions``                      dense-caption mAP
referring          refcoco ``expressions``/``box``     P@0.5, cIoU, mIoU
panoptic           coco_panoptic ``panoptic``          PQ / SQ / RQ
=================  ==================================  ==========================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .captions import evaluate_captions
from .coco import evaluate_detection, evaluate_detection_on_boxes
from .dense_captions import evaluate_dense_captions
from .panoptic_quality import evaluate_panoptic
from .referring import evaluate_referring
from .traces import trace_l1

logger = logging.getLogger(__name__)

EVALUATED_TASKS: tuple[str, ...] = (
    "detection",
    "caption",
    "region_caption",
    "dense_caption",
    "referring",
    "panoptic",
)


class Predictor(Protocol):
    """What the runner calls; ``prompts[i]`` holds ``"text"``, ``"box"`` or ``"point"`` (pixels)."""

    def predict(
        self, task: str, images: Sequence[Any], prompts: Sequence[Mapping[str, Any]]
    ) -> list[dict]: ...


@dataclass
class EvaluationResult:
    """Metrics of one run, with what was skipped and why.

    Attributes:
        task: the evaluated task.
        metrics: metric name → value (``None`` where a metric could not run; see ``notes``).
        num_images: images scored.
        num_samples: prompts scored (expressions, regions; = images for image-level tasks).
        skipped: ``"image_id: reason"`` per skipped image.
        notes: remarks to print with the table (missing METEOR, fallbacks, …).
    """

    task: str
    metrics: dict[str, Any]
    num_images: int = 0
    num_samples: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metrics": self.metrics,
            "num_images": self.num_images,
            "num_samples": self.num_samples,
            "num_skipped": len(self.skipped),
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def table(self) -> str:
        """The metrics as an aligned two-column text table (fractions printed as %, CIDEr as is)."""
        rows = [(name, _format(name, value)) for name, value in self.metrics.items()]
        width = max((len(n) for n, _ in rows), default=6)
        lines = [
            f"{self.task}: {self.num_images} images, {self.num_samples} samples, {len(self.skipped)} skipped"
        ]
        lines.append("(fractions x100; CIDEr-D on coco-caption's x10 scale; trace L1 in normalized units)")
        lines.append("-" * (width + 12))
        lines += [f"{name:<{width}}  {value:>9}" for name, value in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _format(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if name.startswith(("num_", "n")) and float(value).is_integer():
        return str(int(value))
    if name.startswith("CIDEr"):
        return f"{value:.3f}"
    if name.startswith("trace"):
        return f"{value:.4f}"
    return f"{100 * value:.2f}" if -1.0 <= value <= 1.0 else f"{value:.3f}"


@dataclass
class _Sample:
    index: int
    image: Any
    image_id: str
    size: tuple[int, int]
    prompts: list[dict]
    truth: list[Any]


def _row_image(row: Mapping[str, Any]) -> Any:
    image = row.get("image")
    if image is None:
        raise ValueError("the row has no image (the source shipped no pixels or the file is missing)")
    return image.convert("RGB") if hasattr(image, "convert") else image


def _samples(
    task: str, dataset: Iterable[Mapping[str, Any]], limit: int | None, max_prompts: int, skipped: list[str]
):
    """Yield one :class:`_Sample` per usable row (bad rows are recorded in ``skipped``)."""
    count = 0
    for index, row in enumerate(dataset):
        if limit is not None and count >= limit:
            return
        image_id = str(row.get("image_id", index))
        try:
            image = _row_image(row)
            size = (int(row.get("height") or image.height), int(row.get("width") or image.width))
            prompts, truth = _task_rows(task, row, max_prompts)
        except (OSError, ValueError, KeyError, TypeError) as error:
            skipped.append(f"{image_id}: {error}")
            logger.warning("skipping image %s: %s", image_id, error)
            continue
        if not prompts:
            skipped.append(f"{image_id}: nothing to evaluate for {task} in this row")
            continue
        count += 1
        yield _Sample(index, image, image_id, size, prompts, truth)


def _task_rows(task: str, row: Mapping[str, Any], max_prompts: int) -> tuple[list[dict], list[Any]]:
    """Prompts (one per model call) and their ground truth for one row."""
    if task == "detection":
        objects = row["objects"]
        return [{}], [objects]
    if task == "caption":
        if not row.get("caption"):
            raise ValueError("no caption in this row")
        return [{}], [row]
    if task == "region_caption":
        if "regions" in row:
            regions = row["regions"]
            pairs = list(zip(regions["boxes"], regions["captions"]))[:max_prompts]
            return [{"box": list(b)} for b, _ in pairs], [[c] for _, c in pairs]
        if "expressions" in row:  # refcoco: the referred box → its expressions
            return [{"box": list(row["box"])}], [list(row["expressions"])]
        raise KeyError("region_caption needs Visual Genome 'regions' or refcoco rows")
    if task == "dense_caption":
        return [{}], [row["regions"]]
    if task == "referring":
        from pixtok.data.masks import decode_segmentation

        mask = decode_segmentation(row["segmentation"]) if row.get("segmentation") else None
        expressions = list(row["expressions"])[:max_prompts]
        return [{"text": e} for e in expressions], [(row["box"], mask)] * len(expressions)
    if task == "panoptic":
        from pixtok.data.images import panoptic_ids

        if row.get("panoptic") is None:
            raise ValueError("no panoptic PNG in this row")
        return [{}], [{"segmentation": panoptic_ids(row["panoptic"]), "segments_info": row["segments_info"]}]
    raise ValueError(f"cannot evaluate task {task!r}; expected one of {', '.join(EVALUATED_TASKS)}")


def evaluate_on_dataset(
    dataset: Any,
    task: str,
    predictor: Predictor,
    *,
    limit: int | None = None,
    max_prompts: int = 5,
    batch_size: int = 1,
    annotations: str | os.PathLike | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    meteor_jar: str | os.PathLike | None = None,
    progress: bool = True,
    on_prediction: Callable[[str, Any, dict], None] | None = None,
) -> EvaluationResult:
    """Run ``predictor`` over ``dataset`` rows and compute ``task``'s metrics.

    Args:
        dataset: rows of ``pixtok.data.load`` (a ``datasets.Dataset`` or any iterable of row dicts).
        task: one of :data:`EVALUATED_TASKS`.
        predictor: see :class:`Predictor`.
        limit: score at most this many images.
        max_prompts: regions / expressions per image at most (region_caption, referring).
        batch_size: images per predictor call (image-level tasks).
        annotations: for detection, the COCO instances JSON the rows came from: box AP is then
            computed against the file itself (official areas, crowd regions); otherwise against a
            ground truth rebuilt from the rows (areas = box areas).
        categories: the dataset's category table in label order (``pixtok.data.categories``);
            maps labels to COCO ids (detection with ``annotations``, panoptic).
        meteor_jar: METEOR 1.5 jar for caption metrics (else ``$PIXTOK_METEOR_JAR``).
        progress: show a tqdm bar.
        on_prediction: called as ``f(image_id, image, prediction)`` for every prediction (to save them).

    Returns:
        :class:`EvaluationResult`.
    """
    if task not in EVALUATED_TASKS:
        raise ValueError(f"cannot evaluate task {task!r}; expected one of {', '.join(EVALUATED_TASKS)}")
    if categories is None:
        categories = _dataset_categories(dataset)
    skipped: list[str] = []
    samples = _samples(task, dataset, limit, max_prompts, skipped)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if total is not None and limit is not None:
        total = min(total, limit)
    bar = _progress(total, progress, task)
    predictions: list[tuple[_Sample, list[dict]]] = []
    pending: list[_Sample] = []

    def flush() -> None:
        images = [s.image for s in pending for _ in s.prompts]
        prompts = [p for s in pending for p in s.prompts]
        try:
            outputs = predictor.predict(task, images, prompts)
        except (OSError, ValueError) as error:
            if len(pending) == 1:
                skipped.append(f"{pending[0].image_id}: prediction failed: {error}")
                logger.warning("skipping image %s: %s", pending[0].image_id, error)
                pending.clear()
                return
            raise
        if len(outputs) != len(prompts):
            raise RuntimeError(f"predictor returned {len(outputs)} outputs for {len(prompts)} prompts")
        start = 0
        for s in pending:
            outs = outputs[start : start + len(s.prompts)]
            start += len(s.prompts)
            predictions.append((s, outs))
            if on_prediction is not None:
                for out in outs:
                    on_prediction(s.image_id, s.image, out)
        bar.update(len(pending))
        pending.clear()

    for sample in samples:
        pending.append(sample)
        per_call = 1 if task in ("region_caption", "referring") else batch_size
        if len(pending) >= per_call:
            flush()
    if pending:
        flush()
    bar.close()
    if not predictions:
        raise ValueError(f"no image could be evaluated ({len(skipped)} skipped: {'; '.join(skipped[:3])})")

    result = EvaluationResult(task, {}, num_images=len(predictions), skipped=skipped)
    result.num_samples = sum(len(outs) for _, outs in predictions)
    _score(task, predictions, result, predictor, annotations, categories, meteor_jar)
    return result


def _dataset_categories(dataset: Any) -> list[dict] | None:
    try:
        from pixtok.data import categories

        return categories(dataset) or None
    except (ImportError, ValueError, AttributeError, TypeError):
        return None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, enabled: bool, task: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"evaluate {task}", unit="img")


def _score(
    task: str,
    predictions: list[tuple[_Sample, list[dict]]],
    result: EvaluationResult,
    predictor: Predictor,
    annotations: str | os.PathLike | None,
    categories: Sequence[Mapping[str, Any]] | None,
    meteor_jar: str | os.PathLike | None,
) -> None:
    if task == "detection":
        result.metrics = _detection_metrics(predictions, annotations, categories, result.notes)
    elif task in ("caption", "region_caption"):
        candidates = [_caption_text(out) for _, outs in predictions for out in outs]
        if task == "caption":
            references = [[str(s.truth[0]["caption"])] for s, _ in predictions]
        else:
            references = [list(t) for s, _ in predictions for t in s.truth]
        scores = evaluate_captions(candidates, references, meteor_jar=meteor_jar)
        note = scores.pop("METEOR_note", None)
        if note:
            result.notes.append(f"METEOR not computed: {note}")
        result.metrics = dict(scores)
        if task == "caption":
            result.metrics.update(_trace_metrics(predictions, predictor, result.notes))
    elif task == "dense_caption":
        gts = [{"boxes": s.truth[0]["boxes"], "captions": s.truth[0]["captions"]} for s, _ in predictions]
        scores = evaluate_dense_captions([outs[0] for _, outs in predictions], gts, meteor_jar=meteor_jar)
        result.notes.append(f"caption similarity: {scores.pop('similarity')}")
        scores.pop("ap_per_threshold")
        result.metrics = scores
    elif task == "referring":
        pairs = [(out, truth) for s, outs in predictions for out, truth in zip(outs, s.truth)]
        pred_boxes = np.stack([_numpy(out["box"]).reshape(4) for out, _ in pairs])
        gt_boxes = np.stack([np.asarray(truth[0], dtype=np.float64).reshape(4) for _, truth in pairs])
        with_masks = all(truth[1] is not None for _, truth in pairs) and any(
            out.get("mask") is not None for out, _ in pairs
        )
        if with_masks:
            pred_masks = [
                None if out.get("mask") is None else _numpy(out["mask"]).astype(bool) for out, _ in pairs
            ]
            result.metrics = evaluate_referring(pred_boxes, gt_boxes, pred_masks, [t[1] for _, t in pairs])
        else:
            result.metrics = evaluate_referring(pred_boxes, gt_boxes)
            result.notes.append("no masks (model gave none or the rows have no segmentation): boxes only")
    elif task == "panoptic":
        if not categories:
            raise ValueError(
                "panoptic evaluation needs the dataset's categories (id, isthing) in label order"
            )
        label_to_category = [int(c["id"]) for c in categories]
        truth = []
        for s, _ in predictions:
            gt = s.truth[0]
            infos = [
                {
                    "id": int(i["id"]),
                    "category_id": int(i["category_id"]),
                    "iscrowd": int(i.get("iscrowd", 0)),
                }
                for i in gt["segments_info"]
            ]
            truth.append({"segmentation": gt["segmentation"], "segments_info": infos, "image_id": s.image_id})
        result.metrics = evaluate_panoptic(
            [outs[0] for _, outs in predictions], truth, list(categories), label_to_category
        )


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def _caption_text(out: Mapping[str, Any]) -> str:
    if "text" in out:
        return str(out["text"])
    if "captions" in out and out["captions"]:
        return str(out["captions"][0])
    raise ValueError(f"caption prediction without 'text': keys {sorted(out)}")


def _detection_metrics(
    predictions: list[tuple[_Sample, list[dict]]],
    annotations: str | os.PathLike | None,
    categories: Sequence[Mapping[str, Any]] | None,
    notes: list[str],
) -> dict[str, float]:
    outs = [outs[0] for _, outs in predictions]
    if annotations is not None and categories:
        from .coco import coco_image_id

        try:
            ids = [coco_image_id(s.image_id) for s, _ in predictions]
        except ValueError as error:
            notes.append(f"COCO file not used ({error}); ground truth rebuilt from the rows")
        else:
            category_ids = [int(c["id"]) for c in categories]
            notes.append(f"ground truth: {Path(annotations).name} (official areas and crowd regions)")
            return evaluate_detection(outs, annotations, ids, category_ids=category_ids)
    num_labels = max(
        [len(categories or [])]
        + [int(max(s.truth[0]["labels"], default=-1)) + 1 for s, _ in predictions]
        + [int(_numpy(o.get("labels", [])).max(initial=-1)) + 1 for o in outs]
    )
    notes.append("ground truth rebuilt from the rows (object areas = box areas)")
    return evaluate_detection_on_boxes(
        outs, [sample.truth[0] for sample, _ in predictions], max(num_labels, 1)
    )


def _trace_metrics(
    predictions: list[tuple[_Sample, list[dict]]], predictor: Predictor, notes: list[str]
) -> dict[str, float]:
    trace = getattr(predictor, "trace", None)
    rows = [s.truth[0] for s, _ in predictions]
    usable = [(s, r) for (s, _), r in zip(predictions, rows) if r.get("words") and r.get("points")]
    if trace is None or not usable:
        notes.append(
            "trace L1 not computed: "
            + ("the predictor cannot trace a given caption" if trace is None else "no ground-truth points")
        )
        return {}
    try:
        predicted = trace([s.image for s, _ in usable], [list(r["words"]) for _, r in usable])
    except NotImplementedError as error:
        notes.append(f"trace L1 not computed: {error}")
        return {}
    gt = [np.asarray(r["points"], dtype=np.float64).reshape(-1, 2) for _, r in usable]
    return trace_l1(predicted, gt, image_sizes=[s.size for s, _ in usable])


__all__ = ["EVALUATED_TASKS", "EvaluationResult", "Predictor", "evaluate_on_dataset"]
