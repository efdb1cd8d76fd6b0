"""Config and model of the Pix2Seq-D panoptic sibling (tiny preset, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixtok.model.bit_diffusion import PanopticBitCodec
from pixtok.model.configuration_pixtok_panoptic import PixtokPanopticConfig
from pixtok.model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation, PixtokPanopticGenerateOutput
from pixtok.model.panoptic_postprocess import panoptic_maps_from_masks, post_process_panoptic_segmentation


@pytest.fixture(scope="module")
def config() -> PixtokPanopticConfig:
    return PixtokPanopticConfig.from_preset("tiny")


def _inputs(config: PixtokPanopticConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s, e = config.vision_config.image_size, config.eva_config.img_size
    return {
        "pixel_values": torch.randn(batch, 3, s, s, generator=gen),
        "eva_pixel_values": torch.randn(batch, 3, e, e, generator=gen),
    }


def _targets(config: PixtokPanopticConfig, batch: int = 2) -> torch.Tensor:
    """Packed ids of simple scenes: background stuff + one or two square things."""
    codec = PanopticBitCodec(config.class_bits, config.instance_bits, config.bit_scale)
    size = config.mask_size
    ids = []
    for b in range(batch):
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        masks[0] = True
        masks[0, 4 + b : 14 + b, 4:14] = False
        masks[0, 18:28, 16 - 4 * b : 28 - 4 * b] = False
        masks[1, 4 + b : 14 + b, 4:14] = True
        masks[2, 18:28, 16 - 4 * b : 28 - 4 * b] = True
        cls, ins, rep = panoptic_maps_from_masks(
            masks, [2, 0, 1], config.thing_label_ids, codec.max_instance_id
        )
        assert rep.num_problems == 0
        ids.append(codec.pack(cls, ins))
    return torch.stack(ids)


# --- config --------------------------------------------------------------------------------------


def test_config_presets_and_round_trip(config: PixtokPanopticConfig, tmp_path: Path) -> None:
    assert config.model_type == "pixtok_panoptic"
    assert config.num_bits == config.class_bits + config.instance_bits == 6
    assert config.feature_grid_size == 8 and config.stuff_label_ids == [2]
    base = PixtokPanopticConfig.from_preset("base")
    assert (
        base.num_bits == 16
        and base.bit_scale == 0.1
        and base.mask_size == 512
        and base.noise_schedule == "cosine"
    )
    config.save_pretrained(tmp_path)
    again = PixtokPanopticConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert type(again.eva_config).__name__ == "PixtokEva02Config"
    assert again.decoder_config.hidden_size == config.decoder_config.hidden_size
    assert again.thing_label_ids == [0, 1] and again.id2label[2] == "background"
    assert PixtokPanopticConfig.from_preset("tiny", mask_size=64).mask_size == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_bits": 1}, "class_bits=1 holds 2"),
        ({"mask_size": 24}, "power of two"),
        ({"thing_label_ids": [7]}, "not keys of id2label"),
        ({"id2label": {0: "a", 2: "b"}}, "contiguous"),
        ({"noise_schedule": "sqrt"}, "noise_schedule"),
        ({"self_condition_rate": 1.5}, "self_condition_rate"),
    ],
)
def test_config_rejects_bad_settings(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PixtokPanopticConfig.from_preset("tiny", **overrides)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="known presets: tiny, small, base"):
        PixtokPanopticConfig.from_preset("huge")


# --- model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(config: PixtokPanopticConfig) -> PixtokForPanopticSegmentation:
    torch.manual_seed(0)
    return PixtokForPanopticSegmentation(config)


def test_train_step_frozen_towers(model: PixtokForPanopticSegmentation, config: PixtokPanopticConfig) -> None:
    model.train()
    assert not model.towers.training  # frozen towers stay in eval mode
    model.zero_grad()
    out = model(**_inputs(config), panoptic_ids=_targets(config))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert 0.3 < out.loss.item() < 3.0  # ~1 at init: squared error in units of b**2
    assert out.pred_bits.shape == (2, 6, 32, 32) and out.timesteps.shape == (2,)
    out.loss.backward()
    assert all(p.grad is None for p in model.towers.parameters())
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_trainable_towers_switch(config: PixtokPanopticConfig) -> None:
    cfg = PixtokPanopticConfig.from_preset("tiny", freeze_towers=False)
    model = PixtokForPanopticSegmentation(cfg).train()
    assert model.towers.training
    model(**_inputs(cfg), panoptic_ids=_targets(cfg)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.towers.parameters())


def test_self_conditioning_and_instance_shuffling(
    model: PixtokForPanopticSegmentation, config: PixtokPanopticConfig
) -> None:
    inputs = _inputs(config)
    features = model.get_image_features(**inputs)
    ids = _targets(config)
    fixed = {
        "pixel_values": inputs["pixel_values"],
        "image_features": features,
        "panoptic_ids": ids,
        "timesteps": torch.tensor([0.3, 0.6]),
        "noise": torch.randn(2, 6, 32, 32, generator=torch.Generator().manual_seed(3)),
    }
    model.eval()  # eval: ids not shuffled -> deterministic
    a = model(**fixed, use_self_condition=False)
    b = model(**fixed, use_self_condition=False)
    c = model(**fixed, use_self_condition=True)
    assert torch.equal(a.pred_bits, b.pred_bits)
    assert not torch.allclose(a.pred_bits, c.pred_bits)  # the decoder reads its own estimate
    model.train()  # train: instance ids drawn afresh -> the target (hence the loss) changes
    losses = {round(model(**fixed, use_self_condition=False).loss.item(), 6) for _ in range(6)}
    assert len(losses) > 1
    model.eval()


def test_bad_inputs_are_named(model: PixtokForPanopticSegmentation, config: PixtokPanopticConfig) -> None:
    inputs = _inputs(config)
    with pytest.raises(ValueError, match=r"panoptic_ids must be \(B, mask_size, mask_size\)"):
        model(**inputs, panoptic_ids=torch.zeros(2, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="eva_pixel_values"):
        model(pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="packed panoptic ids"):
        model(**inputs, panoptic_ids=torch.full((2, 32, 32), 1 << 6))


def test_generate_and_post_process(
    model: PixtokForPanopticSegmentation, config: PixtokPanopticConfig
) -> None:
    model.eval()
    inputs = _inputs(config)
    gen = model.generate(**inputs, num_steps=3, td=0.5, generator=torch.Generator().manual_seed(0))
    assert isinstance(gen, PixtokPanopticGenerateOutput)
    assert gen.class_ids.shape == gen.instance_ids.shape == gen.pixel_scores.shape == (2, 32, 32)
    assert gen.class_ids.max() <= 3 and gen.instance_ids.max() < 8  # 3 labels: values > 3 are made void
    assert (gen.instance_ids[gen.class_ids == 0] == 0).all()
    assert ((gen.pixel_scores >= 0) & (gen.pixel_scores <= 1)).all()
    again = model.generate(**inputs, num_steps=3, td=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gen.class_ids, again.class_ids)  # seeded sampling is reproducible
    res = post_process_panoptic_segmentation(gen, target_sizes=[(40, 60), (60, 40)])
    assert [r["segmentation"].shape for r in res] == [(40, 60), (60, 40)]
    for r in res:
        for s in r["segments_info"]:
            assert int((r["segmentation"] == s["id"]).sum()) == s["area"]
            assert s["isthing"] == (s["label_id"] in (0, 1))
    with pytest.raises(ValueError, match="td"):
        model.generate(**inputs, num_steps=2, td=2)


def test_save_pretrained_round_trip(
    model: PixtokForPanopticSegmentation, config: PixtokPanopticConfig, tmp_path: Path
) -> None:
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = PixtokForPanopticSegmentation.from_pretrained(tmp_path).eval()
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    inputs = _inputs(config)
    kw = {
        "timesteps": torch.tensor([0.5, 0.9]),
        "noise": torch.randn(2, 6, 32, 32),
        "use_self_condition": True,
    }
    assert torch.equal(model(**inputs, **kw).pred_bits, loaded(**inputs, **kw).pred_bits)


def test_loss_decreases_on_two_images(config: PixtokPanopticConfig) -> None:
    """A few dozen Adam steps on 2 images lower the loss at fixed (t, noise) well below its start."""
    torch.manual_seed(0)
    model = PixtokForPanopticSegmentation(config)
    inputs = _inputs(config)
    features = model.get_image_features(**inputs)  # frozen towers: cache once
    ids = _targets(config)
    probe = {
        "pixel_values": inputs["pixel_values"],
        "image_features": features,
        "panoptic_ids": ids,
        "timesteps": torch.tensor([0.2, 0.5, 0.8, 0.2, 0.5, 0.8]).view(3, 2)[0],
        "noise": torch.randn(2, 6, 32, 32, generator=torch.Generator().manual_seed(7)),
        "use_self_condition": False,
    }

    def probe_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**probe).loss.item()

    start = probe_loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(24):
        loss = model(pixel_values=inputs["pixel_values"], image_features=features, panoptic_ids=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = probe_loss()
    assert end < 0.5 * start, (start, end)


def test_bf16_model_runs_without_autocast(config: PixtokPanopticConfig) -> None:
    model = PixtokForPanopticSegmentation(config).to(torch.bfloat16)
    out = model(**_inputs(config), panoptic_ids=_targets(config))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    gen = model.generate(**_inputs(config), num_steps=2)
    assert gen.class_ids.shape == (2, 32, 32)
