"""Many sequences decoded together in one llama.cpp context (continuous batching), behind the backend contract.

A batch of B tokens costs far less than B single-token steps (weights are
read once per batch), so extraction over many records and a server with
many clients go faster when their sequences share decode steps. This
backend's ``generate`` may be called from many threads at once: each call
becomes a sequence in one llama.cpp context (``n_seq_max`` = P, a unified KV
cache), and an engine thread builds one ``llama_batch`` per step holding
every active sequence's next token, plus chunks of prompts still being read
(so new prompts never starve running decodes). A sequence that ends frees
its KV cells and its slot at once, and a waiting one enters.

Shared prefixes: extraction prompts share the instruction and schema. The
last prompt read is kept as an extra sequence, and a new prompt's common
head is copied from it (``llama_memory_seq_cp``, which in a unified cache
only tags cells, copies nothing) instead of being evaluated again.

Each sequence samples on its own: greedy under the JSON grammar and the copy
rule (:class:`~.copy_decoder.CopyDecoder`, the same decoder as the
single-sequence path), greedy under a grammar alone, or llama.cpp's own
sampler chain (penalties, top-k, top-p, min-p, temperature) for chat.
Greedy answers are the single-sequence answers wherever the logits agree;
llama.cpp's CPU kernels are not batch-invariant, so near-ties can flip (see
benchmarks/bench_engine.py for how often, and which settings avoid it).
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowlm_local.backends.base import Chunk
from knowlm_local.backends.llamacpp import LlamaCppBackend, _greedy, kv_type_id
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams

MIN_SHARED = 8  # prompt tokens worth copying from the prefix holder
DEFRAG_THRESHOLD = 0.1  # compact the KV cache when a tenth of its used range is holes (see below)


@dataclass
class _Seq:
    """One generation in flight."""

    tokens: list[int]  # the prompt
    params: GenerationParams
    max_tokens: int
    picker: Any  # CopyDecoder, GreedyGrammarSampler or a llama.cpp sampler chain
    kind: str  # "copy", "grammar" or "chain"
    cancel: Any
    out: queue.Queue = field(default_factory=queue.Queue)
    slot: int = -1
    n_past: int = 0  # positions in the KV cache
    feed: list[int] = field(default_factory=list)  # tokens to evaluate next (prompt rest, or one generated token)
    shared: int = 0  # prompt tokens copied from the prefix holder
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # bytes of text streamed
    sent_tokens: int = 0  # generated tokens streamed
    row: int = -1  # this step's logits row in the batch
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    prefilled: bool = False


class BatchedLlamaCppBackend(LlamaCppBackend):
    """A GGUF model whose ``generate`` calls, from any number of threads, are decoded together."""

    def __init__(self, model_path: str | Path, n_ctx: int | None = None, parallel: int = 4,
                 n_batch: int = 512, kv_type: str | None = None, **kwargs: Any) -> None:
        import llama_cpp
        from llama_cpp import _internals

        if parallel < 1:
            raise KnowLMError("--parallel must be at least 1", "use --parallel 1 for one sequence at a time")
        kwargs.pop("prompt_lookup", None)
        kwargs.pop("draft_model", None)
        super().__init__(model_path, n_ctx=64, kv_type=kv_type, **{k: v for k, v in kwargs.items() if k != "n_ctx"})
        per_seq = n_ctx or min(int(self.metadata.get(f"{self.architecture}.context_length", 4096) or 4096), 4096)
        self.parallel = parallel
        self.per_seq = per_seq
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_seq * (parallel + 1)  # every sequence, plus the prefix holder
        params.n_batch = params.n_ubatch = max(n_batch, parallel)
        params.n_seq_max = parallel + 1
        # One unified KV cache: every token attends over the used range of all sequences' cells (masked), so
        # that range must stay compact. Sequences come and go, and new cells are taken where the last search
        # stopped, so without defragmentation the used range grows to the whole cache and attention, not the
        # weights, dominates each step. Measured on the embedded model, 2 cores, --parallel 4 over 80 records:
        # 1.71 rec/s without, 1.85 with. (One stream per sequence was slower still, 1.41 vs 1.53 on 32
        # records: llama.cpp copies whole streams for the shared prefix.)
        params.kv_unified = True
        params.defrag_thold = DEFRAG_THRESHOLD
        params.n_threads = params.n_threads_batch = self.llm.n_threads
        # The same attention kernel and KV types as the single-sequence context, so answers can agree with it.
        params.flash_attn_type = self.llm.context_params.flash_attn_type
        if kv_type:
            params.type_k = params.type_v = kv_type_id(kv_type)
        try:
            self.bctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise KnowLMError(f"llama.cpp could not make a context for {parallel} sequences of {per_seq} tokens "
                              f"({exc})", "lower --parallel or --ctx") from exc
        if self.llm._lora_adapter is not None:  # an adapter is set per context: the batch context needs it too
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
            scales = (ctypes.c_float * 1)(self.llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self.bctx.ctx, adapters, 1, scales):
                raise KnowLMError(f"llama.cpp could not apply the LoRA adapter {self.llm.lora_path} to the batch "
                                  "context", "run with --parallel 1, or re-convert the adapter")
        self.n_batch = int(params.n_batch)
        self.mem = llama_cpp.llama_get_memory(self.bctx.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.holder = parallel  # the sequence id that keeps the last prompt for prefix sharing
        self.holder_tokens: list[int] = []
        self.info = type(self.info)(**{**self.info.__dict__, "n_ctx": per_seq, "name": "llama.cpp"})
        self._new: queue.Queue = queue.Queue()
        self._free = list(range(parallel))
        self._waiting: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reset = False
        self.vocab()  # built now, not lazily from several threads at once
        self.steps = 0
        self.batched_tokens = 0
        self.saved_prompt_tokens = 0

    # -- the contract --------------------------------------------------------------------------------
    def generate(self, prompt: str, params: GenerationParams, json_schema: dict[str, Any] | None = None,
                 cancel: Any = None, copy: Any = None) -> Iterator[Chunk]:
        tokens = self.tokenize(prompt)
        room = self.room_for(len(tokens))
        seq = _Seq(tokens, params, min(params.max_tokens, room), *self._picker(params, json_schema, copy),
                   cancel if cancel is not None else threading.Event())
        if seq.kind == "copy":
            seq.picker.max_tokens = seq.max_tokens
        self._start()
        self._new.put(seq)
        while True:
            item = seq.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def room_for(self, n_prompt: int) -> int:
        """Tokens left for the answer in this sequence's share of the context; an error when none are."""
        if n_prompt >= self.per_seq:
            raise KnowLMError(f"the prompt is {n_prompt} tokens, its share of the context is {self.per_seq} "
                              f"(--parallel {self.parallel} sequences of {self.per_seq} tokens)",
                              "raise --ctx (the context of each sequence), or shorten the input")
        return self.per_seq - n_prompt

    def _picker(self, params: GenerationParams, json_schema: dict | None, copy: Any) -> tuple[Any, str]:
        from knowlm_local.backends.llamacpp_fast import GreedyGrammarSampler

        if json_schema is not None and _greedy(params):
            grammar = GreedyGrammarSampler(self.llm, self.grammar_for(json_schema))
            if copy is not None:
                from knowlm_local.backends.copy_decoder import CopyDecoder

                return CopyDecoder(self.vocab(), grammar, copy, json_schema, params.max_tokens), "copy"
            return grammar, "grammar"
        from llama_cpp import _internals

        chain = _internals.LlamaSampler()
        n_vocab = self.llm.n_vocab()
        chain.add_penalties(n_vocab=n_vocab, penalty_last_n=64, penalty_repeat=params.repeat_penalty,
                            penalty_freq=params.frequency_penalty, penalty_present=params.presence_penalty)
        if json_schema is not None:
            chain.add_grammar(self.llm._model, self.grammar_for(json_schema))
        if params.temperature == 0:
            chain.add_greedy()
        else:
            chain.add_top_k(params.top_k if params.top_k > 0 else n_vocab)
            chain.add_top_p(params.top_p, 1)
            chain.add_min_p(params.min_p, 1)
            chain.add_temp(params.temperature)
            chain.add_dist(params.seed if params.seed >= 0 else int(time.time_ns() & 0xFFFFFFFF))
        return chain, "chain"

    def reset_cache(self) -> None:
        """Forget the shared prefix (the next prompt is evaluated whole)."""
        self._reset = True  # done by the engine thread, the only one that touches the cache

    def close(self) -> None:
        import llama_cpp

        self._stop.set()
        self._new.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)
        if getattr(self, "batch", None) is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "bctx", None) is not None:
            self.bctx.close()
            self.bctx = None
        super().close()

    # -- the engine ----------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="knowlm-batch", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._take_new(block=not self._active and not self._waiting)
                self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # noqa: BLE001 - every waiting caller hears about it, then the thread ends
            for seq in [*self._active, *self._waiting]:
                seq.out.put(KnowLMError(f"the batched engine failed: {type(exc).__name__}: {exc}",
                                        "run again with --parallel 1 and report the problem"))
                seq.out.put(None)

    def _take_new(self, block: bool) -> None:
        try:
            item = self._new.get(block=block, timeout=None if block else 0)
            while item is not None:
                self._waiting.append(item)
                item = self._new.get_nowait()
        except queue.Empty:
            pass

    def _admit(self) -> None:
        import llama_cpp

        if self._reset:
            llama_cpp.llama_memory_seq_rm(self.mem, self.holder, -1, -1)
            self.holder_tokens = []
            self._reset = False
        while self._waiting and self._free:
            seq = self._waiting.popleft()
            if seq.cancel.is_set():
                self._finish(seq, "cancelled", free=False)
                continue
            seq.slot = self._free.pop()
            shared = _common(self.holder_tokens, seq.tokens)
            if shared >= len(seq.tokens):
                shared = len(seq.tokens) - 1  # the last prompt token is evaluated again for its logits
            if shared >= MIN_SHARED:
                # Tag the holder's cells for this sequence too (a unified cache copies nothing), then cut it
                # back to the shared head.
                llama_cpp.llama_memory_seq_cp(self.mem, self.holder, seq.slot, -1, -1)
                llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, shared, -1)
            else:
                shared = 0
            seq.shared = shared
            self.saved_prompt_tokens += shared
            seq.n_past = shared
            seq.feed = list(seq.tokens[shared:])
            self._active.append(seq)

    def _step(self) -> None:
        import llama_cpp

        batch = self.batch
        n = 0
        decoding = [s for s in self._active if s.prefilled]
        reading = [s for s in self._active if not s.prefilled]
        for group in (decoding, reading):  # decodes first: a long prompt never holds up running answers
            for seq in group:
                if seq.cancel.is_set():
                    continue
                room = self.n_batch - n
                if room <= 0:
                    seq.row = -1
                    continue
                take = seq.feed[:room]
                for j, token in enumerate(take):
                    batch.token[n] = token
                    batch.pos[n] = seq.n_past + j
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq.slot
                    batch.logits[n] = False
                    n += 1
                seq.n_past += len(take)
                del seq.feed[:len(take)]
                seq.row = n - 1 if not seq.feed else -1
                if seq.row >= 0:
                    batch.logits[seq.row] = True
        for seq in [s for s in self._active if s.cancel.is_set()]:
            self._finish(seq, "cancelled")
        if n == 0:
            return
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.bctx.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (the KV cache may be full)")
        self.steps += 1
        self.batched_tokens += n
        for seq in list(self._active):
            if seq.row >= 0:
                self._next(seq)

    def _next(self, seq: _Seq) -> None:
        import llama_cpp

        if not seq.prefilled:
            seq.prefilled = True
            self._hold(seq)
        if seq.kind == "copy":
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.bctx.ctx, seq.row),
                                           shape=(self.llm.n_vocab(),))
            step = seq.picker.step(logits)
            if step.kind == "retry":
                seq.feed = [seq.picker.tokens[-1] if seq.picker.tokens else seq.tokens[-1]]
                seq.n_past -= 1
                llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, seq.n_past, -1)
                return
            if step.kind == "undo":
                seq.generated = list(seq.picker.tokens)
                seq.n_past = len(seq.tokens) + step.keep - 1
                llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, seq.n_past, -1)
                seq.feed = [seq.generated[-1] if seq.generated else seq.tokens[-1]]
                return
            seq.generated = list(seq.picker.tokens)
            if step.kind != "done":
                self._emit(seq, seq.picker.stable(seq.sent_tokens))
            if step.kind == "done":
                self._finish(seq, step.finish)
            else:
                seq.feed = [step.token]
            return
        if seq.kind == "grammar":
            token = seq.picker.sample(self.bctx, seq.row)
        else:
            token = llama_cpp.llama_sampler_sample(seq.picker.sampler, self.bctx.ctx, seq.row)
        if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        self._emit(seq, len(seq.generated))
        if self._stopped(seq):
            self._finish(seq, "stop")
        elif len(seq.generated) >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.feed = [token]

    def _hold(self, seq: _Seq) -> None:
        """Keep this prompt as the prefix holder, for the next prompts that share its head."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.mem, self.holder, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.mem, seq.slot, self.holder, -1, -1)
        self.holder_tokens = list(seq.tokens)

    def _emit(self, seq: _Seq, upto: int) -> None:
        """Stream the text of the first ``upto`` generated tokens that was not sent yet (whole characters)."""
        if upto <= seq.sent_tokens:
            return
        pieces = self.vocab().pieces
        data = b"".join(pieces[t] for t in seq.generated[:upto])
        end = _whole_chars(data)
        if end > seq.sent:
            text = data[seq.sent:end].decode("utf-8", errors="replace")
            seq.sent = end
            seq.sent_tokens = upto
            seq.first_token = seq.first_token or time.perf_counter()
            seq.out.put(Chunk(text=text, prompt_tokens=len(seq.tokens), cached_tokens=seq.shared,
                              completion_tokens=len(seq.generated), prompt_seconds=seq.first_token - seq.started))

    def _stopped(self, seq: _Seq) -> bool:
        if not seq.params.stop:
            return False
        pieces = self.vocab().pieces
        text = b"".join(pieces[t] for t in seq.generated[-64:]).decode("utf-8", errors="ignore")
        return any(s and s in text for s in seq.params.stop)

    def _finish(self, seq: _Seq, reason: str, free: bool = True) -> None:
        import llama_cpp

        if free and seq.slot >= 0:
            llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            self._free.append(seq.slot)
        if seq in self._active:
            self._active.remove(seq)
        data = b"".join(self.vocab().pieces[t] for t in seq.generated)
        tail = data[seq.sent:].decode("utf-8", errors="replace")
        if seq.params.stop and reason == "stop":  # cut at the stop string, as llama-cpp-python does
            whole = data.decode("utf-8", errors="replace")
            cut = min((whole.find(s) for s in seq.params.stop if s and s in whole), default=-1)
            if cut >= 0:
                already = data[:seq.sent].decode("utf-8", errors="replace")
                tail = whole[len(already):cut] if cut >= len(already) else ""
        end = time.perf_counter()
        first = seq.first_token or end
        extra = {"wall_seconds": end - seq.started, "tokens": list(seq.generated)}
        if seq.kind == "copy":
            extra.update(seq.picker.stats())
        seq.picker.close()
        seq.out.put(Chunk(text=tail, prompt_tokens=len(seq.tokens), cached_tokens=seq.shared,
                          completion_tokens=len(seq.generated), finish_reason=reason,
                          prompt_seconds=first - seq.started, decode_tokens=max(0, len(seq.generated) - 1),
                          decode_seconds=end - first, extra=extra))
        seq.out.put(None)


def _whole_chars(data: bytes) -> int:
    """The length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its character complete?
            need = 1 if byte < 0x80 else 2 if byte >= 0xC0 and byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if back >= need else end - back
    return end


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def kv_bytes_per_token(backend: LlamaCppBackend) -> int:
    """f16 K and V for every layer, per token of context (from the GGUF's shape keys)."""
    from knowlm_local.gpu import kv_cache_bytes

    meta, arch = backend.metadata, backend.architecture
    return kv_cache_bytes(1, int(meta.get(f"{arch}.block_count", 0) or 0), int(meta.get(f"{arch}.embedding_length", 0) or 0),
                          int(meta.get(f"{arch}.attention.head_count", 0) or 0),
                          int(meta.get(f"{arch}.attention.head_count_kv", 0) or 0))


__all__ = ["BatchedLlamaCppBackend", "kv_bytes_per_token"]
