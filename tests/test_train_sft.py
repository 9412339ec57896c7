"""Fine-tuning and pretraining for real on a tiny random Llama (CPU): the loss falls, adapters are non-empty and
merge to the same logits, resume continues the step count and the loss curve, prompts match extract's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)

from knowlm_local.errors import KnowLMError
from knowlm_local.train.config import DataSettings, FinetuneConfig, LoraSettings, PretrainConfig
from knowlm_local.train.sft import finetune, prepare_output

WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]


def _data(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Say the word for number {i % 5}.",
                                        "output": WORDS[i % 5]}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def _cfg(model: Path, out: Path, data: Path, **kw) -> FinetuneConfig:
    values = dict(model=str(model), output_dir=str(out), mode="lora",
                  data=DataSettings(train=[str(data)], template="alpaca", max_len=160),
                  lora=LoraSettings(r=8, alpha=16, dropout=0.0), max_steps=30, micro_batch_size=8,
                  learning_rate=1e-2, lr_scheduler="constant", logging_steps=5, save_steps=15, seed=0, threads=2)
    values.update(kw)
    return FinetuneConfig(**values)


class StopAt:
    """A Trainer callback that ends training after ``step`` (as a kill would, but after a checkpoint)."""

    def __init__(self, step: int) -> None:
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_save = True
                    control.should_training_stop = True

        self.callback = _Stop()


def test_lora_learns_saves_a_nonempty_adapter_and_resume_joins_the_loss_curve(tiny_llama_dir, tmp_path):
    data = _data(tmp_path / "data.jsonl")
    whole = finetune(_cfg(tiny_llama_dir, tmp_path / "whole", data), say=lambda *_: None)
    first, last = whole.losses[0][1], whole.losses[-1][1]
    assert whole.steps == 30 and last < first / 2, whole.losses  # it learned
    adapter = tmp_path / "whole"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_llama_dir).resolve())
    from safetensors.numpy import load_file

    b = [v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert b and all(np.linalg.norm(v) > 0 for v in b)
    run = json.loads((adapter / "knowlm_train.json").read_text())
    assert run["steps"] == 30 and run["data"]["examples"] == 40

    # The same run stopped after 15 steps, then resumed: the step count continues and the losses are the same.
    part = tmp_path / "part"
    cut = finetune(_cfg(tiny_llama_dir, part, data), say=lambda *_: None, callbacks=[StopAt(15).callback])
    assert cut.steps == 15
    with pytest.raises(KnowLMError, match="already holds a training run"):
        finetune(_cfg(tiny_llama_dir, part, data), say=lambda *_: None)
    resumed = finetune(_cfg(tiny_llama_dir, part, data), resume=True, say=lambda *_: None)
    assert resumed.steps == 30
    joined = dict(cut.losses) | dict(resumed.losses)
    assert sorted(joined) == [5, 10, 15, 20, 25, 30]
    for step, loss in whole.losses:
        assert joined[step] == pytest.approx(loss, rel=1e-3, abs=1e-4), (step, joined, whole.losses)


def test_merged_adapter_gives_the_same_logits_as_base_plus_adapter(tiny_llama_dir, tmp_path):
    from convert_fixtures import hf_logits

    from knowlm_local.convert.merge import merge

    data = _data(tmp_path / "data.jsonl", 16)
    out = tmp_path / "run"
    finetune(_cfg(tiny_llama_dir, out, data, max_steps=6, save_steps=100), say=lambda *_: None)
    merged = merge(str(tiny_llama_dir), lora=str(out), output=str(tmp_path / "merged"), dtype="f32").folder
    ids = [1, 15, 27, 300, 42, 7, 99]
    via_peft = hf_logits(tiny_llama_dir, ids, lora=out)
    assert np.abs(hf_logits(merged, ids) - via_peft).max() < 1e-4
    assert np.abs(hf_logits(tiny_llama_dir, ids) - via_peft).max() > 1e-3  # the adapter does change the model


def test_output_dir_rules(tmp_path):
    run = tmp_path / "run"
    assert prepare_output(run, resume=False, force=False) is False
    run.mkdir()
    (run / "checkpoint-5").mkdir()
    with pytest.raises(KnowLMError, match="already holds a training run"):
        prepare_output(run, resume=False, force=False)
    assert prepare_output(run, resume=True, force=False) is True
    with pytest.raises(KnowLMError, match="contradict"):
        prepare_output(run, resume=True, force=True)
    assert prepare_output(run, resume=False, force=True) is False and not run.exists()
    with pytest.raises(KnowLMError, match="nothing to resume"):
        prepare_output(tmp_path / "empty", resume=True, force=False)


def test_pad_is_not_eos_eos_stays_in_the_labels_and_prompts_are_masked(tiny_llama_dir):
    from transformers import AutoTokenizer

    from knowlm_local.train.sft_data import IGNORE, choose_pad, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = tok.eos_token  # the alpaca-lora setting that teaches a model never to stop
    assert choose_pad(tok) not in (tok.eos_token_id, None)
    ex, cut = tokenize("### Instruction:\nSay hi\n\n### Response:\n", "hi there", tok, 64, response_only=True)
    n_prompt = len(tok("### Instruction:\nSay hi\n\n### Response:\n")["input_ids"])
    assert not cut and ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[-1] == tok.eos_token_id == ex.input_ids[-1]
    full, _ = tokenize("prompt", "answer", tok, 64, response_only=False)
    assert IGNORE not in full.labels


def test_packed_rows_keep_examples_apart(tiny_llama_dir):
    """Packing with restarting position ids gives each example the logits it gets alone (block-diagonal mask)."""
    import torch
    from transformers import AutoModelForCausalLM

    from knowlm_local.train.sft_data import Collator, Example, pack

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    a, b = Example([1, 20, 30, 40, 50], [-100] * 5), Example([1, 60, 70, 80], [-100] * 4)
    [row] = pack([a, b], 64)
    batch = Collator(0)([row])
    batch.pop("labels"), batch.pop("n_tokens")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]  # training calls it this way (no KV cache)
        alone_b = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits[0]
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]  # one sequence: b sees a
    assert torch.allclose(packed[5:9], alone_b, atol=1e-4)
    assert not torch.allclose(leaky[5:9], alone_b, atol=1e-2)


def test_ie_prompts_in_training_are_exactly_what_extract_sends(embedded_model, tmp_path):
    """A record from build-ie-data rendered for training equals the prompt extract builds for the same model."""
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.train.iedata import build_ie_data
    from knowlm_local.train.sft_data import render

    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": "1", "text": "陈思远在成都创立了云杉科技。",
                               "entity": [{"entity": "陈思远", "entity_type": "人物"},
                                          {"entity": "成都", "entity_type": "地理位置"}]}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    build_ie_data([str(raw)], str(tmp_path / "ie.jsonl"), tasks=["NER"], labels={"NER": ["人物", "地理位置", "组织机构"]})
    [record] = [json.loads(x) for x in (tmp_path / "ie.jsonl").read_text(encoding="utf-8").splitlines()]
    prompt, answer = render(record, embedded_model.template)
    ex = Extractor(embedded_model, "ner")
    assert prompt == ex.prompt(record["lang"], record["schema"], record["text"])
    assert json.loads(answer) == json.loads(record["output"])


def test_pretraining_on_a_token_store_learns_and_resumes(tiny_llama_dir, tmp_path):
    from knowlm_local.train.pretrain import pretrain
    from knowlm_local.train.pretrain_data import prepare_pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i}. The river flows north. 河水向北流。Line {i % 3}." for i in range(60)),
                      encoding="utf-8")
    prepare_pretrain([str(corpus)], str(tmp_path / "pt"), str(tiny_llama_dir), max_len=48, min_len=4)
    cfg = PretrainConfig(model=str(tiny_llama_dir), output_dir=str(tmp_path / "run"), data=[str(tmp_path / "pt")],
                         max_steps=12, micro_batch_size=4, learning_rate=3e-3, lr_scheduler="constant",
                         logging_steps=4, save_steps=6, gradient_checkpointing=False, threads=2)
    cut = pretrain(cfg, say=lambda *_: None, callbacks=[StopAt(6).callback])
    assert cut.steps == 6
    done = pretrain(cfg, resume=True, say=lambda *_: None)
    assert done.steps == 12 and done.losses[-1][1] < cut.losses[0][1]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_our_loss_is_the_models_own_causal_lm_loss(tiny_llama_dir, tmp_path):
    """Projecting only the labelled positions gives exactly transformers' loss over all logits."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from knowlm_local.train.sft import make_trainer_class
    from knowlm_local.train.sft_data import Collator, Example, pack, unpacked

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    examples = [Example([1, 20, 30, 40, 50, 60], [-100, -100, -100, 40, 50, 2]),
                Example([1, 70, 80, 90], [-100, -100, 80, 2])]
    trainer = make_trainer_class()(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                        report_to=[]))
    for rows in (unpacked(examples), pack(examples, 64)):
        batch = Collator(0)(rows)
        want = model(**{k: v for k, v in batch.items() if k != "n_tokens"}, use_cache=False).loss
        got = trainer.compute_loss(model, dict(batch))
        assert torch.allclose(got, want, atol=1e-5), (got, want)
