"""The synthetic benchmark: shape scenes written in the real on-disk formats, read back by the loaders.

``write_benchmark(out_dir, seed, num_images, workers=…)`` renders scenes of coloured shapes (things) on two
textured background regions (stuff), with occlusion, and writes for the same images:

``images/<split>/<id>.jpg``                        the RGB scenes (JPEG, quality 95)
``annotations/instances_<split>.json``             COCO instances (boxes of the visible part, RLE masks)
``annotations/panoptic_<split>.json`` + ``panoptic/<split>/<id>.png``  COCO panoptic (things + stuff)
``annotations/localized_narratives_<split>.jsonl`` Localized Narratives: timed utterances, mouse
                                                   traces that visit each object while it is named
``refcoco/refs(synthetic).p`` / ``.json`` + ``refcoco/instances.json``  RefCOCO-style refs whose
                                                   expressions identify one object unambiguously
``visual_genome/region_descriptions_<split>.json`` + ``image_data_<split>.json``  VG regions
``benchmark.json``                                 seed, sizes, split sizes, class lists

Splits are fixed by image index (first 80 % train, next 10 % val, rest test; ``extra_train_images``
adds training images past ``num_images`` and leaves val and test as they are); every image is drawn
from its own generator ``numpy.random.default_rng([seed, index])``, and every file is written with
sorted keys and deterministic encoders: the same arguments give byte-identical folders, whatever
the number of ``workers`` (processes rendering and encoding images in parallel; the main process
numbers the annotations in index order, as one process does).
``load_synthetic(root, split, kind)`` (``pixtok.data.load("synthetic", root=…, split=…, kind=…)``)
reads a folder back through the real loaders; ``kind`` is one of :data:`KINDS`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.context
import os
import pickle
import sys
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import PIL.Image
import PIL.ImageDraw
from pycocotools import mask as mask_utils

from .sources.synthetic import KINDS, SPLITS, load_synthetic

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
"""Thing classes; COCO category id = index + 1."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (40, 175, 70),
    "blue": (45, 85, 215),
    "yellow": (240, 205, 35),
    "purple": (145, 60, 185),
}
"""Object colour names and their RGB."""

STUFF: dict[str, tuple[int, int, int]] = {
    "sky": (175, 205, 235),
    "wall": (160, 150, 140),
    "grass": (105, 140, 85),
    "sand": (215, 195, 150),
}
"""Stuff classes (background regions) and their base RGB; the top region is sky or wall, the
bottom grass or sand. COCO category id = 101 + index."""

SIZES: dict[str, tuple[float, float]] = {"small": (0.05, 0.08), "medium": (0.10, 0.14), "large": (0.17, 0.22)}
"""Size words → circumradius range as a fraction of the image side (disjoint, so words are exact)."""

DEFAULT_IMAGE_SIZE = 128
MAX_OBJECTS = 5
MIN_VISIBLE = 0.6  # an earlier object keeps at least this fraction of its pixels when overlapped
STUFF_ID_OFFSET = 101
JPEG_QUALITY = 95  # scenes are JPEG like COCO; panoptic PNGs stay lossless
TRACE_HZ = 10.0  # mouse samples per second in the narratives
WORD_SECONDS = 0.3  # speaking time per word
_TOP_STUFF, _BOTTOM_STUFF = ("sky", "wall"), ("grass", "sand")


@dataclass
class Thing:
    """One rendered object: class, colour and size words, geometry and its visible mask."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]  # (x, y) pixels
    radius: float  # circumradius, pixels
    mask: np.ndarray  # (H, W) bool, visible pixels (after occlusion)
    window: tuple[slice, slice] = (slice(None), slice(None))  # rows, cols holding the whole shape

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"

    @cached_property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ys, xs)`` of the visible pixels (read after rendering, when the mask is final)."""
        rows, cols = self.window
        ys, xs = np.nonzero(self.mask[rows, cols])
        return ys + (rows.start or 0), xs + (cols.start or 0)


@dataclass
class Region:
    """One stuff region: class name and visible mask."""

    name: str
    mask: np.ndarray  # (H, W) bool

    @cached_property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        return np.nonzero(self.mask)


@dataclass
class Scene:
    """One generated image with its things (drawing order) and the two stuff regions."""

    image: np.ndarray  # (H, W, 3) uint8
    things: list[Thing]
    stuff: list[Region]  # top region, then bottom region (visible parts)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners, radii = 4, [r]
        angle += math.pi / 4
    elif shape == "triangle":
        corners, radii = 3, [r]
        angle -= math.pi / 2
    elif shape == "hexagon":
        corners, radii = 6, [r]
    elif shape == "star":
        corners, radii = 10, [r, 0.45 * r]
        angle -= math.pi / 2
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [
        (
            cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / corners),
            cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _shape_mask(
    shape: str, cx: float, cy: float, r: float, angle: float, size: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """One shape rasterized by PIL around itself: the local bool mask and its ``(rows, cols)``
    slices into the ``(size, size)`` image."""
    x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
    x1, y1 = min(int(cx + r) + 2, size), min(int(cy + r) + 2, size)
    canvas = PIL.Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    lx, ly = cx - x0, cy - y0
    if shape == "circle":
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=1)
    else:
        draw.polygon(_polygon(shape, lx, ly, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool), (slice(y0, y1), slice(x0, x1))


def texture_bank(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every stuff class's texture, computed once per run: ``(2 size, 2 size, 3)`` uint8 = base
    colour + pattern (gradient, bricks, stripes) + Gaussian noise (sigma 8). Each image shows a
    random ``size x size`` window of it, so scenes differ without per-image texture synthesis."""
    span = 2 * size
    yy, xx = np.mgrid[0:span, 0:span].astype(np.float32)
    rows = (yy // 8).astype(np.int32)
    mortar = (yy % 8 < 1) | (((xx + 8 * (rows % 2)) % 16) < 1)
    patterns = {
        "sky": (yy / span - 0.5) * -40.0,
        "wall": np.where(mortar, -45.0, 0.0),
        "grass": 12.0 * np.sin(xx * 1.3) * np.sin(yy * 0.4),
        "sand": 10.0 * np.sin((xx + yy) * 0.35),
    }
    rng = np.random.default_rng([seed])
    bank = {}
    for name in STUFF:
        noise = rng.normal(0.0, 8.0, (span, span, 1))
        texture = np.asarray(STUFF[name], np.float32) + patterns[name][..., None] + noise
        bank[name] = np.clip(np.rint(texture), 0, 255).astype(np.uint8)
    return bank


def render_scene(
    rng: np.random.Generator,
    size: int = DEFAULT_IMAGE_SIZE,
    max_objects: int = MAX_OBJECTS,
    textures: dict[str, np.ndarray] | None = None,
) -> Scene:
    """Draw one scene.

    Args:
        rng: the image's own generator (all randomness comes from it).
        size: image side in pixels (square images).
        max_objects: at most this many things (at least one).
        textures: :func:`texture_bank` of ``size`` (computed here when not given).

    Returns:
        :class:`Scene` whose thing masks are the visible pixels after occlusion.
    """
    textures = textures if textures is not None else texture_bank(size)
    top, bottom = str(rng.choice(_TOP_STUFF)), str(rng.choice(_BOTTOM_STUFF))
    columns = np.arange(size)
    horizon = size * rng.uniform(0.35, 0.65) + size * 0.05 * np.sin(
        columns * rng.uniform(0.03, 0.1) + rng.uniform(0, 6.3)
    )
    top_mask = columns[:, None] < horizon[None, :]
    top_y, top_x, bottom_y, bottom_x = rng.integers(0, size, 4)  # texture windows
    image = textures[bottom][bottom_y : bottom_y + size, bottom_x : bottom_x + size].copy()
    top_pixels = np.repeat(top_mask[..., None], 3, axis=2)
    np.copyto(image, textures[top][top_y : top_y + size, top_x : top_x + size], where=top_pixels)

    things: list[Thing] = []
    full_areas: list[int] = []  # pixels of each thing before occlusion
    visible: list[int] = []  # pixels of each thing still visible
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(8):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
            lo, hi = SIZES[size_word]
            radius = size * rng.uniform(lo, hi)
            cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
            angle = rng.uniform(0, math.pi / 6)
            if any(t.shape == shape and t.color == color and t.size == size_word for t in things):
                continue
            local, window = _shape_mask(shape, cx, cy, radius, angle, size)
            area = int(np.count_nonzero(local))
            if not area:
                continue
            hidden = [int(np.count_nonzero(t.mask[window] & local)) for t in things]
            if all(v - h >= MIN_VISIBLE * a for v, h, a in zip(visible, hidden, full_areas)):
                for k, t in enumerate(things):
                    t.mask[window] &= ~local
                    visible[k] -= hidden[k]
                mask = np.zeros((size, size), dtype=bool)
                mask[window] = local
                things.append(
                    Thing(shape, color, size_word, (float(cx), float(cy)), float(radius), mask, window)
                )
                full_areas.append(area)
                visible.append(area)
                shade = np.asarray(COLORS[color], np.int16) + rng.integers(-8, 9, (area, 1), dtype=np.int16)
                image[window][local] = np.clip(shade, 0, 255).astype(np.uint8)
                break
    occupied = np.zeros((size, size), dtype=bool)
    for t in things:
        occupied |= t.mask
    stuff = [Region(top, top_mask & ~occupied), Region(bottom, ~top_mask & ~occupied)]
    return Scene(image, [t for t in things if t.mask.any()], [r for r in stuff if r.mask.any()])


# --- descriptions ---------------------------------------------------------------------------------


def _relation(target: Thing, anchor: Thing) -> str:
    dx, dy = target.center[0] - anchor.center[0], target.center[1] - anchor.center[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _matches(thing: Thing, words: tuple[str, ...]) -> bool:
    attributes = (thing.shape, thing.color, thing.size)
    return all(w in attributes for w in words)


def _unique_words(index: int, things: list[Thing]) -> tuple[str, ...] | None:
    """Fewest attribute words (shape; colour shape; size colour shape) naming only ``things[index]``."""
    t = things[index]
    for words in ((t.shape,), (t.color, t.shape), (t.size, t.color, t.shape)):
        if sum(_matches(o, words) for o in things) == 1:
            return words
    return None


def referring_expressions(index: int, things: list[Thing], unique: list | None = None) -> list[str]:
    """Expressions that pick out ``things[index]`` alone among ``things`` (empty if none exists).

    The first is the shortest attribute phrase ("the red circle"); the second adds a spatial
    relation to the nearest other uniquely describable object ("the small red circle left of the
    blue square"), checked to hold for the target only among the objects its words match.

    Args:
        index: the target.
        things: every object of the image.
        unique: ``[_unique_words(j, things) for j]`` when the caller already has it.
    """
    unique = unique if unique is not None else [_unique_words(j, things) for j in range(len(things))]
    target = things[index]
    words = unique[index]
    expressions = [] if words is None else ["the " + " ".join(words)]
    subject = (
        (target.color, target.shape)
        if words is not None and len(words) < 3
        else (target.size, target.color, target.shape)
    )
    candidates = [o for o in things if _matches(o, subject)]
    others = sorted(
        (j for j in range(len(things)) if j != index),
        key=lambda j: math.dist(things[j].center, target.center),
    )
    for j in others:
        if unique[j] is None:
            continue
        relation = _relation(target, things[j])
        if sum(_relation(o, things[j]) == relation for o in candidates if o is not things[j]) == 1:
            expressions.append(f"the {' '.join(subject)} {relation} the {' '.join(unique[j])}")
            break
    return expressions


def _trace_inside(region: Thing | Region, rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 2)`` pixel xy of points inside ``region``, ordered by angle around its centroid
    (a loop over the object, as annotators circle what they name)."""
    if isinstance(region, Thing):
        ys, xs = region.coords
        picks = rng.integers(0, len(xs), count)
        px, py = xs[picks] + 0.5, ys[picks] + 0.5
    else:  # large region: rejection-sample pixels instead of listing them all
        size = region.mask.shape[0]
        tries = rng.integers(0, size, (2, 8 * count + 64))
        inside = region.mask[tries[0], tries[1]]
        if np.count_nonzero(inside) < count:
            ys, xs = region.coords
            picks = rng.integers(0, len(xs), count)
            py, px = ys[picks] + 0.5, xs[picks] + 0.5
        else:
            py, px = tries[0][inside][:count] + 0.5, tries[1][inside][:count] + 0.5
    order = np.argsort(np.arctan2(py - py.mean(), px - px.mean()), kind="stable")
    return np.stack([px[order], py[order]], axis=1)


def narrative(scene: Scene, rng: np.random.Generator, size: int) -> dict:
    """A Localized Narratives record (``caption``, ``timed_caption``, ``traces``) for ``scene``.

    Utterances: "In this image we can see", one per object ("a small red circle,"), "and" before
    the last, then "In the background there is" and the stuff names. While an object or stuff
    region is named, every trace point lies inside its visible pixels; during fillers the mouse
    glides between them. Times in seconds, coordinates normalized to the image.
    """
    things, stuff = scene.things, scene.stuff
    utterances: list[tuple[str, Thing | Region | None]] = [("In this image we can see", None)]
    for k, thing in enumerate(things):
        last = k == len(things) - 1
        if last and k > 0:
            utterances.append(("and", None))
        suffix = "." if last else ("," if len(things) > 2 else "")  # "a, b, and c." / "a and b."
        utterances.append((f"a {thing.phrase}{suffix}", thing))
    if stuff:
        utterances.append(("In the background there is", None))
        for k, region in enumerate(stuff):
            if k:
                utterances.append(("and", None))
            utterances.append((f"{region.name}{'.' if k == len(stuff) - 1 else ''}", region))
    timed, paths, clocks = [], [], []
    clock = float(rng.uniform(0.5, 1.0))
    position = np.asarray([size / 2, size / 2], dtype=np.float64)
    for text, region in utterances:
        duration = WORD_SECONDS * len(text.split())
        start, end = clock, clock + duration
        timed.append({"utterance": text, "start_time": round(start, 3), "end_time": round(end, 3)})
        count = max(int(duration * TRACE_HZ), 2)
        if region is None:
            target = np.clip(position + rng.normal(0, size * 0.05, 2), 0, size)
            path = position[None] + (target - position)[None] * (np.arange(count) / (count - 1))[:, None]
        else:
            path = _trace_inside(region, rng, count)
        paths.append(path)
        clocks.append(start + (end - start) * np.arange(count) / (count - 1))
        position = path[-1]
        clock = end + 0.1
    xy = np.round(np.concatenate(paths) / size, 5).tolist()
    times = np.round(np.concatenate(clocks), 3).tolist()
    trace = [{"x": x, "y": y, "t": t} for (x, y), t in zip(xy, times)]
    caption = " ".join(u["utterance"] for u in timed)
    return {"caption": caption, "timed_caption": timed, "traces": [trace]}


# --- writing ---------------------------------------------------------------------------------------


def split_of(index: int, num_images: int) -> str:
    """Fixed split of image ``index``: first 80 % train, next 10 % val, the rest test.

    Indices at or past ``num_images`` are the extra training images of
    ``write_benchmark(extra_train_images=…)``: always ``train``."""
    if index >= num_images:
        return "train"
    bound = 0.0
    for name, fraction in SPLITS:
        bound += fraction
        if index < round(bound * num_images):
            return name
    return SPLITS[-1][0]


def _bbox_xywh(region: Thing | Region) -> list[float]:
    if isinstance(region, Region):
        cols, rows = np.flatnonzero(region.mask.any(axis=0)), np.flatnonzero(region.mask.any(axis=1))
        return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    ys, xs = region.coords
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": encoded["counts"].decode("ascii"), "size": [int(v) for v in encoded["size"]]}


def _dump(path: str, payload: object) -> None:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))  # one-shot: the C encoder
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _categories() -> tuple[list[dict], list[dict]]:
    things = [{"id": k + 1, "name": s, "supercategory": "shape", "isthing": 1} for k, s in enumerate(SHAPES)]
    stuff = [
        {"id": STUFF_ID_OFFSET + k, "name": s, "supercategory": "background", "isthing": 0}
        for k, s in enumerate(STUFF)
    ]
    return things, stuff


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one, else
    ``os.cpu_count()``): the ``workers=0`` / ``None`` default of :func:`write_benchmark`."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Job:
    """What every image of one :func:`write_benchmark` call shares (picklable, small)."""

    root: str
    seed: int
    num_images: int
    image_size: int
    max_objects: int


def _image_record(job: _Job, textures: dict[str, np.ndarray], index: int) -> dict:
    """Render image ``index``, write its JPEG and panoptic PNG, and return the rest as plain data.

    Nothing here depends on another image: the record holds image-local values only (segment ids
    1…n, no annotation / region / sentence / ref ids), so it can be made in any process and the
    caller numbers the records in index order. Everything drawn from the image's generator
    (scene, then narrative) is drawn here, in the sequential order.
    """
    rng = np.random.default_rng([job.seed, index])
    scene = render_scene(rng, job.image_size, job.max_objects, textures)
    split = split_of(index, job.num_images)
    image_id = index + 1
    PIL.Image.fromarray(scene.image).save(
        os.path.join(job.root, "images", split, f"{image_id:012d}.jpg"), quality=JPEG_QUALITY
    )
    ids = np.zeros((job.image_size, job.image_size), dtype=np.uint8)  # segment ids < 256 (max_objects)
    visible = scene.things
    unique = [_unique_words(j, visible) for j in range(len(visible))]
    things = []
    for k, thing in enumerate(visible):
        ids[thing.coords] = k + 1
        things.append(
            {
                "category_id": SHAPES.index(thing.shape) + 1,
                "bbox": _bbox_xywh(thing),
                "area": len(thing.coords[0]),
                "segmentation": _rle(thing.mask),
                "expressions": referring_expressions(k, visible, unique),
                "phrase": thing.phrase,
            }
        )
    stuff = []
    for k, region in enumerate(scene.stuff):
        ids[region.mask] = len(visible) + k + 1
        stuff.append(
            {"name": region.name, "bbox": _bbox_xywh(region), "area": int(np.count_nonzero(region.mask))}
        )
    rgb = np.zeros((job.image_size, job.image_size, 3), dtype=np.uint8)
    rgb[..., 0] = ids  # id = R + 256 G + 256^2 B with G = B = 0
    PIL.Image.fromarray(rgb).save(
        os.path.join(job.root, "panoptic", split, f"{image_id:012d}.png"), compress_level=1
    )
    record = {
        "dataset_id": "pixtok_synthetic",
        "image_id": str(image_id),
        "annotator_id": 0,
        "voice_recording": "",
        **narrative(scene, rng, job.image_size),
    }
    return {
        "index": index,
        "things": things,
        "stuff": stuff,
        "narrative": json.dumps(record, sort_keys=True, separators=(",", ":")),
    }


_WORKER_STATE: tuple[_Job, dict[str, np.ndarray]] | None = None  # set in each pool worker


def _init_worker(job: _Job) -> None:
    """Pool initializer: the job and its texture bank (recomputed here, deterministic, so
    nothing large crosses the process boundary and any start method works)."""
    global _WORKER_STATE
    _WORKER_STATE = (job, texture_bank(job.image_size, job.seed))


def _worker_record(index: int) -> dict:
    assert _WORKER_STATE is not None, "_init_worker did not run in this process"
    return _image_record(*_WORKER_STATE, index)


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux: workers start in milliseconds and need no re-import of pixtok (whose
    package import pulls in ``datasets``); they use only numpy / PIL / pycocotools, never torch or
    CUDA, so forking a process that has imported torch (or initialized CUDA) is safe here.
    Elsewhere (macOS, Windows) ``spawn``: the worker functions are module-level and the
    initializer rebuilds its state, so nothing depends on inherited memory."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def write_benchmark(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_images: int = 1000,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_objects: int = MAX_OBJECTS,
    workers: int | None = 1,
    extra_train_images: int = 0,
) -> dict:
    """Render ``num_images`` scenes and write every format (see the module docstring).

    Args:
        out_dir: output folder (created; existing benchmark files are overwritten).
        seed: base seed; image ``i`` uses ``default_rng([seed, i])``.
        num_images: total images over the three splits (at least 1).
        image_size: side of the square images, pixels (at least 32).
        max_objects: at most this many shapes per image.
        workers: processes rendering and encoding images (``0`` or ``None``: every available
            CPU, :func:`available_cpus`; at most ``num_images`` are started). It never changes
            the output: each image depends only on ``(seed, index)``, workers write its JPEG and
            PNG and return plain records, and this process numbers annotations, regions,
            sentences and refs in index order, as one process does.
        extra_train_images: more training images after the ``num_images`` (indices
            ``num_images …``, drawn as every image is): the train split grows while val and test
            keep exactly the images (and ids) that ``num_images`` alone gives them.

    Returns:
        The ``benchmark.json`` summary (arguments, per-split image / object / ref / region counts)
        plus ``seconds`` (wall), ``cpu_seconds`` (CPU time of this process and its workers) and
        ``workers`` (processes used) — the last three are not written to ``benchmark.json``.
    """
    if (
        num_images < 1
        or image_size < 32
        or not 1 <= max_objects <= 250
        or seed < 0
        or isinstance(extra_train_images, bool)
        or not isinstance(extra_train_images, int)
        or extra_train_images < 0
    ):
        raise ValueError(
            "need num_images >= 1, image_size >= 32, 1 <= max_objects <= 250, seed >= 0, "
            f"extra_train_images an int >= 0; got {num_images}, {image_size}, {max_objects}, {seed}, "
            f"{extra_train_images!r}"
        )
    if workers is None or (isinstance(workers, int) and not isinstance(workers, bool) and workers == 0):
        workers = available_cpus()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 1, or 0 / None for every CPU; got {workers!r}")
    total = num_images + extra_train_images
    workers = min(workers, total)
    started, cpu_started, children_started = time.perf_counter(), time.process_time(), os.times()
    root = os.fspath(out_dir)
    split_names = [name for name, _ in SPLITS]
    for sub in ("annotations", "refcoco", "visual_genome"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for name in split_names:
        os.makedirs(os.path.join(root, "images", name), exist_ok=True)
        os.makedirs(os.path.join(root, "panoptic", name), exist_ok=True)
    job = _Job(root, seed, num_images, image_size, max_objects)
    thing_cats, stuff_cats = _categories()
    stuff_id = {c["name"]: c["id"] for c in stuff_cats}
    coco = {n: {"images": [], "annotations": [], "categories": thing_cats} for n in split_names}
    panoptic = {
        n: {"images": [], "annotations": [], "categories": thing_cats + stuff_cats} for n in split_names
    }
    narratives: dict[str, list[str]] = {n: [] for n in split_names}
    vg_regions: dict[str, list] = {n: [] for n in split_names}
    vg_images: dict[str, list] = {n: [] for n in split_names}
    refs: list[dict] = []
    ref_images, ref_annotations = [], []
    ann_id = region_id = sent_id = 0
    pool = None
    if workers > 1:
        pool = _pool_context().Pool(workers, initializer=_init_worker, initargs=(job,))
        # ~8 chunks per worker balances the load; at most 64 images per chunk keeps the
        # records in flight (small: no pixels, the images are already on disk) bounded.
        chunksize = max(1, min(64, total // (8 * workers)))
        records = pool.imap(_worker_record, range(total), chunksize=chunksize)
    else:
        textures = texture_bank(image_size, seed)
        records = (_image_record(job, textures, index) for index in range(total))
    try:
        for index, record in enumerate(records):
            assert record["index"] == index, "records must arrive in index order"
            split = split_of(index, num_images)
            image_id = index + 1
            file_name = f"{split}/{image_id:012d}.jpg"  # COCO naming, so LN ids resolve
            entry = {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
            coco[split]["images"].append(entry)
            panoptic[split]["images"].append(entry)
            ref_images.append(entry)
            vg_images[split].append(
                {
                    "image_id": image_id,
                    "width": image_size,
                    "height": image_size,
                    "url": f"synthetic/{file_name}",
                    "coco_id": image_id,
                    "flickr_id": None,
                }
            )
            segments, regions = [], []
            for k, thing in enumerate(record["things"]):
                ann_id += 1
                bbox, area, category = thing["bbox"], thing["area"], thing["category_id"]
                annotation = {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": thing["segmentation"],
                }
                coco[split]["annotations"].append(annotation)
                ref_annotations.append(annotation)
                segments.append(
                    {"id": k + 1, "category_id": category, "iscrowd": 0, "bbox": bbox, "area": area}
                )
                expressions = thing["expressions"]
                if expressions:
                    sentences = []
                    for text in expressions:
                        sent_id += 1
                        sentences.append(
                            {"raw": text, "sent": text, "sent_id": sent_id, "tokens": text.split()}
                        )
                    refs.append(
                        {
                            "ref_id": len(refs) + 1,
                            "ann_id": ann_id,
                            "image_id": image_id,
                            "split": split,
                            "category_id": category,
                            "file_name": file_name,
                            "sentences": sentences,
                            "sent_ids": [s["sent_id"] for s in sentences],
                        }
                    )
                region_id += 1
                regions.append(
                    {
                        "region_id": region_id,
                        "image_id": image_id,
                        "phrase": expressions[-1][4:] if expressions else thing["phrase"],
                        "x": int(bbox[0]),
                        "y": int(bbox[1]),
                        "width": int(bbox[2]),
                        "height": int(bbox[3]),
                    }
                )
            for k, region in enumerate(record["stuff"]):
                bbox = region["bbox"]
                segments.append(
                    {
                        "id": len(record["things"]) + k + 1,
                        "category_id": stuff_id[region["name"]],
                        "iscrowd": 0,
                        "bbox": bbox,
                        "area": region["area"],
                    }
                )
                region_id += 1
                regions.append(
                    {
                        "region_id": region_id,
                        "image_id": image_id,
                        "phrase": f"the {region['name']} in the background",
                        "x": int(bbox[0]),
                        "y": int(bbox[1]),
                        "width": int(bbox[2]),
                        "height": int(bbox[3]),
                    }
                )
            panoptic[split]["annotations"].append(
                {"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segments}
            )
            narratives[split].append(record["narrative"])
            vg_regions[split].append({"id": image_id, "regions": regions})
        if pool is not None:
            pool.close()
            pool.join()  # reaped, so the workers' CPU time shows in os.times() below
    finally:
        if pool is not None:
            pool.terminate()  # no-op after a clean join; stops the workers after an error

    counts = {}
    for name in split_names:
        _dump(os.path.join(root, "annotations", f"instances_{name}.json"), coco[name])
        _dump(os.path.join(root, "annotations", f"panoptic_{name}.json"), panoptic[name])
        with open(
            os.path.join(root, "annotations", f"localized_narratives_{name}.jsonl"), "w", encoding="utf-8"
        ) as handle:
            handle.write("".join(line + "\n" for line in narratives[name]))
        _dump(os.path.join(root, "visual_genome", f"region_descriptions_{name}.json"), vg_regions[name])
        _dump(os.path.join(root, "visual_genome", f"image_data_{name}.json"), vg_images[name])
        counts[name] = {
            "images": len(coco[name]["images"]),
            "objects": len(coco[name]["annotations"]),
            "refs": sum(r["split"] == name for r in refs),
            "regions": sum(len(e["regions"]) for e in vg_regions[name]),
        }
    _dump(
        os.path.join(root, "refcoco", "instances.json"),
        {"images": ref_images, "annotations": ref_annotations, "categories": thing_cats},
    )
    _dump(os.path.join(root, "refcoco", "refs(synthetic).json"), refs)
    with open(os.path.join(root, "refcoco", "refs(synthetic).p"), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    summary = {
        "seed": seed,
        "num_images": num_images,
        **({"extra_train_images": extra_train_images} if extra_train_images else {}),
        "image_size": image_size,
        "max_objects": max_objects,
        "things": list(SHAPES),
        "stuff": list(STUFF),
        "colors": list(COLORS),
        "sizes": list(SIZES),
        "splits": counts,
    }
    _dump(os.path.join(root, "benchmark.json"), summary)
    children = os.times()
    children_cpu = (children.children_user - children_started.children_user) + (
        children.children_system - children_started.children_system
    )
    return {
        **summary,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started + children_cpu,
        "workers": workers,
    }


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``pixtok synth`` options (``--out --seed --num-images --image-size --max-objects
    --extra-train-images --workers``)."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--num-images", type=int, default=1000, help="images over all splits (default 1000)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        help=f"square image side in px (default {DEFAULT_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--max-objects",
        type=int,
        default=MAX_OBJECTS,
        help=f"shapes per image at most (default {MAX_OBJECTS})",
    )
    parser.add_argument(
        "--extra-train-images",
        type=int,
        default=0,
        help="more training images past --num-images; val and test stay as --num-images alone makes them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes rendering and encoding images (default 0: every available CPU; "
        "1: no pool); the output is byte-identical for any value",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the benchmark for parsed ``args``; print counts and throughput. Returns exit code 0.

    ``args.workers`` may be absent (callers that build the namespace by hand): one process."""
    summary = write_benchmark(
        args.out,
        args.seed,
        args.num_images,
        args.image_size,
        args.max_objects,
        getattr(args, "workers", 1),
        getattr(args, "extra_train_images", 0),
    )
    written = summary["num_images"] + summary.get("extra_train_images", 0)
    rate = written / max(summary["seconds"], 1e-9)
    cpu_rate = written / max(summary["cpu_seconds"], 1e-9)
    for name, counts in summary["splits"].items():
        print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    processes = "one process" if summary["workers"] == 1 else f"{summary['workers']} worker processes"
    print(
        f"wrote {written} images of {summary['image_size']}px to {args.out} in "
        f"{summary['seconds']:.2f} s ({rate:.0f} images/s wall, {cpu_rate:.0f} images/s per CPU second, "
        f"{processes})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pixtok.data.synthetic --out DIR …`` (same as ``pixtok synth``)."""
    parser = add_arguments(argparse.ArgumentParser(description="Write the pixtok synthetic benchmark."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "COLORS",
    "DEFAULT_IMAGE_SIZE",
    "KINDS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "STUFF",
    "Region",
    "Scene",
    "Thing",
    "add_arguments",
    "available_cpus",
    "load_synthetic",
    "main",
    "narrative",
    "referring_expressions",
    "render_scene",
    "texture_bank",
    "run",
    "split_of",
    "write_benchmark",
]
