"""The llama.cpp backend (llama-cpp-python): GGUF models on CPU, or partly/fully on a GPU.

Why the defaults differ from llama-cpp-python's: its ``n_ctx=512`` truncates
KnowLM prompts, so the context comes from the model card or the GGUF; its
``n_gpu_layers=0`` ignores a GPU, so layers are offloaded when a GPU build and
enough free VRAM are present (see :mod:`knowlm_local.gpu`).

Prompts are tokenized once here and passed to llama.cpp as token ids, so
llama-cpp-python's own longest-common-prefix reuse of the KV cache applies:
callers that put the shared part of their prompts first get it for free.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.gguf_check import diagnose, read_metadata, scan
from knowlm_local.params import GenerationParams

DEFAULT_CTX_CAP = 8192  # without a model card, never allocate more KV cache than this by default


def _shape_keys(arch: str) -> set[str]:
    return {f"{arch}.{k}" for k in (
        "block_count", "context_length", "embedding_length", "attention.head_count", "attention.head_count_kv",
    )}


KV_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8, "f32": 0}  # ggml type ids of the KV caches llama.cpp accepts


def kv_type_id(kv_type: str) -> int:
    """The ggml type id of a KV cache type name (``--kv-type``)."""
    kind = KV_TYPES.get(kv_type.lower())
    if kind is None:
        raise KnowLMError(f"unknown KV cache type {kv_type!r}", f"use one of: {', '.join(KV_TYPES)}")
    return kind


class LlamaCppBackend(Backend):
    """A GGUF loaded with llama-cpp-python."""

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int | None = None,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        seed: int | None = None,
        prompt_lookup: int = 0,
        flash_attn: bool | None = None,
        draft_model: Any = None,
        n_threads_batch: int | None = None,
        fast_sampling: bool = True,
        lora_path: str | Path | None = None,
        kv_type: str | None = None,
    ) -> None:
        import llama_cpp

        from knowlm_local.backends.llamacpp_fast import llama_class

        path = Path(model_path)
        scan(path)  # a damaged or truncated file is refused here, in one line, before llama.cpp sees it
        if lora_path is not None:
            from knowlm_local.gguf_check import check_adapter

            check_adapter(Path(lora_path), path)
        arch = str(read_metadata(path, {"general.architecture"}).get("general.architecture", "llama"))
        meta = read_metadata(path, _shape_keys(arch))
        n_layers = int(meta.get(f"{arch}.block_count", 0) or 0)
        ctx_train = int(meta.get(f"{arch}.context_length", 0) or 0)
        if n_ctx is None or n_ctx <= 0:
            n_ctx = min(ctx_train or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
        gpu_build = bool(llama_cpp.llama_supports_gpu_offload())
        tensor_split = None
        if n_gpu_layers is None:
            from knowlm_local.gpu import free_vram_all, kv_cache_bytes, plan_offload
            from knowlm_local.memory_plan import available_ram_bytes

            kv = kv_cache_bytes(
                n_ctx, n_layers, int(meta.get(f"{arch}.embedding_length", 0) or 0),
                int(meta.get(f"{arch}.attention.head_count", 0) or 0),
                int(meta.get(f"{arch}.attention.head_count_kv", 0) or 0),
            )
            self.offload = plan_offload(gpu_build, path.stat().st_size, kv, n_layers,
                                        free_vram_all() if gpu_build else None, ram_bytes=available_ram_bytes())
            n_gpu_layers, tensor_split = self.offload.n_gpu_layers, self.offload.tensor_split
        draft = draft_model  # any llama-cpp-python draft model (callable: token ids -> proposed ids)
        if draft is None and prompt_lookup > 0:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            draft = LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup)
        kwargs: dict[str, Any] = dict(
            model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, verbose=False,
            n_threads=n_threads or _default_threads(),
            # llama-cpp-python's default is every CPU for prompt batches, whatever n_threads says; unequal
            # counts stall on a busy machine, so both follow --threads unless told otherwise.
            n_threads_batch=n_threads_batch or n_threads or _default_threads(),
            draft_model=draft,
            # llama.cpp stores a quantized V cache only with flash attention, so --kv-type q8_0 turns it on.
            flash_attn=bool(flash_attn if flash_attn is not None
                            else (gpu_build and n_gpu_layers != 0) or kv_type == "q8_0"),
        )
        if seed is not None and seed >= 0:
            kwargs["seed"] = seed
        if tensor_split is not None:  # several GPUs: layers shared by their free memory (see knowlm_local.gpu)
            kwargs["tensor_split"] = list(tensor_split)
        if lora_path is not None:  # applied at run time on top of the (possibly quantized) base weights
            kwargs["lora_path"] = str(lora_path)
        if kv_type:
            kwargs["type_k"] = kwargs["type_v"] = kv_type_id(kv_type)
        try:
            self.llm = llama_class(fast_sampling)(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise KnowLMError(f"cannot load {path.name}: {diagnose(path)}",
                              "re-download or re-convert the model; a GGUF from a newer llama.cpp may need "
                              "`pip install -U llama-cpp-python`") from exc
        metadata = self.llm.metadata
        offloaded = n_layers if n_gpu_layers < 0 else min(n_gpu_layers, n_layers)
        device = "cpu" if offloaded == 0 else ("gpu" if offloaded >= n_layers else f"gpu ({offloaded}/{n_layers} layers)")
        self.info = BackendInfo(
            name="llama.cpp",
            model_path=str(path),
            n_ctx=self.llm.n_ctx(),
            n_gpu_layers=offloaded,
            n_layers=n_layers,
            device=device,
            chat_template=metadata.get("tokenizer.chat_template"),
            bos_token=self._token_text(self.llm.token_bos()),
            eos_token=self._token_text(self.llm.token_eos()),
            adds_bos=bool(self.llm.tokenize(b"", add_bos=True, special=True)),
        )
        self.architecture = arch
        self.metadata = metadata

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    supports_copy = True
    supports_schema = True

    def vocab(self):
        """The vocabulary as bytes with lookup tables (built on first use, ~0.1 s for 49k tokens)."""
        if getattr(self, "_vocab", None) is None:
            from knowlm_local.backends.constrained import Vocab
            from knowlm_local.backends.llamacpp_copy import vocab_pieces

            self._vocab = Vocab(vocab_pieces(self.llm))
        return self._vocab

    def grammar_for(self, json_schema: dict[str, Any]):
        """llama.cpp's grammar for ``json_schema``, compiled once per schema."""
        import llama_cpp

        cache = self.__dict__.setdefault("_grammars", {})
        key = json.dumps(json_schema, sort_keys=True, ensure_ascii=False)
        if key not in cache:
            cache[key] = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False)
        return cache[key]

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        json_schema: dict[str, Any] | None = None,
        cancel: Any = None,
        copy: Any = None,
    ) -> Iterator[Chunk]:
        import llama_cpp

        if copy is not None and json_schema is not None and _greedy(params):
            from knowlm_local.backends.llamacpp_copy import copy_generate

            yield from copy_generate(self, prompt, params.max_tokens, json_schema, copy, cancel)
            return
        tokens = self.tokenize(prompt)
        n_prompt = len(tokens)
        room = self.room_for(n_prompt)
        grammar = self.grammar_for(json_schema) if json_schema is not None else None
        cached = llama_cpp.Llama.longest_token_prefix(self.llm._input_ids.tolist(), tokens)
        if params.seed >= 0:
            self.llm.set_seed(params.seed)
        ctx = self.llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        stream = self.llm.create_completion(
            tokens,
            max_tokens=min(params.max_tokens, room),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            repeat_penalty=params.repeat_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            stop=list(params.stop),
            grammar=grammar,
            stream=True,
        )
        t0 = time.perf_counter()
        first = None
        pieces = 0
        produced: list[str] = []
        finish = None
        try:
            for part in stream:
                choice = part["choices"][0]
                finish = choice.get("finish_reason")
                if first is None:
                    first = time.perf_counter()
                pieces += 1
                produced.append(choice["text"])
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if choice["text"] or finish is None:
                    yield Chunk(text=choice["text"], prompt_tokens=n_prompt, cached_tokens=cached,
                                completion_tokens=pieces, prompt_seconds=first - t0)
                if finish is not None:
                    break
        finally:
            stream.close()
        perf = llama_cpp.llama_perf_context(ctx)
        if self.llm.draft_model is None:
            generated = max(0, self.llm.n_tokens - n_prompt) + (1 if finish == "length" else 0)
        else:  # with drafts in flight n_tokens also counts rejected guesses: count the text instead
            generated = len(self.tokenize("".join(produced), add_bos=False))
        yield Chunk(
            text="",
            prompt_tokens=n_prompt,
            cached_tokens=cached,
            completion_tokens=generated,
            finish_reason=finish or "stop",
            prompt_seconds=perf.t_p_eval_ms / 1000.0,
            decode_tokens=int(perf.n_eval),
            decode_seconds=perf.t_eval_ms / 1000.0,
            extra={"wall_seconds": time.perf_counter() - t0},
        )

    def reset_cache(self) -> None:
        """Drop the KV-cache prefix: llama-cpp-python then re-evaluates the next prompt from its first token."""
        if getattr(self, "llm", None) is not None:
            self.llm.reset()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def _greedy(params: GenerationParams) -> bool:
    return (params.temperature == 0 and params.repeat_penalty == 1.0 and params.presence_penalty == 0
            and params.frequency_penalty == 0)


def _default_threads() -> int:
    """Physical cores are what matter for decode; half the logical CPUs is a safe guess."""
    n = os.cpu_count() or 2
    return max(1, n // 2) if n > 4 else n
