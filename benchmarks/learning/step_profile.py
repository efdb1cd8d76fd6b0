"""Where a learning row's training step spends its time: GPU kernels, host launches, host syncs.

Builds the row exactly as ``run.py`` does (its model, processor and task data), makes a few real
micro-batches with the loop's own :class:`~pixtok.training.loop.BatchMaker`, and times optimizer
steps (forward, backward, AdamW with the row's parameter groups, bf16 autocast) on them:

* ``wall_ms``: steps back to back, synchronised only at the end (what the loop sees, minus data);
* ``gpu_ms``: the sum of the step's CUDA kernel times (torch.profiler) — the step's floor without
  host overhead; ``wall / gpu`` near 1 means GPU-bound, well above 1 host-bound;
* ``launches``: CUDA kernels per step; ``syncs``: host-device synchronisations per step
  (``torch.cuda.set_sync_debug_mode``), each of which stops the host from queueing ahead;
* the same compiled (``--compile blocks``: every repeated block in place, as ``train.compile``
  does; ``blocks-ro``: the same with CUDA graphs, ``mode="reduce-overhead"``; ``--compile full``: ``torch.compile(model)``; both: ``--compile blocks full``), with the
  first step's time (the compile) reported;
* ``TFLOP/s``: the step's FLOPs (``torch.utils.flop_counter``) over ``wall_ms``.

    PYTHONPATH=src python3 benchmarks/learning/step_profile.py detection [--compile blocks] [--steps 20]
    PYTHONPATH=src python3 benchmarks/learning/step_profile.py detection --device cpu \
        --set model.preset=tiny --set train.batch_size=4 --steps 2        # smoke

Writes ``benchmarks/results/step_profile_<row>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from run import row_config, rows  # noqa: E402

from timing import RESULTS_DIR, command_line, device_description, kernel_times, write_result  # noqa: E402


def batches(recipe: Any, count: int, device: torch.device) -> tuple[Any, list[dict[str, torch.Tensor]], Any]:
    """The row's model, ``count`` real training micro-batches of ``train.batch_size`` on ``device``,
    and the loop's :class:`~pixtok.training.loop.BatchMaker` that made them."""
    from pixtok.training.loop import BatchMaker
    from pixtok.training.recipe import prepare
    from pixtok.training.sampling import TaskMixture

    model, processor, tasks = prepare(recipe)
    mixture = TaskMixture([len(t.train_items) for t in tasks], [t.weight for t in tasks], recipe.train.seed)
    maker = BatchMaker(tasks, processor, mixture)
    size = recipe.train.batch_size
    out = []
    for m in range(count):
        _, batch = maker(m, list(range(m * size, (m + 1) * size)))
        batch.pop("_image_keys", None)
        out.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    return model.to(device), out, maker


def loader_rate(maker: Any, batch_size: int, num_workers: int, batches: int = 60) -> float:
    """Micro-batches per second the loop's own data loader delivers (``num_workers`` worker
    processes running ``maker`` as :func:`pixtok.training.loop.train` does), after 10 warm-up ones."""
    from pixtok.training.sampling import SampleStream

    loader = torch.utils.data.DataLoader(
        SampleStream(maker, batch_size), batch_size=None, num_workers=num_workers
    )
    it = iter(loader)
    for _ in range(10):
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - started)


def make_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_grad_norm: float,
    compiling: dict[str, str],
):
    from pixtok.training.compilation import step_begin

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        step_begin(compiling)  # as the loop: a new step for CUDA-graph trees
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def find_syncs(fn) -> dict[str, int]:
    """Host-device synchronisations during ``fn()`` by the source line that caused them (CUDA only):
    ``{"file:line": count}``, the innermost frame outside torch."""
    import traceback
    from collections import Counter

    places: Counter[str] = Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [
            f
            for f in traceback.extract_stack()[:-1]
            if "/torch/" not in f.filename and Path(f.filename).name != "warnings.py"
        ]
        where = frames[-1] if frames else None
        places[f"{Path(where.filename).name}:{where.lineno} {where.line}" if where else "?"] += 1

    torch.cuda.set_sync_debug_mode("warn")
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            fn()
    finally:
        warnings.showwarning = original
        torch.cuda.set_sync_debug_mode("default")
    return dict(places.most_common())


def write_trace(fn, path: Path) -> str:
    """One call of ``fn`` under torch.profiler (CPU + CUDA): a gzipped Chrome trace at ``path`` and
    the table of the ops that took the most host time."""
    import gzip
    import shutil

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    raw = path.with_suffix("")
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)


def profile_variant(
    name: str,
    model: Any,
    recipe: Any,
    data: list,
    device: torch.device,
    steps: int,
    trace_dir: Path | None = None,
    compiling: dict[str, str] | None = None,
) -> dict:
    from pixtok.training.loop import _param_groups

    cfg = recipe.train
    groups = _param_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.lr_scales)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas))
    step = make_step(model, optimizer, device, cfg.max_grad_norm, compiling or {})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    started = time.perf_counter()
    step(data[0])  # compiles, if compiled
    sync()
    first_s = time.perf_counter() - started
    for i in range(3):
        step(data[i % len(data)])
    sync()
    started = time.perf_counter()
    for i in range(steps):
        step(data[i % len(data)])
    sync()
    wall_ms = (time.perf_counter() - started) * 1e3 / steps

    result: dict[str, Any] = {"first_step_s": round(first_s, 2), "wall_ms": round(wall_ms, 2)}
    if device.type == "cuda":
        kernels = kernel_times(lambda: step(data[0]))
        gpu_ms = sum(ms for _, ms, _ in kernels)
        result.update(
            gpu_ms=round(gpu_ms, 2),
            wall_over_gpu=round(wall_ms / gpu_ms, 2),
            launches=sum(n for _, _, n in kernels),
            sync_sources=find_syncs(lambda: step(data[1 % len(data)])),
            peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            top_kernels=[[k, round(ms, 2), n] for k, ms, n in kernels[:15]],
        )
        result["syncs"] = sum(result["sync_sources"].values())
        if trace_dir is not None:
            table = write_trace(lambda: step(data[2 % len(data)]), trace_dir / f"trace_{name}.json.gz")
            print(f"[{name}] host time by op:\n{table}", flush=True)
    print(
        f"[{name}] "
        + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("top_kernels", "sync_sources")),
        flush=True,
    )
    for where, n in result.get("sync_sources", {}).items():
        print(f"    sync {n}x  {where}")
    for k, ms, n in result.get("top_kernels", []):
        print(f"    {ms:8.2f} ms {n:5d}x  {k}")
    return result


def step_flops(model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", choices=rows())
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument(
        "--compile",
        nargs="*",
        default=[],
        choices=["blocks", "blocks-ro", "full"],
        help="also time the model compiled: repeated blocks in place, or whole",
    )
    parser.add_argument("--skip-eager", action="store_true", help="time only the compiled variants")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--loader", action="store_true", help="also time the loop's data loader alone")
    parser.add_argument(
        "--trace", action="store_true", help="write a Chrome trace of one step per variant to --out"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"data.num_val": 8}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    recipe = row_config(args.row, overrides)
    model, data, maker = batches(recipe, 3, device)
    model.train()
    batch_size = recipe.train.batch_size
    flops = step_flops(model, data[0], device)
    trace_dir = Path(args.out) if args.trace else None
    variants = {}
    if not args.skip_eager:
        variants["eager"] = profile_variant("eager", model, recipe, data, device, args.steps, trace_dir)
    for how in args.compile:
        compiling = {"backend": args.backend}
        if how == "blocks-ro":
            compiling["mode"] = "reduce-overhead"
        if how == "full":
            compiled = torch.compile(model, **compiling)
        else:
            from pixtok.training.compilation import compile_repeated_blocks

            compiled = model
            compile_repeated_blocks(model, **compiling)
        variants[how] = profile_variant(how, compiled, recipe, data, device, args.steps, trace_dir, compiling)
    metrics: dict[str, Any] = {"batch_size": batch_size, "step_tflop": round(flops / 1e12, 3)}
    for name, r in variants.items():
        metrics[f"{name}_ms_per_step"] = r["wall_ms"]
        metrics[f"{name}_samples_per_s"] = round(batch_size / r["wall_ms"] * 1e3, 1)
        metrics[f"{name}_tflop_per_s"] = round(flops / (r["wall_ms"] * 1e-3) / 1e12, 1)
    if args.loader:
        metrics["loader_batches_per_s"] = round(loader_rate(maker, batch_size, recipe.train.num_workers), 2)
        metrics["loader_workers"] = recipe.train.num_workers
    for how in args.compile if "eager" in variants else []:
        metrics[f"{how}_speedup"] = round(variants["eager"]["wall_ms"] / variants[how]["wall_ms"], 2)
    print({k: v for k, v in metrics.items()}, flush=True)
    return write_result(
        Path(args.out) / f"step_profile_{args.row}.json",
        f"step_profile_{args.row}",
        device_description(device),
        command_line(),
        metrics,
        variants=variants,
    )


if __name__ == "__main__":
    main()
