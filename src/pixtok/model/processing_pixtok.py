"""PixtokProcessor: images, prompts and targets in; model tensors out — and generated tokens back out.

The processor owns everything between a user's pixels/boxes/words and the model's tensors
(docs/ARCHITECTURE.md lists each name and shape): the two-tower image geometry
(:class:`PixtokImageProcessor`), the tokenizer with pixtok's added tokens, the encoder prompt
(``<task_X>`` + text), the SAM prompt (box / point / whole image), the decoder targets of every
task (detection through :mod:`box_codec`, captions with one point per piece, referring box + mask,
region and dense captions), and the ``post_process_*`` methods that turn ``generate`` outputs into
DESIGN.md's formats.

Model space: a coordinate divided by the original image's long side (the padded square is
[0, 1]²). All boxes here are xyxy; Pix2Seq's token order is ``ymin xmin ymax xmax``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from .box_codec import (
    CodecStats,
    DetectionCodec,
    decode_open_vocabulary,
    encode_open_vocabulary,
    sanitize_boxes,
)
from .image_processing_pixtok import PixtokImageProcessor
from .sam import BOX_LABELS
from .tokenization_pixtok import add_pixtok_tokens, load_tokenizer
from .vocab import EOS_ID, PAD_ID, TASKS, PixtokVocab, task_index

IGNORE_INDEX = -100
"""Label value of padding (ignored by the loss)."""

PROCESSOR_CONFIG_NAME = "processor_config.json"
_WORD_START = "▁"  # sentencepiece's word-boundary mark


def mask_box(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The tight xyxy pixel box of an (H, W) bool mask (pixel edges: a one-pixel mask at (y, x) gives
    ``[x, y, x + 1, y + 1]``), or None for no mask or an empty one."""
    if mask is None or not bool(mask.any()):
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _per_image(value: Any, batch: int, name: str) -> list[Any]:
    """Broadcast ``None`` / a single value, or check a per-image list has ``batch`` entries."""
    if value is None:
        return [None] * batch
    if isinstance(value, (str, Mapping)) or (
        isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim <= 1
    ):
        return [value] * batch
    if isinstance(value, (np.ndarray, torch.Tensor)) and len(value) == batch:
        return list(value)
    if isinstance(value, Sequence) and len(value) == batch:
        return list(value)
    if (
        isinstance(value, Sequence)
        and batch == 1
        and len(value) in (2, 4)
        and not isinstance(value[0], Sequence)
    ):
        return [value]
    raise ValueError(
        f"{name}= needs one entry per image ({batch}), got {type(value).__name__} of {len(value)}"
    )


def _field(outputs: Any, name: str) -> Any:
    """``outputs.name`` or ``outputs[name]`` (``None`` when absent)."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


class PixtokProcessor(ProcessorMixin):
    r"""Image processor + tokenizer + task prompts + target builders + post-processing.

    Build it with :meth:`from_preset` / :meth:`from_config`, or load a saved one with
    :meth:`from_pretrained`.

    Args:
        image_processor (`PixtokImageProcessor`): the two-tower image geometry.
        tokenizer (`PreTrainedTokenizerBase`): a T5-style tokenizer; pixtok's tokens are added if absent.
        num_bins (`int`, *optional*, defaults to 1000): coordinate bins.
        class_names (`list[str]`, *optional*): closed-set class names, index = label id.
        open_vocabulary (`bool`, *optional*, defaults to `False`): classes written as text.
        max_objects (`int`, *optional*, defaults to 100): objects per detection sequence.
        eos_weight (`float`, *optional*, defaults to 0.1): loss weight of the detection EOS.
        ordering (`str`, *optional*, defaults to `"random"`): detection object order in training
            targets (``random``, ``area``, ``distance``, ``given``; see :mod:`box_codec`).
        seed (`int`, *optional*): seed of the processor's own generator (random object order and
            sequence augmentation) when a call passes no ``rng``.
    """

    def __init__(
        self,
        image_processor: PixtokImageProcessor | None = None,
        tokenizer: Any = None,
        num_bins: int = 1000,
        class_names: Sequence[str] | None = None,
        open_vocabulary: bool = False,
        max_objects: int = 100,
        eos_weight: float = 0.1,
        ordering: str = "random",
        seed: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        if image_processor is None or tokenizer is None:
            raise ValueError("PixtokProcessor needs an image_processor and a tokenizer (or use from_preset)")
        self.num_bins = int(num_bins)
        self.class_names = list(class_names or [])
        self.open_vocabulary = bool(open_vocabulary)
        self.max_objects = int(max_objects)
        self.eos_weight = float(eos_weight)
        self.ordering = ordering
        self.seed = seed
        first_coord = tokenizer.convert_tokens_to_ids("<loc_0>")
        has_pixtok = isinstance(first_coord, int) and first_coord != tokenizer.unk_token_id
        base = first_coord if has_pixtok else len(tokenizer)
        self.vocab = PixtokVocab(base, self.num_bins, tuple(self.class_names), self.open_vocabulary)
        add_pixtok_tokens(tokenizer, self.vocab)
        tokenizer.padding_side = "right"
        self.codec = (
            None
            if self.open_vocabulary or not self.class_names
            else DetectionCodec(self.vocab, self.max_objects, ordering, self.eos_weight)
        )
        self.codec_stats = CodecStats()
        """Running counts of boxes clipped / dropped while building targets (read it to report)."""
        self._rng = np.random.default_rng(seed)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> PixtokProcessor:
        """The processor a :class:`PixtokConfig` describes (its tokenizer: ``"pixtok-tiny"`` or a T5 id/path)."""
        vocab = config.vocab
        return cls(
            image_processor=PixtokImageProcessor.from_pixtok_config(config),
            tokenizer=load_tokenizer(config.tokenizer_name_or_path, vocab),
            num_bins=config.num_bins,
            class_names=list(vocab.class_names),
            open_vocabulary=config.open_vocabulary,
            max_objects=config.max_objects,
            eos_weight=config.eos_weight,
            **kwargs,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PixtokProcessor:
        """``PixtokConfig.from_preset(name, **overrides)`` → :meth:`from_config` (``tiny`` works offline)."""
        from .configuration_pixtok import PixtokConfig

        return cls.from_config(PixtokConfig.from_preset(name, **overrides))

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write ``preprocessor_config.json``, the tokenizer files and ``processor_config.json``."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        settings = {
            "processor_class": type(self).__name__,
            "num_bins": self.num_bins,
            "class_names": self.class_names,
            "open_vocabulary": self.open_vocabulary,
            "max_objects": self.max_objects,
            "eos_weight": self.eos_weight,
            "ordering": self.ordering,
            "seed": self.seed,
        }
        if getattr(self, "_auto_class", None) is not None:
            # registered for AutoProcessor (pixtok.auto): copy this code and write ``auto_map`` so the
            # folder loads with ``trust_remote_code=True`` where pixtok is not installed (the Hub case)
            from transformers.dynamic_module_utils import custom_object_save

            custom_object_save(self, out, config=settings)
        path = out / PROCESSOR_CONFIG_NAME
        path.write_text(json.dumps(settings, indent=2) + "\n")
        return [str(path)]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> PixtokProcessor:
        """Load a folder written by :meth:`save_pretrained` (or a model folder with only ``config.json``),
        a local path or a Hub repo id (fetched with ``huggingface_hub.snapshot_download``)."""
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            hub = {
                k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs
            }
            path = Path(
                snapshot_download(
                    str(pretrained_model_name_or_path),
                    allow_patterns=["*.json", "*.model", "*.txt", "*.py"],
                    **hub,
                )
            )
        settings_file = path / PROCESSOR_CONFIG_NAME
        if not settings_file.exists():
            if (path / "config.json").exists():
                from .configuration_pixtok import PixtokConfig

                return cls.from_config(PixtokConfig.from_pretrained(path))
            raise FileNotFoundError(f"{path} has neither {PROCESSOR_CONFIG_NAME} nor a pixtok config.json")
        settings = json.loads(settings_file.read_text())
        settings.pop("processor_class", None)
        settings.pop("auto_map", None)
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "image_processor", "tokenizer"}
        settings.update({k: v for k, v in kwargs.items() if k in own})
        loading = {k: v for k, v in kwargs.items() if k not in own}  # trust_remote_code, revision, ...
        loading.pop("trust_remote_code", None)
        return cls(
            image_processor=PixtokImageProcessor.from_pretrained(path, **loading),
            tokenizer=AutoTokenizer.from_pretrained(path, **loading),
            **settings,
        )

    # --- inputs ----------------------------------------------------------------------------------
    def _prompt(
        self, box: Any, point: Any, size: tuple[int, int], index: int
    ) -> tuple[list[list[float]], list[int]]:
        """SAM prompt in model space: box → corners, labels (2, 3); point → (p, 0), (1, -1); none →
        the whole-image box of the unpadded content."""
        h, w = size
        scale = float(max(h, w))
        if box is not None and point is not None:
            raise ValueError(f"image {index}: give a box or a point as the prompt, not both")
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
            if b.shape != (4,) or not np.isfinite(b).all():
                raise ValueError(
                    f"image {index}: a box prompt is 4 finite numbers x0 y0 x1 y1 px, got {box!r}"
                )
            x0, x1 = sorted(np.clip(b[[0, 2]], 0, w))
            y0, y1 = sorted(np.clip(b[[1, 3]], 0, h))
            return [[x0 / scale, y0 / scale], [x1 / scale, y1 / scale]], list(BOX_LABELS)
        if point is not None:
            p = np.asarray(point, dtype=np.float64).reshape(-1)
            if p.shape != (2,) or not np.isfinite(p).all():
                raise ValueError(f"image {index}: a point prompt is 2 finite numbers x y px, got {point!r}")
            return [[np.clip(p[0], 0, w) / scale, np.clip(p[1], 0, h) / scale], [0.0, 0.0]], [1, -1]
        return [[0.0, 0.0], [w / scale, h / scale]], list(BOX_LABELS)

    def __call__(
        self,
        images: Any = None,
        task: str | Sequence[str] = "detection",
        text: str | Sequence[str | None] | None = None,
        boxes: Any = None,
        points: Any = None,
        targets: Sequence[Mapping[str, Any] | None] | None = None,
        return_tensors: str | None = "pt",
        rng: np.random.Generator | None = None,
        pad_to_multiple_of: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Model inputs (and training targets when ``targets`` is given) for a batch of images.

        Args:
            images: one image or a list (PIL, (H, W[, C]) arrays, tensors).
            task: one name from :data:`~.vocab.TASKS` for the batch, or one per image.
            text: encoder text per image after the task token (referring expression, ...).
            boxes: SAM box prompt per image, xyxy px (``None`` entries: none).
            points: SAM point prompt per image, xy px (``None`` entries: none).
            targets: one dict per image in docs/ARCHITECTURE.md's formats (pixels); detection dicts
                may carry ``"augment": True`` for Pix2Seq sequence augmentation.
            return_tensors: ``"pt"`` only (the model is torch).
            rng: randomness of object order / augmentation (default: the processor's generator).
            pad_to_multiple_of: round the batch's text prompt, target sequence and proposal lengths
                up to a multiple of this (padding the loss ignores), so that batches come in few
                shapes: each new shape recompiles a compiled model and records a new CUDA graph.

        Returns:
            ``BatchFeature`` with ``pixel_values``, ``eva_pixel_values``, ``input_ids``,
            ``attention_mask``, ``prompt_coords``, ``prompt_labels``, ``task_ids``, ``image_sizes`` and,
            with targets, ``labels``, ``label_weights`` and the head targets of the tasks present.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        if images is None:
            raise ValueError("images= is required")
        if pad_to_multiple_of is not None and not (
            isinstance(pad_to_multiple_of, int) and pad_to_multiple_of >= 1
        ):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
        pixels = self.image_processor(images, return_tensors="pt")
        sizes = [tuple(int(v) for v in s) for s in pixels["image_sizes"].tolist()]
        batch = len(sizes)
        tasks = [task] * batch if isinstance(task, str) else list(task)
        if len(tasks) != batch:
            raise ValueError(f"task= has {len(tasks)} entries for {batch} images")
        for t in tasks:
            task_index(t)
        texts = _per_image(text, batch, "text")
        box_prompts = _per_image(boxes, batch, "boxes")
        point_prompts = _per_image(points, batch, "points")

        prompts = [f"<task_{t}>" + (f" {s}" if s else "") for t, s in zip(tasks, texts)]
        encoded = self.tokenizer(
            prompts, padding="longest", pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
        )
        coords, labels = zip(
            *(self._prompt(b, p, s, i) for i, (b, p, s) in enumerate(zip(box_prompts, point_prompts, sizes)))
        )
        data: dict[str, torch.Tensor] = {
            "pixel_values": pixels["pixel_values"],
            "eva_pixel_values": pixels["eva_pixel_values"],
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "prompt_coords": torch.tensor(coords, dtype=torch.float32),
            "prompt_labels": torch.tensor(labels, dtype=torch.long),
            "task_ids": torch.tensor([TASKS.index(t) for t in tasks], dtype=torch.long),
            "image_sizes": pixels["image_sizes"],
        }
        if targets is not None:
            if len(targets) != batch:
                raise ValueError(f"targets= has {len(targets)} entries for {batch} images")
            rng = rng if rng is not None else self._rng
            data.update(self._targets(tasks, list(targets), sizes, rng, pad_to_multiple_of or 1))
        return BatchFeature(data=data)

    # --- targets ---------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        """Caption text → piece ids + EOS."""
        return list(self.tokenizer(text or "", add_special_tokens=True)["input_ids"])

    def _caption_rows(
        self, target: Mapping[str, Any], scale: float
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Ids + EOS, per-token points (T, 2) model space and their mask, from words/points or text."""
        words = target.get("words")
        if words is None:
            ids = self._text_ids(target.get("text", ""))
            return ids, np.zeros((len(ids), 2), np.float32), np.zeros(len(ids), bool)
        words = [str(w) for w in words]
        enc = self.tokenizer(words, is_split_into_words=True, add_special_tokens=True)
        ids = list(enc["input_ids"])
        word_of = enc.word_ids()
        points = target.get("points")
        pts = np.full((len(words), 2), np.nan) if points is None else np.asarray(points, dtype=np.float64)
        if pts.shape != (len(words), 2):
            raise ValueError(f"caption target: {len(words)} words but points of shape {pts.shape}")
        per_token = np.array(
            [pts[i] if i is not None else (np.nan, np.nan) for i in word_of], dtype=np.float64
        )
        mask = np.isfinite(per_token).all(axis=1)
        return ids, np.where(mask[:, None], per_token / scale, 0.0).astype(np.float32), mask

    def _detection_rows(
        self,
        items: list[tuple[int, Mapping[str, Any]]],
        sizes: list[tuple[int, int]],
        rng: np.random.Generator,
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Detection ids and weights per image index (closed set through the vectorized codec)."""
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.open_vocabulary:
            for i, target in items:
                rows[i] = self._open_vocabulary_row(target, sizes[i], rng)
            return rows
        if self.codec is None:
            raise ValueError("detection targets need class_names (id2label) in the config")
        for flag in (True, False):
            group = [(i, t) for i, t in items if bool(t.get("augment", False)) == flag]
            if not group:
                continue
            seq = self.codec.build_training_batch(
                [
                    np.asarray(t.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
                    for _, t in group
                ],
                [np.asarray(t.get("labels", []), dtype=np.int64).reshape(-1) for _, t in group],
                [sizes[i] for i, _ in group],
                rng,
                augment=flag,
            )
            self.codec_stats = self.codec_stats + seq.stats
            for row, (i, _) in enumerate(group):
                n = int(seq.lengths[row])
                rows[i] = (seq.tokens[row, :n], seq.weights[row, :n])
        return rows

    def _object_rows(
        self, rows: list[tuple[int, Mapping[str, Any]]], sizes: list[tuple[int, int]], batch: int
    ) -> dict[str, torch.Tensor]:
        """The detection rows' real objects, for the model's class-map head: ``object_boxes`` (B, N, 4)
        model space and ``object_classes`` (B, N), -1 on padding and on rows of other tasks. Boxes the
        codec drops (empty, outside the image, NaN) are left out here too; no noise objects."""
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, target in rows:
            labels = np.asarray(target.get("labels", []), dtype=np.int64).reshape(-1)
            normalized, valid, _ = sanitize_boxes(target.get("boxes", np.zeros((0, 4))), sizes[i])
            keep = np.flatnonzero(valid & (labels >= 0) & (labels < self.vocab.num_classes))
            kept[i] = (normalized[keep], labels[keep])
        count = max([len(labels) for _, labels in kept.values()] + [1])
        boxes = torch.zeros(batch, count, 4)
        classes = torch.full((batch, count), -1, dtype=torch.long)
        for i, (b, labels) in kept.items():
            boxes[i, : len(labels)] = torch.as_tensor(b, dtype=torch.float32)
            classes[i, : len(labels)] = torch.as_tensor(labels)
        return {"object_boxes": boxes, "object_classes": classes}

    def _open_vocabulary_row(
        self, target: Mapping[str, Any], size: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Open-vocabulary detection: random order, random subset, class names as text (no noise)."""
        boxes = np.asarray(target.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(target.get("labels", []), dtype=np.int64).reshape(-1)
        names = target.get("names")
        if names is None:
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(f"labels must index the {len(self.class_names)} class names")
            names = [self.class_names[int(label)] for label in labels]
        _, valid, stats = sanitize_boxes(boxes, size)
        self.codec_stats = self.codec_stats + stats
        keep = np.flatnonzero(valid)
        keep = rng.permutation(keep)[: self.max_objects]
        self.codec_stats.dropped_over_max += max(int(valid.sum()) - len(keep), 0)
        clipped = np.clip(boxes[keep], 0, [size[1], size[0]] * 2)
        pieces = [
            self.tokenizer(names[k], add_special_tokens=False)["input_ids"] or [self.vocab.pad_id]
            for k in keep
        ]
        ids = encode_open_vocabulary(self.vocab, clipped, pieces, size)
        weights = np.ones(len(ids), dtype=np.float32)
        weights[-1] = self.eos_weight
        return ids, weights

    def _targets(
        self,
        tasks: list[str],
        targets: list[Mapping[str, Any] | None],
        sizes: list[tuple[int, int]],
        rng: np.random.Generator,
        multiple: int = 1,
    ) -> dict[str, torch.Tensor]:
        batch = len(tasks)
        ids: list[Sequence[int]] = [[] for _ in range(batch)]
        weights: list[np.ndarray | None] = [None] * batch
        points: list[np.ndarray | None] = [None] * batch
        point_mask: list[np.ndarray | None] = [None] * batch
        out: dict[str, torch.Tensor] = {}
        present = set(tasks)
        if "referring" in present:
            box_targets = torch.zeros(batch, 4)
            box_mask = torch.zeros(batch, dtype=torch.bool)
            m = self.image_processor.mask_size
            mask_targets = torch.zeros(batch, m, m)
            mask_valid = torch.zeros(batch, dtype=torch.bool)
        if "dense_caption" in present:
            proposals: list[np.ndarray] = [np.zeros((0, 4))] * batch

        detection = [
            (i, t) for i, (task, t) in enumerate(zip(tasks, targets)) if task == "detection" and t is not None
        ]
        for i, (row_ids, row_w) in self._detection_rows(detection, sizes, rng).items():
            ids[i], weights[i] = row_ids.tolist(), row_w
        if detection and not self.open_vocabulary:
            out.update(self._object_rows(detection, sizes, batch))

        for i, (task, target) in enumerate(zip(tasks, targets)):
            if target is None or task == "detection":
                continue
            scale = float(max(sizes[i]))
            if task == "caption":
                ids[i], points[i], point_mask[i] = self._caption_rows(target, scale)
            elif task == "region_caption":
                ids[i] = self._text_ids(target.get("text", ""))
            elif task == "dense_caption":
                if target.get("text"):
                    ids[i] = self._text_ids(target["text"])
                normalized, valid, stats = sanitize_boxes(target.get("boxes", np.zeros((0, 4))), sizes[i])
                self.codec_stats = self.codec_stats + stats
                proposals[i] = normalized[valid]
            elif task == "referring":
                normalized, valid, stats = sanitize_boxes(target.get("box", np.full(4, np.nan)), sizes[i])
                self.codec_stats = self.codec_stats + stats
                if valid.all() and len(valid) == 1:
                    box = normalized[0]
                    bins = self.vocab.quantize(box[[1, 0, 3, 2]]) + self.vocab.coord_offset
                    ids[i] = [*bins.tolist(), EOS_ID]
                    box_targets[i] = torch.as_tensor(box, dtype=torch.float32)
                    box_mask[i] = True
                mask = target.get("mask")
                if mask is not None:
                    mask_targets[i] = self.image_processor.mask_to_target(mask, sizes[i])
                    mask_valid[i] = True
            else:
                raise ValueError(
                    f"task {task!r} has no sequence targets in PixtokProcessor (panoptic: its own processor)"
                )

        length = _round_up(max([len(r) for r in ids] + [1]), multiple)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        label_weights = torch.zeros(batch, length)
        for i, row in enumerate(ids):
            n = len(row)
            if n:
                labels[i, :n] = torch.as_tensor(np.asarray(row, dtype=np.int64))
                label_weights[i, :n] = torch.as_tensor(weights[i]) if weights[i] is not None else 1.0
        out["labels"], out["label_weights"] = labels, label_weights
        if "caption" in present:
            point_targets = torch.zeros(batch, length, 2)
            point_valid = torch.zeros(batch, length, dtype=torch.bool)
            for i, (p, m) in enumerate(zip(points, point_mask)):
                if p is not None:
                    point_targets[i, : len(p)] = torch.as_tensor(p)
                    point_valid[i, : len(m)] = torch.as_tensor(m)
            out["point_targets"], out["point_mask"] = point_targets, point_valid
        if "referring" in present:
            out.update(
                box_targets=box_targets, box_mask=box_mask, mask_targets=mask_targets, mask_valid=mask_valid
            )
        if "dense_caption" in present:
            n = _round_up(max([len(p) for p in proposals] + [1]), multiple)
            proposal_boxes = torch.zeros(batch, n, 4)
            proposal_mask = torch.zeros(batch, n, dtype=torch.bool)
            for i, p in enumerate(proposals):
                proposal_boxes[i, : len(p)] = torch.as_tensor(p, dtype=torch.float32)
                proposal_mask[i, : len(p)] = True
            out["proposal_boxes"], out["proposal_mask"] = proposal_boxes, proposal_mask
        return out

    def encode_detection(self, boxes: Any, labels: Any, image_size: Sequence[int]) -> torch.Tensor:
        """One image's detection target ids: objects in the given order, no augmentation, then EOS.

        Args:
            boxes: (N, 4) xyxy, absolute pixels (clipped to the image; NaN / empty boxes dropped).
            labels: (N,) class indices into ``class_names``.
            image_size: original (h, w).

        Returns:
            (5 n + 1,) long ids (n = boxes kept, at most ``max_objects``).
        """
        if self.codec is None:
            raise ValueError(
                "encode_detection needs a closed-set vocabulary (class_names, not open_vocabulary)"
            )
        ids, stats = self.codec.encode(np.asarray(boxes, dtype=np.float64), np.asarray(labels), image_size)
        self.codec_stats = self.codec_stats + stats
        return torch.as_tensor(ids, dtype=torch.long)

    # --- post-processing -------------------------------------------------------------------------
    def _unpack(
        self, outputs: Any, target_sizes: Any
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]] | None]:
        """(B, T) ids, (B, T) scores (1.0 when absent) and target sizes from outputs or a tensor."""
        if isinstance(outputs, (torch.Tensor, np.ndarray)):
            sequences, scores, sizes = outputs, None, None
        else:
            sequences = _field(outputs, "sequences")
            if sequences is None:
                raise ValueError(
                    "outputs have no `sequences` (pass generate's output or a tensor of token ids)"
                )
            scores, sizes = _field(outputs, "token_scores"), _field(outputs, "image_sizes")
        seq = np.atleast_2d(torch.as_tensor(sequences).detach().cpu().numpy()).astype(np.int64)
        sc = (
            np.ones(seq.shape, np.float32)
            if scores is None
            else torch.as_tensor(scores).detach().float().cpu().numpy()
        )
        if target_sizes is not None:
            sizes = target_sizes
        if sizes is not None:
            sizes = [tuple(int(v) for v in s) for s in torch.as_tensor(sizes).tolist()]
        return seq, np.atleast_2d(sc), sizes

    @staticmethod
    def _need_sizes(sizes: list[tuple[int, int]] | None, batch: int) -> list[tuple[int, int]]:
        if sizes is None:
            raise ValueError("target_sizes is required when the outputs carry no image_sizes")
        if len(sizes) != batch:
            raise ValueError(f"{len(sizes)} target_sizes for {batch} sequences")
        return sizes

    def post_process_object_detection(
        self, outputs: Any, target_sizes: Any = None, threshold: float = 0.0
    ) -> list[dict[str, torch.Tensor]]:
        """Generated detection sequences → ``[{"scores" (N,), "labels" (N,), "boxes" (N, 4) xyxy px}]``.

        Boxes are the coordinate bins' centres, moved by ``outputs.coordinate_offsets`` when
        ``generate`` computed them (``coordinate_window``). Scores are the class tokens'
        probabilities (1.0 for a plain tensor of ids); objects with
        ``score <= threshold`` are dropped (``threshold=0`` keeps every decoded object). Malformed
        objects and ``<noise>`` are skipped; boxes are clipped to the image. Open-vocabulary models
        also return ``"names"`` (labels are then the matching ``class_names`` index or -1).
        """
        seq, scores, sizes = self._unpack(outputs, target_sizes)
        sizes = self._need_sizes(sizes, len(seq))
        results = []
        if self.open_vocabulary:
            index = {name: i for i, name in enumerate(self.class_names)}
            for row, row_scores, size in zip(seq, scores, sizes):
                found = decode_open_vocabulary(self.vocab, row, size, row_scores)
                names = [self.tokenizer.decode(p, skip_special_tokens=True).strip() for _, p, _ in found]
                keep = [k for k, (_, _, s) in enumerate(found) if s > threshold]
                results.append(
                    {
                        "scores": torch.tensor([found[k][2] for k in keep], dtype=torch.float32),
                        "labels": torch.tensor([index.get(names[k], -1) for k in keep], dtype=torch.long),
                        "boxes": torch.tensor(np.array([found[k][0] for k in keep]).reshape(-1, 4)),
                        "names": [names[k] for k in keep],
                    }
                )
            return results
        assert self.codec is not None
        offsets = _field(outputs, "coordinate_offsets")  # None for a plain tensor of ids
        if offsets is not None:
            offsets = torch.as_tensor(offsets).detach().float().cpu().numpy()
        for det in self.codec.decode_batch(seq, sizes, scores, offsets):
            keep = det["scores"] > threshold
            results.append(
                {
                    "scores": torch.from_numpy(det["scores"][keep]),
                    "labels": torch.from_numpy(det["labels"][keep]),
                    "boxes": torch.from_numpy(det["boxes"][keep]),
                }
            )
        return results

    def _words(self, row: np.ndarray) -> tuple[str, list[str], list[list[int]]]:
        """Ids up to EOS → decoded text, words, and the token positions of each word."""
        end = len(row)
        stops = np.flatnonzero((row == EOS_ID) | (row == PAD_ID))
        if len(stops):
            end = int(stops[0])
        positions = [t for t in range(end) if self.vocab.is_text(int(row[t]))]
        pieces = self.tokenizer.convert_ids_to_tokens([int(row[t]) for t in positions])
        words: list[str] = []
        members: list[list[int]] = []
        for pos, piece in zip(positions, pieces):
            starts = piece.startswith(_WORD_START) or not words
            body = piece.replace(_WORD_START, "")
            if starts:
                if not body and words and not words[-1]:
                    members[-1].append(pos)
                    continue
                words.append(body)
                members.append([pos])
            else:
                words[-1] += body
                members[-1].append(pos)
        keep = [k for k, w in enumerate(words) if w]
        words, members = [words[k] for k in keep], [members[k] for k in keep]
        text = self.tokenizer.decode([int(row[t]) for t in positions], skip_special_tokens=True)
        return text.strip(), words, members

    def post_process_caption(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, Any]]:
        """Caption sequences → ``[{"text", "words", "points": (W, 2) xy px}]``.

        Sentencepiece pieces are joined into words (a ``▁`` starts a word); each word's point is the
        mean of its pieces' points (``outputs.points``, model space, scaled by the long side and
        clipped to the image). Without points (or sizes) the points are NaN.
        """
        seq, _, sizes = self._unpack(outputs, target_sizes)
        pts = _field(outputs, "points") if not isinstance(outputs, (torch.Tensor, np.ndarray)) else None
        pts = None if pts is None else torch.as_tensor(pts).detach().float().cpu().numpy()
        results = []
        for b, row in enumerate(seq):
            text, words, members = self._words(row)
            word_points = np.full((len(words), 2), np.nan, dtype=np.float32)
            if pts is not None and sizes is not None:
                h, w = sizes[b]
                for k, pos in enumerate(members):
                    xy = pts[b, pos].mean(axis=0) * max(h, w)
                    word_points[k] = np.clip(xy, 0, [w, h])
            results.append({"text": text, "words": words, "points": torch.from_numpy(word_points)})
        return results

    def post_process_referring(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, Any]]:
        """Referring outputs → ``[{"box", "token_box", "mask", "mask_box"}]``: (4,) xyxy px boxes, an
        (H, W) bool mask or None, and the mask's own tight box (None without a mask or when it is empty).

        The box is the box head's (``outputs.boxes``, model space) when present, else the first four
        coordinate tokens ``ymin xmin ymax xmax``; ``token_box`` is always the tokens' box (the same
        as ``box`` without a box head), so the two can be compared. A sequence without four
        coordinates gives a zero token box. Boxes are clipped to the image. The mask
        (``outputs.masks`` logits over the padded square) is cropped to the image content, resized
        to (H, W) and thresholded at 0.
        """
        seq, _, sizes = self._unpack(outputs, target_sizes)
        sizes = self._need_sizes(sizes, len(seq))
        plain = isinstance(outputs, (torch.Tensor, np.ndarray))
        head_boxes = None if plain else _field(outputs, "boxes")
        masks = None if plain else _field(outputs, "masks")

        def clipped(box: np.ndarray, h: int, w: int) -> torch.Tensor:
            x0, x1 = np.clip(sorted(box[[0, 2]]), 0, w)
            y0, y1 = np.clip(sorted(box[[1, 3]]), 0, h)
            return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)

        results = []
        for b, (row, (h, w)) in enumerate(zip(seq, sizes)):
            scale = float(max(h, w))
            coords = [int(t) for t in row if self.vocab.is_coord(int(t))][:4]
            if len(coords) == 4:
                ymin, xmin, ymax, xmax = (
                    self.vocab.dequantize(np.array(coords) - self.vocab.coord_offset) * scale
                )
                token_box = clipped(np.array([xmin, ymin, xmax, ymax]), h, w)
            else:
                token_box = torch.zeros(4)
            if head_boxes is not None:
                box = clipped(torch.as_tensor(head_boxes[b]).detach().float().cpu().numpy() * scale, h, w)
            else:
                box = token_box.clone()
            mask = None
            if masks is not None:
                logits = torch.as_tensor(masks[b]).detach().float().cpu()
                logits = logits.reshape(logits.shape[-2:])
                m = logits.shape[-1]
                ch, cw = max(1, round(m * h / scale)), max(1, round(m * w / scale))
                crop = logits[:ch, :cw][None, None]
                mask = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0
            results.append({"box": box, "token_box": token_box, "mask": mask, "mask_box": mask_box(mask)})
        return results

    def post_process_dense_caption(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, Any]]:
        """Dense captions → ``[{"boxes": (K, 4) xyxy px, "scores": (K,), "captions": [str] * K}]``.

        ``outputs.proposals`` (B, K, 4) model space and ``proposal_scores`` (B, K) give the regions,
        ``sequences`` (B*K, T) their captions, image-major. A plain tensor of ids is read as one
        caption per image for the whole image (score 1.0).
        """
        seq, _, sizes = self._unpack(outputs, target_sizes)
        plain = isinstance(outputs, (torch.Tensor, np.ndarray))
        proposals = None if plain else _field(outputs, "proposals")
        if proposals is None:
            sizes = self._need_sizes(sizes, len(seq))
            return [
                {
                    "boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]),
                    "scores": torch.ones(1),
                    "captions": [self._words(row)[0]],
                }
                for row, (h, w) in zip(seq, sizes)
            ]
        props = torch.as_tensor(proposals).detach().float().cpu()
        batch, k = props.shape[:2]
        sizes = self._need_sizes(sizes, batch)
        if len(seq) != batch * k:
            raise ValueError(f"{len(seq)} caption sequences for {batch} images x {k} proposals")
        prop_scores = _field(outputs, "proposal_scores")
        prop_scores = (
            torch.ones(batch, k)
            if prop_scores is None
            else torch.as_tensor(prop_scores).detach().float().cpu()
        )
        results = []
        for b, (h, w) in enumerate(sizes):
            boxes = props[b] * max(h, w)
            x = boxes[:, [0, 2]].sort(dim=1).values.clamp(0, w)
            y = boxes[:, [1, 3]].sort(dim=1).values.clamp(0, h)
            results.append(
                {
                    "boxes": torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1),
                    "scores": prop_scores[b],
                    "captions": [self._words(seq[b * k + j])[0] for j in range(k)],
                }
            )
        return results

    def post_process_panoptic_segmentation(
        self, outputs: Any, target_sizes: Any = None, **kwargs: Any
    ) -> list[dict]:
        """``[{"segmentation": (H, W), "segments_info"}]`` — see :func:`.panoptic_postprocess.post_process_panoptic_segmentation`."""
        from .panoptic_postprocess import post_process_panoptic_segmentation

        return post_process_panoptic_segmentation(outputs, target_sizes, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values",
            "eva_pixel_values",
            "input_ids",
            "attention_mask",
            "prompt_coords",
            "prompt_labels",
            "task_ids",
            "image_sizes",
        ]


__all__ = ["IGNORE_INDEX", "PixtokProcessor"]
