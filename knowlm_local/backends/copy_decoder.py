"""One copy-constrained answer as a state machine: logits in, what to evaluate next out.

The rules (grammar + copy tracker, greedy, exact) live in
:class:`~knowlm_local.backends.constrained.CopyChooser`; this adds the
answer's memory: after each token the tracker's state and a clone of the
grammar, so that a repeated list item or a dead end can take the answer back
to an earlier token (``undo``). Whoever drives it (the single-sequence loop
in :mod:`.llamacpp_copy`, the batched engine in :mod:`.llamacpp_batch`) does
what each :class:`Step` says to the KV cache: evaluate the chosen token, or
drop the cells after the kept tokens and evaluate the last kept one again
for its logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from knowlm_local.backends.constrained import Choice, CopyChooser
from knowlm_local.ie.copy import DONE, DUP, Constraint, Tracker

MAX_UNDOS = 64  # per answer; beyond this the copy rule is dropped for the rest of the answer (never seen)


@dataclass
class _Mark:
    """The state after a number of generated tokens: what an undo restores."""

    tracker: Tracker
    grammar: Any


def _undo_point(marks: list[_Mark], cid: int, item: int) -> tuple[int, bool]:
    """The latest mark where container ``cid`` had not started item ``item`` yet, and whether it was open there.

    For a later item that is before its comma. For the first item it is
    after the container's ``[`` and before the item's opening quote; when
    one token wrote both (``["``), no mark lies between them, and the point
    is the last mark before the container opened (which the caller then
    makes open empty).
    """
    for b in range(len(marks) - 1, -1, -1):
        tracker = marks[b].tracker
        box = tracker.container(cid)
        if box is None:
            if item == 0:
                return b, False
            continue
        if box.n_sep < item or (item == 0 and box.state == "first" and not tracker.s_on):
            return b, True
    return 0, False


def _closable(tracker: Tracker, schema: dict | None) -> tuple[int, int, tuple[str, ...]] | None:
    """For a dead end: the innermost open list (or optional-keys object), its current item index and path."""
    for box in reversed(tracker.stack):
        if box.kind == "arr" or (box.kind == "obj" and not _required(schema, box.path)):
            return box.cid, box.n_sep, box.path
    return None


def _required(schema: dict | None, path: tuple[str, ...]) -> bool:
    """Whether the object at ``path`` of the answer schema has required keys (then it cannot be closed early)."""
    node: Any = schema
    for key in path:
        if not isinstance(node, dict):
            return True
        if "anyOf" in node:
            node = next((v for v in node["anyOf"] if v.get("type") in ("array", "object")), {})
        if key == "[]":
            node = node.get("items", {})
        else:
            node = (node.get("properties") or {}).get(key, node.get("additionalProperties", {}))
    if isinstance(node, dict) and "anyOf" in node:
        node = next((v for v in node["anyOf"] if v.get("type") == "object"), node)
    return bool(node.get("required")) if isinstance(node, dict) else True


class _Answer:
    """The answer being decoded: tokens, the state after each, and the undo that takes tokens back."""

    def __init__(self, tracker: Tracker, grammar: Any) -> None:
        self.out: list[int] = []
        self.tracker = tracker
        self.grammar = grammar
        self.marks = [_Mark(tracker.copy(), grammar.clone())]

    def take(self, token: int, after: Tracker) -> None:
        self.grammar.accept(token)
        self.tracker = after
        self.out.append(token)
        self.marks.append(_Mark(after, self.grammar.clone()))  # trackers are only ever copied, never changed

    def undo(self, cid: int, item: int, path: tuple[str, ...]) -> int:
        """Back to before item ``item`` of container ``cid`` (at ``path``), which may then take no more items;
        the tokens kept."""
        b, opened = _undo_point(self.marks, cid, item)
        tracker = self.marks[b].tracker.copy()
        if opened:
            tracker.close_container(cid)
        else:
            tracker.empty_next(path)
        tracker.seal_string()  # the previous item ends as it was (its closing quote may have come with the comma)
        self.marks[b] = _Mark(tracker.copy(), self.marks[b].grammar)
        for mark in self.marks[b + 1:]:
            mark.grammar.close()
        del self.marks[b + 1:]
        self.grammar.close()
        self.grammar = self.marks[b].grammar.clone()
        self.tracker = tracker
        del self.out[b:]
        return b

    def close(self) -> None:
        self.grammar.close()
        for mark in self.marks:
            mark.grammar.close()



@dataclass
class Step:
    """What the driver does next: ``token`` (evaluate it), ``undo`` (keep ``keep`` tokens, re-evaluate the last),
    or ``done`` (the answer is complete, or hit the token limit)."""

    kind: str
    token: int | None = None
    keep: int = 0
    finish: str | None = None


class CopyDecoder:
    """A whole answer under the grammar of ``schema`` and ``constraint``, one logits row at a time."""

    def __init__(self, vocab: Any, grammar: Any, constraint: Constraint, schema: dict, max_tokens: int) -> None:
        self.chooser = CopyChooser(vocab, grammar)
        self.constraint = constraint
        self.schema = schema
        self.max_tokens = max_tokens
        self.ans = _Answer(constraint.start(), grammar)
        self.undos = 0

    @property
    def tokens(self) -> list[int]:
        return self.ans.out

    def choose(self, logits: np.ndarray) -> Choice:
        return self.chooser.choose(logits, self.ans.tracker)

    def apply(self, choice: Choice) -> Step:
        """Carry out ``choice`` (from :meth:`choose`): take its token, or undo."""
        if choice.verdict in (DUP, "dead"):
            self.undos += 1
            target = choice.dup if choice.verdict == DUP else _closable(self.ans.tracker, self.schema)
            if target is None or self.undos > MAX_UNDOS:  # nothing can close: drop the copy rule, keep the grammar
                self.constraint = Constraint(self.constraint.task, "", mode="off", max_items=self.constraint.max_items)
                self.ans.tracker = _retarget(self.ans.tracker, self.constraint)
                return Step("retry")
            kept = self.ans.undo(*target)
            self.chooser.grammar = self.ans.grammar
            return Step("undo", keep=kept)
        self.ans.take(choice.token, choice.tracker)
        if choice.verdict == DONE:
            return Step("done", choice.token, finish="stop")
        if len(self.ans.out) >= self.max_tokens:
            return Step("done", choice.token, finish="length")
        return Step("token", choice.token)

    def step(self, logits: np.ndarray) -> Step:
        return self.apply(self.choose(logits))

    def stable(self, sent: int = 0) -> int:
        """Tokens no undo can take back any more (streamable); ``sent`` when that cannot be told cheaply."""
        return _stable_prefix(self.ans.marks, sent)

    def stats(self) -> dict:
        st = self.chooser.stats
        return {"copy_refused": st.refused_argmax, "copy_undos": self.undos, "copy_listed": st.listed,
                "copy_dead_ends": st.dead_ends}

    def close(self) -> None:
        self.ans.close()


def _stable_prefix(marks: list[_Mark], sent: int) -> int:
    """Generated tokens no undo can take back any more (``sent`` when that cannot be told cheaply).

    An undo returns into an open list (or KG object) below the answer's top
    level; when none is open, everything generated so far is final.
    """
    return len(marks) - 1 if len(marks[-1].tracker.stack) <= 1 else sent


def _retarget(tracker: Tracker, constraint: Constraint) -> Tracker:
    t = tracker.copy()
    t.c = constraint
    t.s_kind = None
    return t
