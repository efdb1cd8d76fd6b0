from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixtok.model.decoding import GenerationOptions, decode, grammar_for
from pixtok.model.processing_pixtok import PixtokProcessor
from pixtok.model.vocab import EOS_ID, PAD_ID


@pytest.fixture(scope="module")
def proc():
    return PixtokProcessor.from_preset("tiny")


def pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])


def test_detection_from_plain_ids_round_trips(proc):
    boxes = np.array([[10.0, 20.0, 200.0, 120.0], [0.0, 0.0, 639.0, 479.0]])
    ids = proc.encode_detection(boxes, [5, 0], (480, 640))
    out = proc.post_process_object_detection(ids[None], target_sizes=[(480, 640)])
    assert len(out) == 1 and set(out[0]) == {"scores", "labels", "boxes"}
    assert out[0]["labels"].tolist() == [5, 0] and out[0]["scores"].tolist() == [1.0, 1.0]
    assert out[0]["boxes"].shape == (2, 4) and out[0]["boxes"].dtype == torch.float32
    torch.testing.assert_close(out[0]["boxes"], torch.tensor(boxes, dtype=torch.float32), atol=0.33, rtol=0)


def test_detection_scores_are_class_token_probabilities_and_threshold(proc):
    c, v = proc.vocab.coord_offset, proc.vocab
    seq = pad(
        [
            [
                c + 1,
                c + 2,
                c + 30,
                c + 40,
                v.class_token(2),
                c + 5,
                c + 5,
                c + 9,
                c + 9,
                v.class_token(1),
                EOS_ID,
            ]
        ]
    )
    scores = torch.full(seq.shape, 0.99)
    scores[0, 4], scores[0, 9] = 0.8, 0.3
    gen = SimpleNamespace(sequences=seq, token_scores=scores, image_sizes=torch.tensor([[100, 200]]))
    out = proc.post_process_object_detection(gen)  # sizes from outputs.image_sizes
    assert out[0]["scores"].tolist() == pytest.approx([0.8, 0.3])
    torch.testing.assert_close(out[0]["boxes"][0], torch.tensor([0.5, 0.3, 8.1, 6.1]))
    high = proc.post_process_object_detection(dict(gen.__dict__), threshold=0.5)
    assert high[0]["labels"].tolist() == [2]
    with pytest.raises(ValueError, match="target_sizes"):
        proc.post_process_object_detection(seq)


def test_generated_detection_sequences_always_post_process(proc):
    v = proc.vocab
    gen = torch.Generator().manual_seed(0)

    def step(ids):
        return torch.randn(ids.shape[0], v.size, generator=gen) * 4, torch.zeros(ids.shape[0], 8)

    opts = GenerationOptions(eos_logit_offset=-3.0).for_task("detection", max_objects=10)
    res = decode(step, grammar_for("detection", v), 6, opts, "cpu", generator=gen)
    sizes = [(480, 640), (10, 10), (1, 300), (300, 1), (640, 480), (33, 77)]
    gen_out = SimpleNamespace(
        sequences=res.sequences, token_scores=res.token_scores, image_sizes=torch.tensor(sizes)
    )
    out = proc.post_process_object_detection(gen_out)
    for det, length, (h, w) in zip(out, res.lengths.tolist(), sizes):
        assert len(det["boxes"]) == (length - 1) // 5  # every generated object survives
        b = det["boxes"]
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all() and (b >= 0).all()
        assert (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert ((det["scores"] > 0) & (det["scores"] <= 1)).all()


def test_caption_joins_pieces_into_words_with_one_point_each(proc):
    words = ["A", "xylophone", "on", "the", "left."]
    ids = proc.tokenizer(words, is_split_into_words=True)["input_ids"]
    pieces = proc.tokenizer.convert_ids_to_tokens(ids[:-1])
    starts = [k for k, p in enumerate(pieces) if p.startswith("▁")] + [len(pieces)]
    points = torch.zeros(1, len(ids), 2)
    for w in range(len(words)):
        span = range(starts[w], starts[w + 1])
        for j, k in enumerate(span):  # pieces of word w at x = 0.1 w + 0.01 j, y = 0.5
            points[0, k] = torch.tensor([0.1 * w + 0.01 * j, 0.5])
    gen = {"sequences": torch.tensor([ids]), "points": points, "image_sizes": torch.tensor([[100, 200]])}
    out = proc.post_process_caption(gen)[0]
    assert out["words"] == words and out["text"] == "A xylophone on the left."
    assert out["points"].shape == (5, 2)
    n_xylo = starts[2] - starts[1]
    expected_x = (0.1 + 0.01 * (n_xylo - 1) / 2) * 200  # mean over the pieces of "xylophone"
    assert out["points"][1].tolist() == pytest.approx([expected_x, 100.0], abs=1e-3)
    assert out["points"][0].tolist() == pytest.approx([0.0, 100.0], abs=1e-4)
    plain = proc.post_process_caption(torch.tensor([ids + [PAD_ID, PAD_ID]]))[0]
    assert plain["words"] == words and torch.isnan(plain["points"]).all()


def test_referring_box_from_tokens_or_head_and_mask(proc):
    c = proc.vocab.coord_offset
    seq = torch.tensor([[c + 100, c + 200, c + 300, c + 400, EOS_ID]])
    out = proc.post_process_referring(seq, target_sizes=[(50, 100)])[0]
    assert out["mask"] is None
    torch.testing.assert_close(out["box"], torch.tensor([20.05, 10.05, 40.05, 30.05]))
    masks = torch.full((1, 32, 32), -5.0)
    masks[0, :8, :16] = 5.0  # top-left quarter of the content (content = 32 x 16 of the square)
    gen = SimpleNamespace(
        sequences=seq,
        boxes=torch.tensor([[0.1, 0.0, 0.5, 0.9]]),
        masks=masks,
        image_sizes=torch.tensor([[50, 100]]),
    )
    out = proc.post_process_referring(gen)[0]
    torch.testing.assert_close(out["box"], torch.tensor([10.0, 0.0, 50.0, 50.0]))  # clipped to h = 50
    # the tokens' box stays beside the head's, in the same pixels
    torch.testing.assert_close(out["token_box"], torch.tensor([20.05, 10.05, 40.05, 30.05]))
    assert out["mask"].shape == (50, 100) and out["mask"].dtype == torch.bool
    assert out["mask"][:20, :45].all() and not out["mask"][30:, :].any() and not out["mask"][:, 55:].any()
    bad = proc.post_process_referring(torch.tensor([[5, 6, EOS_ID]]), target_sizes=[(10, 10)])[0]
    assert bad["box"].tolist() == [0, 0, 0, 0] and bad["token_box"].tolist() == [0, 0, 0, 0]


def test_dense_caption_formats(proc):
    caps = [proc.tokenizer(t)["input_ids"] for t in ("a red car", "two dogs", "the sky", "a tree")]
    gen = SimpleNamespace(
        sequences=pad(caps),
        proposals=torch.tensor(
            [[[0.0, 0.0, 0.5, 0.5], [0.5, 0.1, 0.9, 0.2]], [[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]]]
        ),
        proposal_scores=torch.tensor([[0.9, 0.5], [0.7, 0.1]]),
        image_sizes=torch.tensor([[100, 200], [50, 50]]),
    )
    out = proc.post_process_dense_caption(gen)
    assert [o["captions"] for o in out] == [["a red car", "two dogs"], ["the sky", "a tree"]]
    torch.testing.assert_close(out[0]["boxes"][1], torch.tensor([100.0, 20.0, 180.0, 40.0]))
    torch.testing.assert_close(out[1]["boxes"][0], torch.tensor([0.0, 0.0, 50.0, 50.0]))
    assert out[1]["scores"].tolist() == pytest.approx([0.7, 0.1])
    plain = proc.post_process_dense_caption(pad(caps[:2]), target_sizes=[(10, 20), (30, 40)])
    assert plain[1]["captions"] == ["two dogs"] and plain[1]["boxes"].tolist() == [[0, 0, 40, 30]]


def test_panoptic_is_delegated(proc):
    class_ids = torch.zeros(1, 8, 8, dtype=torch.long)
    class_ids[0, :4] = 3
    out = proc.post_process_panoptic_segmentation(
        {"class_ids": class_ids, "instance_ids": torch.zeros_like(class_ids)}, target_sizes=[(8, 8)]
    )
    assert out[0]["segmentation"].shape == (8, 8)
    assert [s["label_id"] for s in out[0]["segments_info"]] == [2]
