"""save_pretrained / from_pretrained round-trip exactly (safetensors), with and without LoRA."""

from __future__ import annotations

import pytest
import torch
from tests.model.test_modeling import full_batch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration, PixtokModel

torch.set_num_threads(1)


def perturbed(config: PixtokConfig) -> PixtokForConditionalGeneration:
    """A tiny model with every parameter moved off its init (so a fresh init cannot pass for a load)."""
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


@pytest.mark.parametrize("lora_r", [4, 0])
def test_round_trip_is_exact(tmp_path, lora_r: int) -> None:
    model = perturbed(PixtokConfig.from_preset("tiny", lora_r=lora_r))
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path).eval()
    own, back = model.state_dict(), loaded.state_dict()
    assert set(own) == set(back)
    for key in own:
        assert torch.equal(own[key], back[key]), key
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    batch = full_batch(model.config)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    for name in ("loss", "logits", "points", "pred_boxes", "pred_masks", "proposal_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_backbone_loads_from_the_full_model_folder(tmp_path) -> None:
    model = perturbed(PixtokConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path)
    backbone = PixtokModel.from_pretrained(tmp_path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, model.model.state_dict()[key]), key
