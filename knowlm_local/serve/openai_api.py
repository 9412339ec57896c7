"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models.

Requests are pydantic models that ignore unknown fields, as OpenAI does.
Decoding parameters left out take the model card's recommendation (not
OpenAI's temperature 1.0, which suits few local models). ``response_format``
``json_object`` and ``json_schema`` are enforced by the backend's grammar, so
the answer parses. Streaming is server-sent events ending in ``data: [DONE]``;
a client that disconnects cancels its generation.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from knowlm_local.serve.errors import APIError


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(BaseModel):
    """What every generation request may set (OpenAI's names; top_k and repeat_penalty are llama.cpp's)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repeat_penalty: float | None = Field(None, gt=0, le=100)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    response_format: ResponseFormat | None = None


def params_for(req: Sampling, loaded: Any, defaults_max: int | None = None):
    """The request's decoding parameters over the model card's (the same object chat's /set fills)."""
    from knowlm_local.errors import KnowLMError

    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    top_k = None if req.top_k is None else (0 if req.top_k < 0 else req.top_k)
    overrides = dict(temperature=req.temperature, top_p=req.top_p, top_k=top_k, repeat_penalty=req.repeat_penalty,
                     presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                     max_tokens=req.max_completion_tokens or req.max_tokens or defaults_max,
                     seed=req.seed, stop=stop)
    try:
        return loaded.default_params(**overrides)
    except KnowLMError as exc:
        raise APIError(400, exc.message) from None


def schema_of(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the answer must follow (None: free text); a bad schema is a 400 naming it."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise APIError(400, "response_format json_schema needs a json_schema.schema object", "response_format")
    schema = fmt.json_schema.schema_
    try:
        import llama_cpp

        llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # llama.cpp's converter raises several types for schemas it cannot turn into a grammar
        raise APIError(400, f"response_format json_schema is not a usable JSON schema: {exc}",
                       "response_format.json_schema.schema") from None
    return schema


def check_room(loaded: Any, prompt: str, max_tokens: int) -> int:
    """Prompt tokens; a 400 when prompt plus ``max_tokens`` does not fit the context."""
    n = loaded.backend.count_tokens(prompt)
    ctx = loaded.backend.n_ctx
    if n >= ctx:
        raise APIError(400, f"the prompt is {n} tokens, the context window is {ctx}", "messages")
    if n + max_tokens > ctx:
        raise APIError(400, f"max_tokens is {max_tokens}, but the context has room for {ctx - n} after the "
                       f"{n}-token prompt", "max_tokens")
    return n


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_chunk(cid: str, model: str, delta: dict, finish: str | None, created: int) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def text_chunk(cid: str, model: str, text: str, finish: str | None, created: int) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def usage(last: Any) -> dict[str, int]:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens}


def finish_reason(last: Any) -> str:
    return "length" if last.finish_reason == "length" else "stop"


def model_list(name: str, loaded: Any, created: int) -> dict:
    """The one served model, with what a client needs to prompt it like this server does (template, context)."""
    template = loaded.template
    info = loaded.backend.info
    entry = {"id": name, "object": "model", "created": created, "owned_by": "knowlm-local",
             "max_model_len": info.n_ctx, "knowlm_template": template.name}
    if getattr(template, "source", ""):
        entry.update(chat_template=template.source, bos_token=info.bos_token, eos_token=info.eos_token,
                     adds_bos=info.adds_bos)
    return {"object": "list", "data": [entry]}


def now() -> int:
    return int(time.time())
