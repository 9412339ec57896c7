"""Which strings occur in a text, as whole words: a suffix automaton for copy-constrained decoding.

A suffix automaton of a text recognises exactly its substrings, and
extending a candidate by one byte is one dictionary lookup, so checking a
token of ``k`` bytes against the text costs O(k) whatever the text's length
(Blumer et al. 1985; the construction is linear in the text). Decoding an
extraction answer asks this for every token of every extracted string.

Spans must also start and end where words do. In scripts written with
spaces, an entity never starts or ends inside a word ("f" of "founder" or
"Sal" of "Salford" are never right, and the scorer counts only whole
strings), so the automaton is built over the text with two marker bytes
inserted: ``\\x01`` before the first character of every word and ``\\x02``
after its last (a word is a run of letters, digits and marks outside
scripts written without spaces: Chinese, Japanese, Thai are free to cut
anywhere). A span that starts with a word character must start right after
a ``\\x01``; one that ends with a word character must be followed by a
``\\x02``; markers inside a span are skipped. State sets stay tiny (the
markers always sit at the same places, so only one way through survives).

Two views of a text exist:

* ``strict``: the characters as they are (their UTF-8 bytes);
* ``loose``: each character folded (NFKC, then case folding, so full-width
  ``（Ａ）`` reads as ``(a)``), every run of whitespace (including the
  ideographic space U+3000) as one space. The model's characters are folded
  the same way before they are matched.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

START, END = 0x01, 0x02  # word-boundary markers in the automaton's text
_MARKED = (START, END)


class SuffixAutomaton:
    """The minimal automaton of all substrings of ``data`` (bytes). States are ints; 0 is the root."""

    def __init__(self, data: bytes) -> None:
        nxt: list[dict[int, int]] = [{}]
        link = [-1]
        length = [0]
        last = 0
        for byte in data:
            cur = len(nxt)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and byte not in nxt[p]:
                nxt[p][byte] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][byte]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(nxt)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(byte) == q:
                        nxt[p][byte] = clone
                        p = link[p]
                    link[q] = link[cur] = clone
            last = cur
        self.next = nxt

    def walk(self, state: int, data: bytes) -> int:
        """The state after ``data``, or -1 when the string would no longer occur in the text."""
        nxt = self.next
        for byte in data:
            state = nxt[state].get(byte, -1)
            if state < 0:
                return -1
        return state

    def contains(self, data: bytes) -> bool:
        return self.walk(0, data) >= 0


def is_word(c: str) -> bool:
    """Part of a word in a script written with spaces (Latin, Cyrillic, Greek letters, digits, their marks)."""
    if not c:
        return False
    cat = unicodedata.category(c[0])
    return cat in ("Lu", "Ll", "Lt", "Lm", "Nd", "Mn", "Mc")


_SPACE = " "


def fold_char(c: str) -> str:
    """One character as the loose view sees it (may be several characters, or a space for any whitespace)."""
    if c.isspace():
        return _SPACE
    return unicodedata.normalize("NFKC", c).casefold()


def fold(text: str) -> str:
    """The loose view of ``text``: characters folded, whitespace runs collapsed to one space."""
    return fold_with_offsets(text)[0]


def fold_with_offsets(text: str) -> tuple[str, list[int]]:
    """The loose view of ``text`` and, for each of its characters, the index of the source character."""
    out: list[str] = []
    where: list[int] = []
    for i, c in enumerate(text):
        f = fold_char(c)
        if f == _SPACE and out and out[-1] == _SPACE:
            continue
        for ch in f:
            out.append(ch)
            where.append(i)
    return "".join(out), where


def marked(view: str) -> bytes:
    """``view`` as UTF-8 with the word-boundary markers inserted (marker bytes in the text itself are dropped)."""
    out = bytearray()
    n = len(view)
    for i, c in enumerate(view):
        word = is_word(c)
        if word and (i == 0 or not is_word(view[i - 1])):
            out.append(START)
        raw = c.encode("utf-8")
        if raw[0] not in _MARKED:
            out += raw
        if word and (i == n - 1 or not is_word(view[i + 1])):
            out.append(END)
    return bytes(out)


@lru_cache(maxsize=1)
def _folded_bmp() -> dict[str, tuple[str, ...]]:
    """folded form -> the characters of the Basic Multilingual Plane that fold to it (built once, ~0.1 s)."""
    inverse: dict[str, list[str]] = {}
    for cp in range(0x20, 0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        inverse.setdefault(fold_char(c), []).append(c)
    return {k: tuple(v) for k, v in inverse.items()}


States = tuple[int, ...]  # the automaton states a span can be in (at most a few)


class TextIndex:
    """A text ready for copy checks in ``strict`` or ``loose`` mode (see the module docstring)."""

    def __init__(self, text: str, mode: str = "strict") -> None:
        if mode not in ("strict", "loose"):
            raise ValueError(f"unknown copy mode {mode!r}")
        self.text = text
        self.mode = mode
        self.view = text if mode == "strict" else fold(text)
        self.sam = SuffixAutomaton(marked(self.view))
        self._variants: dict[bytes, list[str]] | None = None

    def step_char(self, states: States, raw: bytes, first: bool, word: bool | None) -> States:
        """The states after one more character (its bytes ``raw``; ``word``: whether it is a word character,
        None while it is incomplete), or ``()`` when the span would leave the text or cut a word."""
        if START in raw or END in raw:
            return ()  # the markers are not text
        sam = self.sam
        out: set[int] = set()
        for s in states:
            if first:  # the first character of a span: a word character must start a word
                starts = (s,) if word is False else ((sam.walk(s, b"\x01"),) if word else (s, sam.walk(s, b"\x01")))
            else:  # later characters: step over the markers between words
                after_end = sam.walk(s, b"\x02")
                starts = (s, sam.walk(s, b"\x01"), after_end, sam.walk(after_end, b"\x01") if after_end >= 0 else -1)
            for start in starts:
                if start >= 0:
                    end = sam.walk(start, raw)
                    if end >= 0:
                        out.add(end)
        return tuple(sorted(out))

    def may_end(self, states: States, last_is_word: bool) -> bool:
        """Whether a span in ``states`` may end here (a word character must end its word)."""
        if not last_is_word:
            return bool(states)
        return any(self.sam.walk(s, b"\x02") >= 0 for s in states)

    def variants_by_prefix(self) -> dict[bytes, list[str]]:
        """Loose mode: every character the model may write (it folds to a character of the text), by UTF-8
        prefix, so a character split across tokens can be judged from its first bytes."""
        if self._variants is None:
            inverse = _folded_bmp()
            chars = set(self.text)
            for f in set(self.view):
                chars.update(inverse.get(f, ()))
            table: dict[bytes, list[str]] = {}
            for c in chars:
                raw = c.encode("utf-8")
                for k in range(1, len(raw)):
                    table.setdefault(raw[:k], []).append(c)
            self._variants = table
        return self._variants
