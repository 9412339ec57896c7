"""Errors in OpenAI's shape, with the status the official client maps to the right exception class.

``{"error": {"message", "type", "param", "code"}}``: 400 invalid request (also
for what FastAPI would answer 422: clients handle 400), 401 bad key, 404
unknown model or route, 413 body too large, 429 queue full (with
Retry-After, which the client honours), 503 still loading, 504 time limit.
KnowLM's ``/generate`` answers the same status with its own ``error`` field.
"""

from __future__ import annotations

from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
         504: "timeout_error"}


class APIError(Exception):
    """An HTTP error a route raises; rendered by :func:`error_body`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """pydantic's error list as one sentence naming the field (and the first problem only)."""
    if not errors:
        return "the request is not valid", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body",)]
    field = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
    if first.get("type") == "missing":
        return f"missing required field {field!r}", field
    return (f"invalid value for {field!r}: {msg}" if field else msg), field
