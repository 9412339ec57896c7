"""HTTP routes of the OpenAI-compatible API (request shapes and helpers in :mod:`.openai_api`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from knowlm_local.serve.app import collect, engine_of, submit
from knowlm_local.serve.engine import cancel_on_exit, results
from knowlm_local.serve.errors import APIError
from knowlm_local.serve.openai_api import (
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    check_room,
    finish_reason,
    model_list,
    new_id,
    now,
    params_for,
    schema_of,
    text_chunk,
    usage,
)

router = APIRouter()


def served_name(app) -> str:
    settings = app.state.settings
    engine = app.state.engine
    if settings.served_name:
        return settings.served_name
    return engine.model.resolved.name if engine.model is not None else (settings.model or "default")


def _check_model(request: Request, name: str | None) -> str:
    served = served_name(request.app)
    if name and name not in (served, "default") and not served.startswith(name + ":"):
        raise APIError(404, f"the model {name!r} does not exist here; this server runs {served!r}", "model",
                       code="model_not_found")
    return served


def _generation(prompt: str, params, schema):
    def run(model, job):
        return model.backend.generate(prompt, params, json_schema=schema, cancel=job.cancel)

    return run


async def _stream(request: Request, job, shape, include_usage: bool):
    """Server-sent events for a job's chunks; a disconnect (the generator closed) cancels the job."""
    from sse_starlette.sse import EventSourceResponse

    async def events():
        last = None
        try:
            async for chunk in results(job):
                if chunk.finish_reason is None and chunk.text:
                    yield {"data": json.dumps(shape(chunk.text, None), ensure_ascii=False)}
                last = chunk
            if last is not None:
                final = shape(last.text, finish_reason(last))
                yield {"data": json.dumps(final, ensure_ascii=False)}
                if include_usage:
                    yield {"data": json.dumps({**final, "choices": [], "usage": usage(last)})}
            yield {"data": "[DONE]"}
        except APIError as exc:
            yield {"data": json.dumps({"error": {"message": exc.message, "type": "server_error"}})}
        finally:
            cancel_on_exit(job)

    return EventSourceResponse(events(), ping=15)


@router.get("/v1/models")
async def models(request: Request):
    engine = engine_of(request)
    return model_list(served_name(request.app), engine.model, now())


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request):
    from knowlm_local.errors import KnowLMError

    engine = engine_of(request)
    loaded = engine.model
    name = _check_model(request, req.model)
    messages = [m.model_dump() for m in req.messages]
    try:
        prompt = loaded.template.render(messages)
    except KnowLMError as exc:
        raise APIError(400, exc.message, "messages") from None
    params = params_for(req, loaded)
    schema = schema_of(req.response_format)
    check_room(loaded, prompt, min(params.max_tokens, request.app.state.settings.max_tokens_cap))
    if params.max_tokens > request.app.state.settings.max_tokens_cap:
        raise APIError(400, f"max_tokens is over this server's limit of {request.app.state.settings.max_tokens_cap}",
                       "max_tokens")
    cid, created = new_id("chatcmpl"), now()
    job = submit(request, _generation(prompt, params, schema))
    if req.stream:
        first = {"sent": False}

        def shape(text, finish):
            delta = {"content": text} if text else {}
            if not first["sent"]:
                delta = {"role": "assistant", **delta}
                first["sent"] = True
            return chat_chunk(cid, name, delta, finish, created)

        return await _stream(request, job, shape, bool(req.stream_options and req.stream_options.include_usage))
    chunks = await collect(request, job)
    last = chunks[-1]
    text = "".join(c.text for c in chunks)
    return {"id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason(last)}],
            "usage": usage(last), "system_fingerprint": None}


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    engine = engine_of(request)
    loaded = engine.model
    name = _check_model(request, req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1:
        raise APIError(400, "send one prompt per request (a list of several is not supported)", "prompt")
    prompt = prompts[0]
    params = params_for(req, loaded, defaults_max=req.max_tokens or 16)
    schema = schema_of(req.response_format)
    check_room(loaded, prompt, params.max_tokens)
    cid, created = new_id("cmpl"), now()
    job = submit(request, _generation(prompt, params, schema))
    if req.stream:
        return await _stream(request, job, lambda text, finish: text_chunk(cid, name, text, finish, created),
                             bool(req.stream_options and req.stream_options.include_usage))
    chunks = await collect(request, job)
    last = chunks[-1]
    return {"id": cid, "object": "text_completion", "created": created, "model": name,
            "choices": [{"index": 0, "text": "".join(c.text for c in chunks), "logprobs": None,
                         "finish_reason": finish_reason(last)}], "usage": usage(last)}


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    add_special_tokens: bool = True


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Token ids of a text (vLLM's route, so the `openai` backend can count tokens for chunking)."""
    engine = engine_of(request)
    backend = engine.model.backend
    ids = backend.tokenize(req.prompt, add_bos=req.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": backend.n_ctx}
