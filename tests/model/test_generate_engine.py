"""generate(decode_engine=True) — the static-cache engine with LoRA and pixtok's added-token deltas
folded in — decodes exactly what the plain loop decodes (CPU: the engine runs eagerly)."""

import pytest
import torch


@pytest.fixture(scope="module")
def model_and_batch(trained_looking_tiny):
    return trained_looking_tiny


@pytest.mark.parametrize("task", ["detection", "caption", "referring"])
def test_engine_decodes_what_the_plain_loop_decodes(model_and_batch, task):
    model, processor, images = model_and_batch
    text = ["the red square"] * 2 if task == "referring" else None
    batch = processor(images=images, task=task, text=text, return_tensors="pt")
    kwargs = {"max_new_tokens": 26, "do_sample": False}
    if task == "detection":
        kwargs["eos_logit_offset"] = -5.0  # long sequences: several whole objects
    plain = model.generate(**batch, decode_engine=False, **kwargs)
    fast = model.generate(**batch, decode_engine=True, **kwargs)
    assert torch.equal(plain.sequences, fast.sequences)
    assert plain.sequences.shape[1] >= 5  # referring: exactly 4 coordinates + EOS
    torch.testing.assert_close(fast.token_scores, plain.token_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.points, plain.points, atol=1e-4, rtol=1e-4)
    if task == "referring":
        torch.testing.assert_close(fast.boxes, plain.boxes, atol=1e-4, rtol=1e-4)


def test_engine_is_cached_and_dropped_by_train(model_and_batch):
    model, _, _ = model_and_batch
    engine = model.decode_engine(2, 11)
    assert model.decode_engine(2, 11) is engine
    model.train()
    assert model.decode_engine(2, 11) is not engine
    model.eval()
    assert "_decode_engine" not in model.state_dict() and not any(
        "decode_engine" in n for n, _ in model.named_modules()
    )


def test_engine_runs_under_a_callers_autocast(model_and_batch):
    """Training loops evaluate under autocast (FSDP runs did, on the 2xH200): the engine's typed
    buffers must not receive bf16 results (was: index_copy_ dtype error), and it decodes as without."""
    model, processor, images = model_and_batch
    batch = processor(images=images, task="detection", return_tensors="pt")
    kwargs = {"max_new_tokens": 11, "do_sample": False, "decode_engine": True}
    reference = model.generate(**batch, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = model.generate(**batch, **kwargs)
    assert cast.sequences.shape == reference.sequences.shape


def test_engine_folds_in_the_input_scale():
    """``text_input_scale`` multiplies the decoder's token and position rows (and the added-token
    deltas): the engine's scaled copies must decode what the plain loop decodes."""
    from .conftest import make_trained_looking_tiny

    model, processor, images = make_trained_looking_tiny(text_input_scale=3.0, decoder_position_embeddings=32)
    batch = processor(images=images, task="detection", return_tensors="pt")
    kwargs = {"max_new_tokens": 26, "do_sample": False, "eos_logit_offset": -5.0}
    plain = model.generate(**batch, decode_engine=False, **kwargs)
    fast = model.generate(**batch, decode_engine=True, **kwargs)
    assert torch.equal(plain.sequences, fast.sequences)
    torch.testing.assert_close(fast.token_scores, plain.token_scores, atol=1e-4, rtol=1e-4)
    unscaled = make_trained_looking_tiny(decoder_position_embeddings=32)[0]
    assert not torch.equal(unscaled.generate(**batch, **kwargs).token_scores, plain.token_scores)
