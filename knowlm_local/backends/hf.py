"""The transformers backend: full-precision PyTorch for HF checkpoints, meant for CUDA GPUs.

Used when the model is a Hugging Face folder rather than a GGUF (or with
``--backend transformers`` / ``hf``): bf16 on GPUs that support it, fp16 on
older ones (V100), fp32 on the CPU; several GPUs through ``device_map="auto"``,
with ``--allocate`` as accelerate's ``max_memory`` after a fit check
(:mod:`knowlm_local.memory_plan`) so that a plan that cannot work fails in one
line before any weight is read; ``--load-4bit`` / ``--load-8bit`` through
bitsandbytes. Remote code is never trusted unless the caller asks, and weights
load through transformers' safe paths. For serving across many GPUs, use vLLM.

Constrained decoding uses xgrammar, the grammar engine vLLM and SGLang ship:
it is kept up, it works on token ids (no string re-matching per step), its
per-step mask costs microseconds in C++ and is applied to the logits on their
own device, and it compiles llama.cpp's GBNF. That last point is why it was
chosen over lm-format-enforcer or outlines: the grammar compiled here is the
very GBNF text llama.cpp builds from the same JSON schema, so both backends
allow exactly the same answers, and greedy answers under a schema agree
wherever the two engines' logits rank the same token first.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams

CACHE_BUCKET = 1024  # static KV caches are sized in powers of two from here: few sizes, few recompilations


def gbnf_for(json_schema: dict[str, Any]) -> str:
    """The GBNF grammar llama.cpp compiles for ``json_schema`` (llama-cpp-python's own converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(json_schema))


class GrammarMask:
    """A logits processor for ``generate``: each step, the tokens the grammar refuses get ``-inf``.

    One per call (it follows the answer token by token); the first call sees
    the prompt only, each later one accepts the token chosen at the step before.
    """

    def __init__(self, compiled: Any, n_prompt: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.mask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self.n_prompt = n_prompt

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.n_prompt and not self.matcher.accept_token(int(input_ids[0, -1])):
            raise RuntimeError(f"the grammar refused token {int(input_ids[0, -1])}")
        self.matcher.fill_next_token_bitmask(self.mask)
        self.xgr.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores


class TransformersBackend(Backend):
    """A Hugging Face causal LM loaded with transformers."""

    supports_schema = True  # xgrammar, on llama.cpp's GBNF for the schema

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int | None = None,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        seed: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        allocate: str | list[float] | None = None,
        load_bits: int | None = None,
        fast: bool | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from knowlm_local import memory_plan as mp

        path = Path(model_path)
        if n_threads:
            torch.set_num_threads(n_threads)
        if seed is not None and seed >= 0:
            torch.manual_seed(seed)
        use_gpu = torch.cuda.is_available() and n_gpu_layers != 0
        problem = mp.quant_problem(load_bits, use_gpu, importlib.util.find_spec("bitsandbytes") is not None)
        if problem is not None:
            raise problem
        if allocate and not use_gpu:
            raise KnowLMError("--allocate gives GiB per GPU, and no CUDA GPU is visible",
                              "leave --allocate out on the CPU, or run a GGUF with llama.cpp")
        if dtype is None:
            dtype = mp.choose_dtype(use_gpu, use_gpu and torch.cuda.is_bf16_supported())
        blocks = mp.model_blocks(path) if path.is_dir() else None
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
        self.plan = None
        if load_bits:
            from transformers import BitsAndBytesConfig

            nf4 = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                   "bnb_4bit_compute_dtype": getattr(torch, dtype)}
            kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_4bit=True, **nf4) if load_bits == 4
                                             else BitsAndBytesConfig(load_in_8bit=True))
        if use_gpu:
            if allocate:
                gib = mp.parse_allocate(allocate) if isinstance(allocate, str) else list(map(float, allocate))
                if blocks is None:
                    raise KnowLMError(f"cannot size {path.name} for --allocate (no safetensors, no config)",
                                      "leave --allocate out to let accelerate place the model")
                totals = [torch.cuda.get_device_properties(i).total_memory
                          for i in range(torch.cuda.device_count())]
                others = ", ".join(f"--load-{b}bit (about {blocks.nbytes(dtype, b) / mp.GIB:.1f} GiB)"
                                   for b in (8, 4) if b != load_bits)
                self.plan = mp.plan_allocation(blocks.sizes(dtype, load_bits), gib, totals,
                                               mp.available_ram_bytes(), alternatives=others)
                kwargs.update(device_map="auto", max_memory=self.plan.max_memory)
            else:
                kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 or load_bits else "cuda"
        elif blocks is not None:
            mp.check_ram(blocks.nbytes(dtype), mp.available_ram_bytes(), f"{path.name} in {dtype} on the CPU",
                         f"no CUDA GPU is visible: convert it to a GGUF for llama.cpp, "
                         f"e.g. knowlm-local convert {path} --quant q4_k_m")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except ImportError as exc:
            raise KnowLMError(f"transformers cannot load {path.name}: {str(exc).splitlines()[0]}",
                              "pip install accelerate bitsandbytes (multi-GPU and 4/8-bit loading need them)",
                              ) from exc
        except (OSError, ValueError) as exc:
            raise KnowLMError(f"transformers cannot load {path}: {str(exc).splitlines()[0]}",
                              "check that the folder has config.json, weights and tokenizer files") from exc
        self.model.eval()
        self.device = self.model.device
        devices = set(getattr(self.model, "hf_device_map", {}).values()) or {str(self.device)}
        # A static KV cache lets generate() compile the decode step (CUDA only, one device, no bitsandbytes).
        self.fast = bool(use_gpu and not load_bits and len(devices) == 1) if fast is None else fast
        text_config = self.model.config.get_text_config()
        config_ctx = int(getattr(text_config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(getattr(text_config, "vocab_size", 0) or len(self.tokenizer))
        self._compiler: Any = None
        self._grammars: dict[str, Any] = {}
        tok = self.tokenizer
        where = f"{self.device}" if len(devices) == 1 else f"{len(devices)} devices"
        self.info = BackendInfo(
            name="transformers",
            model_path=str(path),
            n_ctx=min(n_ctx, config_ctx) if n_ctx else config_ctx,
            n_gpu_layers=int(text_config.num_hidden_layers) if use_gpu else 0,
            n_layers=int(text_config.num_hidden_layers),
            device=f"{where} ({dtype}{f', {load_bits}-bit weights' if load_bits else ''})",
            chat_template=getattr(tok, "chat_template", None),
            bos_token=tok.bos_token or "",
            eos_token=tok.eos_token or "",
            adds_bos=bool(tok("", add_special_tokens=True)["input_ids"]),
        )

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_bos)["input_ids"]

    def _stop_ids(self) -> list[int]:
        """The tokens that end an answer: the generation config's EOS ids (what generate() stops on)."""
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if not ids and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        return [int(i) for i in ids]

    def grammar_for(self, json_schema: dict[str, Any]) -> Any:
        """xgrammar's grammar for ``json_schema``, compiled once per schema (the tokenizer table once)."""
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise KnowLMError("a JSON schema on the transformers backend needs xgrammar (not installed)",
                              'pip install xgrammar (or pip install "knowlm-local[hf]")') from exc
        key = json.dumps(json_schema, sort_keys=True, ensure_ascii=False)
        if key not in self._grammars:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self._stop_ids())
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            self._grammars[key] = self._compiler.compile_grammar(gbnf_for(json_schema))
        return self._grammars[key]

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        json_schema: dict[str, Any] | None = None,
        cancel: Any = None,
        copy: Any = None,  # not enforced here: the IE code checks the spans afterwards
    ) -> Iterator[Chunk]:
        """Stream with ``TextIteratorStreamer``; ``json_schema`` is enforced exactly (see the module doc)."""
        import torch
        from transformers import (
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"]
        ids = ids.to(self.device)
        n_prompt = int(ids.shape[1])
        room = self.room_for(n_prompt)

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return bool(cancel is not None and cancel.is_set())

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = params.temperature > 0
        gen_kwargs: dict[str, Any] = {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "streamer": streamer,
            "max_new_tokens": min(params.max_tokens, room), "do_sample": sample,
            "repetition_penalty": params.repeat_penalty,
            "stopping_criteria": StoppingCriteriaList([_Cancel()]),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if json_schema is not None:
            mask = GrammarMask(self.grammar_for(json_schema), n_prompt)
            gen_kwargs["logits_processor"] = LogitsProcessorList([mask])
        if self.fast:
            size = self._cache_len(n_prompt + gen_kwargs["max_new_tokens"])
            gen_kwargs.update(cache_implementation="static", max_cache_len=size)
        if sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if params.seed >= 0:
            torch.manual_seed(params.seed)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    result["out"] = self.model.generate(**gen_kwargs)
            except Exception as exc:  # noqa: BLE001 - surfaced in the caller's thread below
                result["error"] = exc
                streamer.end()

        t0 = time.perf_counter()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        first = None
        pieces = 0  # the streamer emits about one piece per token; exact counts come at the end
        for piece in streamer:
            if first is None:
                first = time.perf_counter()
            if piece:
                pieces += 1
                yield Chunk(text=piece, prompt_tokens=n_prompt, prompt_seconds=first - t0,
                            completion_tokens=pieces)
        worker.join()
        if "error" in result:
            raise KnowLMError(f"generation failed: {result['error']}", "try a smaller --ctx or --max-tokens")
        end = time.perf_counter()
        out = result["out"][0]
        generated = int(out.shape[0]) - n_prompt
        ended = generated > 0 and int(out[-1]) in self._stop_ids()
        generated -= ended  # the end-of-answer token is not part of the answer (llama.cpp does not count it)
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
        else:
            finish = "length" if not ended and generated >= gen_kwargs["max_new_tokens"] else "stop"
        first = first or end
        yield Chunk(text="", prompt_tokens=n_prompt, completion_tokens=generated, finish_reason=finish,
                    prompt_seconds=first - t0, decode_tokens=max(0, generated - 1),
                    decode_seconds=end - first)

    def _cache_len(self, tokens: int) -> int:
        """A static cache size for ``tokens``: a power of two from CACHE_BUCKET on, at most the context."""
        size = CACHE_BUCKET
        while size < tokens:
            size *= 2
        return min(size, max(self.info.n_ctx, tokens))

    def close(self) -> None:
        self.model = None
