"""The shared loop on a deliberately small stand-in model: exact resume, NaN skipping, atomic checkpoints.

The real tiny pixtok model runs through the same loop in tests/training/test_recipes.py; here the
model is a two-parameter regression so the guarantees are checked in a second.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pixtok.tasks.base import Example, Task
from pixtok.training.checkpoint import list_checkpoints, read_state
from pixtok.training.config import ConfigError, load_config
from pixtok.training.loop import TaskData, train
from pixtok.training.nonfinite import NonFiniteGuard as loop_guard


@dataclass
class Out:
    loss: torch.Tensor
    lm_loss: torch.Tensor | None = None


class Killed(RuntimeError):
    pass


class Batch(dict):
    def to(self, device):
        return Batch({k: v.to(device) for k, v in self.items()})


class LineModel(torch.nn.Module):
    """y = a x + b with noise injected by dropout, so RNG state matters for exact resume."""

    def __init__(self, nan_at: set[int] | None = None, crash_at: int | None = None):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.b = torch.nn.Parameter(torch.zeros(()))
        self.drop = torch.nn.Dropout(0.5)
        self.nan_at = nan_at or set()
        self.crash_at = crash_at
        self.calls = 0

    @property
    def device(self):
        return self.a.device

    def forward(self, x, y):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Killed(f"killed at forward call {self.calls}")
        pred = self.a * self.drop(x) + self.b
        loss = ((pred - y) ** 2).mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return Out(loss=loss, lm_loss=loss.detach())

    def generate(self, x, y, **_):
        return self.a * x + self.b

    def save_pretrained(self, path):
        torch.save(self.state_dict(), Path(path) / "line.pt")


class LineProcessor:
    def __call__(self, images, task, targets=None, return_tensors="pt", **_):
        xs = torch.tensor([float(i) for i in images])
        return Batch(x=xs, y=3 * xs + 1)

    def save_pretrained(self, path):
        (Path(path) / "processor.json").write_text("{}")


class LineTask(Task):
    name = "line"
    main_metric = "mse"

    def example(self, row, sub_index, rng):
        x = row["x"] + (rng.normal() * 0.1 if rng is not None else 0.0)
        return Example(image=x, reference={"y": 3 * x + 1})

    def predict(self, model, processor, examples, max_new_tokens=0):
        batch = self.collate(examples, processor, with_targets=False)
        return [{"y": float(v)} for v in model.generate(**batch)]

    def post_process(self, processor, outputs, target_sizes):
        return outputs

    def draw(self, examples, predictions, path):
        return False  # no picture for a line

    def score(self, predictions, examples):
        return {
            "mse": float(np.mean([(p["y"] - e.reference["y"]) ** 2 for p, e in zip(predictions, examples)]))
        }


def _run(
    tmp_path, name, max_steps, resume=None, nan_at=None, save_every=3, crash_at=None, lr_scales=None, **extra
):
    recipe = load_config(
        None,
        {
            **extra,
            "train.lr_scales": lr_scales or {},
            "train.max_steps": max_steps,
            "train.batch_size": 4,
            "train.learning_rate": 0.05,
            "train.warmup_steps": 2,
            "train.save_every": save_every,
            "train.output_dir": str(tmp_path / name),
            "train.log_every": 1,
            "data.num_val": 4,
            "resume_from": resume,
        },
    )
    rows = [{"x": float(i) / 10} for i in range(10)]
    torch.manual_seed(0)
    model = LineModel(nan_at, crash_at)
    result = train(recipe, model, LineProcessor(), [TaskData(LineTask(), 1.0, rows, rows)])
    return model, result


def test_resume_continues_exactly(tmp_path):
    full, _ = _run(tmp_path, "full", 8, save_every=2)
    with pytest.raises(Killed):  # the run dies during step 6, after checkpoint-4 was written
        _run(tmp_path, "half", 8, save_every=2, crash_at=6)
    half_dir = tmp_path / "half"
    assert [p.name for p in list_checkpoints(half_dir)] == ["checkpoint-2", "checkpoint-4"]
    first = read_state(half_dir / "checkpoints" / "checkpoint-4")
    resumed, result = _run(tmp_path, "half", 8, resume=str(half_dir), save_every=2)
    assert result["step"] == 8
    for name, p in full.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    # and the run really moved the weights
    assert float(full.a.detach()) != 0.0
    # the history goes on from the checkpoint's: every step once, the first segment's losses kept
    assert [h["step"] for h in result["history"]] == list(range(1, 9))
    assert result["history"][:4] == first["history"]
    assert result["train_seconds"] >= first["train_seconds"] > 0


def test_time_limit_counts_the_resumed_runs_earlier_training(tmp_path):
    """A checkpoint that has already used the time limit stops the resumed run at its first check
    (every 10 steps), where a fresh run of the same recipe trains on."""
    with pytest.raises(Killed):
        _run(tmp_path, "a", 12, save_every=4, crash_at=6)
    state_file = tmp_path / "a" / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["train_seconds"] = 3600.0
    state_file.write_text(json.dumps(state))
    _, resumed = _run(tmp_path, "a", 12, resume=str(tmp_path / "a"), **{"train.time_limit_minutes": 30})
    assert resumed["stopped_by_time_limit"] and resumed["step"] == 10
    assert resumed["train_seconds"] >= 3600.0
    _, fresh = _run(tmp_path, "b", 12, **{"train.time_limit_minutes": 30})
    assert not fresh["stopped_by_time_limit"] and fresh["step"] == 12
    # the stopped run, resumed under a longer limit, completes its schedule and says so
    _, finished = _run(tmp_path, "a", 12, resume=str(tmp_path / "a"), **{"train.time_limit_minutes": 120})
    assert finished["step"] == 12 and not finished["stopped_by_time_limit"]


def test_nan_loss_skips_step_and_is_counted(tmp_path, monkeypatch):
    import pixtok.training.loop as loop

    guards = []
    monkeypatch.setattr(loop, "NonFiniteGuard", lambda *a: guards.append(loop_guard(*a)) or guards[-1])
    model, result = _run(tmp_path, "nan", 5, nan_at={3}, **{"train.ema_decay": 0.5})
    assert len(guards) == 1  # fused AdamW, no GradScaler: decided on the device, no read per step
    assert result["nan_skipped_steps"] == 1
    assert torch.isfinite(model.a) and torch.isfinite(model.b)  # the saved model is the average
    # the skipped step's loss is left out of the logged means (a NaN would poison its window)
    logged = [h["train/loss"] for h in result["history"] if "train/loss" in h]
    assert logged and all(np.isfinite(logged))
    metrics = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    assert metrics["nan_skipped_steps"] == 1 and "mse" in metrics["val"]["line"]


def test_interrupted_save_leaves_no_checkpoint(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    (run / "checkpoint-7.tmp").mkdir(parents=True)
    assert list_checkpoints(tmp_path / "run") == []
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        _run(tmp_path, "x", 2, resume=str(tmp_path / "run"))


def test_lr_scales_scale_matching_parameters_and_resume_exactly(tmp_path):
    """train.lr_scales: a matching parameter's steps shrink by its factor (Adam's step is about the
    learning rate, so `a` moves ~1000x less than without); the log keeps the base rate; resume
    continues exactly with the extra parameter group."""
    plain, plain_result = _run(tmp_path, "plain", 6)
    scaled, scaled_result = _run(tmp_path, "scaled", 6, lr_scales={"^a$": 1e-3})
    assert abs(float(plain.a.detach())) > 0.1
    assert abs(float(scaled.a.detach())) < abs(float(plain.a.detach())) * 2e-3
    assert abs(float(scaled.b.detach())) > 0.1
    lrs = [h["train/lr"] for h in scaled_result["history"] if "train/lr" in h]
    assert lrs == [h["train/lr"] for h in plain_result["history"] if "train/lr" in h] and max(lrs) > 0.01

    with pytest.raises(Killed):
        _run(tmp_path, "half", 6, save_every=2, crash_at=4, lr_scales={"^a$": 1e-3})
    resumed, _ = _run(
        tmp_path, "half", 6, resume=str(tmp_path / "half"), save_every=2, lr_scales={"^a$": 1e-3}
    )
    for name, p in scaled.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name


def test_lr_scales_pattern_must_match_and_be_valid(tmp_path):
    with pytest.raises(ValueError, match="match no trainable parameter"):
        _run(tmp_path, "unused", 2, lr_scales={"nothing_named_so": 0.5})
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_config(None, {"train.lr_scales": {"(": 0.5}})
    with pytest.raises(ConfigError, match="factor > 0"):
        load_config(None, {"train.lr_scales": {"a": -1}})


def test_ema_average_is_what_is_evaluated_saved_and_resumed_exactly(tmp_path, monkeypatch):
    """train.ema_decay: the saved model holds the moving average of the weights (not the last
    weights), the checkpoint holds both, and a resumed run ends with the same average."""
    from pixtok.training.ema import WeightEMA

    seen = []  # the weights after each optimizer step, as the average reads them
    original = WeightEMA.update

    def recording(self, taken=None):
        seen.append(torch.stack([p.detach().clone() for p in self.params]))
        original(self, taken)

    monkeypatch.setattr(WeightEMA, "update", recording)
    raw, plain = _run(tmp_path, "raw", 6)
    averaged, result = _run(tmp_path, "ema", 6, **{"train.ema_decay": 0.5, "train.ema_eval_raw": True})
    assert result["step"] == 6 and len(seen) == 6
    # ema_eval_raw scores the trained weights too: the plain run's figure, beside the average's own
    assert result["val_raw"] == plain["val"] and result["val"] != plain["val"]
    assert "val_raw" not in plain
    # the average does not feed back: the trained weights are the plain run's
    torch.testing.assert_close(seen[-1], torch.stack([raw.a.detach(), raw.b.detach()]))
    expected = torch.zeros(2)  # both parameters start at 0
    for n, weights in enumerate(seen, start=1):
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * weights
    saved = torch.load(tmp_path / "ema" / "line.pt", weights_only=True)
    torch.testing.assert_close(torch.stack([saved["a"], saved["b"]]), expected)
    assert not torch.allclose(expected, seen[-1])

    with pytest.raises(Killed):
        _run(tmp_path, "half", 6, save_every=2, crash_at=4, **{"train.ema_decay": 0.5})
    resumed, _ = _run(
        tmp_path, "half", 6, resume=str(tmp_path / "half"), save_every=2, **{"train.ema_decay": 0.5}
    )
    for name, p in averaged.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    # a checkpoint written with an average resumes only with one
    with pytest.raises(ConfigError, match="weight average"):
        _run(tmp_path, "half", 6, resume=str(tmp_path / "half"), save_every=2)


def test_ema_update_and_swap():
    from pixtok.training.ema import WeightEMA

    p = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    ema = WeightEMA([p], 0.9)
    history = []
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            p.fill_(value)
        decay = ema.current_decay()
        expected = (history[-1] if history else torch.tensor([0.0, 10.0])) * decay + p.detach() * (1 - decay)
        ema.update()
        history.append(expected)
        torch.testing.assert_close(ema.shadow[0], expected)
    with ema.applied():
        torch.testing.assert_close(p.detach(), history[-1])
    assert torch.equal(p.detach(), torch.tensor([3.0, 3.0]))  # the trained weights are back
    state = ema.state_dict()
    other = WeightEMA([torch.nn.Parameter(torch.zeros(2))], 0.5)
    other.load_state_dict(state)
    assert other.updates == 3 and other.decay == 0.9 and torch.equal(other.shadow[0], history[-1])
    with pytest.raises(ValueError, match="does not match"):
        WeightEMA([torch.nn.Parameter(torch.zeros(3))], 0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightEMA([p], 1.0)


def test_profile_steps_profile_the_loops_steps(tmp_path):
    _, result = _run(tmp_path, "prof", 5, **{"train.profile_steps": [2, 4]})
    assert result["step"] == 5
    summary = json.loads((tmp_path / "prof" / "profile" / "summary.json").read_text())
    assert summary["steps"] == [2, 4] and summary["wall_ms"] > 0
    assert "aten::" in (tmp_path / "prof" / "profile" / "ops.txt").read_text()


def test_eval_batch_size_sets_the_evaluation_batches(tmp_path, monkeypatch):
    sizes = []
    original = LineTask.predict

    def recording(self, model, processor, examples, max_new_tokens=0):
        sizes.append(len(examples))
        return original(self, model, processor, examples, max_new_tokens)

    monkeypatch.setattr(LineTask, "predict", recording)
    _, default = _run(tmp_path, "default", 2)
    assert sizes == [4]  # train.batch_size
    sizes.clear()
    _, small = _run(tmp_path, "small", 2, **{"train.eval_batch_size": 3})
    assert sizes == [3, 1]
    assert small["val"]["line"]["mse"] == pytest.approx(default["val"]["line"]["mse"])
    with pytest.raises(ConfigError, match="train.eval_batch_size"):
        load_config(None, {"train.eval_batch_size": 0})
