"""The prompt feature extractor's optional grid tokens and position-carrying values (tiny preset)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixtok.model.configuration_pixtok import PixtokConfig, PixtokPromptExtractorConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.vocab import TASKS

from .test_modeling import images as image_inputs
from .test_modeling import tiny_model as modeling_tiny_model

torch.set_num_threads(1)


def tiny_model(**extractor) -> PixtokForConditionalGeneration:
    return modeling_tiny_model(extractor_config=extractor)


def extractor_call(model: PixtokForConditionalGeneration, inputs: dict[str, torch.Tensor]):
    """Run encode while recording the extractor's output and its transformer's inputs/outputs."""
    extractor = model.model.extractor
    seen: dict[str, object] = {}
    hooks = [
        extractor.transformer.register_forward_hook(
            lambda mod, args, out: seen.update(transformer_args=args, transformer_out=out)
        ),
        extractor.register_forward_hook(lambda mod, args, out: seen.update(prefix=out)),
    ]
    try:
        with torch.no_grad():
            model.model.encode(inputs["pixel_values"], inputs["eva_pixel_values"])
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("source", ["features", "transformer"])
def test_grid_tokens_are_the_pooled_position_encoded_image_tokens(source: str) -> None:
    model = tiny_model(grid_tokens=4, grid_source=source).eval()
    config = model.config
    assert config.extractor_config.prefix_length == 32 + 16
    seen = extractor_call(model, image_inputs(config))
    prefix = seen["prefix"]
    assert prefix.shape == (2, 48, config.text_config.d_model)
    extractor = model.model.extractor
    keys, pe = seen["transformer_args"][1:3]  # the image tokens and encoding handed to the transformer
    _, image_tokens = seen["transformer_out"][:2]
    g = config.grid_size
    if source == "features":  # the transformer's input image tokens
        grid = keys + pe
    else:  # its output image tokens
        grid = image_tokens.squeeze(1).transpose(1, 2).reshape(2, -1, g, g) + pe
    pooled = F.adaptive_avg_pool2d(grid, 4).flatten(2).transpose(1, 2)
    expected = extractor.grid_proj(extractor.grid_norm(pooled))
    torch.testing.assert_close(prefix[:, 32:], expected)
    # the learnable tokens' part is what a model without grid tokens computes from the same weights
    plain = tiny_model().eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(extractor_call(plain, image_inputs(config))["prefix"], prefix[:, :32])


def test_grid_source_is_checked() -> None:
    with pytest.raises(ValueError, match="grid_source must be"):
        PixtokPromptExtractorConfig(grid_tokens=4, grid_source="pooled")


def test_grid_tokens_carry_absolute_position() -> None:
    """A featureless (constant) image gives different grid tokens at different places."""
    model = tiny_model(grid_tokens=4).eval()
    config = model.config
    flat = {k: torch.zeros_like(v) for k, v in image_inputs(config, batch=1).items()}
    tokens = extractor_call(model, flat)["prefix"][0, 32:]
    distances = torch.cdist(tokens, tokens)
    off_diagonal = distances[~torch.eye(16, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3 * distances.max()


def test_position_in_values_adds_the_encoding_to_the_image_tokens() -> None:
    inputs = image_inputs(PixtokConfig.from_preset("tiny"))
    plain = extractor_call(tiny_model().eval(), inputs)["transformer_args"]
    with_position = extractor_call(tiny_model(position_in_values=True).eval(), inputs)["transformer_args"]
    keys, pe = plain[1], plain[2]
    torch.testing.assert_close(with_position[1], keys + pe)
    torch.testing.assert_close(with_position[2], pe)


def test_grid_tokens_train_save_load_and_decode_like_the_plain_loop(tmp_path) -> None:
    model = tiny_model(grid_tokens=4, position_in_values=True)
    config = model.config
    inputs = {**image_inputs(config), "input_ids": torch.tensor([[config.vocab.task_id("detection")]] * 2)}
    labels = torch.tensor([[config.vocab.coord_offset + 3, config.vocab.coord_offset + 9, 1]] * 2)
    out = model(**inputs, labels=labels, task_ids=torch.full((2,), TASKS.index("detection")))
    out.loss.backward()
    assert model.model.extractor.grid_proj.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (
        loaded.config.extractor_config.grid_tokens == 4 and loaded.config.extractor_config.position_in_values
    )
    model.eval()
    kwargs = {
        "task_ids": torch.full((2,), TASKS.index("detection")),
        "max_new_tokens": 11,
        "do_sample": False,
        "eos_logit_offset": -5.0,
    }
    plain = loaded.generate(**inputs, decode_engine=False, **kwargs)
    fast = loaded.generate(**inputs, decode_engine=True, **kwargs)
    assert torch.equal(plain.sequences, fast.sequences) and plain.sequences.shape[1] >= 5
    torch.testing.assert_close(
        model.generate(**inputs, decode_engine=False, **kwargs).sequences, plain.sequences
    )


def test_grid_tokens_are_checked() -> None:
    with pytest.raises(ValueError, match="grid_tokens must be >= 0"):
        PixtokPromptExtractorConfig(grid_tokens=-1)
    model = tiny_model(grid_tokens=64)  # the tiny grid is 8 x 8
    with pytest.raises(ValueError, match="exceeds the image feature grid"):
        model.model.encode(**{k: v for k, v in image_inputs(model.config).items()})


def test_positional_encoding_is_smooth_from_scratch() -> None:
    """segment-anything's N(0, 1) frequencies: neighbouring grid cells get similar codes.

    transformers' default (std hidden_size / 2) aliases across the grid, and the table is never
    trained, so a model trained from scratch could not read a coordinate out of it.
    """
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("small"))
    prompt_encoder = model.model.prompt_encoder
    table = prompt_encoder.prompt_encoder.shared_embedding.positional_embedding
    assert 0.7 < float(table.std()) < 1.3 and not table.requires_grad
    pe = prompt_encoder.image_pe()[0]  # (C, g, g)
    pe = pe / pe.norm(dim=0, keepdim=True)
    neighbours = (pe[:, :, :-1] * pe[:, :, 1:]).sum(0).mean()
    far = (pe[:, :, : pe.shape[2] // 2] * pe[:, :, pe.shape[2] // 2 :]).sum(0).mean()
    assert neighbours > 0.6 and neighbours > far + 0.3
