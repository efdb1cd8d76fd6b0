import json

import pytest

from pixtok.model.build_tiny_tokenizer import TINY_BASE_VOCAB_SIZE, build_tokenizer
from pixtok.model.tokenization_pixtok import TINY_TOKENIZER_DIR, add_pixtok_tokens, load_tokenizer
from pixtok.model.vocab import EOS_ID, PAD_ID, UNK_ID, PixtokVocab

COCO_NAMES = tuple(f"class{i}" for i in range(80))


@pytest.fixture(scope="module")
def vocab():
    return PixtokVocab(base_vocab_size=TINY_BASE_VOCAB_SIZE, num_bins=1000, class_names=COCO_NAMES)


@pytest.fixture(scope="module")
def tok(vocab):
    return load_tokenizer("pixtok-tiny", vocab)


def test_tiny_tokenizer_has_t5_specials_and_exact_base_size(tok, vocab):
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD_ID, EOS_ID, UNK_ID)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert len(tok) == vocab.size == TINY_BASE_VOCAB_SIZE + 1000 + 80 + 1 + 6
    vocab.check_tokenizer(tok)


def test_location_tokens_survive_intact(tok, vocab):
    ids = tok("<loc_12><loc_999>", add_special_tokens=False).input_ids
    assert ids == [vocab.coord_offset + 12, vocab.coord_offset + 999]
    assert tok.decode(ids) == "<loc_12><loc_999>"
    ids = tok("<task_detection> a cat <cls_3><noise>", add_special_tokens=False).input_ids
    assert ids[0] == vocab.task_id("detection") and ids[-2:] == [vocab.class_token(3), vocab.noise_id]


def test_english_round_trips_with_eos_appended(tok):
    text = "A red cat is to the left of the blue car."
    ids = tok(text).input_ids
    assert ids[-1] == EOS_ID and UNK_ID not in ids
    assert len(ids) <= 14  # common words are single pieces, not characters
    assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(tok("giraffe on the right", add_special_tokens=False).input_ids)
    assert pieces == ["▁giraffe", "▁on", "▁the", "▁right"]


def test_wrong_base_size_is_a_clear_error():
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))
    with pytest.raises(ValueError, match="base_vocab_size=32100"):
        add_pixtok_tokens(base, PixtokVocab(base_vocab_size=32100, num_bins=10))


def test_adding_twice_is_idempotent(tok, vocab):
    assert add_pixtok_tokens(tok, vocab) is tok and len(tok) == vocab.size


def test_shipped_file_is_what_the_builder_produces():
    shipped = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    built = json.loads(build_tokenizer().to_str())
    assert shipped["model"]["vocab"] == built["model"]["vocab"]
    assert len(shipped["model"]["vocab"]) == TINY_BASE_VOCAB_SIZE


def test_a_t5_tokenizer_with_sentinels_gets_the_same_tokens():
    from transformers import T5Tokenizer

    from pixtok.model.decoding import grammar_for
    from pixtok.model.tokenization_pixtok import non_text_base_ids

    pieces = [
        tuple(p) for p in json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    ]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=100)  # transformers' own T5 class, as a real preset loads
    base = len(t5)
    assert base == TINY_BASE_VOCAB_SIZE + 100
    vocab = PixtokVocab(base_vocab_size=base, num_bins=1000, class_names=("cat", "dog"))
    add_pixtok_tokens(t5, vocab)
    vocab.check_tokenizer(t5)
    assert t5("<loc_12><loc_999>", add_special_tokens=False).input_ids == [base + 12, base + 999]
    sentinels = non_text_base_ids(t5, vocab)
    assert len(sentinels) == 100 and all(
        t5.convert_ids_to_tokens(i).startswith("<extra_id_") for i in sentinels
    )
    caption = grammar_for("caption", vocab, banned_ids=sentinels)
    assert not caption.allowed[:, sentinels].any() and caption.allowed[0, 3:TINY_BASE_VOCAB_SIZE].all()
