"""A tolerant reader for model answers that were not decoded under a JSON grammar.

With llama.cpp the answer is constrained and ``json.loads`` just works. The
transformers backend (and answers cut off by ``max_tokens``) can give the
usual near-JSON of language models: a Markdown code fence around it, Python
quotes and literals (``'x'``, ``None``, ``True``), trailing commas, a bare
``NAN`` (OneKE's "absent" marker), or an answer that stops mid-string. This
module reads all of those with a small recursive-descent parser, says what it
had to repair, and reports what it could not read instead of raising, so one
bad answer never stops a 100k-record run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.S)
_BARE_STOP = set(",:{}[]\"'\n")
_WORDS = {"true": True, "false": False, "null": None, "none": None}
_NAN = {"nan", "n/a"}


@dataclass
class Parsed:
    """What came out of one answer: ``value`` (None when nothing usable), whether it was clean JSON, and notes."""

    value: Any
    clean: bool = False
    repairs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.repairs: list[str] = []

    def note(self, what: str) -> None:
        if what not in self.repairs:
            self.repairs.append(what)

    def ws(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c.isspace():
                self.i += 1
            elif s.startswith("//", self.i):
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end + 1
                self.note("comments")
            else:
                break

    def peek(self) -> str:
        self.ws()
        if self.i >= len(self.s):
            raise _Truncated
        return self.s[self.i]

    def value(self) -> Any:
        c = self.peek()
        if c == "{":
            return self.obj()
        if c == "[":
            return self.arr()
        if c in "\"'":
            return self.string()
        return self.bare()

    def obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def item(c: str) -> None:
            key = self.string() if c in "\"'" else self.bare(key=True)
            if self.peek() != ":":
                self.note("missing colon")
            else:
                self.i += 1
            out[str(key)] = self.value()

        self._items("}", item)
        return out

    def arr(self) -> list[Any]:
        out: list[Any] = []
        self._items("]", lambda _c: out.append(self.value()))
        return out

    def _items(self, close: str, item: Callable[[str], None]) -> None:
        """Read a container's items up to ``close`` (the opener is at ``self.i``); truncation ends it quietly."""
        self.i += 1
        while True:
            try:
                c = self.peek()
            except _Truncated:
                self.note("truncated")
                return
            if c == close:
                self.i += 1
                return
            if c == ",":
                self.i += 1
                self.note("extra commas")
                continue
            try:
                item(c)
            except _Truncated:
                self.note("truncated")
                return
            if self._after_item(close):
                return

    def _after_item(self, close: str) -> bool:
        """Consume the separator after an item; True when the container ended (closed or truncated)."""
        try:
            c = self.peek()
        except _Truncated:
            self.note("truncated")
            return True
        if c == ",":
            self.i += 1
            try:
                if self.peek() == close:
                    self.note("trailing commas")
            except _Truncated:
                pass
        elif c == close:
            self.i += 1
            return True
        elif c in "}]":  # a mismatched closer: end this container, leave the closer to the parent
            self.note("mismatched brackets")
            return True
        else:
            self.note("missing commas")
        return False

    def string(self) -> str:
        quote = self.s[self.i]
        if quote == "'":
            self.note("single quotes")
        self.i += 1
        out: list[str] = []
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c == quote:
                self.i += 1
                return "".join(out)
            if c == "\\" and self.i + 1 < n:
                nxt = s[self.i + 1]
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[self.i + 2:self.i + 6]):
                    out.append(chr(int(s[self.i + 2:self.i + 6], 16)))
                    self.i += 6
                    continue
                out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(nxt, nxt))
                self.i += 2
                continue
            out.append(c)
            self.i += 1
        raise _Truncated  # a value cut off mid-string is dropped: half an entity is not an entity

    def bare(self, key: bool = False) -> Any:
        start = self.i
        s, n = self.s, len(self.s)
        while self.i < n and s[self.i] not in _BARE_STOP:
            self.i += 1
        word = s[start:self.i].strip()
        if not word:
            raise _Truncated if self.i >= n else ValueError(f"unexpected {s[self.i]!r} at {self.i}")
        if key:
            self.note("unquoted keys")
            return word
        low = word.lower()
        if low in _NAN:
            self.note("bare NAN")
            return "NAN"
        if low in _WORDS:
            if word not in ("true", "false", "null"):
                self.note("Python literals")
            return _WORDS[low]
        try:
            return int(word)
        except ValueError:
            pass
        try:
            return float(word)
        except ValueError:
            self.note("unquoted strings")
            return word


def strip_fences(text: str) -> str:
    """The inside of the first Markdown code fence, or the text unchanged."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


def parse_answer(text: str) -> Parsed:
    """Read a model answer that should be one JSON object."""
    body = text.strip()
    try:
        value = json.loads(body)
        if isinstance(value, dict):
            return Parsed(value, clean=True)
    except (json.JSONDecodeError, RecursionError):
        pass
    repairs: list[str] = []
    inner = strip_fences(body)
    if inner is not body:
        repairs.append("code fence")
    start = min((p for p in (inner.find("{"), inner.find("[")) if p >= 0), default=-1)
    if start < 0:
        return Parsed(None, error="no JSON object in the answer")
    if start > 0 and inner[:start].strip():
        repairs.append("text before the JSON")
    reader = _Reader(inner)
    reader.i = start
    try:
        value = reader.value()
    except _Truncated:
        return Parsed(None, repairs=repairs + ["truncated"], error="the answer stops before any value")
    except (ValueError, RecursionError) as exc:
        return Parsed(None, repairs=repairs + reader.repairs, error=f"cannot read the answer: {exc}")
    reader.ws()
    if reader.i < len(inner) and inner[reader.i:].strip().strip("`").strip():
        reader.note("text after the JSON")
    if not isinstance(value, dict):
        return Parsed(None, repairs=repairs + reader.repairs,
                      error=f"the answer is a JSON {type(value).__name__}, not an object keyed by the schema")
    return Parsed(value, repairs=repairs + reader.repairs)
