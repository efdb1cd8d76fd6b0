"""From a recipe file to a trained model: the ``main()`` every script in ``recipes/`` calls.

``get_datasets`` → ``build_model`` → :func:`pixtok.training.loop.train`, in the shape of
accelerate's ``complete_cv_example``. Everything that can be wrong with the configuration (an
unknown key, preset or task, a missing data path, a checkpoint of another model) is checked here,
before the first step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..tasks import TASK_CLASSES, build_task
from .config import ConfigError, RecipeConfig, load_config, task_options
from .loop import TaskData, train

DEFAULT_CACHE = Path(os.environ.get("PIXTOK_CACHE", Path.home() / ".cache" / "pixtok"))


# --- data ----------------------------------------------------------------------------------------
def synthetic_root(recipe: RecipeConfig) -> Path:
    """The synthetic benchmark folder for these options, written on first use (main process first).

    Written by up to 16 worker processes (``data.synthetic.workers`` overrides); ``workers`` is not
    part of the folder's key, since the writer's output does not depend on it."""
    from ..data import synthetic

    options = {"seed": 0, "num_images": 160, "image_size": 128, **recipe.data.synthetic}
    workers = options.pop("workers", None)
    if workers is None:
        workers = min(synthetic.available_cpus(), 16)
    key = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
    cache = Path(recipe.data.cache_dir) if recipe.data.cache_dir else DEFAULT_CACHE
    root = cache / f"synthetic-{key}"
    if not (root / "COMPLETE").is_file():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        synthetic.write_benchmark(tmp, **options, workers=workers)
        (tmp / "COMPLETE").write_text(json.dumps(options))
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return root


def get_datasets(recipe: RecipeConfig, task_name: str, options: dict[str, Any]) -> tuple[Any, Any]:
    """Train and validation datasets of one task (its own ``data:`` section overrides the recipe's)."""
    from .. import data as pixtok_data

    section = dict(options.get("data", {}))
    source = section.get("source", recipe.data.source)
    task_cls = TASK_CLASSES[task_name]
    if source == "synthetic":
        root = synthetic_root(recipe)
        kind = task_cls.synthetic_kind
        train_ds = pixtok_data.load("synthetic", root=str(root), split="train", kind=kind)
        val_ds = pixtok_data.load("synthetic", root=str(root), split="val", kind=kind)
        return train_ds, val_ds
    paths = {**recipe.data.paths, **section.get("paths", {})}
    val_paths = {**recipe.data.val_paths, **section.get("val_paths", {})}
    missing = [
        f"{k}={v}" for k, v in {**paths, **val_paths}.items() if isinstance(v, str) and not Path(v).exists()
    ]
    if not paths:
        raise ConfigError(
            f"data.paths is empty for source {source!r}: give annotations=/images=… (see data_cards/)"
        )
    if missing:
        raise ConfigError(f"data path(s) not found for source {source!r}: {', '.join(missing)}")
    train_ds = pixtok_data.load(source, **paths)
    val_ds = pixtok_data.load(source, **val_paths) if val_paths else train_ds
    return train_ds, val_ds


# --- model ---------------------------------------------------------------------------------------
def build_panoptic_model(
    recipe: RecipeConfig, class_names: list[str] | None, things: list[int]
) -> tuple[Any, Any]:
    """The Pix2Seq-D sibling and its :class:`~pixtok.tasks.panoptic.PanopticProcessor`."""
    from ..model.configuration_pixtok_panoptic import PixtokPanopticConfig
    from ..model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation
    from ..tasks.panoptic import PanopticProcessor

    spec = recipe.model
    if Path(spec.preset).is_dir():
        model = PixtokForPanopticSegmentation.from_pretrained(spec.preset)
        return model, PanopticProcessor(model.config)
    overrides = dict(spec.overrides)
    if class_names:
        overrides.setdefault("id2label", dict(enumerate(class_names)))
        overrides.setdefault("thing_label_ids", things)
    try:
        needed = max(1, math.ceil(math.log2(len(class_names or []) + 1)))  # class value 0 is void
        if "class_bits" not in overrides:
            preset_bits = PixtokPanopticConfig.from_preset(spec.preset).class_bits
            overrides["class_bits"] = max(preset_bits, needed)
        config = PixtokPanopticConfig.from_preset(spec.preset, **overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from err
    return PixtokForPanopticSegmentation(config), PanopticProcessor(config)


def build_model(recipe: RecipeConfig, class_names: list[str] | None) -> tuple[Any, Any]:
    """The model and its processor: a preset (random init or real backbones) or a saved folder."""
    from ..model.configuration_pixtok import PixtokConfig
    from ..model.modeling_pixtok import PixtokForConditionalGeneration
    from ..model.processing_pixtok import PixtokProcessor

    spec = recipe.model
    if Path(spec.preset).is_dir():
        model = PixtokForConditionalGeneration.from_pretrained(spec.preset)
        processor = PixtokProcessor.from_pretrained(spec.preset)
        return model, processor
    overrides = dict(spec.overrides)
    if class_names:
        overrides.setdefault("id2label", dict(enumerate(class_names)))
    try:
        config = PixtokConfig.from_preset(spec.preset, **overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from err
    if spec.backbones:
        unknown = sorted(set(spec.backbones) - {"sam", "eva02", "t5"})
        if unknown:
            raise ConfigError(f"model.backbones: unknown part(s) {unknown}; known: sam, eva02, t5")
        model = PixtokForConditionalGeneration.from_pretrained_backbones(config, **spec.backbones)
    else:
        model = PixtokForConditionalGeneration(config)
    processor = PixtokProcessor.from_config(config)
    return model, processor


# --- the whole recipe ----------------------------------------------------------------------------
def prepare(recipe: RecipeConfig) -> tuple[Any, Any, list[TaskData]]:
    """Validate, load data, build the model and tasks — everything short of training."""
    from accelerate import PartialState

    unknown = sorted(set(recipe.tasks) - set(TASK_CLASSES))
    if unknown:
        raise ConfigError(f"tasks: unknown task(s) {unknown}; known: {', '.join(TASK_CLASSES)}")
    state = PartialState()
    datasets_by_task = {}
    with state.main_process_first():
        for name, options in recipe.tasks.items():
            datasets_by_task[name] = get_datasets(recipe, name, options)
    class_names, things = None, []
    for name, (train_ds, _) in datasets_by_task.items():
        if TASK_CLASSES[name].needs_class_names:
            from ..data import categories
            from ..data import class_names as read_class_names

            class_names = read_class_names(train_ds)
            things = [i for i, c in enumerate(categories(train_ds)) if c.get("isthing")]
    from accelerate.utils import set_seed

    set_seed(recipe.train.seed)  # the model's random init is part of the run: same seed, same model
    families = {TASK_CLASSES[name].model_family for name in recipe.tasks}
    if families == {"panoptic"}:
        model, processor = build_panoptic_model(recipe, class_names, things)
    elif "panoptic" in families:
        raise ConfigError(
            "tasks: panoptic trains the Pix2Seq-D sibling model and cannot share a recipe with other tasks"
        )
    else:
        model, processor = build_model(recipe, class_names)
    image_size = recipe.train.image_size
    tasks = []
    for name, options in recipe.tasks.items():
        train_ds, val_ds = datasets_by_task[name]
        task = build_task(name, augment=recipe.train.augment, image_size=image_size, **task_options(options))
        task.bind(model.config)
        source = options.get("data", {}).get("source", recipe.data.source)
        tasks.append(TaskData(task, float(options.get("weight", 1.0)), train_ds, val_ds, source=source))
    return model, processor, tasks


def run_recipe(recipe: RecipeConfig) -> dict[str, Any]:
    """Train as ``recipe`` says; push to the Hub at the end when ``push_to_hub`` is set."""
    model, processor, tasks = prepare(recipe)
    result = train(recipe, model, processor, tasks)
    if result:
        from .hub import write_model_card

        write_model_card(Path(recipe.train.output_dir), recipe, result)
        if recipe.push_to_hub:
            from .hub import push_folder

            push_folder(Path(recipe.train.output_dir), recipe.push_to_hub)
    return result


def parse_args(argv: list[str] | None, default_config: str | os.PathLike | None) -> RecipeConfig:
    """``--config`` plus the overrides every recipe accepts (``--set key=value`` for any other key)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=default_config, help="recipe YAML (default: the recipe's own)")
    parser.add_argument("--output-dir", help="where the model, metrics and checkpoints go")
    parser.add_argument("--max-steps", type=int, help="optimizer steps")
    parser.add_argument("--resume-from", help="a checkpoint folder or a run's output folder")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the final model with its card")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.batch_size=4 (YAML value syntax)",
    )
    args = parser.parse_args(argv)
    import yaml

    given = {
        "train.output_dir": args.output_dir,
        "train.max_steps": args.max_steps,
        "resume_from": args.resume_from,
        "push_to_hub": args.push_to_hub,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None, default_config: str | os.PathLike | None = None) -> dict[str, Any]:
    """Entry point of ``recipes/*.py``: parse, validate, train; config errors exit with one line."""
    try:
        recipe = parse_args(argv, default_config)
        return run_recipe(recipe)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


__all__ = ["build_model", "get_datasets", "main", "parse_args", "prepare", "run_recipe", "synthetic_root"]
