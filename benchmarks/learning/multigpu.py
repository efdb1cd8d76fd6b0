"""Two GPUs against one: a learning recipe under DDP and FSDP2 at one global batch.

The issue: on 2 GPUs with ``accelerate launch`` and the shipped configs
(``recipes/accelerate/ddp.yaml``, ``fsdp.yaml``) the loss curve matches one GPU at the same
global batch within run-to-run noise, and throughput is ≥ 1.8× one GPU. One command on the 2-GPU
machine runs, at global batch ``B`` for ``--steps`` steps:

1. two 1-GPU runs, seeds 0 and 1 (the run-to-run noise), concurrently, one per GPU
   (``CUDA_VISIBLE_DEVICES``; ``--sequential-baseline`` runs them one after the other instead;
   ``--baseline-accumulation 2`` gives each the global batch as two accumulated micro-batches of the
   2-GPU runs' per-GPU size, for a global batch one GPU cannot hold at once);
2. a 2-GPU DDP run, ``accelerate launch --config_file recipes/accelerate/ddp.yaml``, ``B/2`` per
   process, seed 0;
3. a 2-GPU FSDP2 run, ``recipes/accelerate/fsdp.yaml``, the same;

every child with ``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and
``NVSHMEM_DISABLE_NVLS=1`` (NVLink multicast off) and ``PYTHONPATH=<repo>/src``. From each run's
``metrics.json`` history (``seconds``, ``samples``, ``train/loss``) it computes

* throughput: samples/s between the first logged step at or after ``--warmup`` and the last one
  (training time only: the loop's ``seconds`` leave out evaluation and checkpoints);
* ``ddp_scaling`` / ``fsdp_scaling``: 2-GPU samples/s ÷ the mean of the two 1-GPU runs';
* ``loss_noise``: mean over the logged steps of ``|loss_seed1 − loss_seed0| / loss_seed0``;
* ``ddp_loss_deviation`` / ``fsdp_loss_deviation``: the same measure against the seed-0 curve
  (the 2-GPU runs use seed 0: same initial weights, same samples);

and writes ``learning_multigpu.json`` (``{"benchmark", "device", "date", "command", "metrics",
…}``) and ``learning_multigpu.png`` (the four loss curves) to ``--results``, plus, with ``--out``,
the two files and ``learning_multigpu.tar.gz`` (them, every run's ``metrics.json`` and log).

The trainer is a command (``--trainer``): by default ``benchmarks/learning/run.py detection``
(the ``small`` preset on the synthetic detection benchmark); any script that takes
``--output-dir`` and ``--set key=value`` works (``recipes/*.py``). Its synthetic data are written
once before the runs start. Usage on the 2-GPU machine (pixtok need not be installed)::

    PYTHONPATH=src python3 benchmarks/learning/multigpu.py --out "$OUT"
    PYTHONPATH=src python3 benchmarks/learning/multigpu.py --dry-run     # the commands only

and a CPU smoke test of the whole pipeline (tiny preset, gloo; FSDP through a shim, see ``--cpu``)::

    PYTHONPATH=src python3 benchmarks/learning/multigpu.py --cpu --steps 6 --results /tmp/mg
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SCALING_TARGET = 1.8
RUNS = ("seed0", "seed1", "ddp", "fsdp")
LABELS = {"seed0": "1 GPU, seed 0", "seed1": "1 GPU, seed 1", "ddp": "2 GPUs, DDP", "fsdp": "2 GPUs, FSDP2"}


def default_trainer(cpu: bool) -> str:
    if cpu:
        return "recipes/coco_detection.py --set data.synthetic.num_images=48 --set data.num_val=2"
    if (HERE / "run.py").is_file() and (HERE / "configs" / "detection.yaml").is_file():
        # the eager batch-128 step the scaling figures were measured with (the row itself now
        # trains at batch 256 with CUDA graphs, which the loop keeps to one process)
        return (
            "benchmarks/learning/run.py detection --set data.num_val=100 "
            "--set train.compile=false --set train.batch_size=128"
        )
    return (
        "recipes/coco_detection.py --set model.preset=small --set data.synthetic.num_images=16000 "
        "--set train.batch_size=128 --set model.overrides.max_objects=20 "
        "--set train.learning_rate=5.0e-4 --set train.warmup_steps=50 --set train.mixed_precision=bf16 "
        "--set train.num_workers=5 --set data.num_val=100 --set train.max_new_tokens=101"
    )


# --- the trainer and its config ------------------------------------------------------------------
def split_trainer(trainer: str) -> tuple[Path, list[str]]:
    """``(script, fixed arguments)`` of the trainer command (a path relative to the repo is fine)."""
    parts = shlex.split(trainer)
    if parts and Path(parts[0]).name.startswith("python"):
        parts = parts[1:]
    if not parts:
        raise SystemExit("error: --trainer is empty")
    script = Path(parts[0])
    script = script if script.is_absolute() else ROOT / script
    if not script.is_file():
        raise SystemExit(f"error: trainer script {script} not found")
    return script, parts[1:]


def is_learning_runner(script: Path) -> bool:
    return script.resolve() == (HERE / "run.py").resolve()


def trainer_config(script: Path, args: list[str]) -> Path | None:
    """The recipe YAML the trainer reads: run.py's row, ``--config``, or a recipe's own default."""
    if "--config" in args:
        config = Path(args[args.index("--config") + 1])
        return config if config.is_absolute() else ROOT / config  # the runs start in the repo root
    if is_learning_runner(script):
        positional = [
            a
            for i, a in enumerate(args)
            if not a.startswith("-") and (i == 0 or not args[i - 1].startswith("--"))
        ]
        return HERE / "configs" / f"{positional[0]}.yaml" if positional else None
    default = ROOT / "recipes" / "configs" / f"{script.stem}.yaml"
    return default if default.is_file() else None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` items, YAML-parsed as the recipes parse them."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def set_args(args: list[str]) -> dict[str, Any]:
    """The ``--set key=value`` pairs of an argument list."""
    return parse_sets([args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"])


def resolve_recipe(script: Path, args: list[str], overrides: dict[str, Any]) -> Any:
    from pixtok.training.config import load_config

    config = trainer_config(script, args)
    if config is None:
        return None
    try:
        if is_learning_runner(script) and "--config" not in args:  # a row: its file + variant
            sys.path.insert(0, str(HERE))
            from run import row_config

            return row_config(config.stem, {**set_args(args), **overrides})
        return load_config(config, {**set_args(args), **overrides})
    # before any run starts: a bad config (ConfigError is a ValueError) or an unknown row
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {config}: {err}") from None


# --- commands ------------------------------------------------------------------------------------
def child_env(cpu: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NO_MULTICAST)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH", "")] if p)
    if cpu:
        env.update({"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    env.update(extra or {})
    return env


def fsdp_env_from_yaml(config: Path) -> dict[str, str]:
    """The FSDP_* variables ``accelerate launch --config_file config`` exports (for ``--cpu``)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(parsed)[0])
    return {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}


def build_runs(opts: argparse.Namespace, script: Path, fixed: list[str], work: Path) -> dict[str, dict]:
    """``{name: {"cmd", "env", "out"}}`` for the four runs."""
    py = sys.executable
    per_gpu = opts.batch_size // 2
    runs = {}
    for name in RUNS:
        out = work / name
        seed = 1 if name == "seed1" else 0
        settings: dict[str, Any] = {"train.max_steps": opts.steps, "train.batch_size": per_gpu}
        if name.startswith("seed"):  # one GPU, the same global batch: whole, or in accumulated parts
            accumulation = opts.baseline_accumulation
            settings["train.batch_size"] = opts.batch_size // accumulation
            if accumulation > 1:
                settings["train.gradient_accumulation_steps"] = accumulation
        trainer_args = [*fixed, "--output-dir", str(out)]
        if is_learning_runner(script):
            trainer_args += ["--results", str(out / "results")]  # never the repo's learning_<row>.json
        for key, value in {
            **settings,
            "train.seed": seed,
            "train.log_every": opts.log_every,
        }.items():
            trainer_args += ["--set", f"{key}={value}"]
        for item in opts.set:
            trainer_args += ["--set", item]
        port = str(opts.port + RUNS.index(name))
        if opts.cpu:
            extra = {}
            if name.startswith("seed"):
                cmd = [py, str(script), *trainer_args]
            else:
                cmd = [
                    py,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    "2",
                    "--master_addr",
                    "127.0.0.1",
                ]
                cmd += ["--master_port", port, str(Path(__file__).resolve()), "--cpu-shim", str(script)]
                cmd += trainer_args
                if name == "fsdp":
                    extra = fsdp_env_from_yaml(ACCELERATE_CONFIGS / "fsdp.yaml")
        else:
            launch = [py, "-m", "accelerate.commands.launch"]
            if name.startswith("seed"):
                config, procs = ACCELERATE_CONFIGS / "single_gpu.yaml", "1"
                extra = {"CUDA_VISIBLE_DEVICES": "0" if opts.sequential_baseline or seed == 0 else "1"}
            else:
                config, procs = ACCELERATE_CONFIGS / f"{name}.yaml", "2"
                extra = {"CUDA_VISIBLE_DEVICES": "0,1"}
            cmd = [
                *launch,
                "--config_file",
                str(config),
                "--num_processes",
                procs,
                "--main_process_port",
                port,
            ]
            cmd += [str(script), *trainer_args]
        runs[name] = {"cmd": cmd, "env_extra": extra, "out": out}
    return runs


def show(run: dict) -> str:
    env = " ".join(f"{k}={v}" for k, v in {**NO_MULTICAST, **run["env_extra"]}.items())
    return f"{env} PYTHONPATH={ROOT / 'src'} " + shlex.join(run["cmd"])


def start(run: dict, cpu: bool) -> subprocess.Popen:
    run["out"].mkdir(parents=True, exist_ok=True)
    log = open(run["out"] / "log.txt", "w")  # noqa: SIM115 - closed in finish()
    run["log"] = log
    run["started"] = time.time()
    return subprocess.Popen(
        run["cmd"],
        cwd=ROOT,
        env=child_env(cpu, run["env_extra"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout ends the launcher and its ranks
    )


def finish(run: dict, proc: subprocess.Popen, timeout: float) -> None:
    left = max(1.0, timeout - (time.time() - run["started"]))
    try:
        run["returncode"] = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        run["returncode"] = "timeout"
    run["wall_seconds"] = round(time.time() - run["started"], 1)
    run["log"].close()
    status = "ok" if run["returncode"] == 0 else f"FAILED ({run['returncode']}), see {run['out'] / 'log.txt'}"
    print(f"  {run['name']}: {status} in {run['wall_seconds']:.0f} s", flush=True)


def execute(runs: dict[str, dict], names: list[str], opts: argparse.Namespace) -> None:
    """Runs ``names``: the 1-GPU pair concurrently (unless --sequential-baseline), the rest in turn."""
    batches = [[n] for n in names]
    pair = [n for n in names if n.startswith("seed")]
    if len(pair) == 2 and not opts.sequential_baseline:
        batches = [pair] + [[n] for n in names if n not in pair]
    for batch in batches:
        print(f"running {' + '.join(batch)} …", flush=True)
        procs = {}
        for name in batch:
            runs[name]["name"] = name
            shutil.rmtree(runs[name]["out"], ignore_errors=True)
            procs[name] = start(runs[name], opts.cpu)
        for name in batch:
            finish(runs[name], procs[name], opts.run_timeout)


# --- analysis ------------------------------------------------------------------------------------
def throughput(history: list[dict], warmup: int) -> float | None:
    """Samples/s between the first logged step ≥ ``warmup`` and the last logged step."""
    rows = [h for h in history if h["step"] >= warmup and "seconds" in h and "samples" in h]
    if len(rows) < 2 or rows[-1]["seconds"] <= rows[0]["seconds"]:
        return None
    return (rows[-1]["samples"] - rows[0]["samples"]) / (rows[-1]["seconds"] - rows[0]["seconds"])


def curve(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in history if "train/loss" in h}


def deviation(a: dict[int, float], ref: dict[int, float], first_step: int = 0) -> float | None:
    """Mean over common logged steps (≥ ``first_step``) of ``|a − ref| / |ref|``."""
    steps = [s for s in sorted(set(a) & set(ref)) if s >= first_step and ref[s] != 0]
    if not steps:
        return None
    return sum(abs(a[s] - ref[s]) / abs(ref[s]) for s in steps) / len(steps)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rounded(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def analyse(runs: dict[str, dict], opts: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    results: dict[str, dict] = {}
    for name, run in runs.items():
        path = run["out"] / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else None
        results[name] = metrics
        run["metrics"] = metrics
    history = {n: (m or {}).get("history", []) for n, m in results.items()}
    sps = {n: throughput(h, opts.warmup) for n, h in history.items()}
    curves = {n: curve(h) for n, h in history.items()}
    singles = [sps[n] for n in ("seed0", "seed1") if sps[n] is not None]
    single = sum(singles) / len(singles) if singles else None
    ref = curves["seed0"]
    metrics: dict[str, Any] = {
        "ddp_scaling": ratio(sps["ddp"], single),
        "fsdp_scaling": ratio(sps["fsdp"], single),
        "single_gpu_samples_per_s": single,
        "single_gpu_seed0_samples_per_s": sps["seed0"],
        "single_gpu_seed1_samples_per_s": sps["seed1"],
        "ddp_samples_per_s": sps["ddp"],
        "fsdp_samples_per_s": sps["fsdp"],
        "loss_noise": deviation(curves["seed1"], ref),
        "ddp_loss_deviation": deviation(curves["ddp"], ref),
        "fsdp_loss_deviation": deviation(curves["fsdp"], ref),
        "loss_noise_after_warmup": deviation(curves["seed1"], ref, opts.warmup),
        "ddp_loss_deviation_after_warmup": deviation(curves["ddp"], ref, opts.warmup),
        "fsdp_loss_deviation_after_warmup": deviation(curves["fsdp"], ref, opts.warmup),
    }
    for kind in ("ddp", "fsdp"):
        scaling, dev, noise = (
            metrics[f"{kind}_scaling"],
            metrics[f"{kind}_loss_deviation"],
            metrics["loss_noise"],
        )
        metrics[f"{kind}_scaling_met"] = scaling is not None and scaling >= SCALING_TARGET
        metrics[f"{kind}_loss_within_noise"] = dev is not None and noise is not None and dev <= noise
    per_run = {}
    for name, run in runs.items():
        m = run["metrics"] or {}
        per_run[name] = {
            "command": show(run),
            "returncode": run.get("returncode"),
            "wall_seconds": run.get("wall_seconds"),
            "samples_per_s": rounded(sps[name], 2),
            **{
                k: m.get(k)
                for k in (
                    "num_processes",
                    "distributed_type",
                    "mixed_precision",
                    "batch_size",
                    "global_batch_size",
                    "step",
                    "train_seconds",
                    "stopped_by_time_limit",
                    "nan_skipped_steps",
                    "val",
                )
            },
            "final_loss": list(curves[name].values())[-1] if curves[name] else None,
            "curve": [[s, v] for s, v in sorted(curves[name].items())],
        }
    return {k: rounded(v) for k, v in metrics.items()}, per_run


def check_runs(per_run: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    """What makes the comparison unfair or void (a run that is not what its name says)."""
    problems = []
    expected = {"seed0": (1, None), "seed1": (1, None), "ddp": (2, "MULTI_"), "fsdp": (2, "FSDP")}
    for name, info in per_run.items():
        if info["returncode"] != 0:
            problems.append(f"{name}: exit {info['returncode']}")
            continue
        procs, kind = expected[name]
        if info["num_processes"] != procs:
            problems.append(f"{name}: {info['num_processes']} processes, expected {procs}")
        if kind and not str(info["distributed_type"]).startswith(kind):
            problems.append(f"{name}: distributed type {info['distributed_type']}, expected {kind}…")
        if info["global_batch_size"] != opts.batch_size:
            problems.append(f"{name}: global batch {info['global_batch_size']}, expected {opts.batch_size}")
        if info["stopped_by_time_limit"]:
            problems.append(f"{name}: stopped by the recipe's time limit at step {info['step']}")
    return problems


def plot(per_run: dict[str, Any], metrics: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"seed0": ("C0", "-"), "seed1": ("C0", ":"), "ddp": ("C1", "-"), "fsdp": ("C2", "--")}
    for name, info in per_run.items():
        if info["curve"]:
            steps, losses = zip(*info["curve"])
            color, style = styles[name]
            ax.plot(steps, losses, color=color, linestyle=style, label=LABELS[name])
    if not any(info["curve"] for info in per_run.values()):
        ax.text(0.5, 0.5, "no run finished", ha="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over the logging window and processes)")

    def fmt(value: Any, suffix: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{suffix}"

    ax.set_title(
        f"{title}\nDDP {fmt(metrics['ddp_scaling'], '×')}, FSDP {fmt(metrics['fsdp_scaling'], '×')} one GPU; "
        f"loss deviation DDP {fmt(_pct(metrics['ddp_loss_deviation']), '%')}, "
        f"FSDP {fmt(_pct(metrics['fsdp_loss_deviation']), '%')}, noise {fmt(_pct(metrics['loss_noise']), '%')}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def device_name(cpu: bool) -> str:
    import torch

    if not cpu and torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"{count}x {name}" if count > 1 else name
    return f"cpu ({os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    import torch
    import transformers

    import accelerate

    return {
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "transformers": transformers.__version__,
    }


def table(per_run: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [
        f"{'run':<16}{'procs':>6}  {'type':<10}{'batch':>7}{'samples/s':>11}{'× 1 GPU':>9}{'final loss':>12}"
    ]
    single = metrics["single_gpu_samples_per_s"]
    for name, info in per_run.items():
        sps = info["samples_per_s"]
        scale = f"{sps / single:.2f}" if sps and single else "-"
        final = f"{info['final_loss']:.4f}" if info["final_loss"] is not None else "-"
        lines.append(
            f"{LABELS[name]:<16}{info['num_processes'] or '-':>6}  {str(info['distributed_type'] or '-'):<10}"
            f"{info['batch_size'] or '-':>7}{sps if sps is not None else '-':>11}{scale:>9}{final:>12}"
        )

    def pct(key: str) -> str:
        value = metrics[key]
        return "n/a" if value is None else f"{100 * value:.2f} %"

    lines.append(
        f"loss deviation from 1 GPU seed 0: DDP {pct('ddp_loss_deviation')}, FSDP {pct('fsdp_loss_deviation')}; "
        f"run-to-run noise (seed 1) {pct('loss_noise')}"
    )
    for kind in ("ddp", "fsdp"):
        lines.append(
            f"{kind.upper():<5} scaling ≥ {SCALING_TARGET}: {'met' if metrics[f'{kind}_scaling_met'] else 'NOT met'}; "
            f"loss within noise: {'yes' if metrics[f'{kind}_loss_within_noise'] else 'NO'}"
        )
    return "\n".join(lines)


# --- the CPU shim --------------------------------------------------------------------------------
def cpu_shim(argv: list[str]) -> None:
    """One rank of a ``torch.distributed.run`` group on the CPU (``--cpu`` mode only).

    ``accelerate launch --cpu`` starts a single process, and pixtok's ``recipe.prepare`` creates
    ``PartialState()`` before the Accelerator reads ``ACCELERATE_USE_CPU``: without this, every rank
    on a GPU-less machine trains alone. accelerate also enables FSDP only for GPU-like types; torch's
    FSDP2 runs on the CPU with gloo, so with ``ACCELERATE_USE_FSDP=true`` the MULTI_CPU state becomes
    FSDP with the plugin accelerate built from the FSDP_* variables (those of ``fsdp.yaml``).
    """
    import runpy

    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    from accelerate import PartialState

    PartialState(cpu=True)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        original = AcceleratorState.__init__

        def fsdp_on_cpu(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            plugin = kwargs.get("fsdp_plugin")
            if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
                self.distributed_type = DistributedType.FSDP
                self.fsdp_plugin = plugin
                PartialState._shared_state["distributed_type"] = DistributedType.FSDP

        AcceleratorState.__init__ = fsdp_on_cpu
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


# --- main ----------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trainer", help="trainer command: script + fixed arguments (default: see --help text)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps of every run (default 300; --cpu 6)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="global batch: 1 GPU B, 2 GPUs B/2 each (default: the config's; --cpu 4)",
    )
    parser.add_argument("--warmup", type=int, help="steps left out of throughput (default: steps // 5)")
    parser.add_argument("--log-every", type=int, help="logging interval in steps (default 10; --cpu 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)} to (re)run")
    parser.add_argument("--reuse", action="store_true", help="keep runs whose metrics.json exists in --work")
    parser.add_argument("--sequential-baseline", action="store_true", help="1-GPU runs one after the other")
    parser.add_argument(
        "--baseline-accumulation",
        type=int,
        default=1,
        help="1-GPU runs take the global batch in this many accumulated micro-batches (2: the 2-GPU "
        "runs' per-GPU batch, for a global batch one GPU cannot hold at once)",
    )
    parser.add_argument("--work", default=str(ROOT / "outputs" / "multigpu"), help="run folders")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="JSON + PNG go here")
    parser.add_argument("--out", help="also copy JSON + PNG here, with a tar.gz of everything")
    parser.add_argument("--port", type=int, default=29511, help="first rendezvous port")
    parser.add_argument(
        "--run-timeout", type=float, default=900.0, help="seconds per run before it is killed"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--cpu", action="store_true", help="smoke test: tiny preset, gloo, no GPU")
    opts = parser.parse_args(argv)
    opts.trainer = opts.trainer or default_trainer(opts.cpu)
    opts.steps = opts.steps or (6 if opts.cpu else 300)
    opts.log_every = opts.log_every or (1 if opts.cpu else 10)
    opts.warmup = opts.warmup if opts.warmup is not None else opts.steps // 5
    return opts


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--cpu-shim":
        cpu_shim(sys.argv[2:])
        return 0
    sys.path.insert(0, str(ROOT / "src"))  # pixtok without installing it
    opts = parse(argv)
    if opts.cpu:  # the same runs, on processes
        LABELS.update(
            {
                "seed0": "1 proc, seed 0",
                "seed1": "1 proc, seed 1",
                "ddp": "2 procs, DDP",
                "fsdp": "2 procs, FSDP2",
            }
        )
    script, fixed = split_trainer(opts.trainer)
    extra = parse_sets(opts.set)
    if opts.batch_size is None and opts.cpu:
        opts.batch_size = 4
    elif opts.batch_size is None:
        recipe = resolve_recipe(script, fixed, extra)
        if recipe is None:
            raise SystemExit("error: no recipe config found for the trainer: give --batch-size")
        opts.batch_size = recipe.train.batch_size
    if opts.batch_size % 2:
        raise SystemExit(f"error: --batch-size {opts.batch_size} is odd: 2 GPUs take half each")
    if opts.baseline_accumulation < 1 or opts.batch_size % opts.baseline_accumulation:
        raise SystemExit(
            f"error: --baseline-accumulation {opts.baseline_accumulation} must divide --batch-size {opts.batch_size}"
        )
    work = Path(opts.work)
    runs = build_runs(opts, script, fixed, work)
    wanted = [n for n in opts.runs.split(",") if n]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        raise SystemExit(f"error: --runs {unknown}: known {', '.join(RUNS)}")
    command = "PYTHONPATH=src python3 " + shlex.join(
        [str(Path(__file__).resolve().relative_to(ROOT)), *(sys.argv[1:] if argv is None else argv)]
    )
    if opts.dry_run:
        for name in RUNS:
            print(f"# {LABELS[name]}\n{show(runs[name])}\n")
        return 0

    recipe = resolve_recipe(script, fixed, {**extra, "train.seed": 0})
    if recipe is not None and recipe.data.source == "synthetic":
        from pixtok.training.recipe import synthetic_root

        began = time.time()
        print(f"synthetic data: {synthetic_root(recipe)} ({time.time() - began:.0f} s)", flush=True)
    todo = [n for n in wanted if not (opts.reuse and (runs[n]["out"] / "metrics.json").is_file())]
    execute(runs, todo, opts)
    for name in RUNS:
        if name not in todo:
            runs[name]["returncode"] = 0 if (runs[name]["out"] / "metrics.json").is_file() else "not run"

    metrics, per_run = analyse(runs, opts)
    problems = check_runs(per_run, opts)
    payload = {
        "benchmark": "learning_multigpu",
        "device": device_name(opts.cpu),
        "date": dt.date.today().isoformat(),
        "command": command,
        "metrics": metrics,
        "targets": {
            "scaling": f">= {SCALING_TARGET} (2-GPU samples/s over the mean 1-GPU samples/s)",
            "loss": "deviation from the 1-GPU seed-0 curve <= loss_noise (seed 1 vs seed 0)",
        },
        "problems": problems,
        "settings": {
            "trainer": opts.trainer,
            "sets": opts.set,
            "steps": opts.steps,
            "global_batch_size": opts.batch_size,
            "per_process_batch_size_2gpu": opts.batch_size // 2,
            "baseline_accumulation": opts.baseline_accumulation,
            "warmup_steps_excluded": opts.warmup,
            "log_every": opts.log_every,
            "baseline": "sequential" if opts.sequential_baseline else "concurrent (one 1-GPU run per GPU)",
            "child_env": NO_MULTICAST,
            "versions": versions(),
        },
        "runs": per_run,
    }
    results = Path(opts.results)
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / "learning_multigpu.json"
    png_path = results / "learning_multigpu.png"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    plot(per_run, metrics, png_path, f"{payload['device']}, global batch {opts.batch_size}")
    if opts.out:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        for path in (json_path, png_path):
            shutil.copyfile(path, out / path.name)
        with tarfile.open(out / "learning_multigpu.tar.gz", "w:gz") as tar:
            tar.add(json_path, arcname=json_path.name)
            tar.add(png_path, arcname=png_path.name)
            for name, run in runs.items():
                for file in ("metrics.json", "log.txt"):
                    if (run["out"] / file).is_file():
                        tar.add(run["out"] / file, arcname=f"runs/{name}/{file}")
    print()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(
        f"wrote {json_path} and {png_path}" + (f"; {opts.out}/learning_multigpu.tar.gz" if opts.out else "")
    )
    print(table(per_run, metrics))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
