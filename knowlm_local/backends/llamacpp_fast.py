"""Two shortcuts in llama-cpp-python's decoding loop that change no output.

1. **Greedy decoding under a grammar checks one token, not the vocabulary.**
   llama.cpp's grammar sampler tests every vocabulary entry against the
   grammar for every generated token. On SmolLM2's 49k-token vocabulary that
   costs about twice the forward pass of the model itself (on 2 CPU cores:
   ~15 ms of grammar per token against ~7 ms of model). Greedy decoding needs
   only the argmax: when the most likely token is allowed by the grammar it is
   also the most likely *allowed* token, so testing that one token gives the
   same choice. When it is refused (often: the model wants a newline where
   the grammar wants a space), the best few hundred tokens are checked next,
   and only when none of them is allowed does the whole vocabulary go through
   the grammar. This is the order llama.cpp's own common sampler uses
   (sample, check against the grammar, resample with it only on rejection).
2. **With a draft model, prompts do not return logits for every token.**
   llama-cpp-python switches ``logits_all`` on for speculative decoding,
   because verifying a draft needs the logits of each drafted position. It
   then also computes and copies the logits of every *prompt* token (vocab x
   prompt length floats), which nothing reads. The prompt evaluation of each
   call keeps only its last row, as without a draft model.

Both apply only where they are exact: (1) when sampling is plain greedy
(temperature 0, no penalties, no logits processors); (2) when nobody asked for
logprobs (we never do). ``tests/test_backend_llamacpp.py`` decodes the same
prompts with and without them and requires identical tokens, so a
llama-cpp-python release that changes these internals fails there first.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class GreedyGrammarSampler:
    """A stand-in for llama-cpp-python's ``LlamaSampler`` chain [penalties(off), grammar, greedy]."""

    TOP = 256  # candidates tried before the whole vocabulary

    def __init__(self, llm: Any, grammar: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._smpl = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._smpl:
            raise ValueError("llama.cpp rejected the grammar")
        self._n_vocab = llm.n_vocab()
        self._top = min(self.TOP, self._n_vocab)
        self._bufs: dict[int, tuple[Any, np.ndarray]] = {}
        self.samples = 0
        self.top_checks = 0  # the argmax was refused: the best TOP tokens were checked
        self.full_checks = 0  # none of those was allowed either: the whole vocabulary was checked

    def _buffer(self, size: int) -> tuple[Any, np.ndarray]:
        if size not in self._bufs:
            data = (self._lib.llama_token_data * size)()
            self._bufs[size] = (data, np.ctypeslib.as_array(data))
        return self._bufs[size]

    def _allowed(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The logits of ``ids`` after the grammar: -inf where the grammar refuses the token."""
        data, view = self._buffer(len(ids))
        view["id"], view["logit"], view["p"] = ids, logits, 0.0
        arr = self._lib.llama_token_data_array(
            data=ctypes.cast(data, self._lib.llama_token_data_p), size=len(ids), selected=-1, sorted=False
        )
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        return view["logit"]

    @staticmethod
    def _best(ids: np.ndarray, allowed: np.ndarray) -> tuple[int, float] | None:
        """Highest allowed logit; the lowest id among equals (llama.cpp's greedy takes the first maximum)."""
        ok = np.isfinite(allowed)
        if not ok.any():
            return None
        top = allowed[ok].max()
        return int(ids[ok & (allowed == top)].min()), float(top)

    def _choose(self, logits: np.ndarray) -> int:
        token = int(np.argmax(logits))  # first maximum
        one = np.array([token], dtype=np.int32)
        if np.isfinite(self._allowed(one, logits[one])[0]):
            return token
        self.top_checks += 1
        ids = np.argpartition(logits, -self._top)[-self._top:].astype(np.int32)
        best = self._best(ids, self._allowed(ids, logits[ids]))
        # Exact only when the winner beats every token left out (ties at the cut could hide a lower id).
        if best is not None and best[1] > logits[ids].min():
            return best[0]
        self.full_checks += 1
        ids = np.arange(self._n_vocab, dtype=np.int32)
        best = self._best(ids, self._allowed(ids, logits))
        return best[0] if best is not None else token

    def allowed(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` for ``ids`` with -inf where the grammar refuses the token (the grammar unchanged)."""
        return self._allowed(np.asarray(ids, dtype=np.int32), np.asarray(logits, dtype=np.float32)).copy()

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._smpl, token)

    def clone(self) -> GreedyGrammarSampler:
        """An independent copy of the grammar's state (to undo the tokens accepted after it)."""
        twin = object.__new__(GreedyGrammarSampler)
        twin.__dict__.update(self.__dict__)
        twin._smpl = self._lib.llama_sampler_clone(self._smpl)
        return twin

    def sample(self, ctx: Any, idx: int) -> int:
        ptr = self._lib.llama_get_logits_ith(ctx.ctx, idx)
        token = self._choose(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)))
        self.samples += 1
        self._lib.llama_sampler_accept(self._smpl, token)
        return token

    def close(self) -> None:
        if self._smpl:
            self._lib.llama_sampler_free(self._smpl)
            self._smpl = None

    def __del__(self) -> None:
        self.close()


def _plain_greedy(kw: dict[str, Any]) -> bool:
    return (
        kw.get("grammar") is not None
        and kw.get("temp", 0.8) == 0.0
        and kw.get("logits_processor") is None
        and kw.get("repeat_penalty", 1.0) == 1.0
        and kw.get("frequency_penalty", 0.0) == 0.0
        and kw.get("presence_penalty", 0.0) == 0.0
        and kw.get("mirostat_mode", 0) == 0
    )


def llama_class(fast: bool = True) -> type:
    """``llama_cpp.Llama``, or a subclass with the two shortcuts above (AMX kept off where it crashes)."""
    import llama_cpp

    from knowlm_local.backends.llamacpp_cpu import guard

    guard()

    if not fast:
        return llama_cpp.Llama

    class FastLlama(llama_cpp.Llama):
        _prompt_pending = False

        def _init_sampler(self, *args: Any, **kw: Any) -> Any:
            if not args and _plain_greedy(kw):
                return GreedyGrammarSampler(self, kw["grammar"])
            return super()._init_sampler(*args, **kw)

        def generate(self, tokens: Any, *args: Any, **kw: Any) -> Any:
            self._prompt_pending = True  # the next eval is this call's prompt
            return super().generate(tokens, *args, **kw)

        def eval(self, tokens: Any) -> None:
            prompt, self._prompt_pending = self._prompt_pending, False
            if not (prompt and self._logits_all and self.draft_model is not None):
                return super().eval(tokens)
            self._logits_all = False  # the prompt's last row is all that sampling reads
            try:
                return super().eval(tokens)
            finally:
                self._logits_all = True

    return FastLlama
