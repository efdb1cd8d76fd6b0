"""Presets: names, sizes of the paper's model on the meta device (no allocation)."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.presets import PRESETS


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as error:
        PixtokConfig.from_preset("huge")
    for name in ("tiny", "base", "large", "pixelllm-xl"):
        assert name in str(error.value)


def test_overrides_merge_into_sub_configs() -> None:
    config = PixtokConfig.from_preset("tiny", text_config={"num_layers": 3})
    assert config.text_config.num_layers == 3
    assert config.text_config.d_model == PRESETS["tiny"]["text_config"]["d_model"]
    # the preset table itself is not mutated by overrides
    assert "num_layers" not in PRESETS["tiny"] or PRESETS["tiny"]["text_config"]["num_layers"] == 2


@pytest.mark.parametrize("name", ["tiny", "base", "large", "pixelllm-xl"])
def test_every_preset_builds_a_consistent_config(name: str) -> None:
    config = PixtokConfig.from_preset(name)
    assert config.image_size % config.vision_config.patch_size == 0
    assert config.eva_image_size % config.eva_config.patch_size == 0
    assert config.mask_decoder_config.hidden_size == config.vision_config.output_channels


def test_pixelllm_xl_sizes_on_the_meta_device() -> None:
    config = PixtokConfig.from_preset("pixelllm-xl")
    with torch.device("meta"):
        model = PixtokForConditionalGeneration(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = model.parameter_counts()
    # SAM ViT-H image encoder ~0.63 B, EVA02-L ~0.30 B, Flan-T5-XL ~2.85 B
    assert counts["sam"] == pytest.approx(0.637e9, rel=0.02)
    assert counts["eva02"] == pytest.approx(0.304e9, rel=0.02)
    # transformers >= 5 ties T5's LM head to its embedding, so the T5 holds one vocabulary matrix
    # (2.79 B); the released checkpoint, with its own head, is 2.85 B.
    assert counts["text"] == pytest.approx(2.85e9, rel=0.03)
    assert counts["lora"] == pytest.approx(
        2 * 32 * 2048 * (24 * 2 + 24 * 4), rel=1e-6
    )  # q, v; enc self, dec self+cross
    assert counts["trainable"] / counts["total"] < 0.02  # LoRA + extractor + heads + added-token rows
    frozen_text = [
        n for n, p in model.model.text_model.named_parameters() if p.requires_grad and "lora_" not in n
    ]
    assert frozen_text == []
    assert not any(p.requires_grad for p in model.model.towers.parameters())
