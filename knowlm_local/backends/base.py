"""The backend contract: every caller (chat, extract, serve, benchmarks) goes through it.

A backend turns a prompt string into a stream of :class:`Chunk` objects. Prompt
rendering (templates) happens before the backend, so the same backend serves
Alpaca, OneKE and chat-template models, and the KV-cache prefix reuse of
llama.cpp works across calls that share a leading prompt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams


@dataclass
class Chunk:
    """One piece of a streamed answer.

    ``text`` is the new text; the counters are cumulative for the call so the
    last chunk carries the totals. Timings come from the engine where it has
    them (llama.cpp's own perf counters), else from the wall clock.
    """

    text: str
    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # of those, reused from the KV cache (not evaluated again)
    completion_tokens: int = 0  # tokens generated so far
    finish_reason: str | None = None  # None while streaming; "stop", "length" or "cancelled" at the end
    prompt_seconds: float = 0.0  # time to evaluate the uncached part of the prompt
    decode_tokens: int = 0  # tokens the decode timer covers
    decode_seconds: float = 0.0
    extra: dict[str, Any] | None = None  # engine-specific details on the last chunk (none per token: it is hot)

    @property
    def decode_tps(self) -> float:
        """Decode speed in tokens/s (0 when unknown)."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prompt_tps(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0


@dataclass(frozen=True)
class BackendInfo:
    """What a loaded backend tells the user about itself."""

    name: str
    model_path: str
    n_ctx: int
    n_gpu_layers: int
    n_layers: int
    device: str
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    adds_bos: bool = True  # whether tokenizing a prompt prepends BOS by itself


class Backend(ABC):
    """A loaded model that can count tokens and stream completions."""

    info: BackendInfo
    supports_copy: bool = False  # whether generate() enforces a copy constraint
    supports_schema: bool = False  # whether generate() enforces ``json_schema`` exactly (else it is ignored)

    @abstractmethod
    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` as the model sees it."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def room_for(self, n_prompt: int) -> int:
        """Tokens left for the answer after an ``n_prompt``-token prompt; an error when none are."""
        room = self.info.n_ctx - n_prompt
        if room <= 0:
            raise KnowLMError(f"the prompt is {n_prompt} tokens, the context window is {self.info.n_ctx}",
                              "raise --ctx or shorten the input")
        return room

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    @abstractmethod
    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        json_schema: dict[str, Any] | None = None,
        cancel: Any = None,
        copy: Any = None,
    ) -> Iterator[Chunk]:
        """Stream the completion of ``prompt``.

        ``json_schema`` constrains the output to JSON matching it (where the
        engine supports it). ``cancel`` is an optional ``threading.Event``-like
        object; when set, the stream ends with ``finish_reason == "cancelled"``.
        ``copy`` (a :class:`knowlm_local.ie.copy.Constraint`, with a schema and
        greedy decoding) also makes every extracted string a substring of the
        text and refuses repeated list items, where the engine supports it
        (:attr:`supports_copy`); elsewhere it is ignored.
        """

    def complete(self, prompt: str, params: GenerationParams, **kwargs: Any) -> tuple[str, Chunk]:
        """The whole answer at once, plus the last chunk (its counters are the totals)."""
        parts: list[str] = []
        last = Chunk(text="")
        for chunk in self.generate(prompt, params, **kwargs):
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    def reset_cache(self) -> None:
        """Forget cached prompt state so the next call evaluates its whole prompt (a no-op where nothing is cached)."""

    def close(self) -> None:
        """Free the model's memory now rather than at garbage collection."""
