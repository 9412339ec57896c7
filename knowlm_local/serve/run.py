"""What `knowlm-local serve` does: check the settings, start the model engine (or vLLM), run uvicorn.

:class:`Server` is the same server as the command, startable in a thread
(tests and benchmarks run it on an ephemeral 127.0.0.1 port this way).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.serve.app import ServeSettings, create_app
from knowlm_local.serve.engine import Engine


def read_api_key(path: str | None) -> str | None:
    """The key from ``--api-key-file`` or ``KNOWLM_API_KEY`` (never from the command line, where ps shows it)."""
    if path:
        from knowlm_local.jsonio import decode_utf8, read_bytes

        key = decode_utf8(read_bytes(Path(path), "API key file", "a file holding the key on one line"), path).strip()
        if not key or "\n" in key:
            raise KnowLMError(f"{path} must hold the API key on one line", "write the key alone into the file")
        return key
    return os.environ.get("KNOWLM_API_KEY") or None


def check_port(host: str, port: int) -> None:
    """Fail in one line when the port is taken, before loading a model."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise KnowLMError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              "another program uses that port: pick another with --port") from None


class Server:
    """uvicorn + the app + the engine, in the current thread (:meth:`run`) or a background one (:meth:`start`)."""

    def __init__(self, settings: ServeSettings, loader, warmup: bool = True) -> None:
        import uvicorn

        self.settings = settings
        self.engine = Engine(loader, queue_size=settings.queue_size, timeout=settings.timeout,
                             workers=settings.parallel)
        self.app = create_app(settings, self.engine)
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=5, lifespan="off")
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.uvicorn.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self, wait_model: bool = True, timeout: float = 300) -> Server:
        self.engine.start()
        self._thread = threading.Thread(target=self.uvicorn.run, name="knowlm-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise KnowLMError("the HTTP server did not start", "see the log above")
            time.sleep(0.02)
        if wait_model:
            self.engine.ready.wait(timeout)
            if self.engine.error is not None:
                raise self.engine.error
        return self

    def run(self) -> None:
        self.engine.start()
        try:
            self.uvicorn.run()
        finally:
            self.engine.stop()

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.engine.stop()


def serve(model: str | None = None, options: Any = None, host: str = "127.0.0.1", port: int = 8090,
          api_key_file: str | None = None, cors_origins: list[str] | None = None, queue_size: int = 16,
          timeout: float = 300.0, served_name: str | None = None, engine: str = "llama.cpp",
          vllm: dict | None = None, parallel: int = 1, say=print) -> None:
    """Serve ``model`` until Ctrl-C (see the README's `serve` section).

    ``parallel``: requests decoded together in the batched engine (llama.cpp), or requests in flight to vLLM.
    """
    from dataclasses import replace

    from knowlm_local.runtime import LoadOptions, load_model

    if parallel < 1:
        raise KnowLMError(f"--parallel must be at least 1, got {parallel}", "--parallel 1 serves one request at a time")
    options = options or LoadOptions()
    api_key = read_api_key(api_key_file)
    check_port(host, port)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        say(f"warning: listening on {host} without an API key: anyone who can reach this machine can use the "
            "model (set one with --api-key-file or KNOWLM_API_KEY)")
    process = None
    if engine == "vllm":
        from knowlm_local.serve.vllm import start_vllm

        process, url, internal_key, name = start_vllm(model, vllm or {}, say=say)
        served_name = served_name or name
        upstream_options = LoadOptions(upstream=url, api_key=internal_key, template=options.template)
        parallel = max(parallel, 8)  # vLLM batches on its own: keep several requests in flight to it

        def loader():
            return load_model(name, upstream_options)
    elif engine == "llama.cpp":
        if parallel > 1:
            options = replace(options, parallel=parallel, n_ctx=options.n_ctx or 2048)

        def loader():
            return load_model(model, options)
    else:
        raise KnowLMError(f"unknown --engine {engine!r}", "choose llama.cpp (the default) or vllm")
    settings = ServeSettings(model=model, host=host, port=port, api_key=api_key, cors_origins=list(cors_origins or []),
                             queue_size=queue_size, timeout=timeout, served_name=served_name, parallel=parallel)
    server = Server(settings, loader)
    shown = host if ":" not in host else f"[{host}]"
    say(f"serving on http://{shown}:{port} (web page at /, OpenAI API at /v1, KnowLM's /generate and /extract); "
        "loading the model...")
    try:
        server.run()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
