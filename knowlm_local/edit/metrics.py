"""The arithmetic of edit evaluation, apart from any model: normalisation, matches, accuracies, fluency.

* teacher-forced accuracy (EasyEdit's headline numbers): the share of target
  tokens that are the model's top choice when the right prefix is given;
* generated exact match: the greedy answer, as many tokens long as the target,
  equals the target after :func:`normalize` (lower case, no punctuation or
  spaces at the ends, no English article in front);
* locality compares the model with *itself* before the edit, never with a gold answer;
* fluency: the weighted bigram/trigram entropy of a generated text (weights
  2/3 and 4/3 as in ROME's and EasyEdit's ``n_gram_entropy``), in bits.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_ARTICLE = re.compile(r"^(the|a|an)\s+")


def normalize(text: str) -> str:
    """``text`` for comparison: NFKC, lower case, punctuation and spaces stripped from the ends, no article."""
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = "".join(ch for ch in text if not (unicodedata.category(ch).startswith("P") and ch != "-")).strip()
    text = " ".join(text.split())
    return _ARTICLE.sub("", text)


def exact_match(generated: str, target: str) -> bool:
    return normalize(generated) == normalize(target)


def contains(generated: str, target: str) -> bool:
    """Whether the normalised target occurs in the normalised generated text (answers in chat are sentences)."""
    want = normalize(target)
    return bool(want) and want in normalize(generated)


def token_accuracy(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """The share of positions where the predicted token is the expected one (0 for an empty target)."""
    if not expected:
        return 0.0
    return sum(int(p == e) for p, e in zip(predicted, expected)) / len(expected)


def ngram_entropy(tokens: Sequence[str], ns: Sequence[int] = (2, 3),
                  weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """The weighted mean of the ``n``-gram entropies (bits) of ``tokens``: low for text that repeats itself."""
    values = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(w * h)
    return sum(values) / len(values)


def fluency(text: str) -> float:
    """:func:`ngram_entropy` of ``text`` split into words (and single CJK characters, which have no spaces)."""
    return ngram_entropy(re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+", text))


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist, None when none do."""
    have = [v for v in values if v is not None]
    return sum(have) / len(have) if have else None
