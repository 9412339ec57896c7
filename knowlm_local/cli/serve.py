"""`knowlm-local serve`: one model over HTTP (OpenAI-compatible API, KnowLM's /generate and /extract, a web page)."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command
from knowlm_local.cli.options import (
    AdapterOpt,
    AllocateOpt,
    BackendOpt,
    CtxOpt,
    GpuLayersOpt,
    KvTypeOpt,
    Load4bitOpt,
    Load8bitOpt,
    TemplateOpt,
    ThreadsOpt,
    load_options,
)

EPILOG = """\
**Examples**

* `knowlm-local serve` — the built-in model on http://127.0.0.1:8090 (web page at /, OpenAI API at /v1)
* `knowlm-local serve oneke --port 8090 --api-key-file key.txt`
* `knowlm-local serve --parallel 4` — 4 requests decode together in one llama.cpp context
* `knowlm-local serve oneke --host 0.0.0.0 --api-key-file key.txt --cors-origin https://my.app`
* `knowlm-local serve zhixi --engine vllm --tensor-parallel-size 2` — vLLM runs the model, our routes front it

Clients: the official `openai` package (`base_url="http://127.0.0.1:8090/v1"`), curl, the page. KnowLM's
`POST /generate` and `POST /extract` answer as KnowLM's own server and `knowlm-local extract` do.
"""


@command("serve", epilog=EPILOG)
def serve(
    model: Annotated[str | None, typer.Argument(help="Zoo name, GGUF or HF folder (default: the built-in model).",
                                                   show_default=False)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] =
        "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port.", min=0, max=65535)] = 8090,
    api_key_file: Annotated[str | None, typer.Option("--api-key-file", help="A file holding the API key clients "
                                                        "must send (default: $KNOWLM_API_KEY; none: no key).",
                                                        show_default=False)] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow browser pages from this "
                                                             "origin (repeatable; CORS is off otherwise).",
                                                             show_default=False)] = None,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait; more get 429.", min=1,
                                       max=10000)] = 16,
    parallel: Annotated[int, typer.Option("--parallel", help="Requests decoded together in one llama.cpp "
                                          "context (continuous batching); 1: one at a time.", min=1, max=256)] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one request may run.", min=1.0)] = 300.0,
    served_name: Annotated[str | None, typer.Option("--served-name", help="The model name clients use.",
                                                       show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", help="llama.cpp (this process) or vllm (a vLLM server "
                                        "behind our routes).")] = "llama.cpp",
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="vLLM: GPUs per model.",
                                                      min=1, max=64)] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="vLLM: auto, float16 or bfloat16.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="vLLM: context length.", min=64,
                                                         show_default=False)] = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    allocate: AllocateOpt = None,
    load_4bit: Load4bitOpt = False,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Serve a model: OpenAI-compatible API, KnowLM's /generate and /extract, and a web page."""
    from knowlm_local.serve.run import serve as run
    from knowlm_local.term import stderr_console

    err = stderr_console()
    run(model, options=load_options(backend, n_gpu_layers, ctx, threads, None, template, lora, kv_type=kv_type,
                                          allocate=allocate, load_4bit=load_4bit, load_8bit=load_8bit), host=host, port=port,
        api_key_file=api_key_file, cors_origins=cors_origin, queue_size=queue, timeout=timeout,
        served_name=served_name, engine=engine, parallel=parallel,
        vllm={"tensor_parallel": tensor_parallel_size, "dtype": dtype, "max_model_len": max_model_len},
        say=lambda text: err.print(text, markup=False))
