"""Text metrics for selecting instructions, written from their definitions: ROUGE-L, MTLD, MinHash.

* **Tokens** (:func:`words`): lower-cased runs of letters and digits, each CJK character its own token. On plain
  ASCII text this is the default tokenizer of Google's ``rouge_score`` (which self-instruct uses); it also keeps
  Chinese, which that tokenizer drops.
* **ROUGE-L** (:func:`rouge_l`): the F1 of the longest common subsequence of tokens,
  ``P = LCS / len(a)``, ``R = LCS / len(b)``, ``F = 2PR / (P + R) = 2 LCS / (len(a) + len(b))``.
  :class:`RougeIndex` answers "is any stored text above the threshold?" and skips the LCS for pairs whose length
  or shared-token count already bounds ``F`` below it, so novelty checks over thousands of instructions stay cheap.
* **MTLD** (:func:`mtld`, McCarthy and Jarvis 2010): walk the tokens keeping a running type/token ratio; each time
  it falls to 0.72 or below a factor is complete and the count restarts; the left-over part counts as the fraction
  ``(1 - TTR) / (1 - 0.72)`` of a factor; MTLD is tokens / factors, the mean of a forward and a backward pass. A
  text whose ratio never falls (every token different) has no factor: its MTLD is infinite.
* **MinHash** (:class:`NearDuplicates`): a text's shingles are its token 3-grams (the whole token sequence when
  shorter); 128 universal hashes ``(a x + b) mod (2^61 - 1)`` over 32-bit shingle hashes give the signature;
  locality-sensitive hashing over bands of the signature finds candidate pairs, and the exact Jaccard similarity
  of their shingle sets decides, so the result does not depend on the hashing luck of a pair.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
MTLD_THRESHOLD = 0.72


def words(text: str) -> list[str]:
    """The tokens of ``text`` (see the module docstring)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            cur = row[j]
            row[j] = prev + 1 if x == y else (row[j] if row[j] > row[j - 1] else row[j - 1])  # noqa: FURB136 (hot)
            prev = cur
    return row[-1]


def rouge_l(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """ROUGE-L F1 between two texts (or token lists); 0 when either is empty."""
    ta = words(a) if isinstance(a, str) else list(a)
    tb = words(b) if isinstance(b, str) else list(b)
    if not ta or not tb:
        return 0.0
    return 2.0 * lcs_length(ta, tb) / (len(ta) + len(tb))


class RougeIndex:
    """Stored texts to check new ones against: :meth:`closest` above a threshold, with cheap upper bounds first."""

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._items: list[tuple[list[int], Counter]] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._items)

    def _encode(self, text: str) -> list[int]:
        return [self._ids.setdefault(w, len(self._ids)) for w in words(text)]

    def add(self, text: str) -> None:
        toks = self._encode(text)
        self._items.append((toks, Counter(toks)))

    def closest(self, text: str, threshold: float) -> tuple[float, int]:
        """``(score, index)`` of the first stored text with ROUGE-L > ``threshold``, else the best seen below it.

        The best below the threshold is exact only over the pairs whose bound reached it; ``(0.0, -1)`` when none.
        """
        toks = self._encode(text)
        if not toks:
            return 0.0, -1
        counts = Counter(toks)
        n = len(toks)
        best, where = 0.0, -1
        for i, (other, other_counts) in enumerate(self._items):
            total = n + len(other)
            if 2.0 * min(n, len(other)) / total <= threshold:
                continue
            shared = sum((counts & other_counts).values())
            if 2.0 * shared / total <= threshold:
                continue
            score = 2.0 * lcs_length(toks, other) / total
            if score > threshold:
                return score, i
            if score > best:
                best, where = score, i
        return best, where


def _mtld_pass(tokens: Sequence[str], threshold: float) -> float:
    factors = 0.0
    types: set[str] = set()
    count = 0
    ttr = 1.0
    for tok in tokens:
        count += 1
        types.add(tok)
        ttr = len(types) / count
        if ttr <= threshold:
            factors += 1
            types, count, ttr = set(), 0, 1.0
    if count:
        factors += (1.0 - ttr) / (1.0 - threshold)
    return len(tokens) / factors if factors > 0 else math.inf


def mtld(text: str | Sequence[str], threshold: float = MTLD_THRESHOLD) -> float:
    """MTLD lexical diversity of a text (or token list): the mean of the forward and backward passes."""
    tokens = words(text) if isinstance(text, str) else list(text)
    if not tokens:
        return 0.0
    return (_mtld_pass(tokens, threshold) + _mtld_pass(tokens[::-1], threshold)) / 2.0


# -- MinHash near-duplicates -----------------------------------------------------------------------------

SHINGLE = 3
NUM_PERM = 128
_PRIME = (1 << 61) - 1


def shingles(text: str, n: int = SHINGLE) -> frozenset[str]:
    """Token ``n``-grams of ``text`` (the whole token sequence when it is shorter than ``n``)."""
    toks = words(text)
    if len(toks) <= n:
        return frozenset([" ".join(toks)]) if toks else frozenset()
    return frozenset(" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _rows_per_band(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The most rows per band (fewest candidates) that still miss a pair at ``threshold`` less than 1 in 10^4."""
    for rows in (8, 4, 2):
        if (1.0 - threshold ** rows) ** (num_perm // rows) < 1e-4:
            return rows
    return 1


class NearDuplicates:
    """Texts kept so far; :meth:`find` returns one whose shingle Jaccard with a new text is >= ``threshold``."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM, seed: int = 1) -> None:
        import numpy as np

        self.threshold = threshold
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 1 << 29, size=num_perm, dtype=np.uint64)  # a * x < 2^61: no overflow
        self._b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.rows = _rows_per_band(threshold, num_perm)
        self.bands = num_perm // self.rows
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sets: list[frozenset[str]] = []

    def signature(self, grams: frozenset[str]):
        import numpy as np

        if not grams:
            return np.full(len(self._a), _PRIME, dtype=np.uint64)
        hv = np.array([int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=4).digest(), "little")
                       for g in grams], dtype=np.uint64)
        return ((self._a[:, None] * hv[None, :] + self._b[:, None]) % np.uint64(_PRIME)).min(axis=1)

    def _keys(self, sig) -> list[bytes]:
        r = self.rows
        return [sig[i * r:(i + 1) * r].tobytes() for i in range(self.bands)]

    def find(self, text: str) -> tuple[int, float, frozenset[str], list[bytes]]:
        """``(index, jaccard, shingles, band keys)`` of the first kept text at or above the threshold (index -1)."""
        grams = shingles(text)
        keys = self._keys(self.signature(grams))
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for i in self._buckets[band].get(key, ()):
                if i in seen:
                    continue
                seen.add(i)
                score = jaccard(grams, self._sets[i])
                if score >= self.threshold:
                    return i, score, grams, keys
        return -1, 0.0, grams, keys

    def add(self, grams: frozenset[str], keys: list[bytes]) -> None:
        """Keep a text (its shingles and band keys, as :meth:`find` returned them)."""
        index = len(self._sets)
        self._sets.append(grams)
        for band, key in enumerate(keys):
            self._buckets[band].setdefault(key, []).append(index)
