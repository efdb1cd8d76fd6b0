"""benchmarks/train_step.py's target padding: ignored positions that leave the loss unchanged."""

import importlib.util
from pathlib import Path

import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


def _module():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_padded_targets_round_up_and_leave_the_loss_unchanged():
    bench = _module()
    config = PixtokConfig.from_preset("tiny")
    batch = bench.make_batch(config, 2, torch.device("cpu"))
    assert batch["labels"].shape == (2, bench.TOKENS) == (2, 501)
    padded = bench.pad_targets(batch, 8)
    assert padded["labels"].shape == (2, 504) and (padded["labels"][:, 501:] == -100).all()
    assert (padded["label_weights"][:, 501:] == 0).all() and padded["labels"][:, :501].equal(batch["labels"])
    assert bench.pad_targets(batch, 1) is batch and bench.pad_targets(padded, 8) is padded
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(config).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).loss, model(**batch).loss)
