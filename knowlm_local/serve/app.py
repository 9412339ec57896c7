"""The FastAPI application: OpenAI routes, KnowLM's /generate and /extract, /health, /tokenize, the web page.

Every model call is a job on the :class:`~knowlm_local.serve.engine.Engine`;
the routes only validate, queue, stream and shape answers. Security: an API
key (when set) is checked in constant time on every API route and never
logged; CORS is off unless origins are given; request bodies over the limit
are refused with 413 before they are read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# At module level: FastAPI resolves the (string) annotations of dependencies such as `auth(request: Request)`
# in this module's globals; imported inside create_app, `request` would become a required query parameter.
from fastapi import Request

from knowlm_local.serve.engine import Engine, QueueFull, cancel_on_exit, results
from knowlm_local.serve.errors import APIError, error_body, validation_message

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeSettings:
    """How `knowlm-local serve` runs (the CLI fills it; tests build it directly)."""

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8090
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    queue_size: int = 16
    timeout: float = 300.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_cap: int = 4096
    served_name: str | None = None
    parallel: int = 1  # jobs run at once (the batched engine's sequences)


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413, whether it declares its length or streams it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= DRAIN_LIMIT * self.limit:
                await _drain(receive)  # a client still sending when the answer comes gets a reset, not the 413
            return await _send_json(send, 413, error_body(413, f"the request body is over {self.limit} bytes"))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise APIError(413, f"the request body is over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


DRAIN_LIMIT = 16  # bodies up to this many times the limit are read and dropped before the 413; bigger ones are cut


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


def create_app(settings: ServeSettings, engine: Engine):
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from knowlm_local.serve import knowlm_api, routes

    app = FastAPI(title="knowlm-local", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        if request.url.path in ("/generate",):
            return JSONResponse({"generated_text": None, "num_output_tokens_cf": 0, "error": exc.message},
                                status_code=exc.status, headers=exc.headers)
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        if request.url.path == "/generate":
            return JSONResponse({"generated_text": None, "num_output_tokens_cf": 0, "error": message}, status_code=400)
        return JSONResponse(error_body(400, message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    async def auth(request: Request) -> None:
        key = settings.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(401, "missing or wrong API key (send it as `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        if not engine.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": engine.error.message}, status_code=503)
        info = engine.model.backend.info
        return {"status": "ok", "model": routes.served_name(app), "backend": info.name, "device": info.device,
                "n_ctx": info.n_ctx, "queue": engine.waiting, "auth": bool(settings.api_key)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    deps = [Depends(auth)]
    app.include_router(routes.router, dependencies=deps)
    app.include_router(knowlm_api.router, dependencies=deps)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    return BodyLimit(app, settings.max_body_bytes)


def engine_of(request) -> Engine:
    engine: Engine = request.app.state.engine
    if not engine.ready.is_set():
        raise APIError(503, "the model is still loading; retry in a few seconds", headers={"Retry-After": "5"})
    if engine.error is not None:
        raise APIError(503, f"the model could not be loaded: {engine.error.message}")
    return engine


def submit(request, run, timeout: float | None = None):
    engine = engine_of(request)
    try:
        return engine.submit(run, timeout)
    except QueueFull:
        raise APIError(429, f"the server is busy: {engine.waiting} requests are waiting", code="queue_full",
                       headers={"Retry-After": str(engine.retry_after())}) from None


async def collect(request, job) -> list:
    """Every result of ``job``, cancelling it if the client disconnects first."""
    items: list = []

    async def watch():
        while True:
            if await request.is_disconnected():
                cancel_on_exit(job)
                return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        async for item in results(job):
            items.append(item)
    finally:
        watcher.cancel()
        cancel_on_exit(job)
    if job.expired():
        raise APIError(504, f"the request ran past the server's time limit ({job.timeout:.0f} s)")
    return items
