"""Recipe configuration: one YAML file per job, command-line flags only override.

A recipe file has four sections — ``model``, ``data``, ``tasks`` and ``train`` — each a plain
mapping validated here *before* anything heavy happens, so a typo (``lerning_rate``) or a missing
data path fails in the first second with a message naming the key, not an hour into a run.

Example::

    model:
      preset: tiny            # tiny | small | base | large | pixelllm-xl
      overrides: {}           # PixtokConfig fields
      backbones: {}           # sam: / eva02: / t5: hub ids or paths (real initialisation)
    data:
      source: synthetic       # any pixtok.data.load source
      paths: {}               # annotations= / images= / … for real sources
      synthetic: {num_images: 160, image_size: 128, seed: 0}
    tasks:
      caption: {weight: 1.0}
    train:
      max_steps: 300
      batch_size: 8
      learning_rate: 1.0e-3
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..tasks import build_task


class ConfigError(ValueError):
    """A recipe configuration is invalid; the message names the offending key."""


@dataclass
class ModelSection:
    """Which model to build.

    Attributes:
        preset: a ``PixtokConfig.from_preset`` name, or a path to a saved pixtok model folder.
        overrides: ``PixtokConfig`` fields to override (e.g. ``{"lora_r": 16}``).
        backbones: real pretrained parts for ``from_pretrained_backbones``: ``sam``, ``eva02``, ``t5``.
    """

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)


@dataclass
class DataSection:
    """Where examples come from.

    Attributes:
        source: a ``pixtok.data.load`` source name (``synthetic`` generates into ``cache_dir``).
        paths: keyword paths for the loader (``annotations``, ``images``, ``refs``, …).
        val_paths: the same for the validation split (synthetic: its fixed ``val`` split).
        synthetic: options of the synthetic benchmark writer (``num_images``, ``image_size``, ``seed``,
            ``extra_train_images``: more training images, val and test unchanged;
            ``workers``: processes that write it, default up to 16, not part of its cache key).
        cache_dir: where the synthetic benchmark is written (default ``~/.cache/pixtok``).
        num_val: how many validation examples evaluation uses.
    """

    source: str = "synthetic"
    paths: dict[str, str] = field(default_factory=dict)
    val_paths: dict[str, str] = field(default_factory=dict)
    synthetic: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    num_val: int = 16


@dataclass
class TrainSection:
    """Optimisation and bookkeeping (Pix2Seq / PixelLLM defaults where the papers give them).

    Attributes:
        max_steps: optimizer steps.
        batch_size: examples per device per micro-batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        learning_rate: peak learning rate (cosine decay after ``warmup_steps``).
        weight_decay: AdamW weight decay.
        lr_scales: learning-rate factors by parameter name (regex, first match wins), e.g.
            ``{'(SelfAttention|EncDecAttention)\\.q\\.': 0.125}``: T5's attention has no
            ``1/sqrt(d_kv)`` and its init puts that factor into the query weights instead, so with
            AdamW, whose steps do not shrink with the weights, the queries learn ``sqrt(d_kv)`` times
            faster than a standard attention's; a factor of ``d_kv ** -0.5`` on their learning rate
            trains them as one. A pattern that matches no trainable parameter is an error.
        betas: AdamW betas (Pix2Seq uses β2 = 0.95).
        warmup_steps: linear warm-up steps.
        min_lr_ratio: final learning rate as a fraction of the peak.
        max_grad_norm: gradient clipping (0 disables).
        mixed_precision: ``no`` | ``fp16`` | ``bf16`` (accelerate).
        seed: seeds model init, data order and augmentation.
        save_every: checkpoint (``save_state``) every N steps; 0 = only at the end.
        eval_every: evaluate every N steps; 0 = only at the end.
        log_every: log training losses every N steps.
        num_workers: dataloader worker processes.
        augment: apply image augmentation (large-scale jitter, crop, flip, colour) in training.
        image_size: the training image size of the augmentation (Pix2Seq: 640).
        output_dir: where the model, metrics, pictures and checkpoints go.
        keep_checkpoints: how many ``checkpoint-*`` folders to keep.
        max_new_tokens: decoding budget at evaluation.
        eval_batch_size: examples per evaluation batch (teacher-forced losses and decoding, which
            run eagerly, without the training step's compiled memory plan); ``None``: ``batch_size``.
        gradient_checkpointing: trade compute for memory in the T5.
        cache_features: compute each image's frozen-tower features once and reuse them across
            epochs and tasks (needs frozen towers and ``augment: false``; see
            :mod:`pixtok.training.feature_cache`).
        cache_max_images: how many images' features the cache keeps in host memory.
        compile: ``true`` compiles every repeated block of the model (T5 blocks, tower layers) in
            place with ``torch.compile`` before training (:mod:`pixtok.training.compilation`;
            evaluation runs eagerly); a string is a ``torch.compile`` mode (``reduce-overhead``:
            also CUDA graphs, for small models whose step is host-bound; single process) or else a
            backend (``aot_eager`` checks the traced graphs without code generation).
        pad_to_multiple_of: round each batch's text, target and proposal lengths up to a multiple of
            this (padding the loss ignores), so that a compiled model meets few shapes: every new
            one costs a recompile and, with ``reduce-overhead``, a CUDA-graph recording. ``None``:
            each batch as long as its longest row.
        time_limit_minutes: stop training after this many minutes of steps even if ``max_steps``
            is not reached, then evaluate and save as usual (a guard for fixed-time benchmarks;
            the learning-rate schedule still spans ``max_steps``, so set both). The minutes are
            the whole run's: a resumed run starts with its checkpoint's training time (periodic
            evaluation and checkpointing do not count). ``None``: no limit.
        ema_decay: keep an exponential moving average of the trainable weights with this decay per
            optimizer step (warmed up as ``min(decay, (1 + n) / (10 + n))``); evaluation and the
            saved model use the average, checkpoints carry it (:mod:`pixtok.training.ema`). A
            run resumes only with the same choice (average or none). ``None``: no average. Not
            with FSDP.
        ema_eval_raw: with ``ema_decay``, also score the trained (not averaged) weights at the end
            of the run, reported as ``val_raw`` beside ``val`` (one more evaluation: what the
            average is worth, measured on the same run).
        ddp_find_unused: DDP's ``find_unused_parameters`` (other setups ignore it). ``auto`` runs
            one training micro-batch of each task before training, turns off the parameters no
            task trains (the other tasks' heads) and searches for unused parameters every step
            only if the tasks train different parameters (:mod:`pixtok.training.unused_parameters`;
            a task whose batches compute different losses then stops the run with a message).
            ``true``: always search, nothing turned off; ``false``: never search (every trainable
            parameter must get a gradient in every micro-batch). Checkpoints resume under any
            setting.
        profile_steps: ``[first, last]``: profile optimizer steps ``first … last`` (1-based) with
            ``torch.profiler`` and write ``<output_dir>/profile/`` (a Chrome trace, operators by
            device and host time, and ``summary.json`` with the kernels' share of the wall time;
            :mod:`pixtok.training.profiling`). Main process only. ``None``: no profiling.
    """

    max_steps: int = 300
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    lr_scales: dict[str, float] = field(default_factory=dict)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    save_every: int = 0
    eval_every: int = 0
    log_every: int = 10
    num_workers: int = 0
    augment: bool = True
    image_size: int | None = None
    output_dir: str = "outputs/run"
    keep_checkpoints: int = 2
    max_new_tokens: int = 64
    eval_batch_size: int | None = None
    gradient_checkpointing: bool = False
    cache_features: bool = False
    cache_max_images: int = 100_000
    compile: bool | str = False
    pad_to_multiple_of: int | None = None
    time_limit_minutes: float | None = None
    ema_decay: float | None = None
    ema_eval_raw: bool = False
    ddp_find_unused: bool | str = "auto"
    profile_steps: tuple[int, int] | None = None


@dataclass
class RecipeConfig:
    """A whole recipe: model, data, tasks (name → options with a sampling ``weight``) and train."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tasks: dict[str, dict[str, Any]] = field(default_factory=lambda: {"caption": {"weight": 1.0}})
    train: TrainSection = field(default_factory=TrainSection)
    resume_from: str | None = None
    push_to_hub: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection}


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    defaults = cls()
    for name, value in values.items():
        default = getattr(defaults, name)
        kind = str(known[name].type).removesuffix(" | None")  # annotations are strings here
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if name == "compile":
            if value is not False:
                from .compilation import compile_options  # the rule the loop applies

                try:
                    compile_options(value)
                except ValueError as err:
                    raise ConfigError(f"{where}.{name}: {err}") from None
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true/false, got {value!r}")
        if kind in ("int", "float") and value is not None:
            value = _yaml_number(value)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
            value = float(value) if kind == "float" else value
        if name == "mixed_precision":
            value = "no" if value is False else value  # YAML 1.1 reads a bare `no` as false
            if value not in ("no", "fp16", "bf16", "fp8"):
                raise ConfigError(f"{where}.{name}: expected no | fp16 | bf16 | fp8, got {value!r}")
        if name == "lr_scales":
            value = _lr_scales(value, f"{where}.{name}")
        if name == "ddp_find_unused" and not (value == "auto" or isinstance(value, bool)):
            raise ConfigError(f"{where}.{name}: expected auto | true | false, got {value!r}")
        if name == "ema_decay" and value is not None and not 0.0 < value < 1.0:
            raise ConfigError(f"{where}.{name}: expected a decay in (0, 1) or null, got {value!r}")
        if name == "profile_steps" and value is not None:
            if not (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and 1 <= value[0] <= value[1]
            ):
                raise ConfigError(
                    f"{where}.{name}: expected [first, last] steps with 1 <= first <= last, got {value!r}"
                )
            value = tuple(value)
        if (
            name in ("pad_to_multiple_of", "eval_batch_size")
            and value is not None
            and (not isinstance(value, int) or value < 1)
        ):
            raise ConfigError(f"{where}.{name}: expected a positive integer or null, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _yaml_number(value: Any) -> Any:
    """A number YAML 1.1 left as a string (it reads `2e-3`, without a dot, as one) → int or float;
    anything else unchanged."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value) if any(c in value for c in ".eE") else int(value)
    return value


def _lr_scales(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter-name regex -> factor, got {value!r}")
    scales = {}
    for pattern, factor in value.items():
        try:
            re.compile(str(pattern))
        except re.error as err:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({err})") from None
        factor = _yaml_number(factor)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ConfigError(f"{where}[{pattern!r}]: expected a factor > 0, got {factor!r}")
        scales[str(pattern)] = float(factor)
    return scales


RECIPE_TASK_KEYS = ("weight", "data")
"""Keys of a recipe's ``tasks.<name>`` entry that the recipe reads (sampling weight, data source);
the rest are the task's own options."""


def task_options(options: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``tasks.<name>`` entry without :data:`RECIPE_TASK_KEYS`: the task's options."""
    return {k: v for k, v in options.items() if k not in RECIPE_TASK_KEYS}


def config_from_dict(raw: dict[str, Any]) -> RecipeConfig:
    """Validate a parsed YAML mapping into a :class:`RecipeConfig` (raises :class:`ConfigError`)."""
    raw = dict(raw or {})
    allowed = {"model", "data", "tasks", "train", "resume_from", "push_to_hub"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    sections = {name: _build_section(cls, raw.get(name, {}) or {}, name) for name, cls in _SECTIONS.items()}
    tasks = raw.get("tasks", {"caption": {"weight": 1.0}})
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError("tasks: expected a non-empty mapping of task name -> options")
    tasks = {name: dict(opts or {}) for name, opts in tasks.items()}
    # names and options (generate, augmentation) checked before any data is read
    for name, opts in tasks.items():
        if not isinstance(name, str):
            raise ConfigError(f"tasks: task names are strings, got {name!r}")
        try:
            build_task(name, **task_options(opts))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"tasks.{name}: {err}") from None
    return RecipeConfig(
        tasks=tasks, resume_from=raw.get("resume_from"), push_to_hub=raw.get("push_to_hub"), **sections
    )


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe YAML file as a plain mapping (not validated).

    Raises:
        ConfigError: the file is missing, or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return raw


def load_config(
    path: str | os.PathLike | dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> RecipeConfig:
    """Read a recipe YAML (or start from defaults) and apply dotted overrides.

    Args:
        path: the YAML file, a mapping already read from one (copied, not changed), or ``None``
            for the built-in defaults.
        overrides: ``{"train.max_steps": 5, "resume_from": "…"}`` — dotted keys into the file. A
            ``None`` value sets the key to null (``--set train.ema_decay=null`` turns the average
            off); callers leave out the options they were not given.

    Raises:
        ConfigError: the file is missing, or a key or value is invalid.
    """
    raw: dict[str, Any] = {}
    if isinstance(path, dict):
        raw = copy.deepcopy(path)
    elif path is not None:
        raw = read_config_file(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config_from_dict(raw)


__all__ = [
    "ConfigError",
    "DataSection",
    "ModelSection",
    "RECIPE_TASK_KEYS",
    "RecipeConfig",
    "TrainSection",
    "config_from_dict",
    "load_config",
    "read_config_file",
    "task_options",
]
