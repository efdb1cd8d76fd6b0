"""Regenerate the tiny offline tokenizer shipped in ``assets/pixtok-tiny/``.

``python -m pixtok.model.build_tiny_tokenizer [out_dir]`` builds a T5-style Unigram (sentencepiece
"▁" word-boundary) tokenizer with the ``tokenizers`` library from a small English corpus generated
here from fixed word lists with a fixed seed, so the result is the same on every machine. It has
exactly :data:`TINY_BASE_VOCAB_SIZE` entries, T5's special ids (pad 0 ``<pad>``, eos 1 ``</s>``,
unk 2 ``<unk>``) and T5's post-processing (``</s>`` appended to every encoded text). pixtok's own
tokens (``<loc_k>``, ``<cls_c>``, ``<noise>``, ``<task_*>``) are *not* stored: they depend on the
config and are added at load time (``processing_pixtok.load_tokenizer``).
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .presets import COCO_CLASSES
from .tokenization_pixtok import TINY_TOKENIZER_DIR

TINY_BASE_VOCAB_SIZE = 2048
"""Entries of the tiny base tokenizer; the ``tiny`` preset's ``base_vocab_size``."""

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's convention
_WORD_RE = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")


def _word_list(text: str) -> list[str]:
    """Whitespace-separated words (the lists below read best as text)."""
    return text.split()


COLOURS = _word_list(
    "red green blue yellow orange purple pink brown black white gray grey silver gold beige dark light"
)

SHAPES = _word_list(
    "round square rectangular circular triangular long short tall small large big tiny huge wide narrow"
)

SPATIAL = _word_list(
    "left right above below top bottom middle center centre front behind back near far next beside "
    "between under over inside outside corner edge side upper lower background foreground closest "
    "farthest"
)

NUMBERS = _word_list(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred first second third fourth "
    "fifth several"
)

TASK_WORDS = _word_list(
    "detect detection objects object caption describe description image picture photo region regions "
    "find locate referring segment segmentation mask box boxes point points dense panoptic what where "
    "which who this that these those is are there"
)

COMMON = _word_list(
    "the a an and or of in on at to with without for from by is are was were be been being has have "
    "had it its he she they we you i his her their our my your man woman men women boy girl child "
    "children people player players baby lady guy group team crowd table room street road sky water "
    "grass tree trees field wall floor window door building house city beach snow mountain park "
    "sidewalk plate food shirt hat jacket hand hands head face hair eyes arm legs sign pole fence "
    "light lights grassy sandy sitting standing walking running holding looking wearing riding eating "
    "playing lying flying parked smiling carrying waiting throwing catching watching hanging covered "
    "filled made open closed empty some many other another each all few both very also just only then "
    "while near view shows showing can see seen visible image picture appears looks some person's "
    "little old young new white-haired wooden metal plastic glass paper stone brick concrete dirty "
    "clean sunny cloudy bright shiny fluffy down up out into onto through across along around toward"
)

SCENE_NOUNS = _word_list(
    "airport animal apartment area arrow bag ball balloon bank basket bathroom bicycle bike blanket "
    "board boot bottle branch bread bridge bucket bush cabinet candle cap carpet cart ceiling chain "
    "cheese church cloud coat collar computer container counter cushion desk dish display dress drink "
    "egg engine fabric fan feather fish flag flower fountain frame fruit garden gate glove goat grill "
    "ground hill horn jar jeans kitchen lake lamp land leaf lid line logo market meat mirror monitor "
    "motorbike napkin neck net nose ocean painting pan pants path pen pillow pipe plane plant pocket "
    "pot rail railing rock roof rope rug sand sauce screen sea seat shadow shelf shoe shore shorts "
    "sink skirt sock sofa speaker stairs station statue stick store stripe suit surface sweater tail "
    "tent tile tire tower towel toy track trail tray truck trunk tshirt vegetable vehicle wave wheel "
    "wing wire word writing yard"
)

SCENE_VERBS = _word_list(
    "sit stand walk run hold look wear ride eat play lie fly park smile carry wait throw catch watch "
    "hang cover fill open close jump swim drive push pull cut cook read write talk climb lean rest "
    "reach grab kick hit skate surf ski serve pose point show face cross follow"
)


def training_corpus(num_sentences: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences covering every word list above (and digits)."""
    rng = random.Random(seed)
    nouns = list(COCO_CLASSES)
    lines = [" ".join(group) for group in (nouns, COLOURS, SHAPES, SPATIAL, NUMBERS, TASK_WORDS, COMMON)]
    lines += ["0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) -"]
    lines += [" ".join(str(i) for i in range(k, k + 50)) for k in range(0, 3000, 50)]
    # Word forms a captioner writes: plurals, verb forms, capitalized sentence starts.
    plurals = [n + ("es" if n.endswith(("s", "sh", "ch", "x")) else "s") for n in nouns + SCENE_NOUNS]
    verb_forms = [f"{v}s {v}ing {v}ed" for v in SCENE_VERBS]
    degrees = [f"{a}er {a}est" for a in COLOURS[:8] + SHAPES[4:] if not a.endswith("e")]
    everything = nouns + SCENE_NOUNS + COLOURS + SHAPES + SPATIAL + NUMBERS + TASK_WORDS + COMMON
    forms = [
        " ".join(plurals),
        " ".join(verb_forms),
        " ".join(degrees),
        " ".join(w.capitalize() for w in everything),
    ]
    lines += forms * 3
    verbs = [w for w in COMMON if w.endswith("ing")]
    templates = (
        "{A} {c} {n} is {s} of the {n2}.",
        "There are {k} {n}s {p} the {n2}.",
        "{A} {sh} {c} {n} {v} {p} {a} {n2}",
        "In this image we can see {a} {n} {v} near the {c} {n2}.",
        "detect the {n} on the {s}",
        "Describe the {sh} {n} in the {s} {p2} corner.",
        "{N} {n} {v}, {a} {c} {n2} in the background and {k} {n3}s.",
        "find the {c} {n} {p} the {n2}",
    )
    for _ in range(num_sentences):
        words = {
            "n": rng.choice(nouns),
            "n2": rng.choice(nouns + SCENE_NOUNS),
            "n3": rng.choice(nouns),
            "c": rng.choice(COLOURS),
            "sh": rng.choice(SHAPES),
            "s": rng.choice(SPATIAL),
            "p": rng.choice(("above", "below", "next to", "behind", "in front of", "on top of", "under")),
            "p2": rng.choice(("upper", "lower", "top", "bottom")),
            "k": rng.choice(NUMBERS[2:20] + [str(rng.randint(2, 99))]),
            "v": rng.choice(verbs),
            "a": rng.choice(("a", "the", "an", "one", "some")),
        }
        sentence = rng.choice(templates).format(A=words["a"].capitalize(), N=words["a"].capitalize(), **words)
        extra = " ".join(rng.sample(COMMON, 4))
        lines.append(f"{sentence} {extra}")
    return lines


def _normalized_pretokenized(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def _piece_counts(corpus: list[str], max_piece_length: int) -> tuple[Counter, Counter]:
    """Counts of whole-word pieces (``▁word``, punctuation on its own) and of their substrings."""
    words: Counter = Counter()
    for line in corpus:
        for match in _WORD_RE.finditer(line):
            start = match.start()
            words[("▁" if start == 0 or line[start - 1] == " " else "") + match.group()] += 1
    substrings: Counter = Counter()
    for word, count in words.items():
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + max_piece_length) + 1):
                substrings[word[i:j]] += count
    return words, substrings


def build_tokenizer(
    vocab_size: int = TINY_BASE_VOCAB_SIZE, seed: int = 0, max_piece_length: int = 12
) -> Tokenizer:
    """Estimate the tiny Unigram tokenizer, with exactly ``vocab_size`` entries, from piece counts.

    The pieces are the special tokens, every character of the corpus (so any text of those
    characters stays encodable; others map to ``<unk>``), then the most frequent whole words
    (``▁word``), then the most frequent sub-word pieces; each piece scores ``log(count / total)``,
    the Unigram model's log-probability, so Viterbi segmentation prefers whole known words.
    (``tokenizers``' ``UnigramTrainer`` was tried first: on a corpus this small its EM split common
    words such as "is" and "left" into characters, and its float sums vary with thread scheduling,
    so the file was not reproducible byte for byte.)
    """
    corpus = training_corpus(seed=seed)
    words, substrings = _piece_counts(corpus, max_piece_length)
    chars: Counter = Counter()
    for word, count in words.items():
        for ch in word:
            chars[ch] += count
    by_count = sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))
    room = vocab_size - len(SPECIAL_TOKENS) - len(chars)
    chosen = {w: c for w, c in by_count if len(w) > 1}
    chosen = dict(list(chosen.items())[: max(room, 0) * 3 // 4])
    for piece, count in sorted(substrings.items(), key=lambda pc: (-pc[1], pc[0])):
        if len(chosen) >= room:
            break
        chosen.setdefault(piece, count)
    if len(chosen) < room:
        raise RuntimeError(f"the corpus yields {len(chosen) + len(chars)} pieces, fewer than {vocab_size}")
    total = float(sum(chosen.values()))
    ranked = sorted(chosen.items(), key=lambda pc: (-pc[1], pc[0]))
    scores = [(piece, math.log(count / total)) for piece, count in ranked]
    # Single characters are the fallback for unseen words: scored below every longer piece (their raw
    # counts, summed over all words, would otherwise make "▁" + "a" beat "▁a").
    char_score = scores[-1][1] - 1.0
    scores += [
        (ch, char_score - i * 1e-3)
        for i, (ch, _) in enumerate(sorted(chars.items(), key=lambda cc: (-cc[1], cc[0])))
    ]
    unk_score = char_score - 10.0
    vocab = [(SPECIAL_TOKENS[0], 0.0), (SPECIAL_TOKENS[1], 0.0), (SPECIAL_TOKENS[2], unk_score), *scores]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"built {tokenizer.get_vocab_size()} entries, expected {vocab_size}")
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, expected {expected}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer


def save_tiny_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR, seed: int = 0) -> Path:
    """Train and write ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(seed=seed).save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = save_tiny_tokenizer(args[0] if args else TINY_TOKENIZER_DIR)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()


__all__ = [
    "SCENE_NOUNS",
    "SCENE_VERBS",
    "TINY_BASE_VOCAB_SIZE",
    "build_tokenizer",
    "main",
    "save_tiny_tokenizer",
    "training_corpus",
]
