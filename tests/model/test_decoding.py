import pytest
import torch

from pixtok.model.decoding import DecodeResult, GenerationOptions, decode, grammar_for
from pixtok.model.vocab import EOS_ID, PAD_ID, PixtokVocab

VOCAB = PixtokVocab(base_vocab_size=40, num_bins=16, class_names=("cat", "dog", "bird"))
OPEN = PixtokVocab(base_vocab_size=40, num_bins=16, class_names=("cat", "dog"), open_vocabulary=True)


def random_step_fn(v: int, d: int = 8, seed: int = 0, eos_bias: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    calls = []

    def step(ids: torch.Tensor):
        calls.append(ids.clone())
        logits = torch.randn(ids.shape[0], v, generator=gen) * 3
        logits[:, EOS_ID] += eos_bias
        return logits, torch.randn(ids.shape[0], d, generator=gen)

    return step, calls


def parse_detection(seq: list[int], vocab: PixtokVocab) -> list[tuple[list[int], int]]:
    """Reference parser: whole objects or an AssertionError."""
    objects, i = [], 0
    while seq[i] != EOS_ID:
        coords = seq[i : i + 4]
        assert all(vocab.is_coord(t) for t in coords), seq
        cls = seq[i + 4]
        assert vocab.is_class(cls), (cls, seq)
        objects.append((coords, cls))
        i += 5
    assert all(t == PAD_ID for t in seq[i + 1 :])
    return objects


@pytest.mark.parametrize("do_sample", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_detection_sequences_always_parse_into_whole_objects(do_sample, seed):
    opts = GenerationOptions(do_sample=do_sample, eos_logit_offset=-2.0).for_task("detection", max_objects=7)
    step, _ = random_step_fn(VOCAB.size, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    res = decode(step, grammar_for("detection", VOCAB), 16, opts, "cpu", generator=gen)
    assert isinstance(res, DecodeResult)
    assert res.sequences.shape[1] <= opts.max_new_tokens == 36
    for row, length in zip(res.sequences.tolist(), res.lengths.tolist()):
        objects = parse_detection(row, VOCAB)
        assert len(objects) <= 7
        assert length == 5 * len(objects) + 1
        assert VOCAB.noise_id not in row


def test_budget_never_cuts_an_object():
    # EOS strongly discouraged: without the budget rule sequences would be cut mid-object.
    step, _ = random_step_fn(VOCAB.size, eos_bias=-50.0)
    opts = GenerationOptions(max_new_tokens=13, do_sample=True, top_p=1.0)
    res = decode(step, grammar_for("detection", VOCAB), 8, opts, "cpu")
    for row in res.sequences.tolist():
        assert len(parse_detection(row, VOCAB)) == 2  # 2 objects (10) + EOS fit in 13; 3 would not


def test_min_and_max_objects():
    step, _ = random_step_fn(VOCAB.size, eos_bias=50.0)  # EOS as early as allowed
    opts = GenerationOptions(min_objects=2, do_sample=False).for_task("detection", max_objects=5)
    res = decode(step, grammar_for("detection", VOCAB), 4, opts, "cpu")
    assert all(len(parse_detection(r, VOCAB)) == 2 for r in res.sequences.tolist())
    step, _ = random_step_fn(VOCAB.size, eos_bias=-50.0)
    opts = GenerationOptions(max_new_tokens=100, max_objects=3, do_sample=False)
    res = decode(step, grammar_for("detection", VOCAB), 4, opts, "cpu")
    assert all(len(parse_detection(r, VOCAB)) == 3 for r in res.sequences.tolist())


def test_scores_are_masked_softmax_probabilities_and_argmax_picks_the_best_legal():
    v = VOCAB.size
    logits = torch.zeros(2, v)
    logits[:, VOCAB.coord_offset + 3] = 5.0
    logits[:, 7] = 100.0  # a text token: illegal in detection, must not leak into the softmax

    def step(ids):
        return logits.clone(), torch.zeros(2, 4)

    opts = GenerationOptions(max_new_tokens=6, do_sample=False)
    res = decode(step, grammar_for("detection", VOCAB), 2, opts, "cpu")
    assert res.sequences[0, 0].item() == VOCAB.coord_offset + 3
    legal_first = VOCAB.num_bins + 1  # coords + EOS
    expected = torch.tensor(5.0).exp() / (torch.tensor(5.0).exp() + legal_first - 1)
    assert torch.allclose(res.token_scores[0, 0], expected)
    # class position: 3 legal classes and <noise> (score-only) with equal logits -> 1/4
    assert torch.allclose(res.token_scores[0, 4], torch.tensor(1 / 4))
    renormalized = GenerationOptions(max_new_tokens=6, do_sample=False, rank_against_noise=False)
    res = decode(step, grammar_for("detection", VOCAB), 2, renormalized, "cpu")
    assert torch.allclose(res.token_scores[0, 4], torch.tensor(1 / 3))  # over the real classes only


@pytest.mark.parametrize("do_sample", [False, True])
def test_an_object_called_noise_keeps_its_best_real_class_with_a_low_score(do_sample):
    """Pix2Seq's altered inference: ``<noise>`` is never written, but an object the model calls
    noise ranks by its best real class's probability against noise."""
    v = VOCAB.size
    logits = torch.zeros(2, v)
    logits[:, VOCAB.coord_offset + 3] = 5.0
    logits[0, VOCAB.noise_id] = 6.0  # row 0: "noise", with "dog" the best real class
    logits[:, VOCAB.class_offset + 1] = 2.0

    def step(ids):
        return logits.clone(), torch.zeros(2, 4)

    opts = GenerationOptions(max_new_tokens=6, do_sample=do_sample, top_p=0.4)
    gen = torch.Generator().manual_seed(0)
    res = decode(step, grammar_for("detection", VOCAB), 2, opts, "cpu", generator=gen)
    assert res.sequences[:, 4].tolist() == [VOCAB.class_offset + 1] * 2  # "dog", never <noise>
    e = torch.tensor([6.0, 2.0, 0.0, 0.0]).exp()  # noise, dog, cat, bird
    assert torch.allclose(res.token_scores[0, 4], e[1] / e.sum())  # ~0.018: ranked last
    e = torch.tensor([0.0, 2.0, 0.0, 0.0]).exp()
    assert torch.allclose(res.token_scores[1, 4], e[1] / e.sum())  # ~0.71


def test_eos_offset_and_temperature_change_choices():
    def step(ids):
        logits = torch.zeros(1, VOCAB.size)
        logits[0, VOCAB.coord_offset] = 1.0
        return logits, torch.zeros(1, 2)

    g = grammar_for("detection", VOCAB)
    base = decode(step, g, 1, GenerationOptions(max_new_tokens=11, do_sample=False), "cpu")
    assert base.sequences[0, 0].item() == VOCAB.coord_offset
    ended = decode(
        step, g, 1, GenerationOptions(max_new_tokens=11, do_sample=False, eos_logit_offset=2.0), "cpu"
    )
    assert ended.sequences[0].tolist() == [EOS_ID] and ended.lengths.tolist() == [1]
    hot = decode(step, g, 1, GenerationOptions(max_new_tokens=11, do_sample=False, temperature=10.0), "cpu")
    assert hot.token_scores[0, 0] < base.token_scores[0, 0]


def test_nucleus_sampling_keeps_only_the_top_mass():
    def step(ids):
        logits = torch.full((64, VOCAB.size), -10.0)
        logits[:, VOCAB.coord_offset + 1] = 3.0  # ~0.73 of the mass
        logits[:, VOCAB.coord_offset + 2] = 2.0
        return logits, torch.zeros(64, 1)

    opts = GenerationOptions(max_new_tokens=6, do_sample=True, top_p=0.4)
    res = decode(
        step, grammar_for("detection", VOCAB), 64, opts, "cpu", generator=torch.Generator().manual_seed(1)
    )
    assert set(res.sequences[:, :4].flatten().tolist()) == {VOCAB.coord_offset + 1}
    opts = GenerationOptions(max_new_tokens=6, do_sample=True, top_p=0.99)
    res = decode(
        step, grammar_for("detection", VOCAB), 64, opts, "cpu", generator=torch.Generator().manual_seed(1)
    )
    assert VOCAB.coord_offset + 2 in res.sequences[:, :4].flatten().tolist()


def test_referring_and_caption_grammars():
    step, calls = random_step_fn(VOCAB.size, d=3)
    res = decode(step, grammar_for("referring", VOCAB), 5, GenerationOptions().for_task("referring"), "cpu")
    assert res.sequences.shape == (5, 5) and res.hidden_states.shape == (5, 5, 3)
    assert all(VOCAB.is_coord(t) for t in res.sequences[:, :4].flatten().tolist())
    assert (res.sequences[:, 4] == EOS_ID).all()
    assert calls[0].flatten().tolist() == [0] * 5 and torch.equal(calls[1].squeeze(1), res.sequences[:, 0])

    for task in ("caption", "region_caption"):
        step, _ = random_step_fn(VOCAB.size, seed=3)
        opts = GenerationOptions(do_sample=True, top_p=1.0).for_task(task)
        res = decode(step, grammar_for(task, VOCAB, banned_ids=[39]), 6, opts, "cpu")
        for row, length in zip(res.sequences.tolist(), res.lengths.tolist()):
            body = row[: length - 1]
            assert row[length - 1] == EOS_ID and len(body) >= 1
            assert all(VOCAB.is_text(t) and t != 39 for t in body)


def test_open_vocabulary_detection_grammar():
    step, _ = random_step_fn(OPEN.size, seed=5, eos_bias=-1.0)
    opts = GenerationOptions(max_new_tokens=40, do_sample=True, top_p=1.0)
    res = decode(
        step, grammar_for("detection", OPEN), 8, opts, "cpu", generator=torch.Generator().manual_seed(0)
    )
    for row in res.sequences.tolist():
        i = 0
        while row[i] != EOS_ID:
            assert all(OPEN.is_coord(t) for t in row[i : i + 4])
            i += 4
            assert OPEN.is_text(row[i])  # at least one name piece
            while OPEN.is_text(row[i]):
                i += 1
        assert all(t == PAD_ID for t in row[i + 1 :])


def test_stops_early_and_pads_after_eos():
    calls = []

    def step(ids):
        calls.append(1)
        logits = torch.zeros(3, VOCAB.size)
        logits[:, EOS_ID] = 10.0
        if len(calls) == 1:
            logits[0, EOS_ID] = -10.0  # row 0 starts an object, then ends at the next boundary
        return logits, torch.zeros(3, 2)

    res = decode(
        step, grammar_for("detection", VOCAB), 3, GenerationOptions(max_new_tokens=50, do_sample=False), "cpu"
    )
    assert len(calls) == 6 and res.sequences.shape == (3, 6)
    assert res.sequences[1].tolist() == [EOS_ID] + [PAD_ID] * 5
    assert res.lengths.tolist() == [6, 1, 1]
    assert (res.token_scores[1, 1:] == 0).all()


def test_wider_logits_and_bad_options():
    step, _ = random_step_fn(VOCAB.size + 24)  # LM head padded past the last id
    res = decode(step, grammar_for("detection", VOCAB), 4, GenerationOptions(max_new_tokens=16), "cpu")
    assert (res.sequences < VOCAB.size).all()
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(step, grammar_for("caption", VOCAB), 1, GenerationOptions(max_new_tokens=1), "cpu")
    with pytest.raises(ValueError, match="temperature"):
        GenerationOptions(max_new_tokens=3, temperature=0).validate()
    with pytest.raises(ValueError, match="no token grammar"):
        grammar_for("panoptic", VOCAB)
    narrow, _ = random_step_fn(VOCAB.size - 1)
    with pytest.raises(ValueError, match="grammar needs"):
        decode(narrow, grammar_for("detection", VOCAB), 1, GenerationOptions(max_new_tokens=6), "cpu")


def test_task_defaults():
    det = GenerationOptions().for_task("detection")
    assert det.do_sample and det.top_p == 0.4 and det.max_new_tokens == 501 and det.max_objects == 100
    cap = GenerationOptions().for_task("caption")
    assert cap.do_sample is False and cap.max_objects is None
