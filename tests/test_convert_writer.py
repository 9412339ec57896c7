"""Our HF -> GGUF writer against transformers: same weights, same token ids, same logits."""

from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import SAMPLES, build_tiny_llama, gguf_logits, gguf_tokenize, hf_logits
from knowlm_local.convert.pipeline import convert

from knowlm_local.errors import KnowLMError

PROMPT_IDS = [1, 454, 379, 286, 509, 458, 449, 262, 472, 287, 317, 25, 40, 41, 300, 301, 302, 303]


def rel_error(got, want) -> float:
    """RMS logit error relative to the spread of the reference logits (scale-free across types)."""
    centred = want - want.mean(-1, keepdims=True)
    return float(np.sqrt(((got - want) ** 2).mean()) / np.sqrt((centred**2).mean()))


def _gguf_tensors(path):
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(str(path)).tensors}


def _metadata(path, *keys):
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {k: (fields[k].contents() if k in fields else None) for k in keys}


# Measured relative errors: f32 0.0007, f16 0.0015 (llama.cpp's KV cache is F16), bf16 0.012, q8_0 0.035.
@pytest.mark.parametrize("quant,tolerance", [("f32", 0.005), ("f16", 0.005), ("bf16", 0.03), ("q8_0", 0.08)])
def test_tiny_llama_logits_match_transformers(tiny_llama_dir, tmp_path, quant, tolerance):
    out = convert(str(tiny_llama_dir), quants=quant, output=tmp_path / f"tiny-{quant}.gguf").outputs[quant]
    want = hf_logits(tiny_llama_dir, PROMPT_IDS)
    got = gguf_logits(out, PROMPT_IDS)
    assert rel_error(got, want) < tolerance
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8
    types = {t.name: t.tensor_type.name for t in _gguf_tensors(out).values()}
    assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay F32 in every type
    assert types["blk.0.attn_q.weight"] == quant.upper()
    assert "output.weight" in types  # untied model: its own output layer


def test_missing_rope_permutation_is_visible_in_the_logits(tiny_llama_dir, tmp_path):
    """The check the writer tests rely on can fail: without the q/k reordering the logits drift far."""
    from knowlm_local.convert.hf_to_gguf import LlamaSpec, read_config, write_gguf
    from knowlm_local.convert.source import WeightStream
    from knowlm_local.convert.tensors import Checkpoint
    from knowlm_local.convert.tokenizer import load_vocab

    cfg = read_config(tiny_llama_dir)
    spec = LlamaSpec.from_config(cfg, tiny_llama_dir)
    stream = WeightStream(Checkpoint(tiny_llama_dir))
    vocab = load_vocab(tiny_llama_dir, cfg["vocab_size"], cfg)
    broken = tmp_path / "broken.gguf"
    write_gguf(stream, spec, vocab, broken, "f32", permute=False)
    want = hf_logits(tiny_llama_dir, PROMPT_IDS)
    assert rel_error(gguf_logits(broken, PROMPT_IDS), want) > 0.1


def test_gqa_tied_embeddings_and_rope_scaling(sp_tokenizer_dir, tmp_path):
    """Tied output (no output.weight), 4:1 GQA, linear and Llama-3 rope scaling: same as transformers."""
    cases = {
        "tied": dict(tie_word_embeddings=True, num_key_value_heads=1),
        "linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=50000.0),
        "llama3": dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
        ),
    }
    ids = PROMPT_IDS * 3  # 54 positions: past the llama3 case's original context of 32
    for name, overrides in cases.items():
        folder = build_tiny_llama(tmp_path / name, sp_tokenizer_dir, seed=3, **overrides)
        out = convert(str(folder), quants="f32", output=tmp_path / f"{name}.gguf").outputs["f32"]
        error = rel_error(gguf_logits(out, ids), hf_logits(folder, ids))
        assert error < 0.005, (name, error)
        names = _gguf_tensors(out)
        assert ("output.weight" in names) == (name != "tied"), name
        assert ("rope_freqs.weight" in names) == (name == "llama3"), name
    meta = _metadata(
        tmp_path / "linear.gguf",
        "llama.rope.scaling.type",
        "llama.rope.scaling.factor",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
    )
    assert meta == {
        "llama.rope.scaling.type": "linear",
        "llama.rope.scaling.factor": 2.0,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 50000.0,
    }


def test_sentencepiece_token_ids_match(tiny_llama_dir, tmp_path):
    """zh+en, unseen characters (byte fallback), digits, spaces: llama.cpp == sentencepiece == HF."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = convert(str(tiny_llama_dir), quants="f16", output=tmp_path / "tok.gguf").outputs["f16"]
    meta = _metadata(
        out,
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_space_prefix",
    )
    assert meta == {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_space_prefix": True,
    }
    sp = spm.SentencePieceProcessor(model_file=str(tiny_llama_dir / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for text in SAMPLES:
        ours = gguf_tokenize(out, text)
        assert ours == [1] + sp.encode(text), text
        if not text[0].isspace():
            # transformers 5's Metaspace pre-tokenizer drops SentencePiece's dummy prefix before leading
            # spaces; everywhere else it must agree.
            assert ours == hf(text)["input_ids"], text


def test_bpe_token_ids_match_and_chat_template_is_copied(smollm2_hf_dir, smollm2_f16):
    from transformers import AutoTokenizer

    meta = _metadata(
        smollm2_f16,
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "general.file_type",
    )
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["general.file_type"] == 1
    assert meta["tokenizer.chat_template"] == (smollm2_hf_dir / "chat_template.jinja").read_text(
        encoding="utf-8"
    )
    hf = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    for text in SAMPLES:
        assert gguf_tokenize(smollm2_f16, text) == hf(text)["input_ids"], text


def test_smollm2_f16_verifies_and_a_broken_conversion_is_caught(smollm2_hf_dir, smollm2_f16, tmp_path):
    from knowlm_local.convert.hf_to_gguf import LlamaSpec, read_config, write_gguf
    from knowlm_local.convert.pipeline import prepare
    from knowlm_local.convert.verify import require_pass, verify

    prep = prepare(str(smollm2_hf_dir))
    broken = tmp_path / "smollm2-broken-f16.gguf"
    write_gguf(prep.stream, prep.spec, prep.vocab, broken, "f16", permute=False)
    good, bad = verify([smollm2_f16, broken], smollm2_hf_dir, threads=1)
    assert good.passed and good.top1 > 0.99 and good.kl_mean < 0.001 and good.tokens_match == good.prompts
    assert not bad.passed and bad.top1 < 0.7 and bad.kl_mean > 0.5
    with pytest.raises(KnowLMError, match="verification failed for smollm2-broken-f16.gguf"):
        require_pass([good, bad])
    assert LlamaSpec.from_config(read_config(smollm2_hf_dir), smollm2_hf_dir).tied  # SmolLM2 ties its output
    assert "output.weight" not in _gguf_tensors(smollm2_f16)
