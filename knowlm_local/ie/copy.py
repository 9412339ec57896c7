"""Copy-constrained extraction answers: every extracted string comes from the text, no list item twice.

The JSON grammar fixes the *shape* of an answer; this module follows the
answer byte by byte as it is generated and judges each candidate token:

* inside a string that the task copies from the text (which strings those
  are comes from :data:`knowlm_local.ie.tasks.SPAN_PATHS`), the string so far
  plus the token's text (after JSON unescaping) must still occur in the
  text (:mod:`knowlm_local.ie.textindex`, an O(token length) check); its
  closing quote is allowed only for a non-empty, non-blank string that ends
  on a character boundary (OneKE's ``NAN`` is allowed where an argument may
  be absent);
* a list item (or a KG entity name) equal to an earlier one of the same
  list is reported as :data:`DUP` with the list it belongs to, so the
  decoder can take the answer back to the end of the previous item and close
  the list there (a model that starts repeating has run out of items);
* for tasks that give a span one label (:data:`~knowlm_local.ie.tasks.ONE_LABEL_TASKS`, NER), an item
  that an earlier label's list already holds is a DUP of this list too;
* a list that already holds ``max_items`` items, or that the decoder closed,
  refuses the comma that would start another.

The state is a small value object: :meth:`Tracker.feed` works on a copy, so
the decoder can try many candidate tokens against the same state and keep
one. Nothing here knows about models or tokenizers: it sees bytes.

Strict mode accepts only the escapes ``json.dumps`` writes (``\\"``, ``\\\\``,
``\\n``, ``\\t``, ... and ``\\u00XX`` for other control characters): every
other character is written as itself, so the decoder can list every token
that may come next from the text alone.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from knowlm_local.ie.tasks import ABSENT_WORD, ONE_LABEL_TASKS, get_task, span_kind
from knowlm_local.ie.textindex import TextIndex, fold_char, is_word

MODES = ("strict", "loose", "off")
DEFAULT_MAX_ITEMS = 24

OK, REFUSED, DUP, DONE = "ok", "refused", "dup", "done"

_WS = frozenset(b" \t\r\n")
_SIMPLE_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f",
                   ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_CANONICAL = {'"', "\\", "\b", "\f", "\n", "\r", "\t"}  # what json.dumps escapes by name
_U_ESCAPED = tuple(chr(cp) for cp in range(0x20) if chr(cp) not in _CANONICAL)  # what it writes as \u00XX
_ESCAPED = tuple(_CANONICAL) + _U_ESCAPED
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NAN = ABSENT_WORD.encode()
_ids = itertools.count(1)


def check_mode(mode: str) -> str:
    from knowlm_local.errors import KnowLMError

    if mode not in MODES:
        raise KnowLMError(f"unknown --copy mode {mode!r}", "choose strict (the default), loose or off")
    return mode


@dataclass
class Container:
    """An open object or array of the answer."""

    kind: str  # "obj" or "arr"
    path: tuple[str, ...]
    cid: int = 0
    state: str = "first"  # obj: first, key, colon, value, after; arr: first, value, after
    n_sep: int = 0  # commas seen: the index of the current (or next) item
    items: tuple[str, ...] = ()  # arrays: completed items (canonical JSON); objects: keys seen
    key: str = ""  # objects: the key of the current member
    no_more: bool = False  # the decoder closed it: no further item may start
    value: object = None  # the value being built (dict or list)

    def copy(self) -> Container:
        c = Container(self.kind, self.path, self.cid, self.state, self.n_sep, self.items, self.key, self.no_more)
        c.value = dict(self.value) if isinstance(self.value, dict) else list(self.value or [])
        return c


class Constraint:
    """What is allowed: the text, the mode, the task's span paths, the list limit."""

    def __init__(self, task: str, text: str, mode: str = "strict", max_items: int = DEFAULT_MAX_ITEMS,
                 one_label: bool | None = None) -> None:
        self.task = task
        self.mode = check_mode(mode)
        self.index = TextIndex(text, "strict" if mode == "off" else mode)
        self.max_items = max_items
        # None: as the task defines it (NER: one label per span); only spans are judged, so never under "off"
        self.one_label = (get_task(task).name in ONE_LABEL_TASKS if one_label is None else one_label) and mode != "off"
        self._kinds: dict[tuple[str, ...], str | None] = {}

    def kind(self, path: tuple[str, ...]) -> str | None:
        if self.mode == "off":
            return None
        if path not in self._kinds:
            self._kinds[path] = span_kind(self.task, path)
        return self._kinds[path]

    def start(self) -> Tracker:
        return Tracker(self)


class Tracker:
    """Where an answer stands after the bytes fed so far (see the module docstring)."""

    __slots__ = ("c", "stack", "done", "s_on", "s_key", "s_val", "s_kind", "s_states", "s_first", "s_word", "s_nan",
                 "s_esc", "s_hex", "s_utf8", "s_space", "s_sealed", "last_dup", "empty_at")
    _STRING_FIELDS = ("s_on", "s_key", "s_val", "s_kind", "s_states", "s_first", "s_word", "s_nan", "s_esc", "s_hex",
                      "s_utf8", "s_space", "s_sealed")

    def __init__(self, constraint: Constraint) -> None:
        self.c = constraint
        self.stack: list[Container] = []
        self.done = False
        self.s_on = False  # inside a string
        # (container id, item index, container path) of the last duplicate seen
        self.last_dup: tuple[int, int, tuple[str, ...]] | None = None
        self.empty_at: tuple[str, ...] | None = None  # a list at this path, when it opens, may hold nothing
        self._reset_string(False, None)

    def _reset_string(self, is_key: bool, kind: str | None) -> None:
        self.s_key = is_key
        self.s_val = ""  # the decoded string so far
        self.s_kind = kind  # None, "span" or "span|NAN"
        self.s_states: tuple[int, ...] = (0,)  # automaton states of the span so far (empty: left the text)
        self.s_first = True  # no character of the span matched yet
        self.s_word = False  # the last matched character is a word character
        self.s_nan = kind == "span|NAN"  # still a prefix of NAN
        self.s_esc = 0  # 0 none, 1 after a backslash, 2-5 reading \u hex digits
        self.s_hex = ""
        self.s_utf8 = b""  # raw bytes of a character not complete yet
        self.s_space = False  # loose: the last folded character was a space
        self.s_sealed = False  # the string may only end now (see seal_string)

    def copy(self) -> Tracker:
        t = Tracker.__new__(Tracker)
        t.c = self.c
        t.stack = [x.copy() for x in self.stack]
        t.done = self.done
        t.last_dup = self.last_dup
        t.empty_at = self.empty_at
        for name in self._STRING_FIELDS:
            setattr(t, name, getattr(self, name))
        return t

    # -- queries the decoder asks --------------------------------------------
    @property
    def in_span(self) -> bool:
        return self.s_on and self.s_kind is not None

    @property
    def clean(self) -> bool:
        """Inside a span string at a character boundary with no escape half-written (the state the decoder
        can enumerate continuations from)."""
        return self.in_span and self.s_esc == 0 and not self.s_utf8

    def container(self, cid: int) -> Container | None:
        return next((x for x in self.stack if x.cid == cid), None)

    def close_container(self, cid: int) -> None:
        """Refuse any further item in container ``cid`` (after a duplicate or a dead end)."""
        box = self.container(cid)
        if box is not None:
            box.no_more = True

    def empty_next(self, path: tuple[str, ...]) -> None:
        """The list at ``path`` is not open yet (one token opened it and its first item): it opens closed."""
        self.empty_at = path

    def seal_string(self) -> None:
        """Let the string being written (if any) only end, not grow.

        After a duplicate the decoder goes back to the end of the previous
        item, which can lie inside that item's string when one token closed
        it and opened the next (``", "``): the item was complete there, so it
        must close as it was, not run on into the text that follows it.
        """
        if self.s_on:
            self.s_sealed = True

    # -- feeding ------------------------------------------------------------
    def feed(self, data: bytes) -> str:
        """Advance over ``data`` in place: OK, DONE (the answer is complete), DUP or REFUSED."""
        for byte in data:
            verdict = self._byte(byte)
            if verdict is not OK:
                return verdict
        return DONE if self.done else OK

    def _path(self) -> tuple[str, ...]:
        if not self.stack:
            return ()
        top = self.stack[-1]
        return top.path + (("[]",) if top.kind == "arr" else (top.key,))

    def _byte(self, b: int) -> str:
        if self.s_on:
            return self._string_byte(b)
        if self.done:
            return OK if b in _WS else REFUSED
        if b in _WS:
            return OK
        top = self.stack[-1] if self.stack else None
        if top is None:  # the top-level value
            return self._open_value(b, ())
        if top.kind == "obj":
            if top.state in ("first", "key"):
                if b == ord("}") and top.state == "first":
                    return self._close()
                if b != ord('"') or (top.no_more and top.n_sep == 0 and top.state == "first"):
                    return REFUSED
                self.s_on = True
                self._reset_string(True, self.c.kind(top.path + ("{key}",)))
                return OK
            if top.state == "colon":
                if b != ord(":"):
                    return REFUSED
                top.state = "value"
                return OK
            if top.state == "value":
                return self._open_value(b, top.path + (top.key,))
            # after a member
            if b == ord(","):
                if top.no_more:
                    return REFUSED
                top.n_sep += 1
                top.state = "key"
                return OK
            return self._close() if b == ord("}") else REFUSED
        # array
        if top.state in ("first", "value"):
            if b == ord("]") and top.state == "first":
                return self._close()
            if top.no_more and top.state == "first":
                return REFUSED
            return self._open_value(b, top.path + ("[]",))
        if b == ord(","):
            if top.no_more or top.n_sep + 1 >= self.c.max_items:
                return REFUSED
            top.n_sep += 1
            top.state = "value"
            return OK
        return self._close() if b == ord("]") else REFUSED

    def _open_value(self, b: int, path: tuple[str, ...]) -> str:
        if b == ord('"'):
            self.s_on = True
            self._reset_string(False, self.c.kind(path))
            return OK
        if b in (ord("{"), ord("[")):
            kind = "obj" if b == ord("{") else "arr"
            box = Container(kind, path, next(_ids))
            box.value = {} if kind == "obj" else []
            if path == self.empty_at:
                box.no_more, self.empty_at = True, None
            self.stack.append(box)
            return OK
        return REFUSED  # answers hold only strings, objects and arrays

    def _close(self) -> str:
        box = self.stack.pop()
        return self._completed(box.value)

    def _completed(self, value: object) -> str:
        """A value (string, object or array) just ended: attach it to its parent, check duplicates."""
        if not self.stack:
            self.done = True
            return DONE
        parent = self.stack[-1]
        if parent.kind == "obj":
            parent.value[parent.key] = value  # type: ignore[index]
            parent.state = "after"
            return OK
        key = self._item_key(value)
        if key in parent.items or (self.c.one_label and self._under_other_label(parent, key)):
            self.last_dup = (parent.cid, parent.n_sep, parent.path)
            return DUP
        parent.items += (key,)
        parent.value.append(value)  # type: ignore[union-attr]
        parent.state = "after"
        return OK

    def _under_other_label(self, parent: Container, key: str) -> bool:
        """Whether a top-level label's list other than ``parent`` already holds the item ``key``."""
        if len(self.stack) != 2 or self.stack[0].kind != "obj":
            return False
        owner = self.stack[0]
        return any(self._item_key(item) == key for label, items in owner.value.items()
                   if label != owner.key and isinstance(items, list) for item in items)

    def _item_key(self, value: object) -> str:
        """How list items are compared: canonical JSON (loose: of the folded view)."""
        return _loose_key(value) if self.c.mode == "loose" else json.dumps(value, ensure_ascii=False, sort_keys=True)

    # -- strings -------------------------------------------------------------
    def _string_byte(self, b: int) -> str:
        if self.s_sealed and b != ord('"'):
            return REFUSED
        if self.s_esc == 1:
            return self._escape_byte(b)
        if self.s_esc >= 2:
            return self._hex_byte(b)
        if b == ord('"'):
            return self._end_string()
        if b == ord("\\"):
            if self.s_utf8:
                return REFUSED
            if self.s_kind is not None and not any(self._takes(c) for c in _ESCAPED):
                return REFUSED  # no character an escape could write continues the span
            self.s_esc = 1
            return OK
        if b < 0x20:
            return REFUSED  # raw control characters are not JSON
        if self.s_utf8 or b >= 0x80:
            self.s_utf8 += bytes([b])
            need = _utf8_len(self.s_utf8[0])
            if need == 0 or (len(self.s_utf8) > 1 and not 0x80 <= b <= 0xBF):
                return REFUSED
            if len(self.s_utf8) < need:
                return self._partial_char()
            raw, self.s_utf8 = self.s_utf8, b""
            try:
                ch = raw.decode("utf-8")
            except UnicodeDecodeError:
                return REFUSED
            return self._char(ch, raw)
        return self._char(chr(b), bytes([b]))

    def _takes(self, ch: str) -> bool:
        """Whether the span may continue with character ``ch`` (checked without changing the state)."""
        return bool(self._matched(ch)[0]) or self._nan_next(ch)

    def _escape_byte(self, b: int) -> str:
        if b == ord("u"):
            if self.s_kind is not None and not any(self._takes(c) for c in _U_ESCAPED):
                return REFUSED
            self.s_esc = 2
            return OK
        ch = _SIMPLE_ESCAPES.get(b)
        if ch is None:
            return REFUSED
        self.s_esc = 0
        if self.s_kind is not None and ch not in _CANONICAL:
            return REFUSED  # "\\/" is legal JSON, but json.dumps writes "/"
        return self._char(ch, ch.encode("utf-8"))

    def _hex_byte(self, b: int) -> str:
        if b not in _HEX:
            return REFUSED
        self.s_hex += chr(b)
        self.s_esc += 1
        if self.s_kind is not None:  # spans: only the \\u00XX json.dumps writes for other control characters
            if not any(f"{ord(c):04x}".startswith(self.s_hex) and self._takes(c) for c in _U_ESCAPED):
                return REFUSED
        if self.s_esc < 6:
            return OK
        self.s_esc = 0
        cp = int(self.s_hex, 16)
        self.s_hex = ""
        if 0xD800 <= cp <= 0xDFFF:
            return REFUSED  # surrogate pairs: not worth the states, no extraction answer needs them
        ch = chr(cp)
        return self._char(ch, ch.encode("utf-8"))

    def _partial_char(self) -> str:
        """Bytes of a multi-byte character that is not complete yet (byte-level tokens split characters)."""
        if self.s_kind is None:
            return OK
        index = self.c.index
        if self.c.mode == "strict":
            ok = index.step_char(self.s_states, self.s_utf8, self.s_first, None)
        else:  # some character beginning with these bytes must fold to a continuation of the text
            ok = any(self._matched(ch)[0] for ch in index.variants_by_prefix().get(self.s_utf8, ()))
        return OK if ok else REFUSED

    def _matched(self, ch: str) -> tuple[tuple[int, ...], bool]:
        """(the span's states after ``ch``, whether ``ch`` is skipped as extra whitespace) without changing state."""
        index = self.c.index
        if self.c.mode == "strict":
            return index.step_char(self.s_states, ch.encode("utf-8"), self.s_first, is_word(ch)), False
        folded = fold_char(ch)
        if folded == " " and (self.s_space or self.s_first):
            return self.s_states, True  # leading or repeated whitespace: nothing new to match
        states, first = self.s_states, self.s_first
        for k, f in enumerate(folded):
            states = index.step_char(states, f.encode("utf-8"), first and k == 0, is_word(f))
            if not states:
                break
        return states, False

    def _nan_next(self, ch: str) -> bool:
        return self.s_nan and _NAN.startswith((self.s_val + ch).encode("utf-8"))

    def _char(self, ch: str, raw: bytes) -> str:
        if self.s_kind is None:
            self.s_val += ch
            return OK
        states, skipped = self._matched(ch)
        self.s_nan = self._nan_next(ch)
        if not states and not self.s_nan:
            return REFUSED
        self.s_val += ch
        if skipped:
            self.s_space = True
            return OK
        self.s_states = states
        self.s_first = False
        last = fold_char(ch)[-1:] if self.c.mode == "loose" else ch
        self.s_word = is_word(last)
        self.s_space = last == " "
        return OK

    def _end_string(self) -> str:
        if self.s_esc or self.s_utf8:
            return REFUSED
        value = self.s_val
        if self.s_kind is not None:
            is_nan = self.s_kind == "span|NAN" and value == ABSENT_WORD
            if not is_nan and (not value.strip() or not self.c.index.may_end(self.s_states, self.s_word)):
                return REFUSED  # empty, blank, not in the text, or cutting a word
        self.s_on = False
        top = self.stack[-1] if self.stack else None
        if self.s_key and top is not None:
            if value in top.items:  # the same entity name twice (KG), or a repeated key
                self.last_dup = (top.cid, top.n_sep, top.path)
                return DUP
            top.items += (value,)
            top.key = value
            top.state = "colon"
            return OK
        return self._completed(value)


def _utf8_len(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _loose_key(value: object) -> str:
    """Loose mode compares items as the loose view folds them ("Apple" repeats "apple")."""
    def norm(v: object) -> object:
        if isinstance(v, str):
            return "".join(fold_char(c) for c in v).strip()
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), ensure_ascii=False, sort_keys=True)
