"""ROUGE-L, MTLD and MinHash near-duplicates against values computed by hand from their definitions."""

from __future__ import annotations

import math
import random

import pytest

from knowlm_local.instruct.metrics import (
    NearDuplicates,
    RougeIndex,
    _rows_per_band,
    jaccard,
    lcs_length,
    mtld,
    rouge_l,
    shingles,
    words,
)


def test_words_lowercase_alnum_runs_and_one_token_per_cjk_character():
    assert words("Hello, World! it's 2024") == ["hello", "world", "it", "s", "2024"]
    assert words("居里夫人born in华沙.") == ["居", "里", "夫", "人", "born", "in", "华", "沙"]
    assert words("  ...  ") == []


def test_lcs_length_classic_cases():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # BCBA (CLRS)
    assert lcs_length("abc", "") == 0
    assert lcs_length("abc", "abc") == 3
    assert lcs_length("abcdef", "acf") == 3


def test_rouge_l_is_the_lcs_f1_computed_by_hand():
    # the cat (sat|lay) on the mat: LCS 5 of 6 and 6 tokens -> P = R = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS("a b c d", "a c") = 2: P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)  # F1 is symmetric
    assert rouge_l("", "a") == 0.0
    assert rouge_l("Write a poem.", "write a POEM") == 1.0  # case and punctuation do not count


def test_rouge_index_agrees_with_brute_force():
    rng = random.Random(3)
    vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9))) for _ in range(120)]
    index = RougeIndex(texts[:80])
    for query in texts[80:]:
        best = max(rouge_l(query, t) for t in texts[:80])
        for threshold in (0.3, 0.5, 0.7, 0.9):
            score, where = index.closest(query, threshold)
            assert (score > threshold) == (best > threshold), (query, threshold, score, best)
            if score > threshold:
                assert rouge_l(query, texts[where]) == pytest.approx(score)


def test_mtld_by_hand():
    # a b | a -> TTR 2/3 <= 0.72 closes a factor at each third token: 2 factors, nothing left -> 6 / 2 = 3
    assert mtld("a b a b a b") == pytest.approx(3.0)
    # forward "a a b c": TTR 1/2 after "a a" closes a factor; "b c" leaves TTR 1 (no partial) -> 4 / 1 = 4
    # backward "c b a a": TTR 3/4 at the end -> partial factor (1 - 0.75) / (1 - 0.72) -> 4 / 0.892857 = 4.48
    assert mtld("a a b c") == pytest.approx((4 + 4 / (0.25 / 0.28)) / 2)
    assert mtld("a b c a") == pytest.approx(4 / (0.25 / 0.28))
    assert mtld("every word here differs") == math.inf  # no factor ever completes
    assert mtld("") == 0.0
    # "the cat is the cat" -> TTR 3/5 = 0.6 closes a factor every 5 tokens, both ways: 15 / 3 = 5
    assert mtld("the cat is the cat is the cat is the cat is the cat is") == pytest.approx(5.0)


def test_shingles_and_jaccard_by_hand():
    a = shingles("The cat sat on the mat")
    b = shingles("the cat sat on the rug")
    assert a == {"the cat sat", "cat sat on", "sat on the", "on the mat"}
    assert jaccard(a, b) == pytest.approx(3 / 5)
    assert shingles("two words") == {"two words"}  # shorter than a 3-gram: the whole sequence


def test_band_rows_keep_misses_rare_at_the_threshold():
    assert _rows_per_band(0.8) == 4  # (1 - 0.8^4)^32 ~ 5e-8
    assert _rows_per_band(0.5) == 2  # 4 rows would miss 13% of pairs at 0.5
    assert _rows_per_band(0.2) == 1


def test_near_duplicates_decide_by_exact_jaccard():
    near = NearDuplicates(0.6)
    kept = []
    for text in ["the cat sat on the mat", "the cat sat on the rug", "a completely different sentence here",
                 "the cat sat on the mat today"]:
        found, score, grams, keys = near.find(text)
        if found < 0:
            near.add(grams, keys)
            kept.append(text)
        else:
            assert score >= 0.6
    # "...rug" has Jaccard 3/5 = 0.6 with the first (dropped); "...mat today": 4/5 = 0.8 (dropped)
    assert kept == ["the cat sat on the mat", "a completely different sentence here"]
    strict = NearDuplicates(0.61)
    _, _, grams, keys = strict.find("the cat sat on the mat")
    strict.add(grams, keys)
    assert strict.find("the cat sat on the rug")[0] == -1  # 0.6 < 0.61
