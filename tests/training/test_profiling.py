"""train.profile_steps: a window of steps profiled, its summary and trace written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from pixtok.training.config import ConfigError, load_config
from pixtok.training.profiling import StepProfiler


def test_profiler_covers_exactly_its_window(tmp_path: Path) -> None:
    profiler = StepProfiler(2, 3, tmp_path / "profile", torch.device("cpu"))
    x = torch.randn(64, 64)
    profiler.after_step(0)
    assert profiler.profile is None  # step 1 runs unprofiled
    profiler.after_step(1)
    assert profiler.profile is not None
    for step in (2, 3):
        x = x @ x.T / 64
        profiler.after_step(step)
    assert profiler.profile is None
    summary = json.loads((tmp_path / "profile" / "summary.json").read_text())
    assert summary["steps"] == [2, 3] and summary["wall_ms"] > 0
    assert summary["kernel_ms"] == 0.0  # no device on CPU: no kernels counted
    assert "aten::mm" in (tmp_path / "profile" / "ops.txt").read_text()
    with gzip.open(tmp_path / "profile" / "trace.json.gz") as handle:
        assert "aten::mm" in handle.read().decode()
    profiler.after_step(1)  # a window is profiled once
    assert profiler.profile is None


@pytest.mark.parametrize("bad", [[3, 2], [0, 2], [1], "1,2", [1.5, 2]])
def test_profile_steps_must_be_a_window(tmp_path: Path, bad) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({"train": {"profile_steps": bad}}))
    with pytest.raises(ConfigError, match="profile_steps"):
        load_config(path)


def test_a_window_the_run_does_not_finish_writes_nothing(tmp_path: Path) -> None:
    profiler = StepProfiler(1, 5, tmp_path / "profile", torch.device("cpu"))
    profiler.after_step(0)
    profiler.after_step(1)
    profiler.close()  # the loop stopped at step 1 (time limit, max_steps)
    assert profiler.profile is None and profiler.summary is None
    assert not (tmp_path / "profile").exists()
