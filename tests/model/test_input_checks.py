"""Input checks on the host: the training step's forward reads nothing back from the device."""

from __future__ import annotations

import collections

import pytest
import torch

from pixtok.model import input_checks
from pixtok.model.heads import masked_l1
from pixtok.model.input_checks import check_batch, checked_on_host, should_check
from pixtok.model.vocab import EOS_ID
from pixtok.training.loop import _host_checked

from .test_modeling import full_batch, images, tiny_model

READS = ("item", "__bool__", "tolist", "__int__", "__float__", "__index__", "nonzero")


def test_should_check_skips_only_accelerator_tensors_inside_the_switch() -> None:
    on_device = torch.empty(2, device="meta")  # stands in for an accelerator's tensor
    on_host = torch.empty(2)
    assert should_check(on_device) and should_check(on_host)
    with checked_on_host():
        assert not should_check(on_device) and should_check(on_host)
    assert should_check(on_device)


def test_check_batch_catches_what_the_forward_would() -> None:
    model = tiny_model()
    size = model.config.vocab.size
    good = full_batch(model.config)
    check_batch(good, size)  # -100 in labels is padding, not an id
    for key, value in (
        ("input_ids", size),
        ("labels", -5),
        ("decoder_input_ids", size + 3),
    ):
        bad = dict(good)
        bad[key] = good["labels"].clone() if key != "input_ids" else good["input_ids"].clone()
        bad[key][0, 0] = value
        with pytest.raises(ValueError, match="token ids must be in"):
            check_batch(bad, size)
    bad = dict(good, prompt_labels=torch.tensor([[2, 3], [1, 7]]))
    with pytest.raises(ValueError, match="prompt labels must be in"):
        check_batch(bad, size)
    bad = dict(good, prompt_coords=good["prompt_coords"] * 100)
    with pytest.raises(ValueError, match="model space"):
        check_batch(bad, size)


def test_host_checked_drops_only_an_all_ones_mask() -> None:
    model = tiny_model()
    size = model.config.vocab.size
    padded = full_batch(model.config)
    assert "attention_mask" in _host_checked(padded, size)
    full = dict(padded, attention_mask=torch.ones_like(padded["attention_mask"]))
    out = _host_checked(full, size)
    assert "attention_mask" not in out and "attention_mask" in full  # the caller's dict is untouched
    bad = dict(full, input_ids=torch.full_like(full["input_ids"], size))
    with pytest.raises(ValueError, match="token ids"):
        _host_checked(bad, size)


def test_no_mask_is_the_all_ones_mask() -> None:
    """T5 gets no mask when ``attention_mask`` is None: the same loss and logits as all ones."""
    model = tiny_model().eval()
    batch = full_batch(model.config)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    with_mask = model(**batch)
    batch.pop("attention_mask")
    without = model(**batch)
    torch.testing.assert_close(without.logits, with_mask.logits)
    torch.testing.assert_close(without.loss, with_mask.loss)


def test_masked_l1_is_the_mean_over_masked_rows() -> None:
    pred = torch.tensor([[0.0, 1.0], [2.0, 2.0], [5.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0], [float("nan"), float("nan")]])
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(masked_l1(pred, target, mask), torch.tensor(5.0 / 4))
    empty = masked_l1(pred, target, torch.zeros(3, dtype=torch.bool))
    empty.backward()
    assert float(empty) == 0.0 and not pred.grad.any()


@pytest.mark.parametrize("cached", [False, True])
def test_training_forward_reads_nothing_from_the_device(monkeypatch, cached: bool) -> None:
    """A detection step as the loop runs it (batch checked on the host, all-ones prompt mask
    dropped) makes no device-to-host read: every read would leave the GPU idle mid-step. CPU tensors
    stand in for the accelerator's (they are treated as not on the host)."""
    monkeypatch.setattr(input_checks, "_HOST_DEVICES", ())
    model = tiny_model(lora_r=8)
    vocab = model.config.vocab
    batch = {
        **images(model.config),
        "input_ids": torch.full((2, 1), vocab.task_id("detection")),
        "labels": torch.tensor(
            [[vocab.coord_offset + i for i in range(4)] + [vocab.class_offset, EOS_ID]] * 2
        ),
    }
    if cached:
        with torch.no_grad():
            features = model.model.encode_images(batch.pop("pixel_values"), batch.pop("eva_pixel_values"))
        batch["image_embeddings"], batch["fused_features"] = features.sam, features.fused
    reads: collections.Counter = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with checked_on_host():
        loss = model(**batch).loss
    loss.backward()
    monkeypatch.undo()
    assert not reads, f"device reads in the training forward: {dict(reads)}"
    # outside the switch the same forward checks its inputs (it reads the device)
    monkeypatch.setattr(input_checks, "_HOST_DEVICES", ())
    for name in ("tolist", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model(**batch)
    monkeypatch.undo()
    assert reads["tolist"] >= 1 and reads["item"] >= 1
