"""`knowlm-local doctor` on this machine (GPU or not): the real command, its JSON, and the library report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata

from conftest import knowlm_exe


def _tiny_llama(folder):
    """A random 2-layer Llama saved as a Hugging Face folder (about 100 KB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    return config


def test_doctor_json_from_the_real_command(cli_env, isolated_env):
    import llama_cpp

    proc = subprocess.run([knowlm_exe(), "doctor", "--json"], capture_output=True, text=True, env=cli_env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"system", "gpus", "llama_cpp", "torch", "packages", "disk", "models", "problems"}
    assert report["llama_cpp"]["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    amx = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    assert report["llama_cpp"]["amx"].startswith("off" if amx else "not built")
    assert report["torch"]["version"].split("+")[0] == metadata.version("torch").split("+")[0]  # 2.x+cu130
    assert report["packages"]["xgrammar"] == metadata.version("xgrammar")
    if shutil.which("nvidia-smi") is None and not report["torch"]["cuda_available"]:
        assert report["gpus"] == []  # no GPU here: a report all the same
    for gpu in report["gpus"]:
        assert 0 <= gpu["memory_free"] <= gpu["memory_total"]
    store = next(d for d in report["disk"] if d["what"] == "model store")
    assert store["path"] == str(isolated_env / "knowlm") and 0 < store["free"] <= store["total"]
    smol = next(m for m in report["models"] if m["name"] == "smollm2-135m-instruct")
    assert smol["kind"] == "gguf" and "llama.cpp (CPU)" in smol["backends"]
    assert smol["max_context_ram"] == 8192  # 23 KB of KV cache per token: its whole training context fits
    for problem in report["problems"]:
        assert problem["what"] and problem["fix"]


def test_doctor_sees_hf_weights_and_adapters_with_a_fix_for_each(runner, isolated_env):
    import torch

    from knowlm_local.cli import app
    from knowlm_local.doctor import run_doctor

    root = isolated_env / "knowlm" / "modelscope" / "test"
    config = _tiny_llama(root / "tiny-llama")
    (root / "tiny-lora").mkdir(parents=True)
    (root / "tiny-lora" / "adapter_config.json").write_text("{}")
    report = run_doctor()
    tiny = next(m for m in report.models if m.name == "test/tiny-llama")
    assert tiny.kind == "hf" and "transformers (CPU, float32)" in tiny.backends
    # fp32 KV per token: 2 (K, V) x 2 layers x 32 (2 of 4 heads x 16) x 4 bytes = 512 B: all 256 positions fit
    assert tiny.max_context_ram == config.max_position_embeddings == 256
    fixes = {p.what.split(" ")[0]: p.fix for p in report.problems}  # model name -> its fix
    lora_fix = "merge and convert it: knowlm-local convert test/tiny-lora --quant q4_k_m"
    assert fixes["test/tiny-lora"] == lora_fix
    if not torch.cuda.is_available():
        expected = "convert it to a GGUF for llama.cpp: knowlm-local convert test/tiny-llama --quant q4_k_m"
        assert fixes["test/tiny-llama"] == expected

    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "llama.cpp" in result.stdout and "GPU" in result.stdout
    assert "test/tiny-llama (hf" in result.stdout and "fix: merge and convert it" in result.stdout


def test_help_imports_nothing_heavy():
    code = ("import sys; from knowlm_local.cli import app; import knowlm_local.cli.doctor; "
            "heavy = {'torch', 'transformers', 'llama_cpp', 'xgrammar'} & set(sys.modules); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
