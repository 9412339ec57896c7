"""`serve --engine vllm`: vLLM runs the model (tensor parallel over GPUs), our routes and page front it.

vLLM's OpenAI server is started as a child process on a private port,
listening on 127.0.0.1 only and with a one-time key, for the model's Hugging
Face weights, with the chat template written from our model card (Alpaca or
OneKE as Jinja, so vLLM prompts the model exactly as ``chat`` does), the
served name, dtype and context length. Our server then reaches it through
the ``openai`` backend, so ``/generate``, ``/extract`` and the web page work
the same on top of vLLM. Nothing of vLLM's is re-implemented.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from knowlm_local.errors import KnowLMError

# Jinja versions of our templates (knowlm_local.prompts), for servers that take a chat template file.
ALPACA_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set head = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set head = 'Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.' %}{% set turns = messages %}{% endif %}{{ head }}"
    "{% for m in turns %}{% if m['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + m['content'] + "
    "'\\n\\n### Response:\\n' }}{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
)
ONEKE_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set sys = 'You are a helpful assistant. 你是一个乐于助人的助手。' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}{% if loop.first %}"
    "{{ '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] + '[/INST]' }}"
    "{% else %}{{ '<s>[INST] ' + m['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
)
JINJA = {"alpaca": ALPACA_JINJA, "oneke": ONEKE_JINJA}


def vllm_command(folder: Path, name: str, port: int, api_key: str, tensor_parallel: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, chat_template: Path | None = None,
                 extra: list[str] | None = None) -> list[str]:
    """The ``vllm serve`` command line for a model folder (what `serve --engine vllm` runs)."""
    cmd = ["vllm", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--served-model-name", name,
           "--tensor-parallel-size", str(tensor_parallel), "--dtype", dtype, "--api-key", api_key]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if chat_template is not None:
        cmd += ["--chat-template", str(chat_template)]
    return cmd + list(extra or [])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model: str | None, opts: dict, say=print, wait: float = 1800.0):
    """Start vLLM for ``model``; (process, base URL, key, served name) once its /health answers."""
    if shutil.which("vllm") is None:
        raise KnowLMError("--engine vllm needs vLLM, which is not installed",
                          "pip install vllm (on a Linux machine with NVIDIA GPUs)")
    if not model:
        raise KnowLMError("--engine vllm needs a model with Hugging Face weights", "e.g. knowlm-local serve oneke --engine vllm")
    from knowlm_local.convert.resolve import resolve_source

    source = resolve_source(model)
    if source.lora is not None:
        raise KnowLMError(f"{model} is a LoRA adapter", f"merge it first: knowlm-local merge {model}")
    card = source.card
    name = opts.get("served_name") or (card.name if card else source.folder.name)
    template_file = None
    if card is not None and card.template in JINJA:
        template_file = Path(opts.get("workdir") or source.folder.parent) / f".{name}.chat_template.jinja"
        try:
            template_file.write_text(JINJA[card.template], encoding="utf-8")
        except OSError:
            import tempfile

            template_file = Path(tempfile.mkdtemp()) / f"{name}.jinja"
            template_file.write_text(JINJA[card.template], encoding="utf-8")
    port = free_port()
    key = secrets.token_urlsafe(24)
    cmd = vllm_command(source.folder, name, port, key, tensor_parallel=int(opts.get("tensor_parallel", 1)),
                       dtype=opts.get("dtype", "auto"), max_model_len=opts.get("max_model_len") or
                       (card.context_length if card else None), chat_template=template_file)
    shown = [c if c != key else "***" for c in cmd]
    say("starting vLLM: " + " ".join(shown))
    process = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KnowLMError(f"vLLM exited with code {process.returncode} while loading {name}", "see its log above")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return process, url + "/v1", key, name
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    process.terminate()
    raise KnowLMError(f"vLLM did not become ready within {wait:.0f} s", "see its log above")
