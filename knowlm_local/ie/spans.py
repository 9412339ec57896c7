"""Where each extracted string sits in the source text, and which ones are not there at all.

Extraction answers should copy strings from the input; a string that occurs
nowhere in the text is the clearest hallucination signal users have. Every
extracted string is looked up in the whole record text (all occurrences,
character offsets ``[start, end)`` into ``text`` as Python indexes it):
first exactly, then ignoring case, width and runs of whitespace (``"new  york"``
still finds ``"New York"``, ``"(ａ)"`` finds ``"（A）"``, with the offsets of the original characters).
"""

from __future__ import annotations

from typing import Any

from knowlm_local.ie.results import mentions


def find_all(text: str, needle: str) -> list[list[int]]:
    """Offsets of every (possibly overlapping) exact occurrence of ``needle``."""
    out: list[list[int]] = []
    if not needle:
        return out
    start = text.find(needle)
    while start >= 0:
        out.append([start, start + len(needle)])
        start = text.find(needle, start + 1)
    return out


def find_loose(text: str, needle: str) -> list[list[int]]:
    """Occurrences ignoring case, character width (full-width ``Ａ（`` = ``A(``) and runs of whitespace,
    the same folding ``--copy loose`` decodes with; offsets are of the original characters."""
    from knowlm_local.ie.textindex import fold, fold_with_offsets

    target = fold(needle).strip()
    if not target:
        return []
    view, where = fold_with_offsets(text)
    out: list[list[int]] = []
    start = view.find(target)
    while start >= 0:
        end = start + len(target)
        out.append([where[start], where[end - 1] + 1])
        start = view.find(target, start + 1)
    return out


def locate(task: str, text: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per extracted string: label, field (entity/subject/object/trigger/argument/attribute),
    role for arguments and attributes, the string, its offsets, and a ``hallucinated`` flag."""
    spans: list[dict[str, Any]] = []
    cache: dict[str, tuple[list[list[int]], str]] = {}
    for label, field, role, value in mentions(task, result):
        if value not in cache:
            exact = find_all(text, value)
            cache[value] = (exact, "exact") if exact else (find_loose(text, value), "loose")
        offsets, how = cache[value]
        span: dict[str, Any] = {"label": label, "field": field}
        if role is not None:
            span["role"] = role
        span.update(text=value, offsets=[list(o) for o in offsets], hallucinated=not offsets)
        if offsets and how == "loose":
            span["match"] = "loose"
        spans.append(span)
    return spans
