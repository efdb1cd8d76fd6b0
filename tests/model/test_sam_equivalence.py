"""pixtok's SAM parts reproduce segment-anything's own modules (and timm's Eva) given the same weights.

segment-anything's ImageEncoderViT / PromptEncoder / MaskDecoder are built at a tiny size with random
weights (every zero-initialised tensor perturbed so that it matters), saved as an official-style
``.pth`` and read back through pixtok's converter.
"""

from functools import partial

import pytest
import timm
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pixtok.model.configuration_towers import (
    PixtokEva02Config,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from pixtok.model.eva02 import Eva02Encoder, load_timm_eva02
from pixtok.model.sam import (
    SamImageEncoder,
    SamMaskDecoder,
    SamPromptEncoder,
    load_segment_anything_checkpoint,
    load_state_dict_checked,
)

S, PATCH, C, WIDTH = 64, 16, 32, 48  # 4 x 4 grid, 64 px input, prompt width 32, ViT width 48
G = S // PATCH
ATOL = 1e-5


def build_segment_anything() -> Sam:
    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=S, patch_size=PATCH, embed_dim=WIDTH, depth=3, num_heads=3, mlp_ratio=4.0, out_chans=C,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=2,
            global_attn_indexes=(2,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=C, image_embedding_size=(G, G), input_image_size=(S, S), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=64, num_heads=2),
            transformer_dim=C, iou_head_depth=3, iou_head_hidden_dim=24,
        ),
    ).eval()  # fmt: skip
    with torch.no_grad():  # pos_embed, rel_pos and LayerNorm affines start at 0/1: make them matter
        for name, tensor in sam.named_parameters():
            if "pos" in name or "norm" in name or name.endswith("bias"):
                tensor.add_(0.1 * torch.randn_like(tensor))
    return sam


def pixtok_configs():
    vision = SamVisionConfig(
        hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=3, image_size=S, patch_size=PATCH, window_size=2,
        global_attn_indexes=[2], output_channels=C, num_pos_feats=C // 2, mlp_ratio=4.0,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=C, image_size=S, patch_size=PATCH, mask_input_channels=8)
    decoder = SamMaskDecoderConfig(
        hidden_size=C,
        mlp_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    )
    return vision, prompt, decoder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    reference = build_segment_anything()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    parts = load_segment_anything_checkpoint(path)
    vision, prompt, decoder = pixtok_configs()
    ours = {
        "image_encoder": SamImageEncoder(vision).eval(),
        "prompt_encoder": SamPromptEncoder(prompt, vision).eval(),
        "mask_decoder": SamMaskDecoder(decoder).eval(),
    }
    for name, module in ours.items():
        load_state_dict_checked(module, parts[name], f"{path.name} [{name}]")
    return reference, ours


def test_image_encoder_matches_segment_anything(pair):
    reference, ours = pair
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, S, S)
    with torch.no_grad():
        expected = reference.image_encoder(pixels)
        got = ours["image_encoder"](pixels)
    assert got.shape == expected.shape == (2, C, G, G)
    assert expected.abs().mean() > 0.1  # a real signal, not a constant
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)


def test_dense_positional_encoding_matches_segment_anything(pair):
    reference, ours = pair
    torch.testing.assert_close(ours["prompt_encoder"].image_pe(), reference.prompt_encoder.get_dense_pe())


@pytest.mark.parametrize(
    "box",
    [[8.0, 12.0, 40.0, 52.0], [0.0, 0.0, 63.0, 63.0]],
)
def test_box_prompt_mask_matches_segment_anything(pair, box):
    reference, ours = pair
    torch.manual_seed(2)
    embeddings = torch.randn(1, C, G, G)
    box_px = torch.tensor([box])  # (1, 4) xyxy pixels of the S x S input
    with torch.no_grad():
        sparse_ref, dense_ref = reference.prompt_encoder(points=None, boxes=box_px, masks=None)
        masks_ref, iou_ref = reference.mask_decoder(
            image_embeddings=embeddings,
            image_pe=reference.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_ref,
            dense_prompt_embeddings=dense_ref,
            multimask_output=False,
        )
        coords = box_px.view(1, 2, 2) / S  # model space: normalized to the padded square
        sparse, dense = ours["prompt_encoder"](coords, torch.tensor([[2, 3]]))
        masks, iou = ours["mask_decoder"](embeddings, ours["prompt_encoder"].image_pe(), sparse, dense)
    torch.testing.assert_close(sparse, sparse_ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(dense, dense_ref)
    assert masks.shape == masks_ref.shape == (1, 1, 4 * G, 4 * G)
    assert masks_ref.std() > 0.01
    torch.testing.assert_close(masks, masks_ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(iou, iou_ref, atol=ATOL, rtol=ATOL)


def test_point_prompt_and_batch_match_segment_anything(pair):
    """Two images in one batch, one box and one (padded) point: each equals segment-anything run alone."""
    reference, ours = pair
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, S, S)
    point_px = torch.tensor([[[20.0, 33.0]]])
    box_px = torch.tensor([[4.0, 10.0, 30.0, 60.0]])
    with torch.no_grad():
        embeddings_ref = reference.image_encoder(pixels)
        pe_ref = reference.prompt_encoder.get_dense_pe()
        expected = []
        for i, (points, boxes) in enumerate([(None, box_px), ((point_px, torch.tensor([[1]])), None)]):
            sparse_ref, dense_ref = reference.prompt_encoder(points=points, boxes=boxes, masks=None)
            expected.append(
                reference.mask_decoder(embeddings_ref[i : i + 1], pe_ref, sparse_ref, dense_ref, False)
            )

        embeddings = ours["image_encoder"](pixels)
        coords = torch.stack([box_px.view(2, 2), torch.cat([point_px[0], torch.zeros(1, 2)])]) / S
        labels = torch.tensor(
            [[2, 3], [1, -1]]
        )  # box corners; point + padding (segment-anything pads points so)
        sparse, dense = ours["prompt_encoder"](coords, labels)
        masks, iou = ours["mask_decoder"](embeddings, ours["prompt_encoder"].image_pe(), sparse, dense)
    for i, (masks_ref, iou_ref) in enumerate(expected):
        torch.testing.assert_close(masks[i : i + 1], masks_ref, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(iou[i : i + 1], iou_ref, atol=ATOL, rtol=ATOL)
    assert not torch.allclose(masks[0], masks[1], atol=1e-3)  # the prompt matters


def test_eva02_matches_timm_eva_from_same_kwargs(tmp_path):
    config = PixtokEva02Config(
        img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, ref_feat_shape=4
    )
    torch.manual_seed(4)
    reference = timm.models.eva.Eva(**config.timm_kwargs()).eval()
    with torch.no_grad():
        for tensor in reference.parameters():
            tensor.add_(0.05 * torch.randn_like(tensor))
    path = tmp_path / "eva02_tiny.pth"
    torch.save(reference.state_dict(), path)
    ours = Eva02Encoder(config).eval()
    load_state_dict_checked(ours, load_timm_eva02(path), path.name)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens = reference.forward_features(pixels)[:, reference.num_prefix_tokens :]
        expected = reference.fc_norm(tokens).transpose(1, 2).reshape(2, 32, 4, 4)
        got = ours(pixels)
    # the patch embedding is a matrix product here (PatchConv2d), a convolution in timm: the same sums
    # in another order, so equal to fp32 rounding rather than bit for bit
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("narrow_value", [False, True])
@pytest.mark.parametrize("window", [0, 3])
def test_fused_rel_pos_attention_matches_the_bias_tensor_form(window, narrow_value):
    """SamRelPosAttention (relative-position terms as extra query/key columns) computes the same
    attention as transformers' SamVisionAttention (an explicit (B, heads, N, N) bias), with the
    value padded to the widened width or left at its own."""
    from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionEncoder

    from pixtok.model.sam import SamRelPosAttention

    torch.manual_seed(0)
    config = SamVisionConfig(hidden_size=64, num_attention_heads=4, image_size=128, patch_size=16)
    reference = SamVisionAttention(config, window)
    with torch.no_grad():  # the terms start at zero: make them matter
        reference.rel_pos_h.normal_()
        reference.rel_pos_w.normal_()
    fused = SamRelPosAttention(config, window)
    fused.load_state_dict(reference.state_dict())
    fused.narrow_value = narrow_value
    side = 3 if window else 8
    x = torch.randn(2, side, side, 64)
    torch.testing.assert_close(fused(x)[0], reference(x)[0], atol=2e-6, rtol=2e-6)
    # the encoder uses it by default, under the stock parameter names (checkpoints load 1:1)
    encoder = SamImageEncoder(config)
    assert all(isinstance(layer.attn, SamRelPosAttention) for layer in encoder.vision_encoder.layers)
    assert set(encoder.vision_encoder.state_dict()) == set(SamVisionEncoder(config).state_dict())
    plain = SamImageEncoder(config, fused_rel_pos=False)
    assert not any(isinstance(layer.attn, SamRelPosAttention) for layer in plain.vision_encoder.layers)
    # the value at its own width by default; the encoder's switch reaches every layer, and only its own
    padded = SamImageEncoder(config, narrow_value=False)
    assert not any(layer.attn.narrow_value for layer in padded.vision_encoder.layers)
    assert all(layer.attn.narrow_value for layer in encoder.vision_encoder.layers)


def test_image_pe_is_kept_while_the_table_is_frozen_and_follows_its_writes() -> None:
    """The grid encoding is computed once while the table does not train, and recomputed when the
    table is written in place (``load_state_dict``) or when it trains."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    torch.manual_seed(0)
    encoder = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny")).model.prompt_encoder
    table = encoder.prompt_encoder.shared_embedding.positional_embedding
    table.requires_grad_(False)
    first = encoder.image_pe()
    assert encoder.image_pe() is first  # kept
    torch.testing.assert_close(first, encoder._grid_encoding(table))
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    key = next(k for k in state if k.endswith("shared_embedding.positional_embedding"))
    state[key] = state[key] * 2
    encoder.load_state_dict(state)
    again = encoder.image_pe()
    assert not torch.allclose(again, first)
    torch.testing.assert_close(again, encoder._grid_encoding(table))
    table.requires_grad_(True)  # a trained table: a fresh encoding with its graph every call
    trained = encoder.image_pe()
    assert trained.requires_grad and trained is not encoder.image_pe()
