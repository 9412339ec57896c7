"""Packed-row attention by length buckets (train/varlen.py): the same numbers as each example run alone, the same
gradients as transformers' block-diagonal mask, a padded batch untouched, and the bucket plan optimal."""

from __future__ import annotations

import json
import random

import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)

from knowlm_local.train import varlen
from knowlm_local.train.config import DataSettings, FinetuneConfig, LoraSettings


def _cost(groups, lengths, call_cost):
    return sum(len(g) * max(lengths[i] for i in g) ** 2 + call_cost * len(lengths) for g in groups)


def _partitions(items):
    """Every set partition of ``items``."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def test_segments_restart_at_position_zero():
    assert varlen.segments([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]) == [(0, 0, 3), (0, 3, 2), (0, 5, 1), (1, 0, 6)]


def test_buckets_are_the_cheapest_grouping_of_at_most_four():
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.choice([3, 5, 20, 60, 61, 150, 290]) for _ in range(rng.randint(1, 7))]
        call_cost = rng.choice([0, 100, 4096])
        groups = varlen.buckets(lengths, call_cost=call_cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each example exactly once
        assert 1 <= len(groups) <= varlen.MAX_BUCKETS
        best = min(_cost(p, lengths, call_cost) for p in _partitions(list(range(len(lengths))))
                   if len(p) <= varlen.MAX_BUCKETS)
        assert _cost(groups, lengths, call_cost) == best


def _packed_batch(tok_ids_rows):
    import torch

    from knowlm_local.train.sft_data import Collator, Example, pack

    examples = [Example(ids, ids[1:] + [-100]) for ids in tok_ids_rows]
    rows = pack(examples, 64)
    batch = Collator(0)(rows)
    return rows, batch, torch


def _model(tiny_llama_dir, tmp_path, packed_attention):
    from knowlm_local.train.sft import load_model

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n", encoding="utf-8")
    cfg = FinetuneConfig(model=str(tiny_llama_dir), output_dir=str(tmp_path / "o"), mode="lora",
                         data=DataSettings(train=[str(data)], max_len=64, packing=True,
                                           packed_attention=packed_attention),
                         lora=LoraSettings(r=4, alpha=8, dropout=0.0), max_steps=1)
    import torch

    torch.manual_seed(0)
    model = load_model(tiny_llama_dir, cfg, "fp32")
    for name, p in model.named_parameters():  # lora_B starts at zero: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_packed_rows_match_each_example_alone_and_the_masks_gradients(tiny_llama_dir, tmp_path):
    rng = random.Random(1)
    lengths = [5, 31, 12, 40, 7, 22, 3, 18, 9, 26]
    examples = [[rng.randrange(3, 200) for _ in range(n)] for n in lengths]
    rows, batch, torch = _packed_batch(examples)
    assert len(rows) < len(examples)  # several examples share a row
    batch.pop("n_tokens")
    labels = batch.pop("labels")

    results = {}
    for impl in ("varlen", "mask"):
        model = _model(tiny_llama_dir, tmp_path, impl)
        assert model.config._attn_implementation == ("knowlm_varlen" if impl == "varlen" else "sdpa")
        model.train()
        out = model(**batch, labels=labels, use_cache=False)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = (out.logits.detach(), out.loss.item(), grads, model)

    logits, loss, grads, model = results["varlen"]
    m_logits, m_loss, m_grads, _ = results["mask"]
    model.eval()
    with torch.no_grad():
        for r, row in enumerate(rows):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([row["input_ids"][a:b]]), use_cache=False).logits[0]
                assert torch.allclose(logits[r, a:b], alone, atol=1e-4), (r, a, b)
    assert torch.allclose(logits, m_logits, atol=1e-4)
    assert loss == pytest.approx(m_loss, rel=1e-5)
    assert grads.keys() == m_grads.keys() and len(grads) > 0
    for name in grads:
        assert torch.allclose(grads[name], m_grads[name], atol=1e-5, rtol=1e-4), name


def test_a_padded_batch_takes_the_ordinary_path(tiny_llama_dir, tmp_path):
    """Generation and unpacked batches carry an attention mask: the result is transformers' own SDPA."""
    import torch

    model = _model(tiny_llama_dir, tmp_path, "varlen").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        model.base_model.model.config._attn_implementation = "sdpa"
        theirs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        alone = model(input_ids=ids[1:, :3], use_cache=False).logits
    assert torch.equal(ours, theirs)
    assert torch.allclose(ours[1, :3], alone[0], atol=1e-4)


def test_unknown_packed_attention_is_refused():
    from knowlm_local.errors import KnowLMError

    with pytest.raises(KnowLMError, match="packed_attention"):
        DataSettings(packed_attention="flash")


def test_buckets_trade_kernel_calls_against_padding():
    assert varlen.buckets([]) == []
    assert varlen.buckets([7]) == [[0]]
    lengths = [300, 60, 160, 290, 55, 150]
    assert varlen.buckets(lengths, call_cost=10**9) == [[0, 3, 2, 5, 1, 4]]  # calls dear: one bucket, longest first
    # calls free: four buckets, 300 | 290 | 160 150 | 60 55 (90000 + 84100 + 2 x 25600 + 2 x 3600)
    assert varlen.buckets(lengths, call_cost=0) == [[0], [3], [2, 5], [1, 4]]


def test_a_packed_full_fine_tune_saves_a_model_that_loads_anywhere(tiny_llama_dir, tmp_path):
    """The attention choice is a training detail: the saved config must not name it (transformers elsewhere
    has no ``knowlm_varlen``)."""
    from transformers import AutoModelForCausalLM

    from knowlm_local.train.sft import finetune

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Count to {i % 7}.", "output": " ".join(["one"] * (i % 7 + 1))})
                            + "\n" for i in range(24)), encoding="utf-8")
    cfg = FinetuneConfig(model=str(tiny_llama_dir), output_dir=str(tmp_path / "run"), mode="full",
                         data=DataSettings(train=[str(data)], template="alpaca", max_len=128, packing=True),
                         max_steps=2, micro_batch_size=2, learning_rate=1e-4, lr_scheduler="constant",
                         logging_steps=1, save_steps=100, seed=0, threads=2)
    result = finetune(cfg, force=True, say=lambda *_: None)
    assert result.steps == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert "knowlm_varlen" not in json.dumps(saved)
    AutoModelForCausalLM.from_pretrained(tmp_path / "run")
