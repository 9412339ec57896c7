"""`download` against a real local HTTP server speaking the hub protocol (huggingface_hub unmodified)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import knowlm_exe
from hubserver import HubServer, Repo

from knowlm_local.cli import app
from knowlm_local.download import download
from knowlm_local.errors import KnowLMError
from knowlm_local.store import hf_cache, resolve


def _tiny_repo() -> Repo:
    return Repo({
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(),
        "model.safetensors": os.urandom(200_000),
        "tokenizer.json": b"{}",
        "README.md": b"# tiny",
    })


def _quiet(_text: str) -> None:
    pass


def test_download_repo_id_then_resolve(tmp_path):
    repo = _tiny_repo()
    with HubServer({"org/tiny": repo}) as hub:
        [folder] = download("org/tiny", endpoint=hub.url, progress=False, say=_quiet)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == repo.files["model.safetensors"]
    assert str(folder).startswith(str(hf_cache()))  # shared HF cache, not a private copy
    found = resolve("org/tiny")
    assert found.kind == "hf" and found.path == folder


def test_include_exclude_and_revision():
    with HubServer({"org/tiny": _tiny_repo()}) as hub:
        [folder] = download("org/tiny", include=["*.json"], exclude=["tokenizer*"], endpoint=hub.url,
                            progress=False, say=_quiet)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
        with pytest.raises(KnowLMError, match="revision 'v9' does not exist"):
            download("org/tiny", revision="v9", endpoint=hub.url, progress=False, say=_quiet)
        with pytest.raises(KnowLMError, match="no files of org/tiny match"):
            download("org/tiny", include=["*.gguf"], endpoint=hub.url, progress=False, say=_quiet)


def test_zoo_name_uses_the_card_repo_and_patterns_and_lora_fetches_its_base(monkeypatch):
    base = Repo({"config.json": b"{}", "pytorch_model.bin": b"x" * 1000, "tokenizer.model": b"t",
                 "notes.txt": b"not in the card's patterns"})
    adapter = Repo({"adapter_config.json": b"{}", "adapter_model.safetensors": b"a" * 100, "README.md": b"r"})
    said = []
    with HubServer({"zjunlp/knowlm-13b-base-v1.0": base, "zjunlp/knowlm-13b-ie-lora": adapter}) as hub:
        folders = download("knowlm-13b-ie-lora", endpoint=hub.url, progress=False, say=said.append)
    assert [f.parent.parent.name for f in folders] == ["models--zjunlp--knowlm-13b-base-v1.0",
                                                       "models--zjunlp--knowlm-13b-ie-lora"]
    assert "notes.txt" not in {p.name for p in folders[0].iterdir()}  # the card's file patterns applied
    assert "README.md" not in {p.name for p in folders[1].iterdir()}
    assert "fetching its base model knowlm-13b-base first" in said[0]
    assert resolve("knowlm-13b-ie-lora").kind == "lora"


def test_repo_not_found_gated_and_unknown_name():
    gated = _tiny_repo()
    gated.gated = True
    with HubServer({"org/gated": gated}) as hub:
        with pytest.raises(KnowLMError, match="was not found"):
            download("org/nothere", endpoint=hub.url, progress=False, say=_quiet)
        with pytest.raises(KnowLMError, match="gated"):
            download("org/gated", endpoint=hub.url, progress=False, say=_quiet)
    with pytest.raises(KnowLMError, match="unknown model 'onek'"):
        download("onek", say=_quiet)


def test_offline_is_a_clear_error_and_writes_nothing():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KnowLMError, match="cannot reach http://127.0.0.1") as info:
        download("org/tiny", endpoint=f"http://127.0.0.1:{port}", progress=False, say=_quiet)
    assert "hf-mirror.com" in info.value.hint
    assert not list(hf_cache().glob("models--org--tiny/snapshots/*/*"))


def test_not_enough_disk_space_stops_before_downloading():
    with HubServer({"org/huge": _tiny_repo()}) as hub:
        hub.state.declared_size["model.safetensors"] = 10**16  # 10 PB
        with pytest.raises(KnowLMError, match="not enough disk space"):
            download("org/huge", endpoint=hub.url, progress=False, say=_quiet)
        assert not [r for r in hub.state.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert not list(hf_cache().glob("models--org--huge/blobs/*"))


def test_interrupted_download_resumes_with_a_byte_range(cli_env):
    """Kill the real CLI mid-file; the next run asks only for the missing bytes."""
    big = os.urandom(12 * 1024 * 1024)  # more than one of huggingface_hub's 10 MiB write chunks
    repo = Repo({"config.json": b"{}", "model.safetensors": big})
    with HubServer({"org/big": repo}) as hub:
        hub.state.stall_after["model.safetensors"] = 11 * 1024 * 1024
        cmd = [knowlm_exe(), "download", "org/big", "--endpoint", hub.url]
        proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        partial = []
        while time.time() < deadline:
            partial = [p for p in hf_cache().rglob("*.knowlm-partial") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        assert partial, "the download never wrote a partial file"
        done = partial[0].stat().st_size
        result = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        ranges = [r[2] for r in hub.state.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
    assert ranges[-1] == f"bytes={done}-"
    assert (resolve("org/big").path / "model.safetensors").read_bytes() == big


def test_cli_download_and_modelscope_without_package(runner):
    with HubServer({"org/tiny": _tiny_repo()}) as hub:
        result = runner.invoke(app, ["download", "org/tiny", "--endpoint", hub.url])
    assert result.exit_code == 0, result.output
    assert "org/tiny ->" in result.stderr
    embedded = runner.invoke(app, ["download", "smollm2"])
    assert embedded.exit_code == 0 and "nothing to download" in embedded.stderr
    if "modelscope" not in sys.modules:
        try:
            import modelscope  # noqa: F401
        except ImportError:
            ms = runner.invoke(app, ["download", "oneke", "--source", "modelscope"])
            assert ms.exit_code == 1 and "knowlm-local[modelscope]" in ms.stderr


def test_a_corrupt_partial_file_fails_its_sha256_and_is_discarded():
    import hashlib

    repo = _tiny_repo()
    etag = hashlib.sha256(repo.files["model.safetensors"]).hexdigest()
    blobs = hf_cache() / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f"{etag}.knowlm-partial"
    partial.write_bytes(b"\0" * 1000)  # a resumed file whose first bytes are wrong
    with HubServer({"org/tiny": repo}) as hub:
        with pytest.raises(KnowLMError, match="SHA-256"):
            download("org/tiny", endpoint=hub.url, progress=False, say=_quiet)
        assert not partial.exists() and not (blobs / etag).exists()
        [folder] = download("org/tiny", endpoint=hub.url, progress=False, say=_quiet)
    assert (folder / "model.safetensors").read_bytes() == repo.files["model.safetensors"]
