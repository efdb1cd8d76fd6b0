import math

import pytest

from pixtok.evaluation import captions as C


def test_ptb_tokenization_follows_coco_caption():
    assert C.ptb_tokenize("A man's dog, running.") == ["a", "man", "'s", "dog", "running"]
    assert C.ptb_tokenize("Two dogs can't play!") == ["two", "dogs", "ca", "n't", "play"]
    assert C.ptb_tokenize('A well-known "red" car; 1,000 people: 3.5 m.') == [
        "a",
        "well-known",
        "red",
        "car",
        "1,000",
        "people",
        "3.5",
        "m.",
    ]  # fmt: skip  (the Stanford tokenizer keeps a final single-letter abbreviation: see PTB_REFERENCE)
    # punctuation and case never change a score
    assert C.bleu_scores(["The cat sat on the mat."], [["the cat sat on the mat"]])[3] == pytest.approx(1.0)


def test_bleu_hand_computed():
    # unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; equal lengths -> no brevity penalty
    b = C.bleu_scores(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b[2] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert b[3] < 1e-3  # no 4-gram matches: only coco-caption's 1e-15 smoothing is left


def test_bleu_brevity_penalty_uses_closest_reference_and_corpus_sums():
    # 2 tokens vs a 6-token reference: BP = exp(1 - 6/2)
    assert C.bleu_scores(["the cat"], [["the cat is on the mat"]])[0] == pytest.approx(math.exp(-2))
    # length 5 is equally close to 3 and 7: the shorter wins, so no penalty
    assert C.bleu_scores(["a b c d e"], [["a b c", "a b c d e f g"]])[0] == pytest.approx(1.0)
    # corpus level: (2 + 0) / (2 + 4) matched unigrams, not the mean of per-caption scores
    b1 = C.bleu_scores(["a b", "c d e f"], [["a b"], ["w x y z"]])[0]
    assert b1 == pytest.approx(2 / 6)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the red mat") = 5; P = 5/6, R = 5/7, beta = 1.2
    p, r, beta = 5 / 6, 5 / 7, 1.2
    expected = (1 + beta**2) * p * r / (r + beta**2 * p)
    assert C.rouge_l(["the cat sat on the mat"], [["the cat is on the red mat"]]) == pytest.approx(expected)
    # max P and max R are taken over references separately
    two = C.rouge_l(["a b c d"], [["a b", "a b c d e f g h"]])
    p2, r2 = max(2 / 4, 4 / 4), max(2 / 2, 4 / 8)
    assert two == pytest.approx((1 + beta**2) * p2 * r2 / (r2 + beta**2 * p2))


def test_cider_d_hand_computed():
    log2 = math.log(2)
    assert log2 > 0
    # df: "a" in both documents (idf 0), "cat", "dog", bigrams in one (idf log 2)
    # perfect two-word captions: cosine 1 for n = 1, 2; nothing for n = 3, 4 -> 2 / 4 * 10 = 5
    assert C.cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]]) == pytest.approx(5.0)
    # "cat cat": unigram weights (2 log2) vs (0, log2): clipped min * ref / norms = 0.5; bigram 0
    assert C.cider_d(["cat cat", "a dog"], [["a cat"], ["a dog"]]) == pytest.approx((0.5 / 4 * 10 + 5) / 2)
    # "cat": 0 bigrams vs 1 -> Gaussian length penalty exp(-1 / (2 * 6^2))
    expected = (1 * math.exp(-1 / 72) / 4 * 10 + 5) / 2
    assert C.cider_d(["cat", "a dog"], [["a cat"], ["a dog"]]) == pytest.approx(expected)
    # a single image: every n-gram is in every document -> 0 (a property of CIDEr-D)
    assert C.cider_d(["a cat"], [["a cat"]]) == 0.0


def test_perfect_captions_score_full_marks():
    cands = ["a red car parked on the street", "two dogs play with a ball in the park"]
    refs = [[cands[0], "a car on a road"], [cands[1]]]
    out = C.evaluate_captions(cands, [[c] for c in cands], use_meteor=False)
    assert out["BLEU-4"] == pytest.approx(1.0) and out["ROUGE-L"] == pytest.approx(1.0)
    assert out["CIDEr-D"] == pytest.approx(10.0)
    assert out["METEOR"] is None and "skipped" in out["METEOR_note"]
    worse = C.evaluate_captions(["a car", "dogs"], refs, use_meteor=False)
    assert worse["BLEU-4"] < 0.01 and worse["CIDEr-D"] < 10.0 and worse["ROUGE-L"] < 1.0


def test_meteor_missing_is_reported_not_crashing(monkeypatch, tmp_path):
    monkeypatch.delenv(C.METEOR_JAR_ENV, raising=False)
    with pytest.warns(UserWarning, match="METEOR not computed"):
        out = C.evaluate_captions(["a cat"], [["a cat"]])
    assert out["METEOR"] is None and C.METEOR_JAR_ENV in out["METEOR_note"]
    assert out["BLEU-1"] == pytest.approx(1.0)
    value, reason = C.meteor(["a cat"], [["a cat"]], meteor_jar=tmp_path / "nope.jar")
    assert value is None and ("not found" in reason or "Java" in reason)


def test_meteor_exact_fallback_hand_computed():
    # 5 matches of 6, P = R = 5/6 -> Fmean 5/6; chunks [the cat] [on the mat] -> penalty 0.5 (2/5)^3
    score = C.meteor_exact(
        ["the", "cat", "sat", "on", "the", "mat"], [["the", "cat", "is", "on", "the", "mat"]]
    )
    assert score == pytest.approx(5 / 6 * (1 - 0.5 * (2 / 5) ** 3))
    assert C.meteor_exact(["x"], [["y"]]) == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="candidates but"):
        C.evaluate_captions(["a"], [["a"], ["b"]], use_meteor=False)
    with pytest.raises(TypeError, match="list of strings"):
        C.bleu_scores(["a"], ["a"])
    with pytest.raises(ValueError, match="no reference"):
        C.rouge_l(["a"], [[]])


_FAKE_METEOR = r"""
import java.io.*;
import java.util.*;

/** Speaks METEOR 1.5's -stdio protocol; the "score" of a segment is its exact unigram precision. */
public class FakeMeteor {
    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        PrintStream out = System.out;
        String line;
        while ((line = in.readLine()) != null) {
            String[] parts = line.split(" \\|\\|\\| ", -1);
            if (parts[0].equals("SCORE")) {
                Set<String> refs = new HashSet<>();
                for (int i = 1; i < parts.length - 1; i++) refs.addAll(Arrays.asList(parts[i].split(" ")));
                String[] hyp = parts[parts.length - 1].split(" ");
                int hits = 0;
                for (String w : hyp) if (refs.contains(w)) hits++;
                out.println(hits + " " + hyp.length);
            } else if (parts[0].equals("EVAL")) {
                double hits = 0, total = 0;
                for (int i = 1; i < parts.length; i++) {
                    String[] s = parts[i].trim().split(" ");
                    double h = Double.parseDouble(s[0]), t = Double.parseDouble(s[1]);
                    out.println(h / t);
                    hits += h; total += t;
                }
                out.println(hits / total);
            }
            out.flush();
        }
    }
}
"""


def test_meteor_stdio_protocol_with_a_stand_in_jar(tmp_path, monkeypatch):
    import shutil
    import subprocess

    if not (shutil.which("javac") and shutil.which("jar") and shutil.which("java")):
        pytest.skip("needs a JDK (javac, jar) to build the stand-in METEOR jar")
    (tmp_path / "FakeMeteor.java").write_text(_FAKE_METEOR)
    subprocess.run(["javac", "FakeMeteor.java"], cwd=tmp_path, check=True)
    subprocess.run(
        ["jar", "cfe", "meteor-1.5.jar", "FakeMeteor", "FakeMeteor.class"], cwd=tmp_path, check=True
    )
    jar = tmp_path / "meteor-1.5.jar"
    # tokens after PTB: "a cat sits" (3/3 in refs), "two dogs bark loudly" (2/4 in refs)
    cands = ["A cat sits.", "Two dogs bark loudly!"]
    refs = [["a cat sits on a mat"], ["two dogs", "dogs playing"]]
    value, reason = C.meteor(cands, refs, meteor_jar=jar)
    assert reason == "" and value == pytest.approx(5 / 7)  # corpus value from the final EVAL line
    monkeypatch.setenv(C.METEOR_JAR_ENV, str(jar))
    assert C.evaluate_captions(cands, refs)["METEOR"] == pytest.approx(5 / 7)
    from pixtok.evaluation.dense_captions import evaluate_dense_captions

    out = evaluate_dense_captions(
        [{"boxes": [[0, 0, 10, 10]], "scores": [1.0], "captions": ["a cat sits"]}],
        [{"boxes": [[0, 0, 10, 10]], "captions": ["a cat sits on a mat"]}],
    )
    assert out["similarity"] == "meteor-1.5" and out["mAP"] == pytest.approx(1.0)


# Output of the real Stanford PTBTokenizer (CoreNLP 3.4.1, -preserveLines -lowerCase) as
# pycocoevalcap 1.2 runs it, recorded once for these strings (before punctuation removal is applied
# by coco-caption; the right column is what remains after it).
PTB_REFERENCE = [
    ("A man's dog, running.", "a man 's dog running"),
    ("Two dogs can't play!", "two dogs ca n't play"),
    ("It's a 3.5-inch screen; wow...", "it 's a 3.5-inch screen wow"),
    ("The cat (black) sits on the mat.", "the cat -lrb- black -rrb- sits on the mat"),
    ('"Hello," she said.', "hello she said"),
    ("The U.S. flag waves.", "the u.s. flag waves"),
    ("Dogs' toys are on the floor.", "dogs toys are on the floor"),
    ("A man and/or a woman.", "a man and/or a woman"),
    ("Mr. Smith's car.", "mr. smith 's car"),
    (
        "cannot won't don't I'm we're they've she'll he'd",
        "can not wo n't do n't i 'm we 're they 've she 'll he 'd",
    ),
    ("1,000 people at 10:30 pm.", "1,000 people at 10:30 pm"),
    ("A well-known, long--winded talk", "a well-known long winded talk"),
    ("rock 'n' roll band", "rock 'n' roll band"),
    ("e-mail @ home #1 & $5 100%", "e-mail @ home # 1 & $ 5 100 %"),
    ("Ain't no mountain.", "ai n't no mountain"),
    ("A red/blue shirt?", "a red/blue shirt"),
    ("St. Louis arch.", "st. louis arch"),
    ("A skateboarder doing a trick -- mid-air!", "a skateboarder doing a trick mid-air"),
    ("The cats' bowls.", "the cats bowls"),
    ("a. b. c.", "a. b. c."),
    ("Its 5 o'clock", "its 5 o'clock"),
    ("The man is 6'2\" tall.", "the man is 6 2 tall"),
    ("A sign that reads 'STOP'.", "a sign that reads stop"),
    ("there's gonna be a party", "there 's gon na be a party"),
    ("A photo of a dog:cute", "a photo of a dog cute"),
    ("A plane in the sky.The sky is blue.", "a plane in the sky.the sky is blue"),
    ("It is 3.5 m.", "it is 3.5 m."),
    ("the letter a.", "the letter a."),
    ("Plan B. It works", "plan b it works"),
    ("a {curly} [square] thing", "a -lcb- curly -rcb- -lsb- square -rsb- thing"),
    ("vitamin c. and more", "vitamin c. and more"),
    ("no. 5 bus", "no. 5 bus"),
    ("Main St.", "main st."),
]


@pytest.mark.parametrize(("text", "expected"), PTB_REFERENCE)
def test_ptb_tokenize_matches_the_stanford_tokenizer(text, expected):
    assert " ".join(C.ptb_tokenize(text)) == expected


# pycocoevalcap 1.2 (PTBTokenizer, Bleu(4), Rouge, Cider, Meteor with its meteor-1.5.jar) on 40
# real Visual Genome images: references = each image's first 5 region phrases, candidate = the
# phrase 5 + (i mod 3). Recorded once; our implementation must reproduce them.
VG_REGIONS = (
    "/work/shared/data/visual_genome_regions_sample/region_descriptions_first100images_first100regions.json"
)
COCO_CAPTION_REFERENCE = {
    "BLEU-1": 0.41314553990416364,
    "BLEU-2": 0.2491811333361165,
    "BLEU-3": 0.16713197971619564,
    "BLEU-4": 0.12553221900740721,
    "ROUGE-L": 0.331125395369589,
    "CIDEr-D": 0.23365575617656692,
    "METEOR": 0.15545257356712308,
}


def test_matches_pycocoevalcap_on_real_visual_genome_phrases(monkeypatch):
    import json

    with open(VG_REGIONS) as f:
        regions = json.load(f)
    cands, refs = [], []
    for image in regions[:40]:
        phrases = [r["phrase"] for r in image["regions"]]
        refs.append(phrases[:5])
        cands.append(phrases[5 + len(cands) % 3])
    jar = C.find_meteor_jar()[0]
    out = C.evaluate_captions(cands, refs, use_meteor=jar is not None)
    for name, value in COCO_CAPTION_REFERENCE.items():
        if name == "METEOR" and jar is None:
            continue  # needs Java + meteor-1.5.jar ($PIXTOK_METEOR_JAR); checked when present
        assert out[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
