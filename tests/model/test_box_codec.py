import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pixtok.model.box_codec import DetectionCodec, decode_open_vocabulary, encode_open_vocabulary
from pixtok.model.vocab import EOS_ID, PAD_ID, PixtokVocab

VOCAB = PixtokVocab(base_vocab_size=50, num_bins=1000, class_names=tuple(f"c{i}" for i in range(80)))
COCO = Path("/work/shared/data/coco_tiny_train/annotations/instances_train2017.json")

sizes = st.tuples(st.integers(1, 2000), st.integers(1, 2000))


def random_boxes(rng, n, h, w):
    xy = rng.random((n, 2)) * [w, h]
    wh = rng.random((n, 2)) * [w, h] * 0.5 + 1
    return np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)


@settings(max_examples=60, deadline=None)
@given(size=sizes, data=st.data(), num_bins=st.integers(2, 2000))
def test_round_trip_error_is_at_most_half_a_bin(size, data, num_bins):
    h, w = size
    vocab = PixtokVocab(base_vocab_size=10, num_bins=num_bins, class_names=("a", "b"))
    codec = DetectionCodec(vocab)
    n = data.draw(st.integers(1, 20))
    unit = data.draw(arrays(np.float64, (n, 4), elements=st.floats(0, 1)))
    x = np.sort(unit[:, [0, 2]], axis=1) * w
    y = np.sort(unit[:, [1, 3]], axis=1) * h
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = np.arange(n) % 2
    ids, stats = codec.encode(boxes, labels, (h, w))
    assert stats.dropped_empty == int((~keep).sum()) and ids[-1] == EOS_ID
    out = codec.decode(ids, (h, w))
    half_bin = 0.5 * max(h, w) / num_bins
    assert out["boxes"].shape == (int(keep.sum()), 4)
    np.testing.assert_allclose(out["boxes"], boxes[keep], atol=half_bin * (1 + 1e-6) + 1e-3)
    np.testing.assert_array_equal(out["labels"], labels[keep])


def test_token_layout_and_given_order():
    codec = DetectionCodec(VOCAB)
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 50.0]])
    ids, _ = codec.encode(boxes, [3, 7], (50, 100))  # h=50, w=100: scale 100
    c = VOCAB.coord_offset
    assert ids.tolist() == [c + 200, c + 100, c + 400, c + 300, VOCAB.class_token(3)] + [
        c + 0,
        c + 0,
        c + 500,
        c + 999,
        VOCAB.class_token(7),
        EOS_ID,
    ]


def test_clipping_dropping_and_counts():
    codec = DetectionCodec(VOCAB)
    boxes = np.array(
        [
            [-5, -5, 20, 20],  # clipped
            [5, 5, 5, 30],  # zero width
            [np.nan, 0, 10, 10],  # NaN
            [10, 10, 5, 20],  # inverted
            [90, 90, 200, 95],  # clipped on the right
            [200, 200, 300, 300],  # entirely outside: empty after clipping
            [1, 2, 3, 4],  # fine
        ],
        dtype=float,
    )
    ids, stats = codec.encode(boxes, np.zeros(7, dtype=int), (100, 100))
    assert stats.as_dict() == {
        "clipped": 2,
        "dropped_nonfinite": 1,
        "dropped_empty": 3,
        "dropped_over_max": 0,
    }
    out = codec.decode(ids, (100, 100))
    np.testing.assert_allclose(out["boxes"], [[0, 0, 20, 20], [90, 90, 100, 95], [1, 2, 3, 4]], atol=0.0501)


def test_bad_labels_and_sizes_raise_clearly():
    codec = DetectionCodec(VOCAB)
    with pytest.raises(ValueError, match="80 classes"):
        codec.encode(np.array([[0, 0, 1, 1.0]]), [80], (10, 10))
    with pytest.raises(ValueError, match="one label per box"):
        codec.encode(np.array([[0, 0, 1, 1.0]]), [1, 2], (10, 10))
    with pytest.raises(ValueError, match="positive"):
        codec.encode(np.array([[0, 0, 1, 1.0]]), [1], (0, 10))
    with pytest.raises(ValueError, match="ordering"):
        DetectionCodec(VOCAB, ordering="bigfirst")


def test_random_ordering_reshuffles_and_subsamples_uniformly():
    codec = DetectionCodec(VOCAB, max_objects=10)
    rng = np.random.default_rng(0)
    boxes = [np.stack([np.arange(30.0), np.zeros(30), np.arange(30.0) + 1, np.ones(30)], axis=1)]
    labels = [np.arange(30) % 80]
    seen_first, seen_any = set(), np.zeros(30)
    for _ in range(200):
        seq = codec.build_training_batch(boxes, labels, [(100, 100)], rng, augment=False)
        assert seq.stats.dropped_over_max == 20 and seq.lengths[0] == 51
        labs = seq.tokens[0, 4:50:5] - VOCAB.class_offset
        assert len(set(labs.tolist())) == 10
        seen_first.add(int(labs[0]))
        seen_any[labs] += 1
    assert len(seen_first) > 15  # not a fixed order
    assert seen_any.min() > 30  # every object, late ones too, gets picked (~67 expected)


def test_area_and_distance_orderings():
    boxes = [np.array([[50, 50, 60, 60], [0, 0, 40, 40], [10, 10, 30, 30], [5, 0, 6, 1]], dtype=float)]
    labels = [np.array([0, 1, 2, 3])]
    rng = np.random.default_rng(0)
    area = DetectionCodec(VOCAB, ordering="area").build_training_batch(
        boxes, labels, [(100, 100)], rng, augment=False
    )
    assert (area.tokens[0, 4:20:5] - VOCAB.class_offset).tolist() == [1, 2, 0, 3]
    dist = DetectionCodec(VOCAB, ordering="distance").build_training_batch(
        boxes, labels, [(100, 100)], rng, augment=False
    )
    assert (dist.tokens[0, 4:20:5] - VOCAB.class_offset).tolist() == [1, 3, 2, 0]


def test_sequence_augmentation_layout_and_weights():
    codec = DetectionCodec(VOCAB, max_objects=20, eos_weight=0.1)
    rng = np.random.default_rng(1)
    batch_boxes = [random_boxes(rng, n, 480, 640) for n in (3, 0, 20, 7)]
    batch_labels = [rng.integers(0, 80, len(b)) for b in batch_boxes]
    seq = codec.build_training_batch(batch_boxes, batch_labels, [(480, 640)] * 4, rng)
    assert seq.tokens.shape == seq.weights.shape == (4, 101)
    assert (seq.lengths == 101).all() and (seq.tokens[:, 100] == EOS_ID).all()
    np.testing.assert_array_equal(seq.num_real, [3, 0, 20, 7])
    np.testing.assert_allclose(seq.weights[:, 100], 0.1)
    obj_tokens = seq.tokens[:, :100].reshape(4, 20, 5)
    obj_weights = seq.weights[:, :100].reshape(4, 20, 5)
    for b, n in enumerate(seq.num_real):
        assert (obj_tokens[b, :n, 4] != VOCAB.noise_id).all()
        assert (obj_tokens[b, n:, 4] == VOCAB.noise_id).all()
        assert (obj_weights[b, :n] == 1).all()
        assert (obj_weights[b, n:, :4] == 0).all() and (obj_weights[b, n:, 4] == 1).all()
    coords = obj_tokens[..., :4] - VOCAB.coord_offset
    assert ((coords >= 0) & (coords < 1000)).all()
    # Noise boxes stay inside the image content (h/w = 0.75 of the padded square).
    assert (coords[..., [0, 2]] <= 750).all()
    # Noise decodes like any object once relabelled; real objects are unchanged by augmentation.
    plain = codec.build_training_batch(batch_boxes, batch_labels, [(480, 640)] * 4, rng, augment=False)
    assert plain.tokens.shape == (4, 101) and (plain.lengths == 5 * np.array([3, 0, 20, 7]) + 1).all()


def test_duplicates_are_jittered_copies_of_real_boxes():
    codec = DetectionCodec(VOCAB, max_objects=400, duplicate_fraction=1.0, noise_jitter=0.05)
    rng = np.random.default_rng(2)
    box = np.array([[200.0, 300.0, 400.0, 500.0]])
    seq = codec.build_training_batch([box], [np.array([5])], [(1000, 1000)], rng)
    noise = seq.tokens[0, 5:-1].reshape(-1, 5)[:, :4] - VOCAB.coord_offset  # ymin xmin ymax xmax bins
    delta = noise - np.array([300, 200, 500, 400])
    assert np.abs(delta).max() <= 2 * 0.05 * 200 + 1  # truncated at 2 sigma, sigma = 0.05 * 200 px
    assert 6 < delta.std() < 12  # sigma ~ 10 bins (slightly less: truncation)


def test_decode_of_any_sequence_never_raises_and_gives_valid_boxes():
    codec = DetectionCodec(VOCAB)

    @settings(max_examples=150, deadline=None)
    @given(
        tokens=arrays(np.int64, st.integers(0, 60), elements=st.integers(-5, VOCAB.size + 5)),
        size=sizes,
    )
    def check(tokens, size):
        h, w = size
        out = codec.decode(tokens, (h, w))
        b = out["boxes"]
        assert b.shape == (len(out["labels"]), 4) and len(out["scores"]) == len(b)
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert ((out["labels"] >= 0) & (out["labels"] < 80)).all()

    check()


def test_decode_stops_at_eos_skips_noise_and_uses_class_scores():
    codec = DetectionCodec(VOCAB)
    c = VOCAB.coord_offset
    obj = [c + 1, c + 2, c + 3, c + 4]
    tokens = np.array(
        obj
        + [VOCAB.class_token(1)]
        + obj
        + [VOCAB.noise_id]
        + obj
        + [VOCAB.class_token(2), EOS_ID]
        + obj
        + [c + 9]
    )
    scores = np.linspace(0, 1, len(tokens))
    out = codec.decode(tokens, (100, 100), scores)
    assert out["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(out["scores"], scores[[4, 14]], rtol=1e-6)
    batch = codec.decode_batch(np.stack([tokens, np.full_like(tokens, PAD_ID)]), [(100, 100), (5, 5)])
    assert len(batch[1]["boxes"]) == 0


def test_open_vocabulary_round_trip():
    vocab = PixtokVocab(base_vocab_size=50, num_bins=100, open_vocabulary=True)
    boxes = np.array([[10.0, 10.0, 50.0, 30.0], [0.0, 0.0, 99.0, 99.0]])
    ids = encode_open_vocabulary(vocab, boxes, [[7, 8], [9]], (100, 100))
    assert ids[-1] == EOS_ID and len(ids) == 4 + 2 + 4 + 1 + 1
    out = decode_open_vocabulary(vocab, ids, (100, 100))
    assert [pieces for _, pieces, _ in out] == [[7, 8], [9]]
    np.testing.assert_allclose(np.stack([b for b, _, _ in out]), boxes, atol=0.5 + 1e-4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        for box, _, _ in decode_open_vocabulary(vocab, rng.integers(0, vocab.size, 30), (40, 70)):
            assert box[0] <= box[2] <= 70 and box[1] <= box[3] <= 40 and (box >= 0).all()


@pytest.mark.skipif(not COCO.exists(), reason="real COCO sample not available")
def test_real_coco_sample_round_trips_within_half_a_pixel():
    data = json.loads(COCO.read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    to_label = {cid: i for i, cid in enumerate(cat_ids)}
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[int, list] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    codec = DetectionCodec(VOCAB)
    worst, total = 0.0, 0
    for image_id, anns in per_image.items():
        im = images[image_id]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([to_label[a["category_id"]] for a in anns])
        ids, stats = codec.encode(boxes, labels, (im["height"], im["width"]))
        out = codec.decode(ids, (im["height"], im["width"]))
        keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        assert stats.dropped_empty + stats.dropped_nonfinite == int((~keep).sum())
        clipped = np.clip(boxes[keep], 0, [im["width"], im["height"]] * 2)
        worst = max(worst, float(np.abs(out["boxes"] - clipped).max()))
        np.testing.assert_array_equal(out["labels"], labels[keep])
        total += int(keep.sum())
    assert total > 600
    assert worst <= 0.5


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    size=sizes,
    max_objects=st.integers(1, 12),
    ordering=st.sampled_from(["random", "area", "distance", "given"]),
)
def test_training_batches_from_messy_boxes_always_decode_to_the_kept_real_objects(
    data, size, max_objects, ordering
):
    h, w = size
    codec = DetectionCodec(VOCAB, max_objects=max_objects, ordering=ordering)
    coord = st.one_of(st.floats(-500, 2500), st.just(float("nan")), st.just(float("inf")))
    batch = data.draw(st.integers(1, 4))
    boxes = [
        data.draw(arrays(np.float64, (data.draw(st.integers(0, 15)), 4), elements=coord))
        for _ in range(batch)
    ]
    labels = [np.arange(len(b)) % 80 for b in boxes]
    seq = codec.build_training_batch(boxes, labels, [(h, w)] * batch, np.random.default_rng(0))
    stats = seq.stats
    assert stats.dropped_nonfinite + stats.dropped_empty + stats.dropped_over_max + int(
        seq.num_real.sum()
    ) == sum(len(b) for b in boxes)
    assert (seq.lengths == 5 * max_objects + 1).all()
    for b, out in enumerate(codec.decode_batch(seq.tokens, [(h, w)] * batch)):
        assert len(out["boxes"]) == seq.num_real[b]  # noise objects are not detections
        bx = out["boxes"]
        assert (bx[:, 0] <= bx[:, 2]).all() and (bx[:, 2] <= w).all() and (bx[:, 3] <= h).all()
