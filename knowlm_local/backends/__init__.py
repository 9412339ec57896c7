"""Backends behind one contract (:mod:`knowlm_local.backends.base`).

The registry maps a name to ``module:Class`` so that choosing a backend never
imports the others (llama_cpp and torch are both slow to import).
"""

from __future__ import annotations

import importlib
from typing import Any

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError

REGISTRY = {
    "llama.cpp": "knowlm_local.backends.llamacpp:LlamaCppBackend",
    "llama.cpp-batch": "knowlm_local.backends.llamacpp_batch:BatchedLlamaCppBackend",
    "transformers": "knowlm_local.backends.hf:TransformersBackend",
    "openai": "knowlm_local.backends.openai_api:OpenAIBackend",
}


def backend_class(name: str) -> type[Backend]:
    target = REGISTRY.get(name)
    if target is None:
        raise KnowLMError(f"unknown backend {name!r}", f"choose one of: {', '.join(REGISTRY)}")
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        extra = {"transformers": "hf", "openai": "serve"}.get(name, "")
        hint = f'pip install "knowlm-local[{extra}]"' if extra else "pip install -U llama-cpp-python"
        raise KnowLMError(f"the {name} backend is not available: {exc}", hint) from exc


def create_backend(name: str, path: Any, **options: Any) -> Backend:
    return backend_class(name)(path, **options)


__all__ = ["Backend", "BackendInfo", "Chunk", "REGISTRY", "backend_class", "create_backend"]
