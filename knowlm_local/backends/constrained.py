"""Greedy choice under a grammar and the copy constraint, exact, without checking the whole vocabulary.

The chosen token is always the highest-logit token (lowest id among equals,
as llama.cpp's greedy sampler takes the first maximum) that both the JSON
grammar and the copy tracker (:mod:`knowlm_local.ie.copy`) allow. Finding it
cheaply is the point:

1. the argmax alone is checked first: when nothing is refused this is the
   only check, and the answer is token for token what unconstrained greedy
   decoding gives;
2. else the best ``TOP`` tokens, in logit order; the winner counts only if
   it beats every token left out;
3. else, inside a copied string, the tokens that *can* continue it are
   listed from the text itself: every prefix of the JSON-escaped text that
   follows an occurrence of the string so far, and every token that closes
   the string (walked in the text's suffix automaton, pruned by the sorted
   vocabulary); elsewhere the grammar filters the whole vocabulary in C.

Nothing here is specific to llama.cpp: the grammar is any object with
``allowed(ids, logits) -> logits`` (refused ones at -inf), and the vocabulary
is a list of token byte strings. The llama.cpp decoding loop that uses it is
:mod:`knowlm_local.backends.llamacpp_copy`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from knowlm_local.ie.copy import DONE, DUP, OK, REFUSED, Tracker
from knowlm_local.ie.textindex import END, START

MARKERS = (START, END)

_ESCAPES = {ord('"'): b'\\"', ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t",
            ord("\b"): b"\\b", ord("\f"): b"\\f"}


def json_escaped(byte: int) -> bytes:
    """How ``json.dumps(..., ensure_ascii=False)`` writes one byte of a string's UTF-8."""
    if byte in _ESCAPES:
        return _ESCAPES[byte]
    if byte < 0x20:
        return b"\\u%04x" % byte
    return bytes([byte])


class Vocab:
    """Token id -> bytes, with the lookups candidate listing needs (built once per model)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.by_bytes: dict[bytes, list[int]] = {}
        for i, p in enumerate(pieces):
            if p:
                self.by_bytes.setdefault(p, []).append(i)
        self.keys = sorted(self.by_bytes)
        self.max_len = max((len(k) for k in self.keys), default=1)

    def _range(self, prefix: bytes) -> tuple[int, int]:
        lo = bisect.bisect_left(self.keys, prefix)
        hi = bisect.bisect_left(self.keys, prefix + b"\xff" * (self.max_len + 1 - len(prefix)), lo)
        return lo, hi

    def has_prefix(self, prefix: bytes) -> bool:
        lo, hi = self._range(prefix)
        return lo < hi

    def with_prefix(self, prefix: bytes) -> list[int]:
        lo, hi = self._range(prefix)
        return [i for key in self.keys[lo:hi] for i in self.by_bytes[key]]


@dataclass
class Choice:
    """The outcome of one step: a token and the tracker after it, or a duplicate / dead end to undo."""

    token: int | None
    tracker: Tracker | None
    verdict: str  # OK, DONE, DUP or "dead"
    dup: tuple[int, int, tuple[str, ...]] | None = None  # (container id, item index, its path) for DUP


@dataclass
class Counters:
    steps: int = 0
    refused_argmax: int = 0  # the model's own choice was refused (by grammar or copy rule)
    top_checks: int = 0
    listed: int = 0  # candidates listed from the text or the vocabulary
    dups: int = 0
    dead_ends: int = 0


class CopyChooser:
    """Greedy under ``grammar`` and a copy tracker (see the module docstring)."""

    TOP = 256

    def __init__(self, vocab: Vocab, grammar: Any) -> None:
        self.vocab = vocab
        self.grammar = grammar
        self.n_vocab = len(vocab.pieces)
        self.stats = Counters()

    def _try(self, tracker: Tracker, token: int) -> tuple[str, Tracker]:
        piece = self.vocab.pieces[token]
        if not piece:  # special tokens write nothing; the answer ends at its closing brace, not at EOS
            return REFUSED, tracker
        t = tracker.copy()
        return t.feed(piece), t

    def _first_ok(self, tracker: Tracker, ids: np.ndarray, logits: np.ndarray) -> Choice | None:
        """The best of ``ids`` that the tracker and the grammar accept (checked in logit order)."""
        order = np.lexsort((ids, -logits))
        allowed = None
        for k in order:
            token = int(ids[k])
            verdict, after = self._try(tracker, token)
            if verdict is REFUSED:
                continue
            if allowed is None:  # one grammar call for the whole candidate set, on first need
                allowed = np.isfinite(self.grammar.allowed(ids, logits.astype(np.float32)))
            if not allowed[k]:
                continue
            if verdict is DUP:
                return Choice(token, None, DUP, after.last_dup)
            return Choice(token, after, verdict)
        return None

    def choose(self, logits: np.ndarray, tracker: Tracker) -> Choice:
        self.stats.steps += 1
        token = int(np.argmax(logits))
        verdict, after = self._try(tracker, token)
        one = np.array([token], dtype=np.int32)
        if verdict is not REFUSED and np.isfinite(self.grammar.allowed(one, logits[one])[0]):
            if verdict is DUP:
                self.stats.dups += 1
                return Choice(token, None, DUP, after.last_dup)
            return Choice(token, after, verdict)
        self.stats.refused_argmax += 1
        self.stats.top_checks += 1
        top = min(self.TOP, self.n_vocab)
        ids = np.argpartition(logits, -top)[-top:].astype(np.int32)
        found = self._first_ok(tracker, ids, logits[ids])
        # Exact only when the winner beats every token left out (ties at the cut could hide a lower id).
        if found is not None and logits[found.token] > logits[ids].min():
            self.stats.dups += found.verdict is DUP
            return found
        self.stats.listed += 1
        ids = self._candidates(tracker)
        found = self._first_ok(tracker, ids, logits[ids]) if len(ids) else None
        if found is None:
            self.stats.dead_ends += 1
            return Choice(None, None, "dead")
        self.stats.dups += found.verdict is DUP
        return found

    # -- listing candidates --------------------------------------------------
    def _candidates(self, tracker: Tracker) -> np.ndarray:
        """Every token that may follow: from the text inside a clean strict span, else the grammar's picks."""
        if tracker.c.mode == "strict" and tracker.clean:
            return np.fromiter(sorted(self._span_candidates(tracker)), dtype=np.int32)
        ids = np.arange(self.n_vocab, dtype=np.int32)
        mask = np.isfinite(self.grammar.allowed(ids, np.zeros(self.n_vocab, dtype=np.float32)))
        return ids[mask]

    def _span_candidates(self, tracker: Tracker) -> set[int]:
        """Tokens that continue the current span string with text, or close it (a superset: each is checked)."""
        vocab = self.vocab
        sam = tracker.c.index.sam
        out: set[int] = set()
        if tracker.s_nan:  # OneKE's NAN, where an argument may be absent
            rest = b"NAN"[len(tracker.s_val):]
            for k in range(1, len(rest) + 1):
                out.update(vocab.by_bytes.get(rest[:k], ()))
            out.update(vocab.with_prefix(rest + b'"'))
        if not tracker.s_states:
            return out
        out.update(vocab.with_prefix(b'"'))
        # depth-first over the automaton: (state, escaped bytes so far, continuation bytes still owed);
        # the word markers are stepped over without writing anything
        stack = [(state, b"", 0) for state in tracker.s_states]
        seen: set[tuple[int, bytes]] = set()
        while stack:
            state, esc, owe = stack.pop()
            if (state, esc) in seen:
                continue
            seen.add((state, esc))
            for byte, nxt in sam.next[state].items():
                if byte in MARKERS:
                    stack.append((nxt, esc, owe))
                    continue
                piece = esc + json_escaped(byte)
                if len(piece) > vocab.max_len or not vocab.has_prefix(piece[: len(esc) + 1]):
                    continue
                for k in range(len(esc) + 1, len(piece) + 1):
                    out.update(vocab.by_bytes.get(piece[:k], ()))
                if owe:
                    left = owe - 1
                elif byte >= 0xF0:
                    left = 3
                elif byte >= 0xE0:
                    left = 2
                elif byte >= 0xC0:
                    left = 1
                else:
                    left = 0
                if left == 0:  # a character boundary: the string may close here (the tracker judges)
                    out.update(vocab.with_prefix(piece + b'"'))
                if vocab.has_prefix(piece):
                    stack.append((nxt, piece, left))
        return out


__all__ = ["Choice", "CopyChooser", "Counters", "Vocab", "json_escaped", "DONE", "DUP", "OK", "REFUSED"]
