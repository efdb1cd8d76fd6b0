"""Load a base T5-style tokenizer and give it the pixtok tokens.

The ``tiny`` preset names its tokenizer :data:`TINY_TOKENIZER_NAME` (``"pixtok-tiny"``): the 2048-entry
Unigram tokenizer shipped in ``assets/pixtok-tiny/`` (regenerate it with
``python -m pixtok.model.build_tiny_tokenizer``). Any other name is a T5/Flan-T5 tokenizer hub id or
folder, loaded with ``AutoTokenizer.from_pretrained``. Either way the base size is ``len(tokenizer)``
before pixtok adds its tokens (32100 for T5), and :meth:`PixtokVocab.check_tokenizer` must pass after.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .vocab import PixtokVocab

TINY_TOKENIZER_NAME = "pixtok-tiny"
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / TINY_TOKENIZER_NAME


def resolve_tokenizer_path(name_or_path: str | Path) -> str:
    """``"pixtok-tiny"`` → the shipped asset folder; anything else is returned unchanged."""
    return str(TINY_TOKENIZER_DIR) if str(name_or_path) == TINY_TOKENIZER_NAME else str(name_or_path)


def add_pixtok_tokens(tokenizer: PreTrainedTokenizerBase, vocab: PixtokVocab) -> PreTrainedTokenizerBase:
    """Append ``vocab.added_tokens()`` to ``tokenizer`` as special tokens (in place) and check the ids.

    A tokenizer that already carries them (e.g. saved with a processor) is only checked.

    Raises:
        ValueError: the base size differs from ``vocab.base_vocab_size``, or ids do not line up.
    """
    if len(tokenizer) == vocab.size:
        vocab.check_tokenizer(tokenizer)
        return tokenizer
    if len(tokenizer) != vocab.base_vocab_size:
        raise ValueError(
            f"the base tokenizer has {len(tokenizer)} entries but the config says base_vocab_size="
            f"{vocab.base_vocab_size} (a pixtok vocabulary would have {vocab.size}); use the tokenizer the "
            "config was built for"
        )
    tokens = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
        for t in vocab.added_tokens()
    ]
    tokenizer.add_tokens(tokens, special_tokens=True)
    vocab.check_tokenizer(tokenizer)
    return tokenizer


def non_text_base_ids(tokenizer: PreTrainedTokenizerBase, vocab: PixtokVocab) -> list[int]:
    """Special ids inside the base range other than pad/eos/unk (T5's ``<extra_id_*>`` sentinels).

    Pass them as ``banned_ids`` to :func:`.decoding.grammar_for` so captions never contain them.
    """
    return sorted(
        {i for i in tokenizer.all_special_ids if vocab.is_text(i)}
        | {i for t, i in tokenizer.get_vocab().items() if t.startswith("<extra_id_") and vocab.is_text(i)}
    )


def load_tokenizer(name_or_path: str | Path, vocab: PixtokVocab, **kwargs) -> PreTrainedTokenizerBase:
    """Load the base tokenizer ``name_or_path`` (or ``"pixtok-tiny"``) and add the pixtok tokens.

    Args:
        name_or_path: ``"pixtok-tiny"``, a hub id (``"google/flan-t5-xl"``) or a local folder.
        vocab: the token space the tokenizer must agree with.
        **kwargs: passed to ``AutoTokenizer.from_pretrained``.
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_path(name_or_path), **kwargs)
    return add_pixtok_tokens(tokenizer, vocab)


__all__ = [
    "TINY_TOKENIZER_DIR",
    "TINY_TOKENIZER_NAME",
    "add_pixtok_tokens",
    "load_tokenizer",
    "non_text_base_ids",
    "resolve_tokenizer_path",
]
