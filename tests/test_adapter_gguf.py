"""GGUF LoRA adapters (`convert --adapter-only`): llama.cpp applying the adapter to the base GGUF computes what
PEFT computes, for plain, rsLoRA and per-module-alpha adapters; damaged or foreign adapters are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import build_tiny_llama, hf_logits, make_lora
from test_convert_writer import rel_error

from knowlm_local.convert.adapter_gguf import convert_adapter
from knowlm_local.convert.pipeline import convert
from knowlm_local.errors import KnowLMError

IDS = [1, 15, 27, 300, 42, 7, 99, 250, 3]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_logits(base_gguf, adapter_gguf, ids):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(adapter_gguf) if adapter_gguf else None,
                          n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_gpu_layers=0, n_threads=1,
                          n_threads_batch=1)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def base_f32(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("base") / "tiny-f32.gguf"
    convert(str(tiny_llama_dir), quants="f32", output=out)
    return out


@pytest.mark.parametrize("variant", ["plain", "rslora", "alpha_pattern"])
def test_llama_cpp_with_the_adapter_matches_peft(variant, tiny_llama_dir, base_f32, tmp_path):
    extra = {"plain": {}, "rslora": {"use_rslora": True},
             "alpha_pattern": {"alpha_pattern": {"q_proj": 64, "down_proj": 4}}}[variant]
    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL, **extra)
    out = convert_adapter(str(adapter), tmp_path / "adapter.gguf", out_type="f32")
    want = hf_logits(tiny_llama_dir, IDS, lora=adapter)
    got = lora_logits(base_f32, out, IDS)
    assert rel_error(got, want) < 0.002, rel_error(got, want)
    assert rel_error(lora_logits(base_f32, None, IDS), want) > 0.05  # the adapter matters: the check above can fail
    f16 = convert_adapter(str(adapter), tmp_path / "adapter-f16.gguf", out_type="f16")
    assert rel_error(lora_logits(base_f32, f16, IDS), want) < 0.005
    assert f16.stat().st_size < out.stat().st_size


def test_adapter_file_layout_is_llama_cpps(tiny_llama_dir, tmp_path):
    from gguf import GGUFReader

    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    out = convert_adapter(str(adapter), tmp_path / "a.gguf")
    reader = GGUFReader(str(out))
    fields = {k: reader.fields[k].contents() for k in ("general.type", "adapter.type", "adapter.lora.alpha",
                                                       "general.architecture")}
    assert fields == {"general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 8.0,
                      "general.architecture": "llama"}
    names = sorted(t.name for t in reader.tensors)
    assert names[:4] == ["blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.0.attn_v.weight.lora_a",
                         "blk.0.attn_v.weight.lora_b"]
    meta = json.loads((tmp_path / "provenance.json").read_text())["files"]["a.gguf"]
    assert meta["kind"] == "lora-adapter" and meta["quant"] == "f16"


def test_foreign_damaged_and_unmappable_adapters_are_refused(tiny_llama_dir, sp_tokenizer_dir, base_f32, tmp_path):
    from knowlm_local.gguf_check import check_adapter

    other = build_tiny_llama(tmp_path / "other", sp_tokenizer_dir, hidden_size=128, intermediate_size=256)
    adapter = make_lora(other, tmp_path / "foreign", r=4, target_modules=ALL)
    foreign = convert_adapter(str(adapter), tmp_path / "foreign.gguf")
    with pytest.raises(KnowLMError, match="was made for .* and does not fit tiny-f32.gguf"):
        check_adapter(foreign, base_f32)
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(foreign.read_bytes()[:2000])
    with pytest.raises(KnowLMError, match="truncated at byte 2000"):
        check_adapter(damaged, base_f32)
    with pytest.raises(KnowLMError, match="is not a LoRA adapter GGUF"):
        check_adapter(base_f32, base_f32)
    saved = make_lora(tiny_llama_dir, tmp_path / "mts", r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(KnowLMError, match="modules_to_save"):
        convert_adapter(str(saved), tmp_path / "mts.gguf")
    with pytest.raises(KnowLMError, match="f32 or f16"):
        convert_adapter(str(adapter), tmp_path / "x.gguf", out_type="q4_k_m")


def test_chat_applies_an_adapter_and_refuses_a_foreign_one(tiny_llama_dir, sp_tokenizer_dir, base_f32, tmp_path,
                                                         runner):
    from knowlm_local.cli import app

    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", r=4, target_modules=ALL)
    good = convert_adapter(str(adapter), tmp_path / "good.gguf")
    ok = runner.invoke(app, ["chat", "-m", str(base_f32), "--lora", str(good), "-p", "hi", "-n", "4",
                             "--template", "raw", "--ctx", "128"])
    assert ok.exit_code == 0, ok.output
    folder = runner.invoke(app, ["chat", "-m", str(base_f32), "--lora", str(adapter), "-p", "hi"])
    assert folder.exit_code == 1 and "--adapter-only" in folder.output
    other = build_tiny_llama(tmp_path / "other", sp_tokenizer_dir, hidden_size=128, intermediate_size=256)
    foreign = convert_adapter(str(make_lora(other, tmp_path / "fa", r=4, target_modules=ALL)), tmp_path / "f.gguf")
    bad = runner.invoke(app, ["chat", "-m", str(base_f32), "--lora", str(foreign), "-p", "hi", "--template", "raw"])
    assert bad.exit_code == 1 and "does not fit" in bad.output
