"""Prompt templates against the exact published strings (KnowLM alpaca.json, OneKE model card)."""

from __future__ import annotations

import json

import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.prompts import alpaca_prompt, get_template, oneke_prompt

# finetune/lora/templates/alpaca.json in zjunlp/KnowLM, formatted by hand.
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n你好，介绍一下浙江大学\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n抽取实体\n\n"
    "### Input:\n马云创办了阿里巴巴。\n\n### Response:\n"
)
# OneKE model card quick start: '[INST] ' + system_prompt + json + '[/INST]'.
ONEKE_NER = (
    "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
    '{"instruction": "You are an expert in named entity recognition.", "schema": ["person"], '
    '"input": "Allenby won."}[/INST]'
)


def test_alpaca_exact():
    assert alpaca_prompt("你好，介绍一下浙江大学") == ALPACA_NO_INPUT
    assert alpaca_prompt("抽取实体", "马云创办了阿里巴巴。") == ALPACA_INPUT
    # An empty input selects the no-input form, as KnowLM's Prompter does (`if input:`).
    assert alpaca_prompt("你好，介绍一下浙江大学", "") == ALPACA_NO_INPUT
    tpl = get_template("alpaca")
    assert tpl.render([{"role": "user", "content": "你好，介绍一下浙江大学"}]) == ALPACA_NO_INPUT


def test_alpaca_multi_turn_keeps_the_single_turn_shape_for_the_last_turn():
    tpl = get_template("alpaca")
    text = tpl.render([
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
    ])
    assert text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\nQ2\n\n### Response:\n"
    )
    assert "### Instruction:" in tpl.stop


def test_oneke_exact():
    instruction = json.dumps({"instruction": "You are an expert in named entity recognition.",
                              "schema": ["person"], "input": "Allenby won."}, ensure_ascii=False)
    assert oneke_prompt(instruction) == ONEKE_NER
    assert get_template("oneke").render([{"role": "user", "content": instruction}]) == ONEKE_NER


def test_oneke_multi_turn_and_system():
    tpl = get_template("oneke")
    text = tpl.render([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
    ])
    assert text == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ1[/INST] A1 </s><s>[INST] Q2[/INST]"


def test_gguf_template_matches_llama_cpp_formatter(embedded_model):
    """Our Jinja rendering of the GGUF's template equals llama-cpp-python's own formatter."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    info = embedded_model.backend.info
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "天空是什么颜色？"}]
    ours = embedded_model.template.render(messages)
    ref = Jinja2ChatFormatter(template=info.chat_template, eos_token=info.eos_token,
                              bos_token=info.bos_token)(messages=messages).prompt
    assert ours == ref
    assert ours.endswith("<|im_start|>assistant\n")


def test_raw_and_chatml():
    assert get_template("raw").render([{"role": "user", "content": "床前明月光，"}]) == "床前明月光，"
    assert get_template("chatml").render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_bad_templates():
    with pytest.raises(KnowLMError, match="unknown template"):
        get_template("vicuna")
    with pytest.raises(KnowLMError, match="no chat template"):
        get_template("gguf", chat_template=None)
    with pytest.raises(KnowLMError, match="expected 'user'"):
        get_template("alpaca").render([{"role": "assistant", "content": "x"}])
