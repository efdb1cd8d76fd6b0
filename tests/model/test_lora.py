"""LoRA on the T5 only: placement, merge / unmerge, trainable share."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.lora import apply_lora
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from tests.model.test_modeling import full_batch

torch.set_num_threads(1)


def trained_lora_model() -> PixtokForConditionalGeneration:
    """A tiny model whose LoRA B matrices are non-zero (so merging changes weights)."""
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", lora_r=4, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model.eval()


def test_lora_sits_on_t5_q_and_v_only() -> None:
    model = trained_lora_model()
    adapted = sorted(name for name, m in model.named_modules() if isinstance(m, LoraLayer))
    assert adapted and all(name.startswith("model.text_model.") for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"q", "v"}
    t5 = model.config.text_config
    assert len(adapted) == 2 * (t5.num_layers + 2 * t5.num_decoder_layers)  # enc self; dec self + cross


def test_fresh_adapters_are_a_no_op() -> None:
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", lora_dropout=0.0)).eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert all(torch.count_nonzero(layer.lora_B["default"].weight) == 0 for layer in layers)
    assert all(torch.count_nonzero(layer.lora_A["default"].weight) > 0 for layer in layers)
    batch = full_batch(model.config)
    with torch.no_grad():
        with_adapters = model(**batch).logits
        for layer in layers:
            layer.scaling["default"] = 0.0
        without = model(**batch).logits
    assert torch.equal(with_adapters, without)


def test_merged_and_unmerged_outputs_agree() -> None:
    model = trained_lora_model()
    batch = full_batch(model.config)
    weight = model.model.text_model.encoder.block[0].layer[0].SelfAttention.q.base_layer.weight
    before = weight.clone()
    with torch.no_grad():
        unmerged = model(**batch)
        assert model.merge_lora() == 12
        assert not torch.equal(weight, before)  # the update really moved into the weight
        merged = model(**batch)
        assert model.merge_lora() == 0  # idempotent
        assert model.unmerge_lora() == 12
        torch.testing.assert_close(weight, before, rtol=1e-5, atol=1e-6)
        again = model(**batch)
    # outputs within 1e-4: probabilities, points, boxes, mask probabilities; raw logits (|x| ~ 50 for
    # a randomly initialized T5) within 1e-4 of their scale
    scale = unmerged.logits.abs().max()
    torch.testing.assert_close(merged.logits, unmerged.logits, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(merged.logits.softmax(-1), unmerged.logits.softmax(-1), rtol=0, atol=1e-4)
    for name in ("points", "pred_boxes"):
        torch.testing.assert_close(getattr(merged, name), getattr(unmerged, name), rtol=0, atol=1e-4)
    torch.testing.assert_close(merged.pred_masks.sigmoid(), unmerged.pred_masks.sigmoid(), rtol=0, atol=1e-4)
    for name in ("logits", "points", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(
            getattr(again, name), getattr(unmerged, name), rtol=1e-5, atol=1e-5 * scale
        )
    # the adapters matter: disabling them changes the output
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
            layer.scaling["default"] = 0.0
        plain = model(**batch)
    assert not torch.allclose(plain.logits, unmerged.logits, atol=1e-3)


def test_print_trainable_parameters(capsys) -> None:
    model = trained_lora_model()
    line = model.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == line
    counts = model.parameter_counts()
    assert (
        f"trainable params: {counts['trainable']:,d}" in line and f"all params: {counts['total']:,d}" in line
    )
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (
        counts["total"] == counts["sam"] + counts["eva02"] + counts["text"] + counts["lora"] + counts["other"]
    )


def test_bad_lora_targets_are_named() -> None:
    model = trained_lora_model()
    with pytest.raises(ValueError, match="no T5 Linear layer"):
        apply_lora(model.model.text_model, 4, 8, 0.0, ["query_proj"])
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model.model.text_model, 0, 8, 0.0, ["q"])
