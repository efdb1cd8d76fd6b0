"""Caption metrics with the COCO caption evaluation protocol (coco-caption), implemented here.

Protocol (as ``pycocoevalcap`` runs it; no dependency on it):

1. Tokenize every candidate and reference like coco-caption's ``PTBTokenizer`` (Stanford PTB
   tokenizer, ``-lowerCase``, then punctuation tokens dropped): :func:`ptb_tokenize`.
2. BLEU-1…4: corpus-level, n-gram counts clipped by the max count in any reference, the brevity
   penalty from the reference length *closest* to each candidate, summed over the corpus
   (``tiny = 1e-15``, ``small = 1e-9`` smoothing as coco-caption).
3. ROUGE-L: per image, LCS precision and recall against each reference, the max of each over the
   references, F-measure with beta = 1.2; mean over images.
4. CIDEr-D: TF-IDF n-gram vectors (n = 1…4) with document frequencies counted over the evaluated
   references (one document per image), clipped candidate weights, Gaussian length penalty with
   sigma = 6 on the difference of *bigram* counts (as coco-caption's code does), averaged over
   n and references, ×10 (the number papers print is this ×100 / 10, e.g. 1.2 → "120").
5. METEOR 1.5 through Java (``java -jar meteor-1.5.jar - - -stdio -l en -norm``) when Java and
   the jar are available; otherwise ``None`` and the reason in ``"METEOR_note"``.

Inputs everywhere: ``candidates`` — one string per image; ``references`` — a list of strings per
image (same order).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

METEOR_JAR_ENV = "PIXTOK_METEOR_JAR"
"""Environment variable naming the METEOR 1.5 jar (``meteor-1.5.jar``) when no path is passed."""

# coco-caption drops these tokens after PTB tokenization. Its list spells the bracket escapes in
# upper case while the tokenizer (run with -lowerCase) writes them in lower case, so brackets
# survive as "-lrb-" etc.; we reproduce that.
_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$", re.IGNORECASE)
_SPLIT_WHOLE = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
}
_LETTER_ABBREVIATION = re.compile(r"^([a-z]\.)+$", re.IGNORECASE)
_WORD_ABBREVIATION = re.compile(r"^(mr|mrs|ms|dr|st|jr|sr|vs|etc|inc)\.$", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?\d[\d,.]*\d$|^\d$")


def _split_punctuation(chunk: str, next_chunk: str) -> list[str]:
    """Split one whitespace-free chunk into PTB-like tokens (words, clitics, punctuation).

    ``next_chunk`` (the following chunk, or "") decides whether a final period after an
    abbreviation ends a sentence (the next word is capitalized) or belongs to the abbreviation.
    """
    # Brackets, quotes and always-separate marks.
    chunk = re.sub(r"([()\[\]{}\"?!;@#$%&])", r" \1 ", chunk)
    chunk = re.sub(r"(``|'')", r" \1 ", chunk)
    chunk = re.sub(r"(\.\.\.|--)", r" \1 ", chunk)
    chunk = re.sub(r"(?<=\d)'(?=\d)", " ' ", chunk)  # 6'2
    tokens: list[str] = []
    pieces = chunk.split()
    for k, piece in enumerate(pieces):
        following = pieces[k + 1] if k + 1 < len(pieces) else next_chunk
        # Commas and colons split unless inside a number (1,000  10:30).
        parts = [p for p in re.split(r"(?<!\d)([,:])|([,:])(?!\d)", piece) if p]
        for j, part in enumerate(parts):
            tokens.extend(_split_word(part, parts[j + 1] if j + 1 < len(parts) else following))
    return tokens


def _keeps_period(word: str, following: str) -> bool:
    """Whether a word's final period is part of it (abbreviations, initials, numbers)."""
    if _NUMBER.match(word):
        return True
    if _LETTER_ABBREVIATION.match(word):
        return (
            len(word) > 2 or not following[:1].isupper()
        )  # "B. It" ends a sentence; "J. Smith" is ambiguous
    if _WORD_ABBREVIATION.match(word):
        return True
    return word.lower() == "no." and following[:1].isdigit()


def _split_word(word: str, following: str) -> list[str]:
    if word in _BRACKETS:
        return [_BRACKETS[word]]
    if word in {"...", "--", ",", ":"} or len(word) == 1 or word.lower() == "'n'":
        return [word]
    out: list[str] = []
    # Leading quotes / apostrophes.
    while word[:1] in {"'", "`"} and len(word) > 1 and not _CLITICS.match(word):
        out.append(word[0])
        word = word[1:]
    trailing: list[str] = []
    if word.endswith(".") and len(word) > 1 and not _keeps_period(word, following):
        trailing.insert(0, ".")
        word = word[:-1]
    if word.endswith("'") and len(word) > 1:  # plural possessive: dogs'
        trailing.insert(0, "'")
        word = word[:-1]
    if word.lower() in _SPLIT_WHOLE:
        out.extend(_SPLIT_WHOLE[word.lower()])
    else:
        match = _CLITICS.match(word)
        if match and match.group(1):
            out.extend([match.group(1), match.group(2)])
        else:
            out.append(word)
    return out + trailing


def ptb_tokenize(text: str) -> list[str]:
    """Tokenize a caption as coco-caption does: PTB tokens, lowercased, punctuation dropped.

    ``"A man's dog, running."`` → ``["a", "man", "'s", "dog", "running"]``. A pure-Python
    re-implementation of the Stanford PTBTokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``)
    rules that matter for captions: clitics ``n't 's 're 've 'll 'd 'm`` split off, punctuation
    separated, numbers, initials and abbreviations kept whole, hyphenated words kept whole,
    brackets written as ``-lrb-`` … (coco-caption keeps those: its punctuation list is upper case).
    Checked token for token against the real tokenizer in tests/evaluation/test_captions.py.
    """
    text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    chunks = text.split()
    tokens: list[str] = []
    for k, chunk in enumerate(chunks):
        tokens.extend(_split_punctuation(chunk, chunks[k + 1] if k + 1 < len(chunks) else ""))
    return [t.lower() for t in tokens if t not in _PUNCTUATION and t != '"']


def _tokenized(
    candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[list[str]], list[list[list[str]]]]:
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of strings (one per image), not one string")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no captions to evaluate")
    cands, refs = [], []
    for i, (cand, ref_list) in enumerate(zip(candidates, references)):
        if isinstance(ref_list, str):
            raise TypeError(f"references[{i}] must be a list of strings, not one string")
        if len(ref_list) == 0:
            raise ValueError(f"image {i} has no reference captions")
        cands.append(ptb_tokenize(cand))
        refs.append([ptb_tokenize(r) for r in ref_list])
    return cands, refs


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


# --- BLEU --------------------------------------------------------------------------------------
def bleu_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> list[float]:
    """Corpus BLEU-1 … BLEU-``max_n`` as coco-caption computes them (closest reference length).

    Returns:
        ``[BLEU-1, …, BLEU-max_n]`` in [0, 1].
    """
    cands, refs = _tokenized(candidates, references)
    return _bleu_tokens(cands, refs, max_n)


def _bleu_tokens(cands: list[list[str]], refs: list[list[list[str]]], max_n: int) -> list[float]:
    tiny, small = 1e-15, 1e-9
    guess = [0] * max_n
    correct = [0] * max_n
    test_len = ref_len = 0
    for cand, ref_list in zip(cands, refs):
        max_ref_counts: Counter = Counter()
        for ref in ref_list:
            for gram, count in _ngrams(ref, max_n).items():
                max_ref_counts[gram] = max(max_ref_counts[gram], count)
        length = len(cand)
        test_len += length
        ref_len += min((abs(len(r) - length), len(r)) for r in ref_list)[1]
        for gram, count in _ngrams(cand, max_n).items():
            correct[len(gram) - 1] += min(count, max_ref_counts.get(gram, 0))
        for k in range(max_n):
            guess[k] += max(0, length - k)
    scores, product = [], 1.0
    for k in range(max_n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


# --- ROUGE-L -----------------------------------------------------------------------------------
def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l_tokens(cand: list[str], ref_list: list[list[str]], beta: float = 1.2) -> float:
    if not cand:
        return 0.0
    precisions, recalls = [], []
    for ref in ref_list:
        lcs = _lcs_length(cand, ref)
        precisions.append(lcs / len(cand))
        recalls.append(lcs / len(ref) if ref else 0.0)
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """ROUGE-L (beta 1.2, max P and max R over references), mean over images, in [0, 1]."""
    cands, refs = _tokenized(candidates, references)
    return sum(_rouge_l_tokens(c, r) for c, r in zip(cands, refs)) / len(cands)


# --- CIDEr-D -----------------------------------------------------------------------------------
def _cider_d_tokens(
    cands: list[list[str]], refs: list[list[list[str]]], sigma: float = 6.0, max_n: int = 4
) -> list[float]:
    ref_counts = [[_ngrams(r, max_n) for r in ref_list] for ref_list in refs]
    document_frequency: Counter = Counter()
    for counts in ref_counts:
        document_frequency.update({gram for c in counts for gram in c})
    log_num_docs = math.log(float(len(refs)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        norm = [0.0] * max_n
        bigrams = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = tf * (log_num_docs - math.log(max(1.0, document_frequency[gram])))
            vec[n][gram] = weight
            norm[n] += weight**2
            if n == 1:
                bigrams += tf
        return vec, [math.sqrt(v) for v in norm], bigrams

    per_image = []
    for cand, counts_list in zip(cands, ref_counts):
        vec_c, norm_c, len_c = vectorize(_ngrams(cand, max_n))
        total = 0.0
        for counts in counts_list:
            vec_r, norm_r, len_r = vectorize(counts)
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                value = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_c[n].items())
                if norm_c[n] != 0 and norm_r[n] != 0:
                    value /= norm_c[n] * norm_r[n]
                total += value * penalty
        per_image.append(total / max_n / len(counts_list) * 10.0)
    return per_image


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (coco-caption scale: a perfect, distinctive caption scores 10.0).

    Document frequencies come from the references being evaluated, so the value depends on the
    whole set (a single image scores 0: every n-gram appears in every document).
    """
    cands, refs = _tokenized(candidates, references)
    scores = _cider_d_tokens(cands, refs, sigma=sigma)
    return sum(scores) / len(scores)


# --- METEOR ------------------------------------------------------------------------------------
def find_meteor_jar(jar: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Locate Java and the METEOR 1.5 jar; returns ``(jar_path, "")`` or ``(None, reason)``."""
    if shutil.which("java") is None:
        return None, "METEOR needs Java: no `java` executable on PATH"
    candidate = jar if jar is not None else os.environ.get(METEOR_JAR_ENV)
    if not candidate:
        return None, f"METEOR needs the METEOR 1.5 jar: pass meteor_jar= or set {METEOR_JAR_ENV}"
    path = Path(candidate)
    if not path.is_file():
        return None, f"METEOR jar not found: {path}"
    return path, ""


class MeteorScorer:
    """A METEOR 1.5 process speaking coco-caption's ``-stdio`` protocol (one per evaluation).

    Args:
        jar: path to ``meteor-1.5.jar`` (its ``data/`` paraphrase tables beside it).
        memory: Java heap, as coco-caption (``2G``).
    """

    def __init__(self, jar: str | os.PathLike, memory: str = "2G") -> None:
        self.process = subprocess.Popen(
            ["java", "-jar", f"-Xmx{memory}", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=str(Path(jar).resolve().parent),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the METEOR process ended unexpectedly")
        return answer.strip()

    def score(
        self, candidates: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, list[float]]:
        """Corpus METEOR and per-candidate scores for already tokenized, space-joined strings."""
        stats = []
        for cand, refs in zip(candidates, references):
            cand = cand.replace("|||", "").replace("  ", " ")
            stats.append(self._ask(" ||| ".join(["SCORE", " ||| ".join(refs), cand])))
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("EVAL ||| " + " ||| ".join(stats) + "\n")
        self.process.stdin.flush()
        per_item = [float(self.process.stdout.readline().strip()) for _ in stats]
        total = float(self.process.stdout.readline().strip())
        return total, per_item

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meteor(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor_jar: str | os.PathLike | None = None,
) -> tuple[float | None, str]:
    """Corpus METEOR 1.5, or ``(None, reason)`` when Java or the jar is missing."""
    cands, refs = _tokenized(candidates, references)
    jar, reason = find_meteor_jar(meteor_jar)
    if jar is None:
        return None, reason
    with MeteorScorer(jar) as scorer:
        total, _ = scorer.score([" ".join(c) for c in cands], [[" ".join(r) for r in rs] for rs in refs])
    return total, ""


def meteor_exact(candidate: Sequence[str], references: Iterable[Sequence[str]]) -> float:
    """METEOR-style score from exact unigram matches only (the fallback when Java is missing).

    Not METEOR 1.5 (no stems, synonyms or paraphrases; original METEOR parameters): per reference,
    ``F = 10PR / (R + 9P)`` on exact unigram matches, times ``1 - 0.5 (chunks / matches)^3`` where
    chunks are maximal runs of matches contiguous in both strings; the best reference counts.

    Args:
        candidate: tokens of the candidate.
        references: tokens of each reference.

    Returns:
        A score in [0, 1); 0 when nothing matches.
    """
    best = 0.0
    for ref in references:
        unused: dict[str, list[int]] = {}
        for j, token in enumerate(ref):
            unused.setdefault(token, []).append(j)
        aligned: list[int] = []
        for token in candidate:
            positions = unused.get(token)
            aligned.append(positions.pop(0) if positions else -1)
        matches = sum(1 for j in aligned if j >= 0)
        if matches == 0:
            continue
        precision, recall = matches / len(candidate), matches / len(ref)
        fmean = 10 * precision * recall / (recall + 9 * precision)
        chunks, previous = 0, None
        for j in aligned:
            if j < 0:
                previous = None
                continue
            if previous is None or j != previous + 1:
                chunks += 1
            previous = j
        best = max(best, fmean * (1 - 0.5 * (chunks / matches) ** 3))
    return best


# --- all together ------------------------------------------------------------------------------
def evaluate_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor_jar: str | os.PathLike | None = None,
    use_meteor: bool = True,
) -> dict[str, float | str | None]:
    """BLEU-1…4, METEOR, ROUGE-L and CIDEr-D of one candidate per image (coco-caption protocol).

    Args:
        candidates: one generated caption per image.
        references: the reference captions of each image.
        meteor_jar: METEOR 1.5 jar (else ``$PIXTOK_METEOR_JAR``); without it METEOR is ``None``.
        use_meteor: set ``False`` to skip METEOR without a warning.

    Returns:
        ``{"BLEU-1", …, "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "num_captions"}`` (+ ``"METEOR_note"``
        when METEOR could not run). BLEU/METEOR/ROUGE-L in [0, 1]; CIDEr-D on coco-caption's ×10 scale.
    """
    cands, refs = _tokenized(candidates, references)
    results: dict[str, float | str | None] = {}
    for n, value in enumerate(_bleu_tokens(cands, refs, 4), start=1):
        results[f"BLEU-{n}"] = value
    results["METEOR"] = None
    if use_meteor:
        jar, reason = find_meteor_jar(meteor_jar)
        if jar is None:
            warnings.warn(f"METEOR not computed: {reason}", stacklevel=2)
            results["METEOR_note"] = reason
        else:
            with MeteorScorer(jar) as scorer:
                results["METEOR"], _ = scorer.score(
                    [" ".join(c) for c in cands], [[" ".join(r) for r in rs] for rs in refs]
                )
    else:
        results["METEOR_note"] = "METEOR skipped (use_meteor=False)"
    results["ROUGE-L"] = sum(_rouge_l_tokens(c, r) for c, r in zip(cands, refs)) / len(cands)
    cider = _cider_d_tokens(cands, refs)
    results["CIDEr-D"] = sum(cider) / len(cider)
    results["num_captions"] = float(len(cands))
    return results


__all__ = [
    "METEOR_JAR_ENV",
    "MeteorScorer",
    "bleu_scores",
    "cider_d",
    "evaluate_captions",
    "find_meteor_jar",
    "meteor",
    "meteor_exact",
    "ptb_tokenize",
    "rouge_l",
]
