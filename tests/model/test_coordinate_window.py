"""Boxes read between coordinate bins (``GenerationOptions.coordinate_window``): the offsets, the
LM-head slice they come from, and the detection post-processing that adds them."""

import numpy as np
import pytest
import torch

from pixtok.model.decoding import GenerationOptions, coordinate_offsets
from pixtok.tasks import build_task

OFFSET, BINS = 100, 10  # coordinate ids 100..109 in these unit tests


def _offsets(sequences, bin_logits, window):
    """coordinate_offsets with state n (a one-hot index) mapping to the n-th row of ``bin_logits``."""
    sequences = torch.tensor(sequences)
    states = torch.arange(sequences.numel(), dtype=torch.float32).reshape(*sequences.shape, 1)
    table = torch.tensor(bin_logits, dtype=torch.float32)
    return coordinate_offsets(sequences, states, lambda s: table[s[:, 0].long()], OFFSET, BINS, window)


def test_offset_is_the_softmax_mean_bin_around_the_token():
    flat = [0.0] * BINS
    right = [0.0] * BINS
    right[5], right[6] = 2.0, 2.0 + np.log(3.0)  # bin 6 three times as likely as bin 5
    edge = [0.0] * BINS
    rows = [flat, right, right, edge, flat]
    # ids: a non-coordinate, bin 5 (weights 1 at 5, 3 at 6, e^-2 elsewhere), the same at bin 6,
    # bin 0 (the window's left half is outside), and a class id past the bins
    out = _offsets([[7, OFFSET + 5, OFFSET + 6, OFFSET + 0, OFFSET + BINS]], rows, window=1)
    e = np.exp(-2.0)
    assert out[0, 0] == 0 and out[0, 4] == 0
    assert out[0, 1].item() == pytest.approx((3 - e) / (e + 1 + 3), rel=1e-5)  # bins 4, 5, 6
    assert out[0, 2].item() == pytest.approx((e - 1) / (1 + 3 + e), rel=1e-5)  # bins 5, 6, 7
    assert out[0, 3].item() == pytest.approx(0.5, rel=1e-5)  # flat over bins 0 and 1 only
    assert torch.equal(_offsets([[OFFSET + 5]], [right], window=0), torch.zeros(1, 1))


def test_window_must_be_a_non_negative_int():
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="coordinate_window"):
            GenerationOptions(max_new_tokens=5, coordinate_window=bad).validate()


def test_coordinate_window_is_a_task_generate_option():
    assert build_task("detection", generate={"coordinate_window": 2}).options["generate"] == {
        "coordinate_window": 2
    }


@pytest.fixture(scope="module")
def model_and_batch(trained_looking_tiny):
    model, processor, images = trained_looking_tiny
    return model, processor, processor(images=images, task="detection", return_tensors="pt")


def test_token_logits_are_decodes_logits_at_those_ids(model_and_batch):
    model, _, batch = model_and_batch
    with torch.no_grad():
        encoder_outputs, mask, *_ = model.model.encode(
            **{k: batch[k] for k in ("pixel_values", "eva_pixel_values", "input_ids", "attention_mask")}
        )
        ids = torch.tensor([[0, 5, 2100, 2101]]).expand(2, -1)
        logits, states, _ = model.model.decode(encoder_outputs, mask, ids)
        some = torch.tensor([3, 2050, model.config.vocab.coord_offset + 7, model.config.vocab.size - 1])
        torch.testing.assert_close(
            model.model.token_logits(states, some), logits[..., some], atol=1e-4, rtol=1e-4
        )


def test_generate_offsets_move_detection_boxes_by_less_than_the_window(model_and_batch):
    model, processor, batch = model_and_batch
    kwargs = {"max_new_tokens": 26, "do_sample": False, "eos_logit_offset": -5.0}
    plain = model.generate(**batch, **kwargs)
    refined = model.generate(**batch, coordinate_window=2, **kwargs)
    assert plain.coordinate_offsets is None
    assert torch.equal(plain.sequences, refined.sequences)  # tokens are unchanged
    offsets, seq = refined.coordinate_offsets, refined.sequences
    vocab = model.config.vocab
    is_coord = (seq >= vocab.coord_offset) & (seq < vocab.coord_offset + vocab.num_bins)
    assert is_coord.any() and bool((offsets[~is_coord] == 0).all())
    assert bool((offsets.abs() < 2).all()) and bool((offsets[is_coord] != 0).any())
    sizes = [(90, 120), (128, 64)]
    before = processor.post_process_object_detection(plain, target_sizes=sizes)
    after = processor.post_process_object_detection(refined, target_sizes=sizes)
    moved = 0.0
    for b, (a, r) in enumerate(zip(before, after)):
        assert torch.equal(a["labels"], r["labels"]) and torch.equal(a["scores"], r["scores"])
        limit = 2 / vocab.num_bins * max(sizes[b]) + 1e-4
        diff = (a["boxes"] - r["boxes"]).abs()
        assert diff.numel() == 0 or float(diff.max()) < limit
        moved += float(diff.sum())
    assert moved > 0


def test_codec_adds_offsets_to_the_bin_centres(model_and_batch):
    _, processor, _ = model_and_batch
    v = processor.vocab
    tokens = np.array([[v.coord_offset + 10, v.coord_offset + 20, v.coord_offset + 30, v.coord_offset + 40,
                        v.class_offset, 1]])  # fmt: skip
    offsets = np.array([[0.5, -0.25, 0.0, 1.0, 7.0, 9.0]])  # class and EOS offsets are ignored
    size = [(v.num_bins, v.num_bins)]  # one pixel per bin
    plain = processor.codec.decode_batch(tokens, size)[0]["boxes"][0]
    moved = processor.codec.decode_batch(tokens, size, offsets=offsets)[0]["boxes"][0]
    # tokens are ymin, xmin, ymax, xmax; boxes xyxy
    np.testing.assert_allclose(moved - plain, [-0.25, 0.5, 1.0, 0.0], atol=1e-4)
    with pytest.raises(ValueError, match="offsets"):
        processor.codec.decode_batch(tokens, size, offsets=offsets[:, :3])
