"""The transformers backend: full-precision PyTorch for HF checkpoints, meant for a CUDA GPU.

Used when the model is a Hugging Face folder rather than a GGUF (or with
``--backend transformers``): bf16 on GPUs that support it, fp16 on older ones,
fp32 on the CPU; several GPUs are used through ``device_map="auto"``. Remote
code is never trusted unless the caller asks, and weights load through
transformers' safe paths (safetensors first, ``torch.load(weights_only=True)``
for legacy ``.bin``). For serving across many GPUs, use vLLM instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams


class TransformersBackend(Backend):
    """A Hugging Face causal LM loaded with transformers."""

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int | None = None,
        n_gpu_layers: int | None = None,
        n_threads: int | None = None,
        seed: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if n_threads:
            torch.set_num_threads(n_threads)
        if seed is not None and seed >= 0:
            torch.manual_seed(seed)
        use_gpu = torch.cuda.is_available() and n_gpu_layers != 0
        if dtype is None:
            dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if use_gpu else "float32"
        kwargs: dict[str, Any] = dict(dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
        if use_gpu:
            kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 else "cuda"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise KnowLMError(f"transformers cannot load {path}: {str(exc).splitlines()[0]}",
                              "check that the folder has config.json, weights and tokenizer files") from exc
        self.model.eval()
        self.device = self.model.device
        config_ctx = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        tok = self.tokenizer
        self.info = BackendInfo(
            name="transformers",
            model_path=str(path),
            n_ctx=min(n_ctx, config_ctx) if n_ctx else config_ctx,
            n_gpu_layers=int(self.model.config.num_hidden_layers) if use_gpu else 0,
            n_layers=int(self.model.config.num_hidden_layers),
            device=f"{self.device} ({dtype})",
            chat_template=getattr(tok, "chat_template", None),
            bos_token=tok.bos_token or "",
            eos_token=tok.eos_token or "",
            adds_bos=bool(tok("", add_special_tokens=True)["input_ids"]),
        )

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_bos)["input_ids"]

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        json_schema: dict[str, Any] | None = None,
        cancel: Any = None,
        copy: Any = None,
    ) -> Iterator[Chunk]:
        """Stream with ``TextIteratorStreamer``; ``json_schema`` is not enforced here (parse tolerantly)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"].to(self.device)
        n_prompt = int(ids.shape[1])
        room = self.room_for(n_prompt)

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ARG002
                return bool(cancel is not None and cancel.is_set())

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = params.temperature > 0
        gen_kwargs: dict[str, Any] = dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
            max_new_tokens=min(params.max_tokens, room), do_sample=sample,
            repetition_penalty=params.repeat_penalty, stopping_criteria=StoppingCriteriaList([_Cancel()]),
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
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
            except Exception as exc:  # surfaced in the caller's thread below
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
                yield Chunk(text=piece, prompt_tokens=n_prompt, prompt_seconds=first - t0, completion_tokens=pieces)
        worker.join()
        if "error" in result:
            raise KnowLMError(f"generation failed: {result['error']}", "try a smaller --ctx or --max-tokens")
        end = time.perf_counter()
        generated = int(result["out"].shape[1]) - n_prompt
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
        else:
            finish = "length" if generated >= gen_kwargs["max_new_tokens"] else "stop"
        first = first or end
        yield Chunk(text="", prompt_tokens=n_prompt, completion_tokens=generated, finish_reason=finish,
                    prompt_seconds=first - t0, decode_tokens=max(0, generated - 1), decode_seconds=end - first)

    def close(self) -> None:
        self.model = None
