"""The llama.cpp decoding loop for copy-constrained extraction answers (greedy, JSON grammar, copy rule).

llama-cpp-python's ``generate`` cannot take a token back, and taking back is
what the no-repeat rule needs: when the model starts an item that repeats an
earlier one (the ``"1999年", "1999年", ...`` loop of small models), the
answer returns to the end of the previous item, that list is closed, and
decoding goes on from there. So this loop drives the context itself, with the
same calls ``generate`` makes (``eval`` of one token at a time after the
prompt, the same prefix reuse of the KV cache), which keeps its logits, and so
its choices wherever nothing is refused, identical to plain greedy decoding.

The answer's state machine is :class:`~.copy_decoder.CopyDecoder`; this loop
evaluates what it asks for (an undo drops the tokens after that point, which
llama.cpp's ``eval`` does by removing their KV cells, and evaluates the last
kept token again for its logits). Text is streamed only up to the last point
an undo could return to.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from knowlm_local.backends.base import Chunk
from knowlm_local.backends.constrained import Choice
from knowlm_local.backends.copy_decoder import CopyDecoder
from knowlm_local.ie.copy import DUP, Constraint


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


class Utf8Stream:
    """Bytes in, text out, never splitting a character between two chunks."""

    def __init__(self) -> None:
        import codecs

        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> str:
        return self._dec.decode(data, final=final)


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
    vocab = backend.vocab()
    dec = CopyDecoder(vocab, GreedyGrammarSampler(llm, backend.grammar_for(json_schema)), constraint, json_schema,
                      max_tokens)
    n_vocab = len(vocab.pieces)
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
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))

    t0 = time.perf_counter()
    cached = llama_cpp.Llama.longest_token_prefix(llm._input_ids.tolist(), tokens)
    reuse = min(cached, n_prompt - 1)  # the last prompt token is evaluated again for its logits
    llm.n_tokens = reuse
    evaluate(tokens[reuse:], all_rows=False)
    t_prompt = time.perf_counter() - t0

    decoder = Utf8Stream()
    sent = 0  # generated tokens already streamed
    evals = 0
    finish = "length"
    t_decode = time.perf_counter()
    row = -1  # the row of the last evaluated batch that holds the logits for the next choice
    pending: Choice | None = None  # a choice already made on a rejected draft's row
    out = dec.tokens
    try:
        while len(out) < max_tokens:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            step = dec.apply(pending or dec.choose(logits_at(row)))
            pending = None
            if step.kind == "retry":
                continue
            if step.kind == "undo":
                sent = min(sent, step.keep)
                llm.n_tokens = n_prompt + step.keep - 1  # evaluate the last kept token again: its logits come back
                evaluate([out[-1] if out else tokens[-1]], all_rows=False)
                evals += 1
                row = -1
                continue
            if step.kind == "done":
                finish = step.finish
                break
            proposal: list[int] = []
            if draft is not None:
                ids = np.concatenate([llm.input_ids[:llm.n_tokens], np.array([step.token], dtype=np.intc)])
                proposal = [int(t) for t in draft(ids)][: max_tokens - len(out)]
            evaluate([step.token, *proposal], all_rows=bool(proposal))
            evals += 1
            row = -1
            for j, drafted in enumerate(proposal):  # row j predicts what follows proposal[j - 1]
                nxt = dec.choose(logits_at(j))
                if nxt.verdict in (DUP, "dead") or nxt.token != drafted:
                    pending = nxt
                    llm.n_tokens -= len(proposal) - j  # the rejected drafts' KV cells go at the next eval
                    break
                taken = dec.apply(nxt)
                if taken.kind == "done":
                    finish = taken.finish
                    llm.n_tokens -= len(proposal) - j - 1
                    break
            else:
                row = len(proposal) if proposal else -1
            if finish != "length":
                break
            stable = dec.stable(sent)  # tokens no undo can take back any more
            if stable > sent:
                text = decoder.feed(b"".join(vocab.pieces[t] for t in out[sent:stable]))
                sent = stable
                if text:
                    yield Chunk(text=text, prompt_tokens=n_prompt, cached_tokens=reuse, completion_tokens=len(out),
                                prompt_seconds=t_prompt)
        tail = decoder.feed(b"".join(vocab.pieces[t] for t in out[sent:]), final=True)
        generated = list(out)
    finally:
        dec.close()
    yield Chunk(
        text=tail, prompt_tokens=n_prompt, cached_tokens=reuse, completion_tokens=len(generated),
        finish_reason=finish, prompt_seconds=t_prompt, decode_tokens=evals,
        decode_seconds=time.perf_counter() - t_decode,
        extra={"wall_seconds": time.perf_counter() - t0, "tokens": generated, **dec.stats()},
    )
