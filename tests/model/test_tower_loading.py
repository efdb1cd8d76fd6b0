"""Loading tower weights: transformers SAM folders, official segment-anything files, the converted
safetensors file, timm EVA02 files and names — and the errors for checkpoints that do not fit."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import SamConfig, SamModel

from pixtok.model.configuration_towers import (
    PixtokEva02Config,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from pixtok.model.eva02 import Eva02Encoder, load_timm_eva02
from pixtok.model.sam import (
    SAM_PARTS,
    SamImageEncoder,
    SamMaskDecoder,
    SamPromptEncoder,
    convert_segment_anything_checkpoint,
    convert_segment_anything_state_dict,
    infer_sam_configs,
    load_sam_weights,
    load_segment_anything_checkpoint,
    load_state_dict_checked,
    load_transformers_sam,
)

S, C = 64, 32


def sam_configs(width: int = 32):
    vision = SamVisionConfig(
        hidden_size=width, num_hidden_layers=2, num_attention_heads=2, image_size=S, patch_size=16, window_size=2,
        global_attn_indexes=[1], output_channels=C, num_pos_feats=C // 2, mlp_dim=2 * width,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=C, image_size=S, patch_size=16, mask_input_channels=8)
    decoder = SamMaskDecoderConfig(
        hidden_size=C, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=C
    )
    return vision, prompt, decoder


def build_parts(width: int = 32):
    vision, prompt, decoder = sam_configs(width)
    return {
        "image_encoder": SamImageEncoder(vision).eval(),
        "prompt_encoder": SamPromptEncoder(prompt, vision).eval(),
        "mask_decoder": SamMaskDecoder(decoder).eval(),
    }


@pytest.fixture(scope="module")
def transformers_sam(tmp_path_factory):
    torch.manual_seed(0)
    vision, prompt, decoder = sam_configs()
    model = SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).eval()
    with torch.no_grad():  # zero-initialised position tables must matter
        for name, tensor in model.named_parameters():
            if "pos" in name:
                tensor.add_(0.1 * torch.randn_like(tensor))
    folder = tmp_path_factory.mktemp("hf_sam")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    """An official-layout segment-anything checkpoint, built with segment-anything itself (iou head depth 4)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=S, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=C, use_rel_pos=True,
            window_size=2, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(embed_dim=C, image_embedding_size=(4, 4), input_image_size=(S, S), mask_in_chans=8),
        mask_decoder=MaskDecoder(
            transformer_dim=C, transformer=TwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=64, num_heads=2),
            iou_head_depth=4, iou_head_hidden_dim=C,
        ),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("sa") / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_transformers_folder_reproduces_sam_model(transformers_sam):
    model, folder = transformers_sam
    assert "prompt_encoder.shared_embedding.positional_embedding" not in load_file(
        str(folder / "model.safetensors")
    )
    parts = load_transformers_sam(folder)
    assert set(parts) == set(SAM_PARTS)
    ours = build_parts()
    for name, module in ours.items():
        load_state_dict_checked(module, parts[name], f"{folder} [{name}]")

    torch.manual_seed(1)
    pixels = torch.randn(1, 3, S, S)
    box_px = torch.tensor([[[6.0, 10.0, 50.0, 41.0]]])
    with torch.no_grad():
        expected = model(pixel_values=pixels, input_boxes=box_px, multimask_output=False)
        embeddings = ours["image_encoder"](pixels)
        sparse, dense = ours["prompt_encoder"](box_px.view(1, 2, 2) / S, torch.tensor([[2, 3]]))
        masks, iou = ours["mask_decoder"](embeddings, ours["prompt_encoder"].image_pe(), sparse, dense)
        torch.testing.assert_close(embeddings, model.get_image_embeddings(pixels))
        torch.testing.assert_close(
            ours["prompt_encoder"].image_pe(), model.get_image_wide_positional_embeddings()
        )
    torch.testing.assert_close(masks, expected.pred_masks[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, expected.iou_scores[:, 0], atol=1e-5, rtol=1e-5)


def test_converted_file_round_trips_and_dispatch(official_pth, tmp_path, transformers_sam):
    direct = load_segment_anything_checkpoint(official_pth)
    written = convert_segment_anything_checkpoint(official_pth, tmp_path / "out")
    assert written == tmp_path / "out" / "sam_towers.safetensors" and written.is_file()
    for source in (written, written.parent, official_pth):
        loaded = load_sam_weights(source)
        assert set(loaded) == set(SAM_PARTS)
        for part in SAM_PARTS:
            assert loaded[part].keys() == direct[part].keys()
            assert all(torch.equal(loaded[part][k], direct[part][k]) for k in direct[part])
    # a transformers folder goes through the transformers reader
    from_folder = load_sam_weights(transformers_sam[1])
    assert "prompt_encoder.shared_embedding.positional_embedding" in from_folder["prompt_encoder"]


def test_official_key_mapping_covers_every_parameter(official_pth):
    parts = load_segment_anything_checkpoint(official_pth)
    original = torch.load(official_pth, weights_only=True)
    normalization = {"pixel_mean", "pixel_std"} & set(
        original
    )  # dropped when present (the processor owns them)
    assert sum(len(p) for p in parts.values()) == len(original) - len(normalization)
    decoder = parts["mask_decoder"]
    # segment-anything's MLP.layers[0..3] -> transformers' proj_in, layers.0, layers.1, proj_out
    for theirs, ours in [(0, "proj_in"), (1, "layers.0"), (2, "layers.1"), (3, "proj_out")]:
        assert torch.equal(
            decoder[f"mask_decoder.iou_prediction_head.{ours}.weight"],
            original[f"mask_decoder.iou_prediction_head.layers.{theirs}.weight"],
        )
    assert torch.equal(
        decoder["mask_decoder.output_hypernetworks_mlps.2.proj_out.bias"],
        original["mask_decoder.output_hypernetworks_mlps.2.layers.2.bias"],
    )
    # and the result loads into modules configured like that checkpoint
    vision, prompt, decoder_config = sam_configs()
    vision.mlp_dim = 4 * 32
    decoder_config.iou_head_depth = 4
    modules = {
        "image_encoder": SamImageEncoder(vision),
        "prompt_encoder": SamPromptEncoder(prompt, vision),
        "mask_decoder": SamMaskDecoder(decoder_config),
    }
    for name, module in modules.items():
        load_state_dict_checked(module, parts[name], name)


def test_mismatched_checkpoint_names_missing_unexpected_and_shapes(transformers_sam):
    parts = load_transformers_sam(transformers_sam[1])
    narrow = build_parts(width=16)  # a ViT of another width: every encoder weight has the wrong shape
    with pytest.raises(
        ValueError,
        match=r"shape mismatches \(\d+\): vision_encoder\.layers\.0\.attn\.proj\.bias: expected \(16,\), got \(32,\)",
    ):
        load_state_dict_checked(narrow["image_encoder"], parts["image_encoder"], "hf")

    ours = build_parts()
    broken = dict(parts["mask_decoder"])
    del broken["mask_decoder.iou_token.weight"]
    broken["mask_decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        load_state_dict_checked(ours["mask_decoder"], broken, "broken.safetensors")
    message = str(error.value)
    assert "broken.safetensors" in message and "SamMaskDecoder" in message
    assert "missing keys (1): mask_decoder.iou_token.weight" in message
    assert "unexpected keys (1): mask_decoder.extra.weight" in message
    # nothing was half-loaded
    assert not torch.equal(
        ours["mask_decoder"].state_dict()["mask_decoder.mask_tokens.weight"],
        parts["mask_decoder"]["mask_decoder.mask_tokens.weight"],
    )


def test_foreign_files_are_refused_with_a_reason(tmp_path, official_pth):
    bogus = tmp_path / "bogus.pth"
    torch.save(
        {"backbone.weight": torch.zeros(2), "image_encoder.blocks.0.norm1.weight": torch.zeros(2)}, bogus
    )
    with pytest.raises(
        ValueError, match=r"not a segment-anything SAM checkpoint: 1 unexpected keys \(backbone\.weight\)"
    ):
        load_segment_anything_checkpoint(bogus)
    only_encoder = tmp_path / "encoder_only.pth"
    state = torch.load(official_pth, weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith("image_encoder.")}, only_encoder)
    with pytest.raises(ValueError, match="no weights for prompt_encoder, mask_decoder"):
        load_segment_anything_checkpoint(only_encoder)
    with pytest.raises(FileNotFoundError):
        load_segment_anything_checkpoint(tmp_path / "missing.pth")
    not_sam = tmp_path / "not_sam.safetensors"
    save_file({"encoder.weight": torch.zeros(1)}, str(not_sam))
    with pytest.raises(ValueError, match="not a pixtok SAM file"):
        load_sam_weights(not_sam)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"image_encoder.pos_embed": _Payload()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        load_segment_anything_checkpoint(evil)
    with pytest.raises(pickle.UnpicklingError):
        load_timm_eva02(evil)


def tiny_eva_config(**overrides) -> PixtokEva02Config:
    kwargs = dict(
        img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, ref_feat_shape=4, timm_name=None
    )
    return PixtokEva02Config(**{**kwargs, **overrides})


def test_eva02_files_in_timm_layout(tmp_path):
    torch.manual_seed(0)
    reference = timm.models.eva.Eva(**{**tiny_eva_config().timm_kwargs(), "num_classes": 5})  # with a head
    state = reference.state_dict()
    as_safetensors = tmp_path / "eva.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(as_safetensors))
    wrapped = tmp_path / "eva.pth"
    torch.save({"state_dict": state}, wrapped)
    for source in (as_safetensors, wrapped):
        loaded = load_timm_eva02(source)
        assert not any(k.startswith("eva.head.") for k in loaded)  # classifier dropped
        encoder = Eva02Encoder(tiny_eva_config())
        load_state_dict_checked(encoder, loaded, source.name)
        assert torch.equal(encoder.eva.blocks[1].mlp.fc1_g.weight, state["blocks.1.mlp.fc1_g.weight"])
    deeper = Eva02Encoder(tiny_eva_config(depth=3))
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): eva\.blocks\.2\."):
        load_state_dict_checked(deeper, load_timm_eva02(as_safetensors), "eva.safetensors")
    with pytest.raises(FileNotFoundError):
        load_timm_eva02(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="neither an existing file nor a timm model name"):
        load_timm_eva02("eva02_no_such_model")


def test_eva02_timm_name_through_timms_own_loading(tmp_path):
    """A registered timm name loads through timm's pretrained path (weights from a local file, no network)."""
    torch.manual_seed(0)
    source = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0)
    weights = tmp_path / "eva02_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    loaded = load_timm_eva02("eva02_tiny_patch14_224", pretrained_file=weights)
    config = PixtokEva02Config(
        img_size=224,
        embed_dim=192,
        depth=12,
        num_heads=3,
        ref_feat_shape=16,
        qkv_fused=True,  # timm's tiny EVA02 fuses qkv and has no MLP norm, unlike B/L
        scale_mlp=False,
        timm_name="eva02_tiny_patch14_224",
    )
    encoder = Eva02Encoder(config)
    load_state_dict_checked(encoder, loaded, "eva02_tiny_patch14_224")
    assert torch.equal(encoder.eva.pos_embed, source.pos_embed)


# The released SAM sizes (segment-anything's build_sam.py); presets.py owns pixtok's canonical copy.
RELEASED_SAM = {
    "vit_b": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]
    ),
    "vit_l": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]
    ),
    "vit_h": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]
    ),
}


@pytest.mark.parametrize("variant", sorted(RELEASED_SAM))
def test_released_sam_layouts_convert_and_infer_their_sizes(variant):
    """segment-anything's own builders, on the meta device: every key converts, sizes are read back."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        official = sam_model_registry[variant]()
        parts = convert_segment_anything_state_dict(official.state_dict())
        vision, prompt, decoder = infer_sam_configs(parts)
        for key, value in RELEASED_SAM[variant].items():
            assert getattr(vision, key) == value, key
        assert (vision.image_size, vision.patch_size, vision.window_size, vision.output_channels) == (
            1024,
            16,
            14,
            256,
        )
        assert (vision.mlp_dim, vision.num_pos_feats) == (4 * vision.hidden_size, 128)
        assert (prompt.hidden_size, prompt.mask_input_channels) == (256, 16)
        assert (decoder.mlp_dim, decoder.num_hidden_layers, decoder.iou_head_depth, decoder.iou_head_hidden_dim) == (
            2048, 2, 3, 256,
        )  # fmt: skip
        modules = {
            "image_encoder": SamImageEncoder(vision),
            "prompt_encoder": SamPromptEncoder(prompt, vision),
            "mask_decoder": SamMaskDecoder(decoder),
        }
    for name, module in modules.items():
        load_state_dict_checked(module, parts[name], f"{variant} [{name}]")  # every key and shape fits


def test_converted_folder_carries_its_config(official_pth, tmp_path):
    written = convert_segment_anything_checkpoint(official_pth, tmp_path)
    config = SamConfig.from_json_file(str(written.parent / "sam_config.json"))
    vision, prompt, decoder = infer_sam_configs(load_sam_weights(written))
    assert config.vision_config.to_dict() == vision.to_dict()
    assert config.mask_decoder_config.iou_head_depth == decoder.iou_head_depth == 4
    assert (vision.num_hidden_layers, vision.global_attn_indexes, vision.window_size) == (2, [1], 2)
