"""The image towers: shapes, prompt semantics, bad input, SDPA/eager, bf16, gradient checkpointing,
and the parameter counts of the real sizes (built on the meta device)."""

import warnings

import pytest
import torch
from transformers import PretrainedConfig, PreTrainedModel

from pixtok.model.configuration_towers import (
    CLIP_MEAN,
    PixtokEva02Config,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from pixtok.model.eva02 import Eva02Encoder
from pixtok.model.sam import SamImageEncoder, SamMaskDecoder, SamPromptEncoder
from pixtok.model.towers import DualTower, VisionFeatures

# Reference sizes, checked below against the published parameter counts. presets.py owns the canonical copy.
SAM_VIT_H = dict(
    hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]
)
SAM_VIT_L = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]
)
SAM_VIT_B = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]
)
SAM_COMMON = dict(
    image_size=1024, patch_size=16, window_size=14, output_channels=256, num_pos_feats=128, mlp_ratio=4.0
)
EVA02_L_448 = dict(
    img_size=448, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4 * 2 / 3, swiglu_mlp=True,
    scale_mlp=True, use_rot_pos_emb=True, qkv_fused=False, ref_feat_shape=[16, 16], timm_name="eva02_large_patch14_448",
)  # fmt: skip
EVA02_B_448 = dict(EVA02_L_448, embed_dim=768, depth=12, num_heads=12, timm_name="eva02_base_patch14_448")

S, E, C = 64, 56, 32  # tiny: SAM 64 px / 16 -> 4x4 grid, EVA 56 px / 14 -> 4x4 grid


def tiny_sam_configs(attn: str | None = None):
    vision = SamVisionConfig(
        hidden_size=C, num_hidden_layers=2, num_attention_heads=2, image_size=S, patch_size=16, window_size=2,
        global_attn_indexes=[1], output_channels=C, num_pos_feats=C // 2, mlp_dim=2 * C,
    )  # fmt: skip
    if attn is not None:
        vision._attn_implementation = attn
    prompt = SamPromptEncoderConfig(hidden_size=C, image_size=S, patch_size=16, mask_input_channels=8)
    decoder = SamMaskDecoderConfig(
        hidden_size=C, mlp_dim=2 * C, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=C
    )
    return vision, prompt, decoder


def tiny_eva_config(**overrides) -> PixtokEva02Config:
    kwargs = dict(
        img_size=E, patch_size=14, embed_dim=24, depth=2, num_heads=2, ref_feat_shape=4, timm_name=None
    )
    kwargs.update(overrides)
    return PixtokEva02Config(**kwargs)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tower() -> DualTower:
    torch.manual_seed(0)
    return DualTower(tiny_sam_configs()[0], tiny_eva_config()).eval()


def test_dual_tower_shapes_and_concat_order(tower):
    pixels, eva_pixels = torch.randn(2, 3, S, S), torch.randn(2, 3, E, E)
    with torch.no_grad():
        out = tower(pixels, eva_pixels)
        sam_alone = tower.sam(pixels)
        eva_alone = tower.eva(eva_pixels)
    assert isinstance(out, VisionFeatures)
    assert out.sam.shape == (2, C, 4, 4)
    assert tower.fused_channels == C + 24
    assert out.fused.shape == (2, C + 24, 4, 4)
    # SAM first, EVA second; grids coincide here so no resampling happens
    torch.testing.assert_close(out.fused[:, :C], sam_alone)
    torch.testing.assert_close(out.fused[:, C:], eva_alone)


def test_eva_grid_is_resized_bilinearly_onto_sam_grid():
    torch.manual_seed(0)
    tower = DualTower(tiny_sam_configs()[0], tiny_eva_config(img_size=28, ref_feat_shape=2)).eval()  # EVA 2x2
    eva_pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        out = tower(torch.randn(1, 3, S, S), eva_pixels)
        eva = tower.eva(eva_pixels)
    assert eva.shape == (1, 24, 2, 2)
    expected = torch.nn.functional.interpolate(eva, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.fused[:, C:], expected)
    # corners of a 2->4 bilinear resize with aligned cell centres are the source corners
    torch.testing.assert_close(out.fused[0, C:, 0, 0], eva[0, :, 0, 0])


def test_eva_features_are_per_token_final_norm_of_patch_tokens():
    torch.manual_seed(0)
    encoder = Eva02Encoder(tiny_eva_config()).eval()
    x = torch.randn(1, 3, E, E)
    with torch.no_grad():
        tokens = encoder.eva.forward_features(x)
        got = encoder(x)
    patch = encoder.eva.fc_norm(tokens[:, 1:])  # drop the class token
    assert not isinstance(
        encoder.eva.fc_norm, torch.nn.Identity
    )  # avg-pool layout keeps its final norm there
    # token (row r, column c) is patch r * g + c
    torch.testing.assert_close(got[0, :, 1, 2], patch[0, 1 * 4 + 2])
    # the LayerNorm really is applied: each position is zero-mean over channels (affine init 1/0)
    assert got.mean(dim=1).abs().max() < 1e-5


def test_eva_config_round_trip(tmp_path):
    config = tiny_eva_config(timm_name="eva02_tiny_patch14_224")
    config.save_pretrained(tmp_path)
    loaded = PixtokEva02Config.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.timm_kwargs() == config.timm_kwargs()
    assert loaded.ref_feat_shape == [4, 4] and loaded.timm_kwargs()["ref_feat_shape"] == (4, 4)
    assert PixtokEva02Config().image_mean == list(CLIP_MEAN)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PixtokEva02Config(img_size=50, patch_size=14)


def test_prompt_encoder_box_and_point_semantics():
    torch.manual_seed(0)
    vision, prompt, _ = tiny_sam_configs()
    encoder = SamPromptEncoder(prompt, vision)
    hf = encoder.prompt_encoder
    coords = torch.tensor([[[0.25, 0.5], [0.75, 1.0]], [[0.5, 0.5], [0.9, 0.1]]])
    labels = torch.tensor([[2, 3], [1, -1]])
    sparse, dense = encoder(coords, labels)
    assert sparse.shape == (2, 2, C) and dense.shape == (2, C, 4, 4)
    # a box corner = positional encoding of the corner's pixel centre + the corner embedding
    px = coords[0, 0] * S + 0.5
    pe = hf.shared_embedding(px.view(1, 1, 1, 2), (S, S)).view(C)
    torch.testing.assert_close(sparse[0, 0], pe + hf.point_embed[2].weight[0], atol=1e-4, rtol=1e-4)
    # padding ignores its coordinates entirely
    torch.testing.assert_close(sparse[1, 1], hf.not_a_point_embed.weight[0])
    # agrees with transformers' own box embedding (pixel coordinates of the S x S frame)
    hf_box = hf._embed_boxes(coords[0].reshape(1, 1, 4) * S)
    torch.testing.assert_close(sparse[0], hf_box[0, 0], atol=1e-4, rtol=1e-4)  # sin/cos of ~2*pi*16*x
    torch.testing.assert_close(dense, hf.no_mask_embed.weight.view(1, C, 1, 1).expand(2, C, 4, 4))


def test_image_pe_matches_transformers_sam_model_wiring():
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    vision, prompt, decoder = tiny_sam_configs()
    model = SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    )
    encoder = SamPromptEncoder(prompt, vision)
    encoder.prompt_encoder.load_state_dict(model.prompt_encoder.state_dict())
    model.shared_image_embedding.load_state_dict(model.prompt_encoder.shared_embedding.state_dict())
    torch.testing.assert_close(encoder.image_pe(), model.get_image_wide_positional_embeddings())
    # one module: changing the shared table moves both the image PE and the prompt embeddings
    before = encoder.image_pe().clone()
    with torch.no_grad():
        encoder.prompt_encoder.shared_embedding.positional_embedding.mul_(2)
    assert not torch.allclose(before, encoder.image_pe())


def test_mask_decoder_single_mask_and_gradients():
    torch.manual_seed(0)
    vision, prompt, decoder_config = tiny_sam_configs()
    encoder, decoder = SamPromptEncoder(prompt, vision), SamMaskDecoder(decoder_config)
    embeddings = torch.randn(3, C, 4, 4, requires_grad=True)
    sparse, dense = encoder(torch.rand(3, 2, 2), torch.tensor([[2, 3]] * 3))
    masks, iou = decoder(embeddings, encoder.image_pe(), sparse, dense)
    assert masks.shape == (3, 1, 16, 16) and iou.shape == (3, 1)
    (masks.sum() + iou.sum()).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert encoder.prompt_encoder.point_embed[2].weight.grad.abs().sum() > 0
    # each image's mask depends only on its own prompt
    with torch.no_grad():
        one, _ = decoder(embeddings[:1], encoder.image_pe(), sparse[:1], dense[:1])
    torch.testing.assert_close(one, masks[:1].detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t(torch.randn(1, 4, S, S), torch.randn(1, 3, E, E)), r"\(batch, 3, 64, 64\).*4 channels"),
        (
            lambda t: t(torch.randn(1, 3, S, 48), torch.randn(1, 3, E, E)),
            r"\(batch, 3, 64, 64\).*spatial size",
        ),
        (
            lambda t: t(torch.randn(1, 3, S, S), torch.randn(1, 1, E, E)),
            r"EVA02.*\(batch, 3, 56, 56\).*1 channels",
        ),
        (
            lambda t: t(torch.randn(1, 3, S, S), torch.randn(1, 3, 64, 64)),
            r"\(batch, 3, 56, 56\).*spatial size",
        ),
        (
            lambda t: t(torch.zeros(1, 3, S, S, dtype=torch.uint8), torch.randn(1, 3, E, E)),
            r"floating dtype.*uint8",
        ),
        (lambda t: t(torch.randn(3, S, S), torch.randn(1, 3, E, E)), r"\(batch, 3, 64, 64\).*3-d tensor"),
        (lambda t: t(torch.randn(2, 3, S, S), torch.randn(1, 3, E, E)), r"batch sizes 2 and 1 differ"),
    ],
)
def test_bad_images_name_the_expected_shape(tower, call, match):
    with pytest.raises(ValueError, match=match):
        call(tower)


def test_bad_prompts_and_mismatched_configs_raise():
    vision, prompt, decoder_config = tiny_sam_configs()
    encoder = SamPromptEncoder(prompt, vision)
    with pytest.raises(ValueError, match=r"\(batch, num_points, 2\)"):
        encoder(torch.rand(2, 2, 3), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 2\)"):
        encoder(torch.rand(2, 2, 2), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in"):
        encoder(torch.rand(1, 2, 2), torch.tensor([[2, 4]]))
    with pytest.raises(ValueError, match=r"model space \[0, 1\] .*; got values in \[0.1, 1.5\]"):
        encoder(torch.tensor([[[0.1, 0.2], [1.5, 0.9]]]), torch.tensor([[2, 3]]))
    encoder(torch.tensor([[[0.1, 0.2], [7.0, -3.0]]]), torch.tensor([[1, -1]]))  # padding coords are ignored
    with pytest.raises(ValueError, match="integer"):
        encoder(torch.rand(1, 2, 2), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="num_pos_feats"):
        SamPromptEncoder(prompt, SamVisionConfig(**{**vision.to_dict(), "num_pos_feats": 8}))
    with pytest.raises(ValueError, match="image_size/patch_size"):
        SamPromptEncoder(SamPromptEncoderConfig(hidden_size=C, image_size=128, patch_size=16), vision)
    decoder = SamMaskDecoder(decoder_config)
    with pytest.raises(ValueError, match=r"image_embeddings must have shape \(batch, 32, g, g\)"):
        decoder(torch.randn(1, 16, 4, 4), encoder.image_pe(), torch.randn(1, 2, C), torch.randn(1, C, 4, 4))


def test_sdpa_and_eager_agree():
    torch.manual_seed(0)
    eager = SamImageEncoder(tiny_sam_configs("eager")[0]).eval()
    sdpa = SamImageEncoder(tiny_sam_configs("sdpa")[0]).eval()
    assert type(sdpa.vision_encoder.layers[0].attn).__name__ == "SamRelPosAttention"  # the fused form
    assert type(eager.vision_encoder.layers[0].attn).__name__ == "SamVisionAttention"
    with torch.no_grad():  # non-zero relative positions so the attention bias path is exercised
        for p in eager.parameters():
            p.normal_(0, 0.2)
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x), eager(x), atol=1e-5, rtol=1e-4)
    # default (unset) is the fused SDPA form; fused_rel_pos=False keeps transformers' SDPA module
    assert type(SamImageEncoder(tiny_sam_configs()[0]).vision_encoder.layers[0].attn).__name__ == (
        "SamRelPosAttention"
    )
    plain = SamImageEncoder(tiny_sam_configs("sdpa")[0], fused_rel_pos=False)
    assert type(plain.vision_encoder.layers[0].attn).__name__ == "SamVisionSdpaAttention"


def test_bf16_towers_run_and_track_fp32(tower):
    torch.manual_seed(1)
    pixels, eva_pixels = torch.randn(1, 3, S, S), torch.randn(1, 3, E, E)
    with torch.no_grad():
        ref = tower(pixels, eva_pixels).fused
        low = DualTower(tower.sam.config, tower.eva.config)
        low.load_state_dict(tower.state_dict())
        low = low.to(torch.bfloat16).eval()
        out = low(pixels, eva_pixels)  # fp32 inputs are cast to the towers' dtype
    assert out.fused.dtype == torch.bfloat16 and out.sam.dtype == torch.bfloat16
    assert torch.isfinite(out.fused.float()).all()
    assert (out.fused.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


class _Holder(PreTrainedModel):
    config_class = PretrainedConfig
    supports_gradient_checkpointing = True

    def __init__(self, config: PretrainedConfig, tower: DualTower) -> None:
        super().__init__(config)
        self.tower = tower

    def forward(self, pixel_values, eva_pixel_values):
        return self.tower(pixel_values, eva_pixel_values).fused


def test_gradient_checkpointing_toggle_reaches_both_towers():
    torch.manual_seed(0)
    holder = _Holder(PretrainedConfig(), DualTower(tiny_sam_configs()[0], tiny_eva_config())).train()
    calls = {"sam": 0, "eva": 0}

    def counting(name, module):  # forward hooks do not fire during recomputation; patch forward itself
        inner = module.forward

        def forward(*args, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)

        module.forward = forward

    counting("sam", holder.tower.sam.vision_encoder.layers[0].mlp)
    counting("eva", holder.tower.eva.eva.blocks[0].mlp)
    pixels = torch.randn(1, 3, S, S, requires_grad=True)
    eva_pixels = torch.randn(1, 3, E, E, requires_grad=True)

    holder(pixels, eva_pixels).square().mean().backward()
    assert calls == {"sam": 1, "eva": 1}
    reference = holder.tower.sam.vision_encoder.layers[0].mlp.lin1.weight.grad.clone()
    holder.zero_grad()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        holder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert holder.tower.eva.gradient_checkpointing and holder.tower.eva.eva.grad_checkpointing
    holder(pixels, eva_pixels).square().mean().backward()
    assert calls == {"sam": 3, "eva": 3}  # recomputed in the backward pass
    torch.testing.assert_close(holder.tower.sam.vision_encoder.layers[0].mlp.lin1.weight.grad, reference)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        holder.gradient_checkpointing_disable()
    assert not holder.tower.eva.eva.grad_checkpointing


@pytest.mark.parametrize(
    "sizes, expected, tolerance",
    [(SAM_VIT_H, 0.632e9, 0.02), (SAM_VIT_L, 0.308e9, 0.02), (SAM_VIT_B, 0.0897e9, 0.02)],
)
def test_sam_image_encoder_parameter_counts_on_meta(sizes, expected, tolerance):
    with torch.device("meta"):
        encoder = SamImageEncoder(SamVisionConfig(**SAM_COMMON, **sizes))
    assert next(encoder.parameters()).device.type == "meta"
    assert abs(count(encoder) - expected) / expected < tolerance, count(encoder)


@pytest.mark.parametrize("sizes, expected", [(EVA02_L_448, 0.304e9), (EVA02_B_448, 0.0863e9)])
def test_eva02_parameter_counts_on_meta_match_timm(sizes, expected):
    import timm

    with torch.device("meta"):
        encoder = Eva02Encoder(PixtokEva02Config(**sizes))
        reference = timm.create_model(sizes["timm_name"], pretrained=False, num_classes=0)
    assert abs(count(encoder) - expected) / expected < 0.02, count(encoder)
    ours = {k.removeprefix("eva."): tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_eva_rotary_tables_are_recomputed_after_meta_loading():
    torch.manual_seed(0)
    reference = Eva02Encoder(tiny_eva_config()).eval()
    with torch.device("meta"):
        loaded = Eva02Encoder(tiny_eva_config())
    # what from_pretrained does: materialize, copy the checkpoint (persistent keys only), garbage elsewhere
    loaded = loaded.to_empty(device="cpu")
    loaded.load_state_dict(reference.state_dict())
    with torch.no_grad():
        loaded.eva.rope.pos_embed.fill_(float("nan"))
    x = torch.randn(1, 3, E, E)
    with torch.no_grad():
        assert torch.isnan(loaded(x)).all()
        loaded.reset_non_persistent_buffers()
        torch.testing.assert_close(loaded(x), reference(x), atol=0, rtol=0)
    assert "eva.rope.pos_embed" not in loaded.state_dict()


def test_bf16_prompt_encoding_keeps_pixel_precision():
    """Fourier features are computed in fp32: a bf16 encoder stays close to fp32 at 1024 px (the naive
    bf16 computation — coordinates rounded to bf16 before the encoding — is off by ~0.18 here)."""
    import copy

    torch.manual_seed(0)
    encoder = SamPromptEncoder(SamPromptEncoderConfig(), SamVisionConfig(**SAM_COMMON, **SAM_VIT_B))
    with torch.no_grad():
        encoder.prompt_encoder.shared_embedding.positional_embedding.normal_()  # segment-anything's scale
    coords, labels = torch.rand(64, 2, 2), torch.tensor([[2, 3]] * 64)
    reference, _ = encoder(coords, labels)
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    sparse, _ = low(coords, labels)
    assert sparse.dtype == torch.bfloat16 and low.image_pe().dtype == torch.bfloat16
    assert (sparse.float() - reference).abs().max() < 0.08
    assert (low.image_pe().float() - encoder.image_pe()).abs().max() < 0.08


def test_fresh_pixtok_model_has_a_live_sam_branch():
    """SamVisionConfig's own default init (std 1e-10) would make a from-scratch SAM tower output ~0."""
    import torch

    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    config = PixtokConfig.from_preset("tiny")
    assert config.vision_config.initializer_range == 0.02
    model = PixtokForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    with torch.no_grad():
        features = model.model.towers.sam(torch.randn(2, 3, size, size))
    assert features.std() > 1e-2


def test_fresh_panoptic_model_has_a_live_sam_branch():
    import torch

    from pixtok.model.configuration_pixtok_panoptic import PixtokPanopticConfig
    from pixtok.model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation

    config = PixtokPanopticConfig.from_preset("tiny")
    model = PixtokForPanopticSegmentation(config).eval()
    size = config.vision_config.image_size
    with torch.no_grad():
        assert model.towers.sam(torch.randn(2, 3, size, size)).std() > 1e-2


def test_pad_mlp_hidden_is_exact_with_the_hidden_layernorm():
    """EVA02's SwiGLU with ``scale_mlp``: the hidden LayerNorm must ignore the padded channels (a plain
    LayerNorm over the padded width changes the output, checked below)."""
    from timm.layers.mlp import SwiGLU

    from pixtok.model.eva02 import PaddedSwiGLU, pad_mlp_hidden

    torch.manual_seed(0)
    encoder = Eva02Encoder(tiny_eva_config(mlp_ratio=2.5)).eval()  # hidden 60, like EVA02-L's 2730 % 8 != 0
    mlps = [block.mlp for block in encoder.eva.blocks]
    assert all(isinstance(m, SwiGLU) and m.fc2.in_features == 60 for m in mlps)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0.0, 0.3)
        for m in mlps:
            m.fc1_x.bias.add_(1.0)  # hidden activations with a clear non-zero mean
            m.norm.weight.uniform_(0.5, 1.5)
            m.norm.bias.normal_()
    x = torch.randn(2, 3, E, E)
    with torch.no_grad():
        reference = encoder(x)
        assert pad_mlp_hidden(encoder) == 2
        got = encoder(x)
    assert all(isinstance(b.mlp, PaddedSwiGLU) and b.mlp.fc2.in_features == 64 for b in encoder.eva.blocks)
    assert all(b.mlp.fc1_g.out_features % 8 == 0 for b in encoder.eva.blocks)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert pad_mlp_hidden(encoder) == 0
    # the bug this guards against: statistics over the 64 padded channels
    padded = encoder.eva.blocks[0].mlp
    naive = torch.nn.LayerNorm(64, eps=padded.norm.eps)
    with torch.no_grad():
        naive.weight.copy_(padded.norm.weight)
        naive.bias.copy_(padded.norm.bias)
        h = torch.randn(5, 60) + 1.0
        h64 = torch.nn.functional.pad(h, (0, 4))
        exact = torch.nn.functional.layer_norm(
            h, (60,), mlps[0].norm.weight, mlps[0].norm.bias, mlps[0].norm.eps
        )
        torch.testing.assert_close(padded.norm(h64)[:, :60], exact, rtol=1e-5, atol=1e-5)
        assert (padded.norm(h64)[:, 60:] == 0).all()
        assert (naive(h64)[:, :60] - exact).abs().max() > 1e-2


def test_pad_mlp_hidden_without_hidden_norm_and_aligned_widths():
    from timm.layers.mlp import SwiGLU

    from pixtok.model.eva02 import PaddedSwiGLU, pad_mlp_hidden

    torch.manual_seed(0)
    model = torch.nn.Sequential(SwiGLU(12, 30), SwiGLU(12, 32, 12)).eval()  # norm Identity; 32 aligned
    x = torch.randn(3, 7, 12)
    with torch.no_grad():
        reference = model(x)
        assert pad_mlp_hidden(model) == 1
        got = model(x)
    assert isinstance(model[0], PaddedSwiGLU) and model[0].fc2.in_features == 32
    assert isinstance(model[1], SwiGLU)
    assert (model[0].fc1_g.weight[30:] == 0).all() and (model[0].fc2.weight[:, 30:] == 0).all()
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
