"""Proof of learning: train one row of the learning table from scratch, score it, write its result.

Each row is a recipe file in ``benchmarks/learning/configs/`` run through the same machinery as
``recipes/*.py`` (:func:`pixtok.training.recipe.run_recipe`): random initialisation, every weight
trained, the synthetic benchmark's fixed ``val`` split (or, for ``coco_tiny_overfit*``, the 80 real
COCO training images themselves), evaluation with each task's own metric at the end. The result
goes to ``benchmarks/results/learning_<row>.json`` (``{"benchmark", "device", "date", "command",
"metrics"}`` with the issue's headline keys, the targets and whether each is met, the loss history)
and the validation picture to ``benchmarks/results/learning_<row>.png``.

Usage::

    PYTHONPATH=src python benchmarks/learning/run.py detection                 # one GPU, ~8 min
    PYTHONPATH=src python benchmarks/learning/run.py --list
    PYTHONPATH=src python benchmarks/learning/run.py caption --set train.max_steps=5 \
        --set model.preset=tiny --set data.synthetic.num_images=40            # CPU smoke

A config may list ``variants:`` — ``{name: {dotted.key: value}}`` — each of which is a row of its own,
``<file>_<name>``: the file with those overrides (an ablation such as ``detection_no_seq_aug``, or an
architecture being compared). A variant row reports its base row's headline keys; targets belong to
the base row only.

A row may train in segments (a device call is shorter than the row's time limit): stop the first
with ``--set train.time_limit_minutes=M``, go on with ``--set resume_from=<its output folder>``. The
checkpoint carries the clock and the loss history, so the time limit bounds the whole run, and the
result's ``command`` lists every segment's command.

Run-to-run spread: ``--set train.seed=N --name <row>_seedN`` trains the same row with another model
init, data order and augmentation (the synthetic images stay) and writes ``learning_<row>_seedN``;
``gpu_rows.sh`` does both for an entry ``<row>%N``.

Compiling on a fresh machine (``train.compile``) takes minutes of the row's time limit. ``--compile-cache
FILE`` carries the compiler's work between machines: torch's portable cache artifacts
(``torch.compiler.save_cache_artifacts``: Inductor's kernels, AOTAutograd graphs, autotuning) are
loaded from FILE before training when it exists and written to FILE (gzip) afterwards. They only hit
for the same torch/Triton versions and GPU model; CUDA graphs are still recorded at run time.

Under ``accelerate launch`` the row trains on every process (DDP/FSDP from the accelerate config);
the main process writes the result. ``benchmarks/learning/report.py`` turns the JSON files into the
table and loss curves of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
ROOT = HERE.parents[1]

# row -> (task's metric name in the loop's results -> headline key), per task of the row
HEADLINES: dict[str, dict[str, dict[str, str]]] = {
    "detection": {"detection": {"AP": "AP", "AP50": "AP50", "AR100": "AR@100"}},
    "detection_no_seq_aug": {"detection": {"AP": "AP", "AP50": "AP50", "AR100": "AR@100"}},
    "caption": {"caption": {"trace_l1": "trace_l1", "CIDEr-D": "CIDEr"}},
    "referring": {"referring": {"precision@0.5": "P@0.5", "mIoU": "mIoU"}},
    "region_caption": {"region_caption": {"CIDEr-D": "CIDEr"}},
    "dense_caption": {"dense_caption": {"mAP": "mAP"}},
    "panoptic": {"panoptic": {"PQ": "PQ", "SQ": "SQ", "RQ": "RQ"}},
    "coco_tiny_overfit": {"detection": {"AP": "AP", "AP50": "AP50", "AR100": "AR@100"}},
    "coco_tiny_overfit_no_seq_aug": {"detection": {"AP": "AP", "AP50": "AP50", "AR100": "AR@100"}},
}
# the multitask row reports every task's keys prefixed by the task
HEADLINES["multitask"] = {
    task: {name: f"{task}/{key}" for name, key in keys.items()}
    for row in ("detection", "caption", "referring", "region_caption", "dense_caption")
    for task, keys in HEADLINES[row].items()
}

# headline key -> (">=" or "<=", target) from the table
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "detection": {"AP": (">=", 0.85), "AP50": (">=", 0.95)},
    "caption": {"trace_l1": ("<=", 0.10), "CIDEr": (">=", 1.0)},
    "referring": {"P@0.5": (">=", 0.90), "mIoU": (">=", 0.75)},
    "region_caption": {"CIDEr": (">=", 1.0)},
    "dense_caption": {"mAP": (">=", 0.30)},
    "panoptic": {"PQ": (">=", 0.50)},
    "coco_tiny_overfit": {"AP": (">=", 0.80)},
}


def _read(path: Path) -> dict[str, Any]:
    from pixtok.training.config import read_config_file

    return read_config_file(path)


def rows() -> list[str]:
    """Every row: each config file, and each of its ``variants`` as ``<file>_<variant>``."""
    names = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        names.append(path.stem)
        names += [f"{path.stem}_{variant}" for variant in _read(path).get("variants") or {}]
    return sorted(names)


def base_row(row: str) -> str:
    """The config file a row comes from (the row itself unless it is a variant)."""
    if (CONFIGS / f"{row}.yaml").is_file():
        return row
    for path in sorted(CONFIGS.glob("*.yaml"), key=lambda p: -len(p.stem)):
        if row.startswith(path.stem + "_") and row[len(path.stem) + 1 :] in (
            _read(path).get("variants") or {}
        ):
            return path.stem
    raise ValueError(f"unknown row {row!r}; rows: {', '.join(rows())}")


def row_config(row: str, overrides: dict[str, Any] | None = None):
    """The :class:`RecipeConfig` of a row: its file, its variant's overrides, then ``overrides``.

    A variant trains into ``outputs/learning/<row>`` unless the overrides say otherwise.
    """
    from pixtok.training.config import load_config

    base = base_row(row)
    raw = _read(CONFIGS / f"{base}.yaml")
    variants = raw.pop("variants", None) or {}
    merged: dict[str, Any] = {}
    if row != base:
        merged = {"train.output_dir": f"outputs/learning/{row}", **variants[row[len(base) + 1 :]]}
    merged.update(overrides or {})
    return load_config(raw, merged)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count}x {torch.cuda.get_device_name(0)}" if count > 1 else torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def headline_metrics(row: str, val: dict[str, dict[str, float]]) -> dict[str, float]:
    """The row's headline keys picked out of the loop's ``{task: {metric: value}}``."""
    out: dict[str, float] = {}
    for task, keys in HEADLINES.get(row, HEADLINES.get(base_row(row), {})).items():
        for name, key in keys.items():
            value = val.get(task, {}).get(name)
            if value is not None:
                out[key] = float(value)
    return out


def check_targets(row: str, metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    """``{key: {"target": "≥ 0.85", "value": …, "met": bool}}`` for the row's targets."""
    checks = {}
    for key, (op, target) in TARGETS.get(row, {}).items():
        value = metrics.get(key)
        met = value is not None and (value >= target if op == ">=" else value <= target)
        checks[key] = {"target": f"{op} {target}", "value": value, "met": bool(met)}
    return checks


def count_parameters(output_dir: Path) -> int | None:
    """Parameters of the saved model, read from its safetensors headers (no weights loaded)."""
    import math

    from safetensors import safe_open

    total = 0
    for path in sorted(output_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                total += math.prod(handle.get_slice(name).get_shape())
    return total or None


def load_compile_cache(path: Path) -> None:
    """Hot-load torch's portable compile cache (see the module docstring)."""
    import torch

    info = torch.compiler.load_cache_artifacts(gzip.decompress(path.read_bytes()))
    counts = {k: len(v) for k, v in vars(info).items() if isinstance(v, list)} if info else {}
    print(f"compile cache: loaded {path} ({path.stat().st_size / 2**20:.1f} MiB) {counts}", flush=True)


def save_compile_cache(path: Path) -> None:
    """Write the compile artifacts this process made or loaded to ``path`` (gzip, atomically)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        print("compile cache: nothing to save", flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per process: rows run side by side (gpu_rows.sh) may share the path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(gzip.compress(saved[0], compresslevel=6))
    os.replace(tmp, path)
    print(f"compile cache: saved {path} ({path.stat().st_size / 2**20:.1f} MiB)", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", nargs="?", help="a row: " + ", ".join(rows()))
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--output-dir", help="run folder (default: the config's train.output_dir)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where JSON + PNG go")
    parser.add_argument(
        "--name", help="result name (learning_<name>.json / .png; default: the row), e.g. for several seeds"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument(
        "--compile-cache",
        metavar="FILE",
        help="load torch's compile cache artifacts from FILE, save them after",
    )
    args = parser.parse_args(argv)
    if args.list or not args.row:
        print("\n".join(rows()))
        return {}
    if args.row not in rows():
        parser.error(f"unknown row {args.row!r}; rows: {', '.join(rows())}")
    name = args.name or args.row
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        parser.error(f"--name must be letters, digits, '_', '.' or '-', got {name!r}")

    from pixtok.training.recipe import run_recipe

    overrides: dict[str, Any] = {"train.output_dir": args.output_dir} if args.output_dir else {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    recipe = row_config(args.row, overrides)
    cache = Path(args.compile_cache) if args.compile_cache else None
    if cache is not None and cache.exists():
        load_compile_cache(cache)
    result = run_recipe(recipe)
    if cache is not None and result:
        save_compile_cache(cache)
    if not result:  # not the main process
        return {}

    out_dir = Path(recipe.train.output_dir)
    metrics = headline_metrics(args.row, result["val"])
    targets = check_targets(args.row, metrics)
    history = result.get("history", [])
    command = "PYTHONPATH=src python benchmarks/learning/run.py " + " ".join(
        [
            args.row,
            *([f"--name {args.name}"] if args.name else []),
            *([f"--output-dir {args.output_dir}"] if args.output_dir else []),
            *(f"--set {s}" for s in args.set),
            *([f"--compile-cache {args.compile_cache}"] if args.compile_cache else []),
        ]
    )
    # a run resumed in the same folder reports every segment's command (its history is the whole run's)
    record = out_dir / "benchmark_command.txt"
    if recipe.resume_from and record.exists():
        command = record.read_text().strip() + "; then " + command
    record.write_text(command + "\n")
    payload = {
        "benchmark": f"learning_{name}",
        "device": device_name(),
        "date": dt.date.today().isoformat(),
        "command": command,
        "metrics": metrics,
        "targets": targets,
        "all_metrics": result["val"],
        # train.ema_eval_raw: the trained weights' scores beside the average's
        **(
            {
                "raw_metrics": headline_metrics(args.row, result["val_raw"]),
                "all_metrics_raw": result["val_raw"],
            }
            if "val_raw" in result
            else {}
        ),
        "steps": result["step"],
        "train_seconds": result["train_seconds"],
        "stopped_by_time_limit": result.get("stopped_by_time_limit", False),
        "nan_skipped_steps": result.get("nan_skipped_steps", 0),
        "parameters": count_parameters(out_dir),
        "config": recipe.to_dict(),
        "history": history,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"learning_{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for task, picture in result.get("pictures", {}).items():
        png = f"learning_{name}.png" if len(result["pictures"]) == 1 else f"learning_{name}_{task}.png"
        shutil.copyfile(out_dir / picture, results / png)
    # per-example rows of the tasks that keep them (referring), for benchmarks/learning/misses.py
    for task, kept in result.get("records", {}).items():
        shutil.copyfile(out_dir / kept, results / f"learning_{name}_{task}_records.jsonl")

    print(f"\n{args.row}: {result['step']} steps in {result['train_seconds']:.0f} s on {payload['device']}")
    for key, value in metrics.items():
        check = targets.get(key)
        verdict = (
            "" if check is None else f"  target {check['target']}: {'met' if check['met'] else 'NOT met'}"
        )
        print(f"  {key:>24s} {value:.4f}{verdict}")
    for key, value in payload.get("raw_metrics", {}).items():
        print(f"  {key + ' (trained weights)':>24s} {value:.4f}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
