"""Fixtures for the converter tests: tiny real Llama checkpoints with real tokenizers, built in the test.

* a SentencePiece (BPE) tokenizer trained on a small zh+en corpus, wrapped as a
  LlamaTokenizer the way LLaMA repos ship it (tokenizer.model + tokenizer.json);
* a random ``LlamaConfig`` model (GQA, untied output) saved as safetensors with it;
* SmolLM2 exported to Hugging Face format (``smollm2_hf_dir`` in conftest) and our
  F16 conversion of it, shared by the tests that need a real model.

Import the fixtures into a test module with ``from convert_fixtures import *``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

EN = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Knowledge graphs store entities and the relations between them.",
    "Zhejiang University is located in Hangzhou, the capital of Zhejiang province.",
    "Large language models can extract events, entities and relations from text.",
    "OneKE answers with JSON objects keyed by the schema it was given.",
    "In 2023 the team released ZhiXi, a 13 billion parameter model.",
    "Please list three primary colors and explain why they are primary.",
]
ZH = [
    "浙江大学位于杭州，是一所综合性研究型大学。",
    "知识图谱由实体和关系组成，可以用于问答和推理。",
    "大型语言模型能够从文本中抽取实体、关系和事件。",
    "今天天气很好，我们去西湖边散步，看到了很多游客。",
    "智析是一个面向知识抽取的中英双语大模型。",
    "请从下面的句子中抽取三元组：杭州位于浙江省。",
]
# Text the tokenizer never saw: unseen characters (byte fallback), digits, runs of spaces, newlines.
SAMPLES = [
    "Hello world! How are you today?",
    "浙江大学位于杭州。",
    "知识抽取 knowledge extraction 2024年3月15日",
    "  leading spaces and  double  spaces\nand a newline\n\nand two",
    "鲸鱼和海豚生活在海洋里🐋，它们是哺乳动物。",
    "Mixed 中英文 text with numbers 12345 and symbols #@$%.",
    'The model said: "量子计算" is quantum computing.',
]


def write_corpus(path: Path) -> None:
    lines = []
    for i in range(60):
        lines += [EN[i % len(EN)], ZH[i % len(ZH)], f"Example {i}: 第{i}个例子，数值为{i * 37}。"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_sentencepiece(folder: Path, vocab_size: int = 600) -> Path:
    """A LLaMA-style SentencePiece model: BPE, byte fallback, digits split, no normalization."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    write_corpus(corpus)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "sp"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return folder / "sp.model"


def save_llama_tokenizer(sp_model: Path, out: Path) -> None:
    """tokenizer.model + tokenizer.json + tokenizer_config.json, as LLaMA checkpoints ship them."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sp_model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        ),
        encoding="utf-8",
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(sp_model, out / "tokenizer.model")  # transformers 5 no longer writes it


def tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.08,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def build_tiny_llama(folder: Path, tokenizer_dir: Path, seed: int = 0, dtype=None, **overrides) -> Path:
    """A random Llama saved as safetensors next to a copy of the tokenizer files."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    n_vocab = _vocab_size(tokenizer_dir)
    model = LlamaForCausalLM(tiny_config(n_vocab, **overrides)).eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copyfile(item, folder / item.name)
    return folder


def _vocab_size(tokenizer_dir: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model")).get_piece_size()


def hf_logits(folder: Path, ids: list[int], lora: Path | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if lora is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(path: Path, ids: list[int]):
    """Logits for every position from llama.cpp (one thread: steady timings on a shared machine)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=max(64, len(ids) + 8),
        n_batch=256,
        logits_all=True,
        verbose=False,
        n_gpu_layers=0,
        n_threads=1,
        n_threads_batch=1,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def gguf_tokenize(path: Path, text: str) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
    finally:
        llm.close()


def make_lora(base: Path, out: Path, seed: int = 0, base_name: str | None = None, **config) -> Path:
    """A PEFT LoRA adapter for ``base`` with random, non-zero A and B (as if trained)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    values = dict(
        r=8,
        lora_alpha=16,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    values.update(config)
    peft_model = get_peft_model(model, LoraConfig(**values))
    with torch.no_grad():  # a "trained" copy of each modules_to_save layer, not the base's
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name if base_name is not None else str(base)
    cfg_path.write_text(json.dumps(cfg))
    return out


def install_in_hf_cache(folder: Path, repo: str, commit: str = "c0ffee" * 6 + "abcd") -> Path:
    """Copy ``folder`` into the HF hub cache layout (refs/main -> snapshots/<commit>), as a download would."""
    from knowlm_local.store import hf_cache

    root = hf_cache() / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    shutil.copytree(folder, snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="session")
def sp_tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sp-tokenizer")
    sp_model = train_sentencepiece(root / "train")
    out = root / "tokenizer"
    save_llama_tokenizer(sp_model, out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, sp_tokenizer_dir) -> Path:
    """A random 2-layer GQA Llama (hidden 256, so K-quants apply), SentencePiece tokenizer, float32."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), sp_tokenizer_dir)


@pytest.fixture(scope="session")
def smollm2_f16(tmp_path_factory, smollm2_hf_dir) -> Path:
    """SmolLM2 converted to F16 by our writer (written once per session, outside the store)."""
    from knowlm_local.convert.pipeline import convert

    out = tmp_path_factory.mktemp("smollm2-gguf") / "smollm2-f16.gguf"
    convert(str(smollm2_hf_dir), quants="f16", output=out)
    return out


__all__ = ["sp_tokenizer_dir", "tiny_llama_dir", "smollm2_f16"]
