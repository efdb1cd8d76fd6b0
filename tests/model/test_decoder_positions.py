"""config.decoder_position_embeddings: a learned absolute position table on the T5 decoder's inputs.

The table must reach every decoder path at the same positions: the teacher-forced forward, the
cached step-by-step loop (positions continue from the cache length) and the static-cache engine.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.processing_pixtok import PixtokProcessor

POSITIONS = 32


def _model(positions: int = POSITIONS, seed: int = 0) -> PixtokForConditionalGeneration:
    torch.manual_seed(seed)
    config = PixtokConfig.from_preset(
        "tiny", lora_r=0, freeze_text_model=False, decoder_position_embeddings=positions
    )
    return PixtokForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def batch():
    config = PixtokConfig.from_preset("tiny", lora_r=0, freeze_text_model=False)
    processor = PixtokProcessor.from_config(config)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for _ in range(2)]
    targets = [
        {"boxes": np.array([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]), "labels": np.array([1, 3])},
        {"boxes": np.array([[0.0, 0.0, 50.0, 50.0]]), "labels": np.array([2])},
    ]
    return (
        processor,
        images,
        dict(processor(images=images, task="detection", targets=targets, return_tensors="pt")),
    )


def test_table_is_added_to_the_decoder_inputs(batch):
    _, _, inputs = batch
    model = _model()
    plain = _model(positions=0)
    plain.load_state_dict(model.state_dict(), strict=False)  # every weight but the table
    with torch.no_grad():
        with_table = model(**inputs).logits
        model.model.decoder_positions.weight.zero_()
        zero_table = model(**inputs).logits
        without = plain(**inputs).logits
    assert not torch.allclose(with_table, zero_table, atol=1e-4)  # the rows change the output
    torch.testing.assert_close(zero_table, without)  # and nothing else differs


def test_cached_steps_continue_the_positions(batch):
    _, _, inputs = batch
    model = _model()
    inner = model.model
    with torch.no_grad():
        encoder_outputs, mask, _, _ = inner.encode(
            inputs["pixel_values"], inputs["eva_pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        )
        ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), inputs["labels"][:, :6].clamp(min=0)], dim=1)
        full, _, _ = inner.decode(encoder_outputs, mask, ids)
        past, steps = None, []
        for t in range(ids.shape[1]):
            logits, _, past = inner.decode(encoder_outputs, mask, ids[:, t : t + 1], past, use_cache=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["detection", "caption"])
def test_engine_decodes_what_the_plain_loop_decodes(batch, task):
    processor, images, _ = batch
    model = _model(seed=1)
    inputs = processor(images=images, task=task, return_tensors="pt")
    kwargs = {"max_new_tokens": 26, "do_sample": False}
    if task == "detection":
        kwargs["eos_logit_offset"] = -5.0  # several whole objects
    plain = model.generate(**inputs, decode_engine=False, **kwargs)
    fast = model.generate(**inputs, decode_engine=True, **kwargs)
    assert plain.sequences.shape[1] >= 10
    assert torch.equal(plain.sequences, fast.sequences)
    torch.testing.assert_close(fast.token_scores, plain.token_scores, atol=1e-4, rtol=1e-4)


def test_sequences_past_the_table_are_refused(batch):
    processor, images, inputs = batch
    model = _model(positions=4)
    with pytest.raises(ValueError, match="decoder_position_embeddings"):
        model(**inputs)
    with pytest.raises(ValueError, match="exceeds the model's 4 decoder positions"):
        model.generate(**processor(images=images, task="caption", return_tensors="pt"), max_new_tokens=5)
    with pytest.raises(ValueError, match="decoder_position_embeddings must be >= 0"):
        PixtokConfig.from_preset("tiny", decoder_position_embeddings=-1)


def test_table_saves_and_loads(tmp_path, batch):
    _, _, inputs = batch
    model = _model()
    model.save_pretrained(tmp_path)
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.decoder_position_embeddings == POSITIONS
    torch.testing.assert_close(loaded.model.decoder_positions.weight, model.model.decoder_positions.weight)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_embedding_init_std_sets_rows_and_positions_and_survives_loading(tmp_path, batch):
    """config.text_embedding_init_std: the T5 embedding (tied to its head) and the position table
    start at that std instead of T5's initializer_factor; a saved model loads its trained rows."""
    _, _, inputs = batch
    torch.manual_seed(0)
    config = PixtokConfig.from_preset(
        "tiny",
        lora_r=0,
        freeze_text_model=False,
        decoder_position_embeddings=POSITIONS,
        text_embedding_init_std=0.125,
        text_config={"initializer_factor": 1.0},
    )
    model = PixtokForConditionalGeneration(config).eval()
    text = model.model.text_model
    assert text.shared.weight.std().item() == pytest.approx(0.125, rel=0.05)
    assert text.lm_head.weight.data_ptr() == text.shared.weight.data_ptr()
    assert model.model.decoder_positions.weight.std().item() == pytest.approx(0.125, rel=0.1)
    default = PixtokForConditionalGeneration(
        PixtokConfig.from_preset(
            "tiny", lora_r=0, freeze_text_model=False, text_config={"initializer_factor": 1.0}
        )
    )
    assert default.model.text_model.shared.weight.std().item() == pytest.approx(1.0, rel=0.05)

    with torch.no_grad():
        text.shared.weight.mul_(3.0)  # "trained": no longer at the init std
    model.save_pretrained(tmp_path)
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.text_embedding_init_std == 0.125
    torch.testing.assert_close(loaded.model.text_model.shared.weight, text.shared.weight)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="text_embedding_init_std must be > 0"):
        PixtokConfig.from_preset("tiny", text_embedding_init_std=0.0)
