"""The `openai` backend: any OpenAI-compatible server (vLLM, another `knowlm-local serve`) behind the contract.

So ``chat``, ``extract`` and ``serve`` run unchanged against a remote model:
``--upstream http://gpu-node:8000/v1``. Prompts are rendered here with the
model's template (from its zoo card, or ``--template``) and sent to
``/v1/completions``, so extraction builds exactly the prompts it builds for a
local model; a JSON schema goes as ``response_format`` ``json_schema``, which
vLLM and ``serve`` enforce. Token counts (for chunking and context checks)
come from the server's ``/tokenize`` (vLLM and ``serve`` both have it),
else from an estimate of four characters a token.

The official ``openai`` client does the HTTP, the SSE parsing and the
retries of 429 and 5xx answers; it is thread-safe, so ``extract
--concurrency N`` keeps N requests in flight through one backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


class OpenAIBackend(Backend):
    """A model on an OpenAI-compatible HTTP server."""

    supports_schema = True  # sent as response_format json_schema; the server enforces it (ours, vLLM)

    def __init__(self, model_path: str, n_ctx: int | None = None, api_key: str | None = None,
                 model: str | None = None, timeout: float = 600.0, **_: Any) -> None:
        try:
            import openai
        except ImportError as exc:
            raise KnowLMError("the openai backend needs the openai package", 'pip install "knowlm-local[serve]"') from exc
        self.base_url = model_path.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=3)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            listed = self.client.models.list().data
        except openai.AuthenticationError:
            raise KnowLMError(f"{self.base_url} refused the API key", "pass the right key (--api-key-file or "
                              "$KNOWLM_API_KEY / $OPENAI_API_KEY)") from None
        except openai.APIConnectionError as exc:
            raise KnowLMError(f"cannot reach {self.base_url}: {exc}", "check the URL and that the server runs") from None
        except openai.APIError as exc:
            raise KnowLMError(f"{self.base_url} did not list its models: {exc}", "is it an OpenAI-compatible "
                              "server? the URL usually ends in /v1") from None
        if not listed:
            raise KnowLMError(f"{self.base_url} serves no model", "start the server with a model")
        names = [m.id for m in listed]
        self.model = model or names[0]
        if self.model not in names:
            raise KnowLMError(f"{self.base_url} does not serve {self.model!r}", f"it serves: {', '.join(names)}")
        entry = next(m for m in listed if m.id == self.model)
        served_ctx = int(getattr(entry, "max_model_len", 0) or (entry.model_extra or {}).get("max_model_len") or 0)
        extra_info = entry.model_extra or {}
        self.remote_template = extra_info.get("knowlm_template")  # what `serve` reports about its model
        self.info = BackendInfo(name="openai", model_path=f"{self.base_url} ({self.model})",
                                n_ctx=n_ctx or served_ctx or 4096, n_gpu_layers=0, n_layers=0, device="remote",
                                chat_template=extra_info.get("chat_template"), bos_token=extra_info.get("bos_token", ""),
                                eos_token=extra_info.get("eos_token", ""),
                                # whether the server's tokenizer prepends BOS itself (ours says; vLLM's usually does)
                                adds_bos=bool(extra_info.get("adds_bos", True)))
        self._can_tokenize = True

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        if self._can_tokenize:
            import json
            import urllib.error
            import urllib.request

            body = json.dumps({"model": self.model, "prompt": text, "add_special_tokens": add_bos}).encode()
            req = urllib.request.Request(_root(self.base_url) + "/tokenize", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self._headers})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return list(json.loads(r.read())["tokens"])
            except (urllib.error.URLError, OSError, ValueError, KeyError):  # no /tokenize route: estimate instead
                self._can_tokenize = False
        return [0] * max(1, len(text.encode("utf-8")) // 4)

    def generate(self, prompt: str, params: GenerationParams, json_schema: dict[str, Any] | None = None,
                 cancel: Any = None, copy: Any = None) -> Iterator[Chunk]:
        import openai

        # Always sent: a value left out takes the server's default (a card's repeat penalty of 1.1, say), and the
        # answers would no longer be the ones this model gives locally with the same parameters.
        extra: dict[str, Any] = {"top_k": params.top_k if params.top_k > 0 else -1,
                                 "repetition_penalty": params.repeat_penalty,  # vLLM's name
                                 "repeat_penalty": params.repeat_penalty}  # ours and llama.cpp's
        if json_schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
        t0 = time.perf_counter()
        try:
            stream = self.client.completions.create(
                model=self.model, prompt=prompt, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty, stop=list(params.stop) or None,
                seed=params.seed if params.seed >= 0 else None, stream=True,
                stream_options={"include_usage": True}, extra_body=extra)
        except openai.APIStatusError as exc:
            raise KnowLMError(f"{self.base_url} refused the request ({exc.status_code}): {exc.message}",
                              "see the server's log") from None
        except openai.APIConnectionError as exc:
            raise KnowLMError(f"lost the connection to {self.base_url}: {exc}", "check the server") from None
        first = None
        finish = None
        pieces = 0
        usage = None
        try:
            for event in stream:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if getattr(event, "usage", None):
                    usage = event.usage
                if not event.choices:
                    continue
                choice = event.choices[0]
                if choice.text:
                    first = first or time.perf_counter()
                    pieces += 1
                    yield Chunk(text=choice.text, completion_tokens=pieces, prompt_seconds=first - t0)
                if choice.finish_reason:
                    finish = choice.finish_reason
        finally:
            stream.close()
        end = time.perf_counter()
        first = first or end
        done = usage.completion_tokens if usage else pieces
        yield Chunk(text="", prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=done,
                    finish_reason="length" if finish == "length" else (finish or "stop"), prompt_seconds=first - t0,
                    decode_tokens=max(0, done - 1), decode_seconds=end - first, extra={"wall_seconds": end - t0})

    def close(self) -> None:
        self.client.close()
