"""Cutting a document into pieces that fit the model's budget, at sentence boundaries.

Extraction works sentence by sentence, so a chunk is a run of whole sentences
whose token count stays within the budget left after the instruction, the
schema and the answer (OneKE itself was trained on sources of about 400
tokens). Sentences end at Chinese and English terminal punctuation (with any
closing quotes or brackets), at a full stop followed by space, and at line
breaks. A sentence longer than the budget is cut at clause punctuation, then
at spaces, and only as a last resort between characters, never inside a
character. Every chunk is a ``(start, end)`` slice of the original text, so
results map back to document offsets without any bookkeeping.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Span = tuple[int, int]
Counter = Callable[[str], int]

_CLOSERS = re.escape("”’\"'）)]】》」』")
_SENTENCE_END = re.compile(
    rf"(?:[。！？!?；;…]+|\.(?=\s|$)|\.(?=[{_CLOSERS}]))[{_CLOSERS}]*|\n"
)
_CLAUSE_END = re.compile(r"[，,、：:]+")
_ABBREV = re.compile(r"(?<![A-Za-z])(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|e\.g|i\.e|[A-Z])\.$")


def _trimmed(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def sentence_spans(text: str) -> list[Span]:
    """Sentence slices of ``text`` (surrounding whitespace left out, empty ones dropped)."""
    spans: list[Span] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if text[m.end() - 1] == "." and _ABBREV.search(text, max(0, m.end() - 10), m.end()):
            continue  # "Mr. Smith", "J. K. Rowling": not a sentence end
        piece = _trimmed(text, start, m.end())
        if piece:
            spans.append(piece)
        start = m.end()
    piece = _trimmed(text, start, len(text))
    if piece:
        spans.append(piece)
    return spans


def _cut_points(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[Span]:
    spans, pos = [], start
    for m in pattern.finditer(text, start, end):
        piece = _trimmed(text, pos, m.end())
        if piece:
            spans.append(piece)
        pos = m.end()
    piece = _trimmed(text, pos, end)
    if piece:
        spans.append(piece)
    return spans


def _hard_split(text: str, span: Span, count: Counter, budget: int) -> list[Span]:
    """Cut by characters: the longest prefix that fits, found by bisection on the token count."""
    out: list[Span] = []
    start, end = span
    while start < end:
        lo, hi = start + 1, end
        while lo < hi:  # largest stop with count(text[start:stop]) <= budget
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append((start, lo))
        start = lo
    return out


def _fit(text: str, span: Span, count: Counter, budget: int) -> list[Span]:
    """Pieces of an over-long sentence, each within ``budget``: clauses, then words, then characters."""
    if count(text[span[0]:span[1]]) <= budget:
        return [span]
    for pattern in (_CLAUSE_END, re.compile(r"\s+")):
        parts = _cut_points(text, span[0], span[1], pattern)
        if len(parts) > 1:
            return _pack(text, [p for part in parts for p in _fit(text, part, count, budget)], count, budget)
    return _hard_split(text, span, count, budget)


def _pack(text: str, pieces: list[Span], count: Counter, budget: int) -> list[Span]:
    """Greedily join consecutive pieces while the joined slice fits."""
    chunks: list[Span] = []
    cur: Span | None = None
    for piece in pieces:
        if cur is None:
            cur = piece
            continue
        joined = (cur[0], piece[1])
        if count(text[joined[0]:joined[1]]) <= budget:
            cur = joined
        else:
            chunks.append(cur)
            cur = piece
    if cur is not None:
        chunks.append(cur)
    return chunks


def chunk_spans(text: str, count: Counter, budget: int) -> list[Span]:
    """Chunks of whole sentences within ``budget`` tokens each (long sentences cut safely)."""
    if budget < 1:
        raise ValueError("the chunk budget must be at least one token")
    whole = _trimmed(text, 0, len(text))
    if whole is None:
        return []
    if count(text[whole[0]:whole[1]]) <= budget:
        return [whole]
    pieces = [p for s in sentence_spans(text) for p in _fit(text, s, count, budget)]
    return _pack(text, pieces, count, budget)
