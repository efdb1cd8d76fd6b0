"""Steady training speed of a learning row under different compile setups, measured side by side.

Each arm trains the row for ``--steps`` steps in a fresh process (its own compile state) through
``run.py`` (the real loop, data and model; ``--compile-cache`` carried as the rows carry it), and
its steady rate is read from the run's loss history: the steps between ``--from`` and the last
logged step over the seconds between them, compiling and CUDA-graph recording at the start left
out (a step later in the window that meets a new text length re-records its graphs and counts:
it is part of what a run pays). The first arm is the baseline of the ratios.

Arms:

``rows``       the row as its config says (``train.compile: reduce-overhead`` for the small rows)
``no_trees``   the same with CUDA graphs but without CUDA-graph trees
               (``torch._inductor.config.triton.cudagraph_trees = False``: a graph per compiled
               function with its own memory pool, none re-recorded because the path of graphs
               that led to it changed). On torch 2.11 (the GPU machine's) Inductor's code failed
               its first step this way (``assert dst.data_ptr() == src.data_ptr()``)
``default``    ``train.compile: true`` (Inductor's kernels, no CUDA graphs)
``eager``      ``train.compile: false``

``--log-cudagraphs`` runs every arm with ``TORCH_LOGS=+cudagraphs`` and counts, per arm, the CUDA
graphs recorded and the re-recording reasons torch logs (``<out>/<arm>.log.gz`` keeps the run's output).

    PYTHONPATH=src python benchmarks/learning/step_rate.py referring --steps 300 --arms rows,default \
        --compile-cache .cc/cc_referring.gz --out OUT
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = {
    "rows": ([], ""),
    "no_trees": ([], "import torch._inductor.config as c; c.triton.cudagraph_trees = False; "),
    "default": (["--set", "train.compile=true"], ""),
    "eager": (["--set", "train.compile=false"], ""),
}


def steady_rate(history: list[dict], start: int) -> float:
    """Steps per second between the first logged step at or after ``start`` and the last one."""
    rows = [h for h in history if h["step"] >= start]
    if len(rows) < 2:
        raise ValueError(
            f"need two logged steps at or after step {start}; got {[h['step'] for h in history]}"
        )
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def rerecord_reasons(log: str) -> dict[str, int]:
    """Counts of torch's CUDA-graph re-recording reasons (``+cudagraphs`` debug lines) by reason."""
    reasons: collections.Counter[str] = collections.Counter()
    for match in re.finditer(
        r"Re-recording function=(\S+), mode=\S+, reason=([^\n]*)\n?(input name: \S+)?", log
    ):
        function, reason, name = match.groups()
        reasons[f"{function} {reason.strip()} {name or ''}".strip()[:160]] += 1
    return dict(reasons.most_common())


def run_arm(arm: str, args: argparse.Namespace, out: Path) -> dict:
    extra, prelude = ARMS[arm]
    argv = [
        args.row,
        "--output-dir", str(out / "runs" / arm),
        "--results", str(out / "results" / arm),
        "--set", f"train.max_steps={args.steps}",
        "--set", f"data.num_val={args.num_val}",
        "--set", "train.log_every=25",
        *extra,
        *(x for s in args.set for x in ("--set", s)),
        *(["--compile-cache", args.compile_cache] if args.compile_cache else []),
    ]  # fmt: skip
    code = f"{prelude}import sys; sys.path.insert(0, {str(HERE)!r}); import run; run.main({argv!r})"
    env = dict(os.environ)
    if args.log_cudagraphs:
        env["TORCH_LOGS"] = "+cudagraphs"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = proc.stdout + proc.stderr
    with gzip.open(out / f"{arm}.log.gz", "wt") as handle:
        handle.write(log)
    if proc.returncode != 0:
        raise SystemExit(
            f"arm {arm} failed (exit {proc.returncode}); see {out / f'{arm}.log.gz'}:\n{log[-3000:]}"
        )
    result = json.loads(next((out / "results" / arm).glob("learning_*.json")).read_text())
    row = {
        "steps_per_s": steady_rate(result["history"], args.start),
        "train_seconds": result["train_seconds"],
        "wall_s": wall,
        "metrics": result["metrics"],
    }
    if args.log_cudagraphs:
        row["graphs_recorded"] = len(re.findall(r"Recording function=", log))
        row["rerecord_reasons"] = rerecord_reasons(log)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--from", dest="start", type=int, default=100, help="first step of the steady window")
    parser.add_argument("--arms", default="rows,default", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compile-cache")
    parser.add_argument("--log-cudagraphs", action="store_true")
    parser.add_argument("--out", default="outputs/step_rate")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or args.start >= args.steps:
        parser.error(f"unknown arms {unknown} (of {list(ARMS)}) or --from >= --steps")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for arm in arms:
        rows[arm] = run_arm(arm, args, out)
        base = rows[arms[0]]["steps_per_s"]
        print(
            f"{args.row} {arm:>9s}: {rows[arm]['steps_per_s']:.2f} steps/s steady (steps {args.start}-{args.steps}), "
            f"{rows[arm]['steps_per_s'] / base:.2f}x {arms[0]}; {rows[arm]['wall_s']:.0f} s wall",
            flush=True,
        )
        if "rerecord_reasons" in rows[arm]:
            print(
                f"    graphs recorded {rows[arm]['graphs_recorded']}; re-recorded: {rows[arm]['rerecord_reasons']}"
            )
    import torch

    payload = {
        "benchmark": f"step_rate_{args.row}",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "PYTHONPATH=src python benchmarks/learning/step_rate.py " + " ".join(sys.argv[1:]),
        "metrics": {f"{arm}_steps_per_s": r["steps_per_s"] for arm, r in rows.items()},
        "arms": rows,
    }
    (out / f"step_rate_{args.row}.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
