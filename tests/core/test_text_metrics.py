"""BLEU and ROUGE-L against values computed by hand on tiny inputs."""

import math

import pytest

from synth_empathy.core.diversity_metrics import distinct_n
from synth_empathy.core.text_metrics import corpus_bleu, lcs_length, mean_rouge_l, rouge_l, tokens


def test_tokens_split_words_and_punctuation():
    assert tokens("I'm SO sad.") == ["i", "'", "m", "so", "sad", "."]


def test_bleu_by_hand():
    # cand: "the cat sat" (3), ref: "the cat sat down" (4)
    # p1 = 3/3, p2 = 2/2, p3 = 1/1; brevity = exp(1 - 4/3)
    bp = math.exp(1 - 4 / 3)
    assert corpus_bleu(["the cat sat"], ["the cat sat down"], 1) == pytest.approx(bp)
    assert corpus_bleu(["the cat sat"], ["the cat sat down"], 2) == pytest.approx(bp)
    # no 4-gram in a 3-token candidate: BLEU-4 is 0 without smoothing
    assert corpus_bleu(["the cat sat"], ["the cat sat down"], 4) == 0.0
    # cand "the the the the" vs ref "the cat": clipped unigram matches 1 of 4, longer than ref
    assert corpus_bleu(["the the the the"], ["the cat"], 1) == pytest.approx(0.25)
    # corpus level: counts summed over pairs, p1 = (2 + 1)/(2 + 2), p2 = (1 + 0)/(1 + 1), c = r = 4
    assert corpus_bleu(["a b", "c d"], ["a b", "c e"], 2) == pytest.approx(math.sqrt(3 / 4 * 1 / 2))
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [], 1)


def test_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    # cand "a b c d", ref "a c d e": lcs 3, p = 3/4, r = 3/4 -> F = 0.75
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # cand "a b", ref "a x y b": lcs 2, p = 1, r = 1/2 -> F = 2/3
    assert rouge_l("a b", "a x y b") == pytest.approx(2 / 3)
    assert rouge_l("", "a") == 0.0
    assert mean_rouge_l(["a b c d", "z"], ["a c d e", "y"]) == pytest.approx(0.375)


def test_distinct_with_the_evaluation_tokens():
    # "so sad ." and "so glad ." -> unigrams so, sad, ., so, glad, . : 4 distinct of 6
    assert distinct_n(["So sad.", "so glad."], 1, tokens) == pytest.approx(4 / 6)
    assert distinct_n(["So sad.", "so glad."], 1) == pytest.approx(3 / 4)  # whitespace default
