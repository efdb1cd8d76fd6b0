"""T5's position bias reaches SDPA with a unit-stride last dimension (the fused GPU kernels' rule)."""

from __future__ import annotations

import torch
from transformers.models.t5.modeling_t5 import T5Attention

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.t5_attention import ContiguousBiasT5Attention, use_contiguous_position_bias

from .test_modeling import full_batch


def test_every_bias_owner_is_switched_and_gives_the_same_contiguous_bias():
    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny")
    model = PixtokForConditionalGeneration(config)
    owners = [m for m in model.modules() if isinstance(m, T5Attention) and m.has_relative_attention_bias]
    assert len(owners) == 2  # the encoder's first layer and the decoder's
    for module in owners:
        assert type(module) is ContiguousBiasT5Attention
        bias = module.compute_bias(7, 9)
        stock = T5Attention.compute_bias(module, 7, 9)  # transformers' own: a permuted view
        assert bias.is_contiguous() and not stock.is_contiguous()
        torch.testing.assert_close(bias, stock, rtol=0, atol=0)
    assert use_contiguous_position_bias(model) == 0  # idempotent


def test_sdpa_sees_unit_stride_masks_in_a_training_forward(monkeypatch):
    """Every attention mask the model hands to SDPA has stride 1 in its last dimension: without it
    CUDA's fused kernels are refused and SDPA runs its fp32 math path."""
    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny")
    model = PixtokForConditionalGeneration(config).train()
    assert model.config.text_config._attn_implementation == "sdpa"
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, *args, **kwargs):
        if attn_mask is not None and attn_mask.dim() == 4:
            seen.append(attn_mask.stride(-1))
        return original(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model(**full_batch(config)).loss.backward()
    assert seen and all(stride == 1 for stride in seen), seen
