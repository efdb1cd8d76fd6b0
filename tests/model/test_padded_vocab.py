"""``pad_vocab_to_multiple_of``: the T5's embedding / LM head get rows past the last real id (aligned
GEMMs); those ids are never tokens — not in the loss, never decoded, rejected as input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.model.presets import PRESETS
from pixtok.model.processing_pixtok import PixtokProcessor
from tests.model.test_modeling import full_batch

# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [1, 8, 64, 100])
def test_text_vocab_is_rounded_up(multiple: int) -> None:
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=multiple)
    size, rows = config.vocab.size, config.text_config.vocab_size
    assert config.pad_vocab_to_multiple_of == multiple
    assert rows % multiple == 0 and size <= rows < size + multiple


def test_no_padding_by_default() -> None:
    config = PixtokConfig(base_vocab_size=32100)  # the bare defaults, no preset
    assert config.pad_vocab_to_multiple_of == 1
    assert config.text_config.vocab_size == config.vocab.size == 33187  # odd: T5 + pixtok's ids


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_pads_to_64(name: str) -> None:
    config = PixtokConfig.from_preset(name)  # config only: the real-size models are not built
    assert config.text_config.vocab_size % 64 == 0
    assert config.vocab.size <= config.text_config.vocab_size < config.vocab.size + 64
    if name == "base":
        assert (config.vocab.size, config.text_config.vocab_size) == (33187, 33216)


@pytest.mark.parametrize("bad", [0, -64, 2.5, "64", True, None])
def test_bad_multiples_are_rejected(bad) -> None:
    with pytest.raises(ValueError, match="pad_vocab_to_multiple_of must be a positive int"):
        PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=bad)


def test_numpy_ints_are_accepted() -> None:
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=np.int64(64))
    assert type(config.pad_vocab_to_multiple_of) is int and config.text_config.vocab_size == 3136


def test_padding_survives_save_and_load(tmp_path) -> None:
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=128)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pad_vocab_to_multiple_of"] == 128
    loaded = PixtokConfig.from_pretrained(tmp_path)
    assert loaded.pad_vocab_to_multiple_of == 128
    assert loaded.text_config.vocab_size == config.text_config.vocab_size == 3200
    assert loaded.to_dict() == config.to_dict()


def test_a_config_saved_before_the_field_keeps_its_size(tmp_path) -> None:
    """Configs written before ``pad_vocab_to_multiple_of`` existed load to the unpadded shapes, even
    when they were built from a preset that pads today."""
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=1)
    as_dict = config.to_dict()
    del as_dict["pad_vocab_to_multiple_of"]
    assert PixtokConfig.from_dict(as_dict).text_config.vocab_size == config.vocab.size == 3135
    (tmp_path / "config.json").write_text(json.dumps(as_dict))
    assert PixtokConfig.from_pretrained(tmp_path).text_config.vocab_size == 3135


def test_a_model_saved_before_the_field_loads_strictly(tmp_path) -> None:
    torch.manual_seed(0)
    model = PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=1))
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    del saved["pad_vocab_to_multiple_of"]
    path.write_text(json.dumps(saved))
    loaded = PixtokForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.model.text_model.lm_head.weight.shape[0] == 3135
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# --- model ----------------------------------------------------------------------------------------

MULTIPLE = 128  # 3135 real ids -> 3200 rows: 65 padding rows


def _padded_model(lora_r: int) -> PixtokForConditionalGeneration:
    torch.manual_seed(0)
    config = PixtokConfig.from_preset("tiny", pad_vocab_to_multiple_of=MULTIPLE, lora_r=lora_r)
    model = PixtokForConditionalGeneration(config).eval()
    with torch.no_grad():  # a trained-looking model: non-zero LoRA updates and token deltas
        for name, p in model.named_parameters():
            if "lora_B" in name or "added_tokens" in name:
                p.normal_(0, 0.5)
    return model


def _unpadded_twin(model: PixtokForConditionalGeneration) -> PixtokForConditionalGeneration:
    """The same weights without the padding rows."""
    twin = PixtokForConditionalGeneration(
        PixtokConfig.from_dict({**model.config.to_dict(), "pad_vocab_to_multiple_of": 1})
    ).eval()
    size = model.config.vocab.size
    rows = twin.config.text_config.vocab_size
    assert rows == size
    state = {}
    for key, value in model.state_dict().items():
        target = twin.state_dict()[key]
        state[key] = value[: target.shape[0]] if value.shape != target.shape else value
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("lora_r", [0, 4])  # a trainable T5, a frozen one with added-token deltas
def test_loss_is_that_of_the_unpadded_head(lora_r: int) -> None:
    model = _padded_model(lora_r)
    twin = _unpadded_twin(model)
    size, rows = model.config.vocab.size, model.config.text_config.vocab_size
    assert model.model.text_model.lm_head.weight.shape[0] == rows == size + 65
    if lora_r:
        assert model.model.added_tokens.head_delta.shape[0] == rows - model.config.base_vocab_size
    batch = full_batch(model.config)
    out = model(**batch)
    assert out.logits.shape[-1] == rows
    assert torch.isfinite(out.loss) and torch.isfinite(out.lm_loss)
    reference = twin(**batch)
    torch.testing.assert_close(out.lm_loss, reference.lm_loss)
    torch.testing.assert_close(out.logits[..., :size], reference.logits)
    model.train()
    model(**batch).loss.backward()
    # the padding rows take no part in the loss: no gradient reaches them
    head = model.model.text_model.lm_head.weight
    if head.grad is not None:
        assert head.grad[size:].abs().sum() == 0 and head.grad[:size].abs().sum() > 0
    if lora_r:
        delta = model.model.added_tokens.head_delta.grad
        offset = size - model.config.base_vocab_size
        assert delta[offset:].abs().sum() == 0 and delta[:offset].abs().sum() > 0


@pytest.fixture(scope="module")
def greedy_padding():
    """A padded tiny model whose padding rows win every unmasked argmax, with its processor."""
    model = _padded_model(lora_r=4)
    size = model.config.vocab.size
    with torch.no_grad():
        head = model.model.text_model.lm_head.weight
        generator = torch.Generator().manual_seed(0)
        head[size:] = torch.randn(head[size:].shape, generator=generator) * 1e3
    processor = PixtokProcessor.from_config(model.config)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (128, 64))
    ]
    return model, processor, images


@pytest.mark.parametrize("task", ["detection", "caption"])
def test_generate_never_emits_a_padding_id(greedy_padding, task: str) -> None:
    model, processor, images = greedy_padding
    size = model.config.vocab.size
    batch = processor(images=images, task=task, return_tensors="pt")
    # the test has teeth: without the grammar, the padding ids would win
    labels = torch.full((2, 3), 5)
    logits = model(**batch, labels=labels).logits
    assert (logits.argmax(-1) >= size).all()
    kwargs = {"max_new_tokens": 21, "do_sample": False}
    if task == "detection":
        kwargs["eos_logit_offset"] = -5.0  # long sequences: several whole objects
    plain = model.generate(**batch, decode_engine=False, **kwargs)
    fast = model.generate(**batch, decode_engine=True, **kwargs)
    sampled = model.generate(
        **batch,
        decode_engine=False,
        max_new_tokens=21,
        do_sample=True,
        generator=torch.Generator().manual_seed(0),
    )
    for out in (plain, fast, sampled):
        assert out.sequences.numel() and int(out.sequences.max()) < size
        assert torch.isfinite(out.token_scores).all()
    assert plain.sequences.shape[1] >= 5
    assert torch.equal(plain.sequences, fast.sequences)
    torch.testing.assert_close(fast.token_scores, plain.token_scores, atol=1e-4, rtol=1e-4)
    sizes = [(90, 120), (128, 64)]
    if task == "detection":
        assert len(processor.post_process_object_detection(plain, target_sizes=sizes)) == 2
    else:
        assert all(r["text"] for r in processor.post_process_caption(plain, target_sizes=sizes))


def test_padding_ids_are_rejected_as_input(greedy_padding) -> None:
    model, processor, images = greedy_padding
    batch = processor(images=images, task="caption", return_tensors="pt")
    batch["input_ids"][0, -1] = model.config.text_config.vocab_size - 1  # a padding row
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {model.config.vocab.size}\)"):
        model(**batch)


@pytest.mark.parametrize("weight_trains", [False, True])
def test_added_rows_head_gradients_are_plain_autograds(weight_trains: bool) -> None:
    """The LM head with added-row deltas (one product, a backward that skips the frozen weight's
    gradient) gives plain autograd's logits and gradients, in float32 and under bf16 autocast."""
    from pixtok.model.lora import AddedTokenRows

    torch.manual_seed(0)
    rows = AddedTokenRows(base_vocab_size=7, vocab_size=12, hidden_size=4)
    torch.nn.init.normal_(rows.head_delta)
    weight = torch.randn(12, 4, requires_grad=weight_trains)
    inputs = torch.randn(2, 3, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 12)
    for autocast in (False, True):
        grads = []
        for fused in (True, False):
            for t in (inputs, weight, rows.head_delta):
                t.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                if fused:
                    logits = rows.logits(inputs, weight)
                else:
                    full = torch.cat([weight[:7], weight[7:] + rows.head_delta])
                    logits = torch.nn.functional.linear(inputs, full)
            (logits.float() * upstream).sum().backward()
            grads.append((logits.float(), inputs.grad, weight.grad, rows.head_delta.grad))
        tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {}
        for got, want in zip(*grads):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, **tol)
        assert grads[0][1].dtype == inputs.dtype and grads[0][3].dtype == rows.head_delta.dtype
