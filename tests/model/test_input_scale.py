"""``text_input_scale``: the T5's text and decoder input embeddings (positions included) scaled."""

from __future__ import annotations

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

from .test_modeling import full_batch


def models(scale: float):
    """A model at ``scale`` and one at 1.0 whose input tables are the first's times ``scale``."""
    torch.manual_seed(0)
    config = PixtokConfig.from_preset(
        "tiny", lora_r=0, decoder_position_embeddings=16, text_input_scale=scale
    )
    scaled = PixtokForConditionalGeneration(config).eval()
    plain = PixtokForConditionalGeneration(
        PixtokConfig.from_preset("tiny", lora_r=0, decoder_position_embeddings=16)
    )
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():  # the T5's embedding is tied to its head: only the inputs' copies change
        plain.model.text_model.shared.weight.mul_(scale)
        plain.model.decoder_positions.weight.mul_(scale)
    return scaled, plain.eval()


def test_encoder_and_decoder_see_the_scaled_embeddings() -> None:
    scaled, plain = models(4.0)
    batch = full_batch(scaled.config)
    inputs = {k: batch[k] for k in ("pixel_values", "eva_pixel_values", "input_ids", "attention_mask")}
    ids = torch.tensor([[0, 5, 2100], [0, 7, 9]])
    with torch.no_grad():
        encoded_s, mask, *_ = scaled.model.encode(**inputs)
        encoded_p, *_ = plain.model.encode(**inputs)
        torch.testing.assert_close(encoded_s.last_hidden_state, encoded_p.last_hidden_state)
        _, states_s, _ = scaled.model.decode(encoded_s, mask, ids)
        _, states_p, _ = plain.model.decode(encoded_p, mask, ids)
        torch.testing.assert_close(states_s, states_p)
        torch.testing.assert_close(
            scaled.model.decoder_inputs(ids, start=2),
            4.0 * scaled.model.decoder_positions(scaled.model.embed_tokens(ids), 2),
        )
        # and the scale matters: the same weights at 1.0 encode differently
        unscaled = PixtokForConditionalGeneration(
            PixtokConfig.from_preset("tiny", lora_r=0, decoder_position_embeddings=16)
        )
        unscaled.load_state_dict(scaled.state_dict())
        assert not torch.allclose(
            unscaled.eval().model.encode(**inputs)[0].last_hidden_state, encoded_s.last_hidden_state
        )


def test_scale_is_saved_and_checked(tmp_path) -> None:
    scaled, _ = models(2.5)
    scaled.save_pretrained(tmp_path)
    assert PixtokConfig.from_pretrained(tmp_path).text_input_scale == 2.5
    with pytest.raises(ValueError, match="text_input_scale"):
        PixtokConfig.from_preset("tiny", text_input_scale=0.0)
