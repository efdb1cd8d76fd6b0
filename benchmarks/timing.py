"""Timing and result-writing helpers shared by the speed benchmarks (decode.py, towers.py).

GPU regions are timed with CUDA events after warm-up and reported as the median of the repeats;
CPU regions with ``time.perf_counter``. Results go to ``benchmarks/results/<name>.json`` as
``{"benchmark", "device", "date", "command", "metrics": {...}}``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_cuda_ms(fn: Callable[[], Any], warmup: int = 2, repeats: int = 10) -> list[float]:
    """Milliseconds per call of ``fn`` on the current CUDA stream, one event pair per repeat."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def time_cpu_ms(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> list[float]:
    """Wall-clock milliseconds per call of ``fn`` (CPU work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def kernel_times(fn: Callable[[], Any]) -> list[tuple[str, float, int]]:
    """CUDA kernels of one call of ``fn`` under ``torch.profiler``: (name, total ms, launches),
    most time first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key[:90], e.device_time_total / 1e3, e.count) for e in prof.key_averages()]
    return sorted((r for r in rows if r[1] > 0), key=lambda r: -r[1])


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> float:
    """(max - min) / median of repeated timings: how much to trust a difference."""
    return float((max(values) - min(values)) / statistics.median(values))


def copy_bandwidth_gb_s(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-memory bandwidth of a large device-to-device copy, counting bytes read + written."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median(time_cuda_ms(lambda: dst.copy_(src), warmup=3, repeats=repeats))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def bf16_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Dense bf16 matrix-product rate on random data (the practical MFU ceiling)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median(time_cuda_ms(lambda: a @ b, warmup=3, repeats=repeats))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    return (
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    )


def write_result(
    path: Path, benchmark: str, device: str, command: str, metrics: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """Write (or update: metrics are merged, the rest replaced) one benchmark's result JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    if path.exists():
        record = json.loads(path.read_text())
    merged = {**record.get("metrics", {}), **metrics}
    record.update(
        benchmark=benchmark,
        device=device,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        metrics=merged,
        **extra,
    )
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def command_line() -> str:
    """The command that ran this process, as a reader would retype it (``--out DIR`` left out)."""
    args, kept = sys.argv[1:], []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return " ".join(["PYTHONPATH=src python3", sys.argv[0], *kept])


__all__ = [
    "RESULTS_DIR",
    "bf16_matmul_tflops",
    "command_line",
    "copy_bandwidth_gb_s",
    "device_description",
    "median",
    "spread",
    "time_cpu_ms",
    "time_cuda_ms",
    "write_result",
]
