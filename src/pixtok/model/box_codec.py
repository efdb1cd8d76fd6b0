"""Boxes ↔ Pix2Seq detection tokens, object orderings and sequence augmentation (numpy, vectorized).

One object is five tokens ``[ymin, xmin, ymax, xmax, class]``: four ``<loc_k>`` coordinates of the
box in model space (normalized by the long side of the image, see docs/ARCHITECTURE.md; the bin
arithmetic lives in :meth:`PixtokVocab.quantize`) and a ``<cls_c>`` token (``<noise>`` for the
synthetic objects of sequence augmentation). A sequence is the objects followed by EOS.

Everything here works on whole batches at once: the objects of B images are laid out in a
``(B, M)`` grid (M = most objects of any image) and every step — clipping, dropping bad boxes,
ordering, subsampling to ``max_objects``, noise synthesis, quantization, weights — is one array
operation over that grid. No Python loop runs over objects.

Sequence augmentation follows Pix2Seq: after the real objects, noise objects fill the sequence up
to ``max_objects``. Each is either a *duplicate* of a real box jittered by a truncated normal
(±2σ, σ = ``noise_jitter`` × the box's width/height per coordinate) or a *bad* box — a real box
shifted to a random place, or a uniformly random box. All are labelled ``<noise>``; their
coordinate tokens get loss weight 0 and their class token weight 1, so the model learns to
call bad boxes noise without being taught to draw them. EOS gets ``eos_weight`` (0.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from .vocab import EOS_ID, PAD_ID, PixtokVocab

ORDERINGS = ("random", "area", "distance", "given")
"""``random``: reshuffled on every call (Pix2Seq default); ``area``: largest first; ``distance``:
top-left corner nearest the image origin first; ``given``: input order (no shuffling)."""


@dataclass
class CodecStats:
    """Counts of what sanitizing and subsampling did (summed over a batch).

    Attributes:
        clipped: boxes partly outside the image, clipped to it and kept.
        dropped_nonfinite: boxes with a NaN/inf coordinate, dropped.
        dropped_empty: boxes with zero area (after clipping) or inverted corners, dropped.
        dropped_over_max: valid objects left out because an image had more than ``max_objects``.
    """

    clipped: int = 0
    dropped_nonfinite: int = 0
    dropped_empty: int = 0
    dropped_over_max: int = 0

    def __add__(self, other: CodecStats) -> CodecStats:
        return CodecStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass
class DetectionSequences:
    """Training sequences for a batch.

    Attributes:
        tokens: (B, L) int64, objects then EOS, ``PAD_ID`` after; L = 5 * (most objects) + 1.
        weights: (B, L) float32 loss weights (real tokens 1, noise coords 0, noise class 1, EOS
            ``eos_weight``, padding 0).
        lengths: (B,) int64, tokens up to and including EOS.
        num_real: (B,) int64, real objects per image (the noise objects follow them).
        stats: what was clipped / dropped.
    """

    tokens: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray
    num_real: np.ndarray
    stats: CodecStats


def _as_size_array(image_sizes: Sequence[Sequence[int]] | np.ndarray, batch: int) -> np.ndarray:
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    if sizes.shape[0] != batch:
        raise ValueError(f"expected {batch} image sizes (h, w), got {sizes.shape[0]}")
    if not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise ValueError(f"image sizes must be positive (h, w) pairs, got {sizes.tolist()}")
    return sizes


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], bound: float = 2.0) -> np.ndarray:
    """Standard normal samples restricted to ``[-bound, bound]`` (redrawn, not clipped)."""
    z = rng.standard_normal(shape)
    for _ in range(4):
        out = np.abs(z) > bound
        if not out.any():
            break
        z[out] = rng.standard_normal(int(out.sum()))
    return np.clip(z, -bound, bound)  # after 4 redraws fewer than 1e-5 remain; clip those


def sanitize_boxes(boxes: np.ndarray, image_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, CodecStats]:
    """One image's boxes under the codec's rules: clipped to the image, NaN/inf and empty ones flagged.

    Args:
        boxes: (N, 4) xyxy, absolute pixels.
        image_size: original (h, w).

    Returns:
        (N, 4) model-space boxes (divided by the long side; rows of invalid boxes are meaningless),
        (N,) bool valid, and the counts.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(1, -1, 4)
    sizes = _as_size_array([tuple(image_size)], 1)
    normalized, valid, stats = DetectionCodec._sanitize(boxes, np.ones(boxes.shape[:2], dtype=bool), sizes)
    return normalized[0], valid[0], stats


@dataclass(frozen=True)
class DetectionCodec:
    """Pix2Seq detection sequences for one vocabulary (closed-set classes).

    Args:
        vocab (`PixtokVocab`): the token space (``num_bins``, class and noise ids).
        max_objects (`int`, *optional*, defaults to 100): objects per sequence; more are subsampled
            at random; augmentation fills up to it with noise.
        ordering (`str`, *optional*, defaults to `"random"`): one of :data:`ORDERINGS`.
        eos_weight (`float`, *optional*, defaults to 0.1): loss weight of EOS (Pix2Seq).
        noise_jitter (`float`, *optional*, defaults to 0.05): σ of the duplicate jitter, as a fraction
            of box width/height.
        duplicate_fraction (`float`, *optional*, defaults to 0.5): share of noise objects that are
            jittered duplicates; the rest are bad boxes, half shifted real boxes, half random.
    """

    vocab: PixtokVocab
    max_objects: int = 100
    ordering: str = "random"
    eos_weight: float = 0.1
    noise_jitter: float = 0.05
    duplicate_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, got {self.ordering!r}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be positive, got {self.max_objects}")
        if self.vocab.open_vocabulary or self.vocab.num_classes == 0:
            raise ValueError("DetectionCodec writes <cls_c> tokens; an open-vocabulary vocab has none")

    # --- layout ---------------------------------------------------------------------------------
    def _grid(
        self, boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lay B ragged images out as (B, M, 4) boxes, (B, M) labels, (B, M) present."""
        if len(boxes) != len(labels):
            raise ValueError(f"got {len(boxes)} box arrays but {len(labels)} label arrays")
        counts = np.fromiter((len(b) for b in boxes), dtype=np.int64, count=len(boxes))
        batch, width = len(boxes), max(int(counts.max(initial=0)), 1)
        flat_boxes = np.concatenate(
            [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes] or [np.zeros((0, 4))]
        )
        flat_labels = np.concatenate([np.asarray(lb).reshape(-1) for lb in labels] or [np.zeros(0)])
        if len(flat_labels) != len(flat_boxes):
            raise ValueError("every image needs one label per box")
        integral = np.issubdtype(flat_labels.dtype, np.integer) or np.all(np.mod(flat_labels, 1) == 0)
        if len(flat_labels) and not integral:
            raise ValueError("labels must be integer class indices")
        flat_labels = flat_labels.astype(np.int64)
        bad = (flat_labels < 0) | (flat_labels >= self.vocab.num_classes)
        if bad.any():
            raise ValueError(
                f"labels must index the {self.vocab.num_classes} classes of the config; got "
                f"{np.unique(flat_labels[bad]).tolist()[:10]}"
            )
        if counts.min(initial=0) == width:  # every image has the same count: a plain reshape
            return (
                flat_boxes.reshape(batch, width, 4),
                flat_labels.reshape(batch, width),
                np.ones((batch, width), bool),
            )
        image = np.repeat(np.arange(batch), counts)
        slot = np.arange(len(flat_boxes)) - np.repeat(np.cumsum(counts) - counts, counts)
        grid_boxes = np.full((batch, width, 4), np.nan)
        grid_labels = np.zeros((batch, width), dtype=np.int64)
        present = np.zeros((batch, width), dtype=bool)
        grid_boxes[image, slot] = flat_boxes
        grid_labels[image, slot] = flat_labels
        present[image, slot] = True
        return grid_boxes, grid_labels, present

    @staticmethod
    def _sanitize(
        boxes: np.ndarray, present: np.ndarray, sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, CodecStats]:
        """Clip (B, M, 4) xyxy px boxes to their image, drop non-finite / empty ones, normalize.

        Returns:
            Boxes in model space (divided by each image's long side), (B, M) valid, the counts.
        """
        finite = np.isfinite(boxes).all(axis=-1) & present
        limits = sizes[:, None, [1, 0, 1, 0]]  # (B, 1, 4): w, h, w, h
        raw = np.where(finite[..., None], boxes, 0.0)
        clipped_boxes = np.minimum(np.maximum(raw, 0.0), limits)
        nonempty = (clipped_boxes[..., 2] > clipped_boxes[..., 0]) & (
            clipped_boxes[..., 3] > clipped_boxes[..., 1]
        )
        valid = finite & nonempty
        clipped = valid & (clipped_boxes != raw).any(axis=-1)
        normalized = clipped_boxes / sizes.max(axis=1)[:, None, None]
        stats = CodecStats(
            clipped=int(np.count_nonzero(clipped)),
            dropped_nonfinite=int(np.count_nonzero(present) - np.count_nonzero(finite)),
            dropped_empty=int(np.count_nonzero(finite) - np.count_nonzero(valid)),
        )
        return normalized, valid, stats

    def _order(
        self, boxes: np.ndarray, valid: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Which objects go into each sequence, in order.

        Returns:
            (B, min(M, max_objects)) column indices — a uniformly random subset of at most
            ``max_objects`` valid objects (subsampling never truncates by position) in the codec's
            ordering, then invalid columns —, (B,) kept counts, and the number left out.
        """
        batch, width = valid.shape
        count = np.count_nonzero(valid, axis=1)
        kept = np.minimum(count, self.max_objects)
        over = int(count.sum() - kept.sum())
        k = min(width, self.max_objects)
        if self.ordering == "given" and over == 0:
            keys = np.where(valid, np.arange(width, dtype=np.float64), np.inf)
            return np.argsort(keys, axis=1, kind="stable")[:, :k], kept, 0
        if rng is None and (self.ordering == "random" or over):
            raise ValueError(f"ordering {self.ordering!r} (or subsampling) needs an np.random.Generator")
        # Sorting by a random key per object gives a random permutation; its head is a random subset.
        key = rng.random((batch, width)) if rng is not None else np.arange(width, dtype=np.float64)[None, :]
        order = np.argsort(np.where(valid, key, np.inf), axis=1, kind="stable")[:, :k]
        if self.ordering == "random":
            return order, kept, over
        rows = np.arange(batch)[:, None]
        chosen = boxes[rows, order]
        if self.ordering == "area":
            keys = -(chosen[..., 2] - chosen[..., 0]) * (chosen[..., 3] - chosen[..., 1])
        elif self.ordering == "distance":
            keys = np.hypot(chosen[..., 0], chosen[..., 1])
        else:  # given order, after subsampling
            keys = order.astype(np.float64)
        keys = np.where(np.arange(k)[None, :] < kept[:, None], keys, np.inf)
        return order[rows, np.argsort(keys, axis=1, kind="stable")], kept, over

    # --- noise ----------------------------------------------------------------------------------
    def _noise_boxes(
        self,
        real: np.ndarray,
        num_real: np.ndarray,
        image: np.ndarray,
        extent: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """(n, 4) xyxy noise boxes in model space, one per noise slot.

        Args:
            real: (B, K, 4) real boxes, valid in slots ``< num_real``.
            num_real: (B,) real objects per image.
            image: (n,) the image of each noise slot.
            extent: (B, 2) image content extent in model space (w / long side, h / long side).
        """
        n = len(image)
        have = num_real[image]
        span = extent[image]  # (n, 2)
        kind = rng.random(n)
        kind[have == 0] = 1.0  # nothing to copy → random box
        duplicate = kind < self.duplicate_fraction
        random_box = kind >= (1 + self.duplicate_fraction) / 2
        copies = ~random_box  # duplicates and shifted boxes start from a real box
        noise = np.empty((n, 4))
        # Random draws only for the slots that use them (the generator is the cost here).
        src_image, src_have = image[copies], have[copies]
        pick = np.minimum((rng.random(len(src_image)) * src_have).astype(np.int64), src_have - 1)
        source = real[src_image, pick]
        size = source[:, 2:] - source[:, :2]  # (m, 2) w, h
        is_dup = duplicate[copies]
        jitter = _truncated_normal(rng, (int(is_dup.sum()), 4)) * self.noise_jitter
        copied = np.empty_like(source)
        copied[is_dup] = source[is_dup] + jitter * np.concatenate([size[is_dup], size[is_dup]], axis=1)
        shift = ~is_dup
        centre = rng.random((int(shift.sum()), 2)) * span[copies][shift]
        half = size[shift] / 2
        copied[shift] = np.concatenate([centre - half, centre + half], axis=1)
        noise[copies] = copied
        corners = rng.random((int(random_box.sum()), 2, 2)) * span[random_box][:, None, :]
        noise[random_box] = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        lo = np.minimum(noise[:, :2], noise[:, 2:])
        hi = np.maximum(noise[:, :2], noise[:, 2:])
        return np.concatenate(
            [np.minimum(np.maximum(lo, 0.0), span), np.minimum(np.maximum(hi, 0.0), span)], axis=1
        )

    # --- encoding -------------------------------------------------------------------------------
    def build_training_batch(
        self,
        boxes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        image_sizes: Sequence[Sequence[int]] | np.ndarray,
        rng: np.random.Generator | None = None,
        augment: bool = True,
    ) -> DetectionSequences:
        """Training sequences for B images.

        Args:
            boxes: B arrays (N_i, 4) xyxy in absolute pixels of the original image.
            labels: B arrays (N_i,) int class indices (into the config's ``id2label``).
            image_sizes: (B, 2) original (h, w) in pixels.
            rng: randomness for ordering, subsampling and noise (needed unless ``ordering="given"``,
                ``augment=False`` and no image exceeds ``max_objects``).
            augment: append noise objects up to ``max_objects`` (Pix2Seq sequence augmentation).

        Returns:
            :class:`DetectionSequences`.
        """
        if augment and rng is None:
            raise ValueError("augment=True needs an np.random.Generator")
        grid, grid_labels, present = self._grid(boxes, labels)
        batch = grid.shape[0]
        sizes = _as_size_array(image_sizes, batch)
        normalized, valid, stats = self._sanitize(grid, present, sizes)
        order, num_real, stats.dropped_over_max = self._order(normalized, valid, rng)
        rows = np.arange(batch)[:, None]
        width = self.max_objects if augment else order.shape[1]
        real = np.zeros((batch, width, 4))
        classes = np.full((batch, width), self.vocab.noise_id, dtype=np.int64)
        real[:, : order.shape[1]] = normalized[rows, order]
        classes[:, : order.shape[1]] = self.vocab.class_offset + grid_labels[rows, order]
        is_real = np.arange(width)[None, :] < num_real[:, None]
        if augment:
            image, slot = np.nonzero(~is_real)
            if len(image):
                extent = sizes[:, ::-1] / sizes.max(axis=1, keepdims=True)  # (w, h) / long side
                real[image, slot] = self._noise_boxes(real, num_real, image, extent, rng)
                classes[image, slot] = self.vocab.noise_id
            num_objects = np.full(batch, width, dtype=np.int64)
        else:
            num_objects = num_real
        return self._assemble(real, classes, is_real, num_objects, num_real, stats)

    def _assemble(
        self,
        boxes: np.ndarray,
        classes: np.ndarray,
        is_real: np.ndarray,
        num_objects: np.ndarray,
        num_real: np.ndarray,
        stats: CodecStats,
    ) -> DetectionSequences:
        """(B, K, 4) model-space xyxy + (B, K) class ids → padded token and weight arrays."""
        batch, width = classes.shape
        objects = np.empty((batch, width, 5), dtype=np.int64)
        objects[..., :4] = self.vocab.quantize(boxes[..., [1, 0, 3, 2]])  # ymin xmin ymax xmax
        objects[..., :4] += self.vocab.coord_offset
        objects[..., 4] = classes
        weights_obj = np.where(
            is_real[..., None], np.float32(1.0), np.array([0, 0, 0, 0, 1], dtype=np.float32)
        )
        if num_objects.min(initial=width) < width:  # some sequences are shorter: pad their tail
            absent = np.arange(width)[None, :] >= num_objects[:, None]
            objects[absent] = PAD_ID
            weights_obj[absent] = 0.0
        length = 5 * int(num_objects.max(initial=0)) + 1
        tokens = np.empty((batch, 5 * width + 1), dtype=np.int64)
        weights = np.empty(tokens.shape, dtype=np.float32)
        tokens[:, :-1] = objects.reshape(batch, -1)
        weights[:, :-1] = weights_obj.reshape(batch, -1)
        tokens[:, -1] = PAD_ID
        weights[:, -1] = 0.0
        rows = np.arange(batch)
        tokens[rows, 5 * num_objects] = EOS_ID
        weights[rows, 5 * num_objects] = self.eos_weight
        return DetectionSequences(
            tokens=tokens[:, :length],
            weights=weights[:, :length],
            lengths=5 * num_objects + 1,
            num_real=num_real.astype(np.int64),
            stats=stats,
        )

    def encode(
        self, boxes: np.ndarray, labels: np.ndarray, image_size: Sequence[int]
    ) -> tuple[np.ndarray, CodecStats]:
        """One image's target ids, no augmentation, objects in the given order, ending in EOS.

        Args:
            boxes: (N, 4) xyxy, absolute pixels.
            labels: (N,) class indices.
            image_size: original (h, w).

        Returns:
            ``(5 * n + 1,)`` int64 ids and the clip/drop counts (beyond ``max_objects``, a random
            subset — seeded, so the result is deterministic — keeps its given order).
        """
        codec = DetectionCodec(self.vocab, self.max_objects, "given", self.eos_weight)
        seq = codec.build_training_batch(
            [np.asarray(boxes, dtype=np.float64).reshape(-1, 4)],
            [np.asarray(labels).reshape(-1)],
            [tuple(image_size)],
            rng=np.random.default_rng(0),
            augment=False,
        )
        return seq.tokens[0, : seq.lengths[0]], seq.stats

    # --- decoding -------------------------------------------------------------------------------
    def decode_batch(
        self,
        tokens: np.ndarray,
        image_sizes: Sequence[Sequence[int]] | np.ndarray,
        scores: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Token ids → detections; never raises on the token values and always yields valid boxes.

        The sequence is cut at its first EOS (or padding), split into groups of five, and a group is
        kept when its first four tokens are coordinates and the fifth a real class (noise objects and
        malformed groups are skipped — Pix2Seq's decoding).

        Args:
            tokens: (B, T) or (T,) int ids.
            image_sizes: (B, 2) original (h, w) in pixels.
            scores: (B, T) per-token probabilities (``None`` → 1.0); an object's score is its class
                token's.
            offsets: (B, T) sub-bin offsets of the coordinate tokens, in bins (``generate``'s
                ``coordinate_offsets``), added to their bin centres; ``None`` → bin centres.

        Returns:
            B dicts ``{"boxes": (N, 4) float32 xyxy px (x0 ≤ x1, y0 ≤ y1, inside the image),
            "labels": (N,) int64, "scores": (N,) float32}``.
        """
        tokens = np.atleast_2d(np.asarray(tokens)).astype(np.int64, copy=False)
        batch, length = tokens.shape
        sizes = _as_size_array(image_sizes, batch)
        scores = (
            np.ones(tokens.shape, dtype=np.float32) if scores is None else np.atleast_2d(np.asarray(scores))
        )
        if scores.shape != tokens.shape:
            raise ValueError(f"scores {scores.shape} must match tokens {tokens.shape}")
        ends = np.concatenate(
            [(tokens == EOS_ID) | (tokens == PAD_ID), np.ones((batch, 1), dtype=bool)], axis=1
        )
        stop = ends.argmax(axis=1)  # first EOS/padding, or the length
        groups = length // 5
        t = tokens[:, : 5 * groups].reshape(batch, groups, 5)
        s = scores[:, : 5 * groups].reshape(batch, groups, 5)
        v = self.vocab
        ok = (5 * np.arange(groups) + 5)[None, :] <= stop[:, None]
        ok &= ((t[..., :4] >= v.coord_offset) & (t[..., :4] < v.class_offset)).all(axis=-1)
        ok &= (t[..., 4] >= v.class_offset) & (t[..., 4] < v.noise_id)
        coords = v.dequantize(np.where(ok[..., None], t[..., :4] - v.coord_offset, 0))
        if offsets is not None:
            offsets = np.atleast_2d(np.asarray(offsets, dtype=np.float64))
            if offsets.shape != tokens.shape:
                raise ValueError(f"offsets {offsets.shape} must match tokens {tokens.shape}")
            shift = offsets[:, : 5 * groups].reshape(batch, groups, 5)[..., :4] / v.num_bins
            coords = coords + np.where(ok[..., None], shift, 0.0)
        scale = sizes.max(axis=1)[:, None, None]
        ymin, xmin, ymax, xmax = np.moveaxis(coords * scale, -1, 0)
        h, w = sizes[:, 0, None], sizes[:, 1, None]
        x0, x1 = np.clip(np.minimum(xmin, xmax), 0, w), np.clip(np.maximum(xmin, xmax), 0, w)
        y0, y1 = np.clip(np.minimum(ymin, ymax), 0, h), np.clip(np.maximum(ymin, ymax), 0, h)
        boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
        labels = t[..., 4] - v.class_offset
        object_scores = s[..., 4].astype(np.float32)
        return [
            {"boxes": boxes[b][ok[b]], "labels": labels[b][ok[b]], "scores": object_scores[b][ok[b]]}
            for b in range(batch)
        ]

    def decode(self, tokens: np.ndarray, image_size: Sequence[int], scores: np.ndarray | None = None) -> dict:
        """:meth:`decode_batch` for one (T,) sequence."""
        return self.decode_batch(np.asarray(tokens).reshape(1, -1), [tuple(image_size)], scores)[0]


def encode_open_vocabulary(
    vocab: PixtokVocab,
    boxes: np.ndarray,
    name_pieces: Sequence[Sequence[int]],
    image_size: Sequence[int],
) -> np.ndarray:
    """Open-vocabulary detection ids: ``[ymin xmin ymax xmax <name pieces>]* EOS``.

    Args:
        vocab: an open-vocabulary token space.
        boxes: (N, 4) xyxy pixels, already valid (clip/drop first, e.g. with ``DetectionCodec``'s rules).
        name_pieces: N lists of base-vocabulary ids spelling each object's class name (≥ 1 each).
        image_size: original (h, w).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(name_pieces) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(name_pieces)} class names")
    if any(len(p) == 0 or not all(vocab.is_text(int(i)) for i in p) for p in name_pieces):
        raise ValueError("every class name must be one or more text pieces")
    coords = vocab.coord_offset + vocab.quantize(boxes[:, [1, 0, 3, 2]] / max(image_size))
    parts = [np.concatenate([c, np.asarray(p, dtype=np.int64)]) for c, p in zip(coords, name_pieces)]
    return np.concatenate([*parts, np.array([EOS_ID], dtype=np.int64)])


def decode_open_vocabulary(
    vocab: PixtokVocab, tokens: np.ndarray, image_size: Sequence[int], scores: np.ndarray | None = None
) -> list[tuple[np.ndarray, list[int], float]]:
    """Parse open-vocabulary detection ids into ``(box xyxy px, name piece ids, score)`` triples.

    Never raises on token values: malformed objects are skipped. The score is the first name piece's
    probability.
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    scores = np.ones(len(tokens)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    h, w = image_size
    out: list[tuple[np.ndarray, list[int], float]] = []
    i, n = 0, len(tokens)
    while i + 4 < n and tokens[i] not in (EOS_ID, PAD_ID):
        head = tokens[i : i + 4]
        if not all(vocab.is_coord(int(t)) for t in head):
            i += 1
            continue
        j = i + 4
        while j < n and vocab.is_text(int(tokens[j])):
            j += 1
        if j > i + 4:
            ymin, xmin, ymax, xmax = vocab.dequantize(head - vocab.coord_offset) * max(h, w)
            box = np.array(
                [
                    np.clip(min(xmin, xmax), 0, w),
                    np.clip(min(ymin, ymax), 0, h),
                    np.clip(max(xmin, xmax), 0, w),
                    np.clip(max(ymin, ymax), 0, h),
                ],
                dtype=np.float32,
            )
            out.append((box, tokens[i + 4 : j].tolist(), float(scores[i + 4])))
        i = j if j > i + 4 else i + 4
    return out


__all__ = [
    "ORDERINGS",
    "CodecStats",
    "DetectionCodec",
    "DetectionSequences",
    "decode_open_vocabulary",
    "encode_open_vocabulary",
    "sanitize_boxes",
]
