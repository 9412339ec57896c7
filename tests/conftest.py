"""Shared fixtures: an isolated store and HF cache per test, the embedded model, the CLI runner.

Nothing here touches the network: HF_HUB_OFFLINE is set unless a test talks to
its own local hub server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hubserver and other test helpers


def pytest_configure(config):
    """Tests that build ``llama_cpp.Llama`` themselves load it as our loader does (AMX off where it crashes)."""
    from knowlm_local.backends.llamacpp_cpu import guard

    guard()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own KNOWLM_HOME and HF cache, and no default-model override."""
    root = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("KNOWLM_HOME", str(root / "knowlm"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for var in ("KNOWLM_MODEL", "HF_ENDPOINT", "KNOWLM_DEBUG", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return root


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    from knowlm_local.embedded import embedded_gguf

    return embedded_gguf()


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2 loaded once through our loader (llama.cpp, CPU), small context."""
    from knowlm_local.runtime import LoadOptions, load_model

    loaded = load_model("smollm2", LoadOptions(n_ctx=2048, seed=0))
    yield loaded
    loaded.backend.close()


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the real `knowlm-local` executable in a subprocess."""
    env = dict(os.environ)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def written_ids(path: Path) -> list:
    """The ids of the complete JSON lines in an output file (a half-written last line does not count)."""
    import json

    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.endswith("\n")]


def kill_after_records(cmd: list[str], env: dict, out: Path, n: int = 3, timeout: float = 180) -> list:
    """Run ``cmd``, SIGKILL it once ``out`` holds ``n`` complete records, and return the ids written by then."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while len(written_ids(out)) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    return written_ids(out)


def store_gguf(embedded_path: Path, name: str, quant: str) -> Path:
    """A store entry ``models/<name>/<name>-<quant>.gguf`` pointing at the embedded GGUF (a symlink: no copy)."""
    from knowlm_local.store import home

    folder = home() / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{quant}.gguf"
    target.symlink_to(embedded_path)
    return target


def knowlm_exe() -> str:
    exe = Path(sys.executable).parent / "knowlm-local"
    return str(exe) if exe.exists() else "knowlm-local"


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory, embedded_path) -> Path:
    """The embedded SmolLM2 as a Hugging Face safetensors folder.

    transformers loads the GGUF and dequantizes it (Q4_1 -> float32); the model
    is then saved as an ordinary checkpoint. The GGUF quantizer marker is
    dropped first because transformers refuses to save a "gguf-quantized" model
    (the weights are plain float32 by then).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-hf")
    tokenizer = AutoTokenizer.from_pretrained(embedded_path.parent, gguf_file=embedded_path.name)
    model = AutoModelForCausalLM.from_pretrained(embedded_path.parent, gguf_file=embedded_path.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
