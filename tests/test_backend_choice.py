"""Which backend runs a model, and the reason printed for it (issue 13, part 4).

The rule: a GGUF runs on llama.cpp; Hugging Face weights run on transformers, on the GPU when CUDA is
there and on the CPU with a conversion hint when it is not; ``--backend`` forces one, and ``--backend
hf`` on a zoo name finds the Hugging Face weights even where a GGUF conversion of them exists.
"""

from __future__ import annotations

import pytest
from conftest import store_gguf

from knowlm_local.cli import app
from knowlm_local.errors import KnowLMError
from knowlm_local.runtime import LoadOptions, choose_backend, load_model, resolve_for
from knowlm_local.store import ResolvedModel, hf_cache, home, resolve
from knowlm_local.zoo import find_card


def _resolved(kind: str, name: str = "mymodel") -> ResolvedModel:
    return ResolvedModel(name, kind, home() / name)


def test_gguf_runs_on_llamacpp_and_says_so():
    choice = choose_backend(_resolved("gguf", "oneke:q4_k_m"), "auto", cuda=True)
    assert choice.name == "llama.cpp"
    assert str(choice) == "backend: llama.cpp: oneke:q4_k_m is a GGUF"


def test_hf_weights_go_to_the_gpu_when_cuda_is_there_else_cpu_with_a_convert_hint():
    on_gpu = choose_backend(_resolved("hf"), "auto", cuda=True)
    assert on_gpu.name == "transformers" and "CUDA GPU is visible" in on_gpu.reason and not on_gpu.hint
    on_cpu = choose_backend(_resolved("hf"), "auto", cuda=False)
    assert on_cpu.name == "transformers" and "no CUDA GPU" in on_cpu.reason
    assert on_cpu.hint.endswith("knowlm-local convert mymodel --quant q4_k_m")


def test_backend_flag_forces_one_and_refuses_the_wrong_file_kind():
    assert choose_backend(_resolved("hf"), "hf", cuda=False).reason == "asked for with --backend"
    assert choose_backend(_resolved("gguf"), "llama.cpp").name == "llama.cpp"
    with pytest.raises(KnowLMError, match="llama.cpp needs a GGUF"):
        choose_backend(_resolved("hf"), "llama.cpp")
    with pytest.raises(KnowLMError, match="transformers backend runs Hugging Face weights"):
        choose_backend(_resolved("gguf"), "hf")
    with pytest.raises(KnowLMError, match="LoRA adapter"):
        choose_backend(_resolved("lora"), "auto")
    with pytest.raises(KnowLMError, match="unknown backend 'onnx'"):
        choose_backend(_resolved("gguf"), "onnx")


def _hf_snapshot(repo: str):
    """A hub-cache snapshot of ``repo`` in the documented layout (refs/main -> snapshots/<commit>)."""
    root = hf_cache() / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"")
    return snap


def test_backend_hf_finds_the_hf_weights_where_a_conversion_exists(embedded_path):
    card = find_card("oneke")
    snap = _hf_snapshot(card.hf_repo)
    gguf = store_gguf(embedded_path, card.name, "q4_k_m")
    assert resolve("oneke").path == gguf  # auto: the GGUF conversion wins (llama.cpp)
    assert choose_backend(resolve("oneke"), "auto", cuda=True).name == "llama.cpp"
    wanted = resolve_for("oneke", "hf")
    assert wanted.kind == "hf" and wanted.path == snap
    assert resolve_for("oneke", "auto").path == gguf


def test_backend_hf_with_only_a_conversion_says_download(embedded_path):
    store_gguf(embedded_path, "oneke", "q4_k_m")
    with pytest.raises(KnowLMError, match="only GGUF conversions of oneke") as info:
        resolve("oneke", want="hf")
    assert "knowlm-local download oneke" in info.value.hint


def test_backend_hf_on_the_builtin_extraction_model_names_the_plain_one():
    with pytest.raises(KnowLMError, match="GGUF LoRA adapter, which only llama.cpp applies") as info:
        load_model("smollm2-ie", LoadOptions(backend="hf"))
    assert "--backend hf" in info.value.hint


def test_chat_prints_the_choice(runner, embedded_path):
    result = runner.invoke(app, ["chat", "-m", str(embedded_path), "-p", "Say hi.", "--max-tokens", "4",
                                 "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert f"backend: llama.cpp: {embedded_path.name} is a GGUF" in result.stderr


def test_hf_folder_on_cpu_prints_reason_and_hint(runner, smollm2_hf_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU the folder runs there, without the hint")
    result = runner.invoke(app, ["chat", "-m", str(smollm2_hf_dir), "-p", "Say hi.", "--max-tokens", "4",
                                 "--temperature", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("backend:"))
    assert line.startswith("backend: transformers: only Hugging Face weights are here and no CUDA GPU is visible")
    assert f"knowlm-local convert {smollm2_hf_dir.name} --quant q4_k_m" in line
