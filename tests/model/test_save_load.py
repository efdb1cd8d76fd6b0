"""save_pretrained / from_pretrained round-trip exactly (safetensors), with and without LoRA."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration, PixtokModel
from tests.model.test_modeling import full_batch

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


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = perturbed(PixtokConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["model.extractor.surplus"] = torch.zeros(3)
    del weights["box_head.mlp.layers.0.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        PixtokForConditionalGeneration.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing keys (1): box_head.mlp.layers.0.weight" in message
    assert "unexpected keys (1): model.extractor.surplus" in message
    loose = PixtokForConditionalGeneration.from_pretrained(tmp_path, strict=False)
    assert torch.equal(loose.box_head.mlp.layers[1].weight, model.box_head.mlp.layers[1].weight)


# --- real parts from their own checkpoints ---------------------------------------------------------
def tiny_t5_folder(config: PixtokConfig, folder, padded_rows: int = 28):
    """A T5 checkpoint as transformers writes it, whose vocabulary is the base tokenizer's (+ padding rows)."""
    from transformers import T5Config, T5ForConditionalGeneration

    sizes = {k: v for k, v in config.text_config.to_dict().items() if k in T5Config().to_dict()}
    sizes.update(vocab_size=config.base_vocab_size + padded_rows)
    torch.manual_seed(5)
    t5 = T5ForConditionalGeneration(T5Config(**sizes))
    t5.save_pretrained(folder)
    return t5


def tiny_sam_folder(config: PixtokConfig, folder):
    from transformers import SamConfig, SamModel

    sam_config = SamConfig(
        vision_config=config.vision_config.to_dict(),
        prompt_encoder_config=config.prompt_encoder_config.to_dict(),
        mask_decoder_config=config.mask_decoder_config.to_dict(),
    )
    torch.manual_seed(6)
    sam = SamModel(sam_config).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sam.save_pretrained(folder)
    return sam


def tiny_eva_file(config: PixtokConfig, path):
    from safetensors.torch import save_file
    from timm.models.eva import Eva

    torch.manual_seed(7)
    eva = Eva(**config.eva_config.timm_kwargs()).eval()
    save_file({k: v.contiguous() for k, v in eva.state_dict().items()}, str(path))
    return eva


def test_from_pretrained_backbones_copies_each_part(tmp_path) -> None:
    config = PixtokConfig.from_preset("tiny")
    t5 = tiny_t5_folder(config, tmp_path / "t5")
    sam = tiny_sam_folder(config, tmp_path / "sam")
    eva = tiny_eva_file(config, tmp_path / "eva.safetensors")
    torch.manual_seed(0)
    fresh = PixtokForConditionalGeneration(config)
    model = PixtokForConditionalGeneration.from_pretrained_backbones(
        config, sam=tmp_path / "sam", eva02=tmp_path / "eva.safetensors", t5=tmp_path / "t5"
    ).eval()
    base = config.base_vocab_size
    text = model.model.text_model
    # T5: vocabulary rows [0, base) copied, pixtok's rows kept, the checkpoint's padding rows dropped
    assert text.get_input_embeddings().weight.shape[0] == config.text_config.vocab_size
    assert torch.equal(text.get_input_embeddings().weight[:base], t5.get_input_embeddings().weight[:base])
    source = t5.get_input_embeddings().weight[:base]
    added = text.get_input_embeddings().weight[base:]
    assert not torch.equal(added, fresh.model.text_model.get_input_embeddings().weight[base:])
    torch.testing.assert_close(
        added.mean(0), source.mean(0), rtol=0, atol=4 * source.std(0).max().item() / added.shape[0] ** 0.5
    )
    torch.testing.assert_close(added.std(), source.std(), rtol=0.1, atol=0)
    q = text.encoder.block[1].layer[0].SelfAttention.q
    assert torch.equal(q.base_layer.weight, t5.encoder.block[1].layer[0].SelfAttention.q.weight)
    assert torch.count_nonzero(q.lora_B["default"].weight) == 0  # LoRA starts as the identity
    # SAM and EVA02: the towers reproduce the source networks
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    eva_pixels = torch.randn(2, 3, config.eva_image_size, config.eva_image_size)
    with torch.no_grad():
        features = model.model.towers(pixels, eva_pixels)
        torch.testing.assert_close(features.sam, sam.get_image_embeddings(pixels), rtol=1e-5, atol=1e-5)
        tokens = eva.forward_features(eva_pixels)[:, eva.num_prefix_tokens :]
        tokens = eva.fc_norm(tokens)
        g = config.grid_size
        torch.testing.assert_close(
            features.fused[:, -config.eva_config.embed_dim :], tokens.transpose(1, 2).reshape(2, -1, g, g)
        )
    assert torch.equal(model.mask_decoder.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)
    # the freeze policy holds after loading
    assert not any(p.requires_grad for p in model.model.towers.parameters())
    assert all("lora_" in n for n, p in text.named_parameters() if p.requires_grad)


def test_backbone_checkpoints_that_do_not_fit_are_named(tmp_path) -> None:
    config = PixtokConfig.from_preset("tiny")
    other = PixtokConfig.from_preset("tiny", text_config={"d_ff": 96})
    tiny_t5_folder(other, tmp_path / "t5")
    with pytest.raises(
        ValueError, match=r"shape mismatches .*DenseReluDense.*expected \(128, 64\), got \(96, 64\)"
    ):
        PixtokForConditionalGeneration.from_pretrained_backbones(config, t5=tmp_path / "t5")
    small = PixtokConfig.from_preset("tiny", base_vocab_size=4096)
    with pytest.raises(ValueError, match="fewer than the config's base_vocab_size 4096"):
        PixtokForConditionalGeneration.from_pretrained_backbones(small, t5=tmp_path / "t5")
    wrong_sam = PixtokConfig.from_preset(
        "tiny", vision_config={"num_hidden_layers": 3, "global_attn_indexes": [2]}
    )
    tiny_sam_folder(wrong_sam, tmp_path / "sam")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): vision_encoder\.layers\.2\."):
        PixtokForConditionalGeneration.from_pretrained_backbones(config, sam=tmp_path / "sam")


def test_official_segment_anything_checkpoint_reproduces_its_outputs(tmp_path) -> None:
    """An official-format ``.pth`` (read with weights_only=True) gives SAM's own embeddings and box masks."""
    from functools import partial

    modeling = pytest.importorskip(
        "segment_anything.modeling", reason="segment-anything (a pixtok dependency) is not installed"
    )
    ImageEncoderViT, MaskDecoder, PromptEncoder = (
        modeling.ImageEncoderViT,
        modeling.MaskDecoder,
        modeling.PromptEncoder,
    )
    Sam, TwoWayTransformer = modeling.Sam, modeling.TwoWayTransformer

    config = PixtokConfig.from_preset("tiny")
    vision, decoder = config.vision_config, config.mask_decoder_config
    s, g, c = config.image_size, config.grid_size, vision.output_channels
    torch.manual_seed(8)
    reference = Sam(
        image_encoder=ImageEncoderViT(
            img_size=s, patch_size=vision.patch_size, embed_dim=vision.hidden_size, depth=vision.num_hidden_layers,
            num_heads=vision.num_attention_heads, mlp_ratio=vision.mlp_dim / vision.hidden_size, out_chans=c,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=vision.window_size, global_attn_indexes=tuple(vision.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c, image_embedding_size=(g, g), input_image_size=(s, s),
            mask_in_chans=config.prompt_encoder_config.mask_input_channels,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=c, iou_head_depth=3, iou_head_hidden_dim=decoder.iou_head_hidden_dim,
            transformer=TwoWayTransformer(
                depth=decoder.num_hidden_layers, embedding_dim=c, mlp_dim=decoder.mlp_dim,
                num_heads=decoder.num_attention_heads,
            ),
        ),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, tensor in reference.named_parameters():
            if "pos" in name or "norm" in name or name.endswith("bias"):
                tensor.add_(0.1 * torch.randn_like(tensor))
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    model = PixtokForConditionalGeneration.from_pretrained_backbones(config, sam=path).eval()
    pixels = torch.randn(2, 3, s, s)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.3, 0.05, 0.95, 0.5]])  # model space xyxy
    with torch.no_grad():
        ours = model.model.towers.sam(pixels)
        theirs = reference.image_encoder(pixels)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        masks = model.predict_masks(ours, boxes)[:, 0]  # the learnable prompt embedding starts at 0
        for i in range(2):
            sparse, dense = reference.prompt_encoder(points=None, boxes=boxes[i : i + 1] * s, masks=None)
            expected, _ = reference.mask_decoder(
                image_embeddings=theirs[i : i + 1],
                image_pe=reference.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            torch.testing.assert_close(masks[i], expected[0, 0], rtol=1e-4, atol=1e-4)
