"""Profile a window of training steps: where the step's time goes, on the device and on the host.

``train.profile_steps: [first, last]`` runs optimizer steps ``first … last`` (1-based, as the
progress bar counts) under :mod:`torch.profiler` and writes, in ``<output_dir>/profile/``:

``trace.json.gz``  the steps' host and device activity as a Chrome trace (chrome://tracing, Perfetto)
``ops.txt``        operators and kernels by self device time, then by self host time
``summary.json``   ``steps``, ``wall_ms`` per step, ``kernel_ms`` per step (device busy time: the sum of
                   the kernels' times) and ``busy`` (their ratio): a step whose kernels fill much less
                   than its wall time is bound by the host (launches, device reads, data loading)

The window's wall time counts everything the loop does between those steps, data loading included;
the device is synchronised at both ends, so the steps before and after do not leak in. Profiled
steps run slower than the others (the host's operators are recorded), and the run's
``time_limit_minutes`` counts them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


class StepProfiler:
    """Starts :class:`torch.profiler.profile` before step ``first`` and stops it after ``last``.

    Call :meth:`after_step` with the number of optimizer steps done (also once before the first
    step, with the starting step)."""

    def __init__(self, first: int, last: int, out_dir: Path, device: torch.device) -> None:
        self.first, self.last, self.out_dir, self.device = first, last, Path(out_dir), device
        self.profile: Any = None
        self.started = 0.0
        self.summary: dict[str, Any] | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def after_step(self, step: int) -> str | None:
        """Start or stop the window at this step; returns the one-line summary when it stops."""
        if self.profile is None and self.summary is None and step == self.first - 1:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._sync()
            self.profile = profile(activities=activities)
            self.profile.__enter__()
            self.started = time.perf_counter()
        elif self.profile is not None and step == self.last:
            self._sync()
            wall = time.perf_counter() - self.started
            self.profile.__exit__(None, None, None)
            self.summary = self._write(self.profile, wall)
            self.profile = None
            return f"{self.headline()}; {self.out_dir}"
        return None

    def headline(self) -> str:
        """``steps a-b: … ms per step, … ms of kernels (… % busy)`` of the written summary."""
        s = self.summary
        if s is None:
            raise RuntimeError("the profiled window has not finished")
        return (
            f"steps {self.first}-{self.last}: {s['wall_ms']:.1f} ms per step, "
            f"{s['kernel_ms']:.1f} ms of kernels ({100 * s['busy']:.0f} % busy)"
        )

    def _write(self, prof: Any, wall: float) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        steps = self.last - self.first + 1
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 1e3
        summary = {
            "steps": [self.first, self.last],
            "wall_ms": 1e3 * wall / steps,
            "kernel_ms": kernel_ms / steps,
            "busy": kernel_ms / (1e3 * wall) if wall > 0 else 0.0,
            "kernel_launches": sum(e.count for e in kernels) / steps,
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        self.summary = summary
        by_device = events.table(sort_by="self_device_time_total", row_limit=40) if kernels else ""
        by_host = events.table(sort_by="self_cpu_time_total", row_limit=40)
        (self.out_dir / "ops.txt").write_text(
            f"{self.headline()}\n\nby self device time\n{by_device}\n\nby self host time\n{by_host}\n"
        )
        prof.export_chrome_trace(str(self.out_dir / "trace.json.gz"))  # torch gzips a .gz path
        return summary

    def close(self) -> None:
        """Stop a window the run did not finish (the loop stopped early); nothing is written."""
        if self.profile is not None:
            self.profile.__exit__(None, None, None)
            self.profile = None


__all__ = ["StepProfiler"]
