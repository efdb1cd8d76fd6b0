"""DDP's unused-parameter probe (``train.ddp_find_unused: auto``) on the tiny model, synthetic data.

Detection trains the T5 and the towers only: the box, mask, trace and proposal heads are frozen and
DDP runs without its per-step search. Detection with referring trains the box head and the mask
decoder in referring's micro-batches only, so DDP keeps searching. Two processes: the probe's
decision reaches DDP, and a run resumes exactly under another setting (the optimizer's groups do not
depend on the probe).
"""

import contextlib
import re
from types import SimpleNamespace

import pytest
import torch

from pixtok.training.config import ConfigError, load_config
from pixtok.training.loop import LOSS_NAMES, _probe_batches, _signature
from pixtok.training.recipe import prepare
from pixtok.training.unused_parameters import Probe, freeze, probe

from .test_distributed import ROOT, _args, _launch, _weights

HEADS = {"box_head", "mask_decoder", "mask_prompt_embed", "proposal_head", "trace_head"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pixtok-cache"))


def _prepared(cache_dir, tasks):
    """The tiny model of ``recipes/configs/coco_detection.yaml`` with ``tasks``, and each task's probe
    micro-batch."""
    recipe = load_config(
        str(ROOT / "recipes" / "configs" / "coco_detection.yaml"),
        {"data.synthetic.num_images": 24, "data.cache_dir": cache_dir, "train.batch_size": 2, "tasks": tasks},
    )
    model, processor, data = prepare(recipe)
    return model, _probe_batches(data, processor, recipe.train)


def _probe(model, batches):
    return probe(model, batches, torch.device("cpu"), contextlib.nullcontext, LOSS_NAMES)


def _top(names):
    return {name.split(".")[0] for name in names}


def test_detection_trains_no_head_and_needs_no_search(cache_dir):
    model, batches = _prepared(cache_dir, {"detection": {"sequence_augmentation": True}})
    result = _probe(model, batches)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert result.static
    assert result.unused == [n for n in trainable if n.split(".")[0] in HEADS]
    assert _top(result.unused) == HEADS
    assert result.losses == [frozenset({"loss", "lm_loss"})]

    signature, keys = _signature(model), set(model.state_dict())
    line = freeze(model, result.unused)
    assert line.startswith(f"froze {len(result.unused)} tensors (")
    assert line.endswith(": box_head, mask_decoder, mask_prompt_embed, proposal_head, trace_head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n in trainable if n not in result.unused
    ]
    # a checkpoint records, and save_pretrained saves, every weight still
    assert _signature(model) == signature and set(model.state_dict()) == keys


def test_probe_leaves_no_trace(cache_dir):
    model, batches = _prepared(cache_dir, {"detection": {}})
    model.eval()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.random.get_rng_state()
    _probe(model, batches)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_tasks_with_different_heads_keep_the_search(cache_dir):
    model, batches = _prepared(cache_dir, {"detection": {"weight": 1.0}, "referring": {"weight": 1.0}})
    result = _probe(model, batches)
    assert not result.static
    detection, referring = result.reached
    assert {"box_head", "mask_decoder"} <= _top(referring - detection)
    assert not detection - referring
    assert _top(result.unused) == {"proposal_head", "trace_head"}  # no task trains those


def _probe_of(losses, reached):
    return Probe(
        tasks=[f"t{i}" for i in range(len(losses))],
        trainable=["a", "b", "c"],
        reached=[frozenset(r) for r in reached],
        losses=[frozenset(names) for names in losses],
        loss_names=LOSS_NAMES,
    )


def _output(*names):
    return SimpleNamespace(**{name: torch.zeros(()) for name in names})


def test_check_stops_a_batch_that_trains_other_heads():
    # one task, static: a micro-batch without the probe's box loss would leave DDP half-reduced
    static = _probe_of([{"loss", "box_loss"}], [{"a", "b"}])
    assert static.static and static.unused == ["c"]
    static.check(0, _output("loss", "box_loss"), step=1)
    with pytest.raises(RuntimeError, match="ddp_find_unused: true"):
        static.check(0, _output("loss"), step=2)
    # several tasks, a head frozen: a loss no probe computed would train nothing
    mixed = _probe_of([{"loss"}, {"loss", "box_loss"}], [{"a"}, {"a", "b"}])
    assert not mixed.static and mixed.unused == ["c"]
    mixed.check(0, _output("loss"), step=1)
    mixed.check(0, _output("loss", "box_loss"), step=1)  # the box head is trained (by task 1)
    with pytest.raises(RuntimeError, match="task t0 computed the losses"):
        mixed.check(0, _output("loss", "mask_loss"), step=3)
    # nothing frozen and the search on: anything goes
    _probe_of([{"loss"}, {"loss", "box_loss"}], [{"a", "c"}, {"a", "b"}]).check(0, _output("mask_loss"), 1)


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_ddp_find_unused_accepts_auto_true_false(value):
    assert load_config(None, {"train.ddp_find_unused": value}).train.ddp_find_unused == value


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_ddp_find_unused_rejects_anything_else(value):
    raw = {"train": {"ddp_find_unused": value}}
    with pytest.raises(ConfigError, match=re.escape("train.ddp_find_unused: expected auto | true | false")):
        load_config(raw)


@pytest.mark.slow
def test_ddp_freezes_the_heads_and_resumes_exactly_under_another_setting(tmp_path, cache_dir):
    """Detection on two processes: no search, heads frozen; resumed from its step-1 checkpoint with
    ``ddp_find_unused: true`` (nothing frozen, the search on) it ends with the same weights."""
    auto = tmp_path / "auto"
    output = _launch(tmp_path, _args(auto, cache_dir, 2, 2, "--set", "train.save_every=1"))
    assert "DDP find_unused_parameters=False: every task trains the same parameters" in output
    assert "find_unused_parameters=True was specified" not in output  # DDP's warning had it searched
    assert (
        "that no task trains: box_head, mask_decoder, mask_prompt_embed, proposal_head, trace_head" in output
    )

    resumed = tmp_path / "resumed"
    checkpoint = auto / "checkpoints" / "checkpoint-1"
    args = _args(
        resumed, cache_dir, 2, 2, "--set", "train.ddp_find_unused=true", "--resume-from", str(checkpoint)
    )
    output = _launch(tmp_path, args)
    assert f"resumed from {checkpoint}" in output
    assert "DDP find_unused_parameters=True: train.ddp_find_unused" in output and "froze" not in output
    a, b = _weights(auto), _weights(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
