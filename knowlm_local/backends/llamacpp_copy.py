"""The llama.cpp decoding loop for copy-constrained extraction answers (greedy, JSON grammar, copy rule).

llama-cpp-python's ``generate`` cannot take a token back, and taking back is
what the no-repeat rule needs: when the model starts an item that repeats an
earlier one (the ``"1999年", "1999年", ...`` loop of small models), the
answer returns to the end of the previous item, that list is closed, and
decoding goes on from there. So this loop drives the context itself, with the
same calls ``generate`` makes (``eval`` of one token at a time after the
prompt, the same prefix reuse of the KV cache), which keeps its logits, and so
its choices wherever nothing is refused, identical to plain greedy decoding.

After each token it keeps the tracker's state and a clone of the grammar, so
an undo is: restore both, drop the tokens after that point (llama.cpp's
``eval`` removes their KV cells), evaluate the last kept token again for its
logits. Text is streamed only up to the last point an undo could return to.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from knowlm_local.backends.base import Chunk
from knowlm_local.backends.constrained import Choice, CopyChooser
from knowlm_local.ie.copy import DONE, DUP, Constraint, Tracker

MAX_UNDOS = 64  # per answer; beyond this the copy rule is dropped for the rest of the answer (never seen)


def vocab_pieces(llm: Any) -> list[bytes]:
    """Every token's bytes as llama.cpp writes it into text (special tokens: empty)."""
    import llama_cpp

    vocab = llm._model.vocab
    n = llm.n_vocab()
    buf = ctypes.create_string_buffer(256)
    out = []
    for token in range(n):
        k = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, False)
        out.append(buf.raw[:k] if k > 0 else b"")
    return out


@dataclass
class _Mark:
    """The state after a number of generated tokens: what an undo restores."""

    tracker: Tracker
    grammar: Any


def _undo_point(marks: list[_Mark], cid: int, item: int) -> int:
    """The latest mark where container ``cid`` had not started item ``item`` yet (before its comma)."""
    for b in range(len(marks) - 1, -1, -1):
        box = marks[b].tracker.container(cid)
        if box is not None and (box.n_sep < item or (item == 0 and box.state == "first")):
            return b
    return 0


def _closable(tracker: Tracker, schema: dict | None) -> tuple[int, int] | None:
    """For a dead end: the innermost open list (or optional-keys object) and its current item index."""
    for box in reversed(tracker.stack):
        if box.kind == "arr" or (box.kind == "obj" and not _required(schema, box.path)):
            return box.cid, box.n_sep
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

    def undo(self, cid: int, item: int) -> int:
        """Back to before item ``item`` of container ``cid``, which may then take no more items; the tokens kept."""
        b = _undo_point(self.marks, cid, item)
        tracker = self.marks[b].tracker.copy()
        tracker.close_container(cid)
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


def copy_generate(backend: Any, prompt: str, max_tokens: int, json_schema: dict, constraint: Constraint,
                  cancel: Any = None) -> Iterator[Chunk]:
    """Stream one answer of ``backend`` (a LlamaCppBackend) under the grammar of ``json_schema`` and ``constraint``.

    With a draft model on the backend (``--prompt-lookup``), each chosen token
    is evaluated together with the drafted ones, and the drafts are kept while
    the constrained choice on their logits agrees with them (as llama.cpp's own
    speculative decoding does): drafts change the speed, not the rule.
    """
    import llama_cpp

    from knowlm_local.backends.llamacpp_fast import GreedyGrammarSampler

    llm = backend.llm
    tokens = backend.tokenize(prompt)
    n_prompt = len(tokens)
    max_tokens = min(max_tokens, backend.room_for(n_prompt))
    chooser = CopyChooser(backend.vocab(), GreedyGrammarSampler(llm, backend.grammar_for(json_schema)))
    draft = llm.draft_model
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)

    def evaluate(batch: list[int], all_rows: bool) -> None:
        """``llm.eval`` (which drops the KV cells past ``n_tokens``); the logits of every row only when asked."""
        keep = llm._logits_all
        llm._logits_all = keep and all_rows
        try:
            llm.eval(batch)
        finally:
            llm._logits_all = keep

    def logits_at(row: int) -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(chooser.n_vocab,))

    t0 = time.perf_counter()
    cached = llama_cpp.Llama.longest_token_prefix(llm._input_ids.tolist(), tokens)
    reuse = min(cached, n_prompt - 1)  # the last prompt token is evaluated again for its logits
    llm.n_tokens = reuse
    evaluate(tokens[reuse:], all_rows=False)
    t_prompt = time.perf_counter() - t0

    ans = _Answer(constraint.start(), chooser.grammar)
    decoder = _Utf8Stream()
    sent = 0  # generated tokens already streamed
    undos = evals = 0
    finish = "length"
    t_decode = time.perf_counter()
    row = -1  # the row of the last evaluated batch that holds the logits for the next choice
    pending: Choice | None = None  # a choice already made on a rejected draft's row
    try:
        while len(ans.out) < max_tokens:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            choice = pending or chooser.choose(logits_at(row), ans.tracker)
            pending = None
            if choice.verdict in (DUP, "dead"):
                undos += 1
                target = choice.dup if choice.verdict == DUP else _closable(ans.tracker, json_schema)
                if target is None or undos > MAX_UNDOS:  # nothing can close: drop the copy rule, keep the grammar
                    constraint = Constraint(constraint.task, "", mode="off", max_items=constraint.max_items)
                    ans.tracker = _retarget(ans.tracker, constraint)
                    continue
                kept = ans.undo(*target)
                chooser.grammar = ans.grammar
                sent = min(sent, kept)
                llm.n_tokens = n_prompt + kept - 1  # evaluate the last kept token again: its logits come back
                evaluate([ans.out[-1] if ans.out else tokens[-1]], all_rows=False)
                evals += 1
                row = -1
                continue
            ans.take(choice.token, choice.tracker)
            if choice.verdict == DONE:
                finish = "stop"
                break
            if len(ans.out) >= max_tokens:
                break
            proposal: list[int] = []
            if draft is not None:
                ids = np.concatenate([llm.input_ids[:llm.n_tokens], np.array([choice.token], dtype=np.intc)])
                proposal = [int(t) for t in draft(ids)][: max_tokens - len(ans.out)]
            evaluate([choice.token, *proposal], all_rows=bool(proposal))
            evals += 1
            row = -1
            for j, drafted in enumerate(proposal):  # row j predicts what follows proposal[j - 1]
                nxt = chooser.choose(logits_at(j), ans.tracker)
                if nxt.verdict in (DUP, "dead") or nxt.token != drafted:
                    pending = nxt
                    llm.n_tokens -= len(proposal) - j  # the rejected drafts' KV cells go at the next eval
                    break
                ans.take(drafted, nxt.tracker)
                if nxt.verdict == DONE or len(ans.out) >= max_tokens:
                    finish = "stop" if nxt.verdict == DONE else "length"
                    llm.n_tokens -= len(proposal) - j - 1
                    break
            else:
                row = len(proposal) if proposal else -1
            if finish != "length" or len(ans.out) >= max_tokens:
                break
            stable = _stable_prefix(ans.marks, sent)  # tokens no undo can take back any more
            if stable > sent:
                text = decoder.feed(b"".join(chooser.vocab.pieces[t] for t in ans.out[sent:stable]))
                sent = stable
                if text:
                    yield Chunk(text=text, prompt_tokens=n_prompt, cached_tokens=reuse,
                                completion_tokens=len(ans.out), prompt_seconds=t_prompt)
        tail = decoder.feed(b"".join(chooser.vocab.pieces[t] for t in ans.out[sent:]), final=True)
    finally:
        ans.close()
    st = chooser.stats
    yield Chunk(
        text=tail, prompt_tokens=n_prompt, cached_tokens=reuse, completion_tokens=len(ans.out),
        finish_reason=finish, prompt_seconds=t_prompt, decode_tokens=evals,
        decode_seconds=time.perf_counter() - t_decode,
        extra={"wall_seconds": time.perf_counter() - t0, "tokens": list(ans.out), "copy_refused": st.refused_argmax,
               "copy_undos": undos,
               "copy_listed": st.listed, "copy_dead_ends": st.dead_ends},
    )


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


class _Utf8Stream:
    """Bytes in, text out, never splitting a character between two chunks."""

    def __init__(self) -> None:
        import codecs

        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> str:
        return self._dec.decode(data, final=final)
