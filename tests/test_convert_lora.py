"""Streamed LoRA merges against PEFT's own merge_and_unload, and the adapters that must be refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import build_tiny_llama, gguf_logits, hf_logits, install_in_hf_cache, make_lora
from knowlm_local.convert.merge import merge
from knowlm_local.convert.pipeline import convert
from test_convert_writer import PROMPT_IDS, rel_error

from knowlm_local.errors import KnowLMError


def _peft_merged(base, adapter) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().numpy() for k, v in merged.state_dict().items()}


def _ours(folder) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.mark.parametrize("variant", ["plain", "rslora-patterns-embedding-modules_to_save"])
def test_streamed_merge_equals_peft_merge_and_unload(tiny_llama_dir, tmp_path, variant):
    extra = (
        {}
        if variant == "plain"
        else dict(
            use_rslora=True,
            alpha_pattern={"k_proj": 4, "layers.1.mlp.down_proj": 40},
            target_modules=["q_proj", "k_proj", "v_proj", "down_proj", "embed_tokens"],
            modules_to_save=["lm_head"],
        )
    )
    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", seed=1, **extra)
    result = merge(
        str(tiny_llama_dir), lora=adapter, output=tmp_path / "merged", dtype="f32", shard_size="1MB"
    )
    assert len(result.shards) > 1 and (result.folder / "model.safetensors.index.json").is_file()
    ours, peft = _ours(result.folder), _peft_merged(tiny_llama_dir, adapter)
    base = _ours(tiny_llama_dir)
    assert set(ours) == set(peft)
    worst = max(float(np.abs(ours[k] - peft[k]).max()) for k in peft)
    assert worst < 1e-5, worst
    changed = [k for k in peft if float(np.abs(ours[k] - base[k]).max()) > 1e-3]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.norm.weight" not in changed
    if variant != "plain":
        assert "model.embed_tokens.weight" in changed and "lm_head.weight" in changed
    prov = json.loads((result.folder / "provenance.json").read_text())
    assert prov["adapter"]["sha256"] and prov["adapter"]["r"] == 8
    # The merged folder is an ordinary checkpoint: transformers loads it and computes the PEFT model's logits.
    assert (
        rel_error(hf_logits(result.folder, PROMPT_IDS), hf_logits(tiny_llama_dir, PROMPT_IDS, lora=adapter))
        < 1e-5
    )


def test_gguf_with_lora_computes_the_peft_model(tiny_llama_dir, tmp_path):
    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", seed=2)
    out = convert(str(tiny_llama_dir), quants="f32", lora=adapter, output=tmp_path / "with-lora.gguf")
    want = hf_logits(tiny_llama_dir, PROMPT_IDS, lora=adapter)
    got = gguf_logits(out.outputs["f32"], PROMPT_IDS)
    assert rel_error(got, want) < 0.005
    assert (
        rel_error(got, hf_logits(tiny_llama_dir, PROMPT_IDS)) > 0.05
    )  # the adapter really changed the model
    record = json.loads(out.provenance.read_text())["files"]["with-lora.gguf"]
    assert record["adapter"]["path"] == str(adapter.resolve()) and len(record["adapter"]["sha256"]) == 64


def test_merging_the_same_adapter_twice_is_refused(tiny_llama_dir, tmp_path):
    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter", seed=3)
    merged = merge(str(tiny_llama_dir), lora=adapter, output=tmp_path / "merged").folder
    with pytest.raises(KnowLMError, match="already has the adapter"):
        convert(str(merged), quants="f16", lora=adapter, output=tmp_path / "x.gguf")
    with pytest.raises(KnowLMError, match="full model, not a LoRA adapter.*already merged"):
        convert(str(tiny_llama_dir), quants="f16", lora=merged, output=tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_adapter_for_another_base_is_refused(tiny_llama_dir, sp_tokenizer_dir, tmp_path):
    other = build_tiny_llama(tmp_path / "other", sp_tokenizer_dir, hidden_size=128, intermediate_size=256)
    adapter = make_lora(other, tmp_path / "adapter")
    with pytest.raises(KnowLMError, match="does not fit") as err:
        convert(str(tiny_llama_dir), quants="f16", lora=adapter, output=tmp_path / "x.gguf")
    assert (
        "(256, 512) in the base model, the adapter's factors are A(8, 256) and B(128, 8)" in err.value.message
    )
    with pytest.raises(KnowLMError, match="does not fit"):
        merge(str(tiny_llama_dir), lora=adapter, output=tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob("*.gguf"))


def test_dora_adapters_are_refused(tiny_llama_dir, tmp_path):
    adapter = make_lora(tiny_llama_dir, tmp_path / "dora", use_dora=True, target_modules=["q_proj"])
    with pytest.raises(KnowLMError, match="DoRA"):
        convert(str(tiny_llama_dir), quants="f16", lora=adapter, output=tmp_path / "x.gguf")


def test_lora_card_lands_in_the_store_and_base_name_is_checked(tiny_llama_dir, tmp_path):
    """knowlm-13b-ie-lora (a LoRA card) + its base card, both "downloaded" into the HF cache, end to end."""
    from knowlm_local.store import model_dir, resolve

    install_in_hf_cache(tiny_llama_dir, "zjunlp/knowlm-13b-base-v1.0")
    wrong = make_lora(tiny_llama_dir, tmp_path / "wrong", base_name="zjunlp/OneKE")
    snap = install_in_hf_cache(wrong, "zjunlp/knowlm-13b-ie-lora")
    with pytest.raises(
        KnowLMError, match="trained on zjunlp/OneKE, but the base model here is knowlm-13b-base"
    ):
        convert("knowlm-13b-ie-lora", quants="q8_0")
    cfg = json.loads((snap / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "zjunlp/knowlm-13b-base-v1.0"
    (snap / "adapter_config.json").write_text(json.dumps(cfg))
    result = convert("knowlm-13b-ie-lora", quants="q8_0")
    assert result.outputs["q8_0"] == model_dir("knowlm-13b-ie-lora") / "knowlm-13b-ie-lora-q8_0.gguf"
    found = resolve("knowlm-13b-ie-lora:q8_0")
    assert found.kind == "gguf" and found.path == result.outputs["q8_0"]
    record = json.loads(result.provenance.read_text())["files"]["knowlm-13b-ie-lora-q8_0.gguf"]
    assert record["source"]["repo"] == "zjunlp/knowlm-13b-base-v1.0" and record["source"]["commit"]
    assert record["adapter"]["adapter_repo"] == "zjunlp/knowlm-13b-ie-lora" and record["quant"] == "q8_0"
