"""KnowLM's own API: ``POST /generate`` (its server's request and response, exactly) and ``POST /extract``.

``/generate`` takes ``{"instruction", "input", "parameters": {top_p, top_k,
max_tokens, presence_penalty, frequency_penalty, temperature}}`` with
KnowLM's defaults (1.0, -1, 16, 0, 0, 1.0) and answers
``{"generated_text", "num_output_tokens_cf", "error"}``. The prompt is the
model's template around the instruction (Alpaca for KnowLM's models, with
or without the input). Where KnowLM's server answered 500 and never filled
``error``, a bad request here gets a 4xx with ``error`` saying what to fix.

``/extract`` runs the same pipeline as ``knowlm-local extract`` (task,
schema, language, copy mode) on one text or a list of records, and answers
with what ``extract`` writes for each.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from knowlm_local.serve.app import collect, submit
from knowlm_local.serve.errors import APIError

router = APIRouter()


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    max_tokens: int = Field(16, ge=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    temperature: float = Field(1.0, ge=0, le=100)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instruction: str
    input: str = ""
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


def generate_prompt(template: Any, instruction: str, input_text: str) -> str:
    """The model's prompt for one instruction: Alpaca (with or without input) for Alpaca models, else its chat."""
    from knowlm_local.prompts import alpaca_prompt

    if template.name == "alpaca":
        return alpaca_prompt(instruction, input_text)
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    return template.render([{"role": "user", "content": user}])


@router.post("/generate")
async def generate(req: GenerateRequest, request: Request) -> dict[str, Any]:
    from knowlm_local.errors import KnowLMError
    from knowlm_local.serve.openai_api import check_room

    from knowlm_local.serve.app import engine_of

    loaded = engine_of(request).model
    p = req.parameters
    if not req.instruction.strip():
        raise APIError(400, "instruction is empty")
    try:
        params = loaded.default_params(temperature=p.temperature, top_p=p.top_p, top_k=0 if p.top_k < 0 else p.top_k,
                                       presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
                                       repeat_penalty=1.0, max_tokens=p.max_tokens)
    except KnowLMError as exc:
        raise APIError(400, exc.message) from None
    prompt = generate_prompt(loaded.template, req.instruction, req.input)
    check_room(loaded, prompt, params.max_tokens)

    def run(model, job):
        return model.backend.generate(prompt, params, cancel=job.cancel)

    chunks = await collect(request, submit(request, run))
    return {"generated_text": "".join(c.text for c in chunks), "num_output_tokens_cf": chunks[-1].completion_tokens,
            "error": None}


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    task: str = "ner"
    schema_: Any = Field(None, alias="schema")
    text: str | None = None
    records: list[dict[str, Any]] | None = None
    lang: str | None = None
    copy_: str = Field("strict", alias="copy")
    multi_label: bool = False  # NER: a span may stand under several labels (extract --multi-label)
    max_tokens: int | None = Field(None, ge=1)


@router.post("/extract")
async def extract(req: ExtractRequest, request: Request) -> dict[str, Any]:
    """What `knowlm-local extract` writes for each record (task, schema, result, spans, errors)."""
    from knowlm_local.errors import KnowLMError
    from knowlm_local.ie.copy import check_mode
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.ie.schema_io import parse_schema_text
    from knowlm_local.ie.tasks import get_task, validate_schema
    from knowlm_local.serve.app import engine_of

    engine = engine_of(request)
    if (req.text is None) == (req.records is None):
        raise APIError(400, "send either \"text\" or \"records\"", "text")
    records = [{"id": "1", "text": req.text}] if req.text is not None else req.records
    for i, rec in enumerate(records or []):
        if not isinstance(rec.get("text"), str):
            raise APIError(400, f"records[{i}] has no \"text\" string", "records")
        rec.setdefault("id", str(i + 1))
    try:
        task = get_task(req.task).name
        schema = None
        if req.schema_ is not None:
            schema = (parse_schema_text(task, req.schema_) if isinstance(req.schema_, str)
                      else validate_schema(task, req.schema_))
        check_mode(req.copy_)
        if req.lang not in (None, "zh", "en"):
            raise KnowLMError(f"unknown lang {req.lang!r}", "use zh or en, or leave it out")
    except KnowLMError as exc:
        raise APIError(400, exc.message + (f" ({exc.hint})" if exc.hint else ""), "schema") from None
    loaded = engine.model
    overrides = {"temperature": 0.0, "repeat_penalty": 1.0}
    if req.max_tokens:
        overrides["max_tokens"] = req.max_tokens

    def run(model, job):
        extractor = Extractor(model, task, schema, lang=req.lang, params=model.default_params(**overrides),
                              copy=req.copy_, multi_label=req.multi_label)
        for rec in records:
            if job.cancel.is_set():
                return
            yield extractor.extract(dict(rec))

    try:
        done = await collect(request, submit(request, run))
    except KnowLMError as exc:
        raise APIError(400, exc.message) from None
    return {"task": task, "model": loaded.resolved.name, "records": done}
