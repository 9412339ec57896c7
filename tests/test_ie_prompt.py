"""IE prompts against exact strings: OneKE's JSON instruction in its [INST] wrapper, KnowLM-IE's Alpaca form."""

from __future__ import annotations

import json

import pytest

from knowlm_local.ie.prompt import alpaca_instruction, build_prompt, form_for, oneke_instruction
from knowlm_local.ie.tasks import TASKS, split_groups
from knowlm_local.prompts import get_template

# The OneKE model card's printed example (json.dumps, ensure_ascii=False, default separators).
CARD_NER_EN = (
    '{"instruction": "You are an expert in named entity recognition. Please extract entities that match the schema '
    'definition from the input. Return an empty list if the entity type does not exist. Please respond in the format '
    'of a JSON string.", "schema": ["person", "organization", "else", "location"], "input": "284 Robert Allenby '
    '( Australia ) 69 71 71 73 , Miguel Angel Martin ( Spain ) 75 70 71 68 ( Allenby won at first play-off hole )"}'
)
ONEKE_WRAP = "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n{}[/INST]"


def test_oneke_instruction_matches_the_model_card():
    text = ("284 Robert Allenby ( Australia ) 69 71 71 73 , Miguel Angel Martin ( Spain ) 75 70 71 68 "
            "( Allenby won at first play-off hole )")
    got = oneke_instruction("ner", "en", ["person", "organization", "else", "location"], text)
    assert got == CARD_NER_EN
    prompt = build_prompt("oneke", "NER", "en", ["person", "organization", "else", "location"], text)
    assert prompt == ONEKE_WRAP.format(CARD_NER_EN)


def test_oneke_chinese_keeps_characters_and_ee_booleans():
    group = [{"event_type": "收购", "trigger": True, "arguments": ["收购方", "时间"]}]
    got = build_prompt("oneke", "EE", "zh", group, "阿里巴巴收购了优酷。")
    expected_json = (
        '{"instruction": "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，'
        '不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。", '
        '"schema": [{"event_type": "收购", "trigger": true, "arguments": ["收购方", "时间"]}], '
        '"input": "阿里巴巴收购了优酷。"}'
    )
    assert got == ONEKE_WRAP.format(expected_json)


def test_alpaca_form_exact():
    got = build_prompt("alpaca", "NER", "zh", ["人物", "地点"], "马云创办了阿里巴巴。")
    assert got == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "我希望你根据实体类型列表从给定的输入中抽取可能的实体，并以JSON字符串的格式回答，键为实体类型，值为实体列表，"
        "不存在的实体类型返回空列表。实体类型列表=['人物', '地点']。\n\n### Input:\n马云创办了阿里巴巴。\n\n### Response:\n"
    )
    re_en = alpaca_instruction("RE", "en", ["founder"])
    assert re_en == (
        "From the given input, extract the possible relation triples for the relation list ['founder']. Answer with a "
        "JSON string whose keys are the relations and whose values are lists of {'subject':'', 'object':''}; return an "
        "empty list for a relation that does not occur."
    )


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("form", ["oneke", "alpaca", "chat"])
def test_text_comes_last_so_chunks_share_a_prefix(task, form):
    tpl = get_template("chatml")
    group = split_groups(task, TASKS[task].default_schema["en"])[0]
    a = build_prompt(form, task, "en", group, "First chunk of text.", tpl)
    b = build_prompt(form, task, "en", group, "Second chunk.", tpl)
    common = len(a) - len(a.split("First chunk of text.", 1)[1]) - len("First chunk of text.")
    assert a[:common] == b[:common]
    assert "First chunk" not in a[:common]
    # everything describing the task (instruction and schema) sits inside that shared prefix
    assert json.dumps(group, ensure_ascii=False)[:20] in a[:common] or str(group)[:20] in a[:common]


def test_chat_form_is_the_oneke_json_through_the_models_template():
    tpl = get_template("chatml")
    got = build_prompt("chat", "RE", "en", ["founder"], "Jobs founded Apple.", tpl)
    assert got == ("<|im_start|>user\n" + oneke_instruction("RE", "en", ["founder"], "Jobs founded Apple.")
                   + "<|im_end|>\n<|im_start|>assistant\n")


def test_form_follows_the_template():
    assert form_for(get_template("oneke")) == "oneke"
    assert form_for(get_template("alpaca")) == "alpaca"
    assert form_for(get_template("chatml")) == "chat"


def test_instructions_are_the_published_ones():
    # spot checks against OneKE's instruction_mapper / IEPile's instruction.py
    assert TASKS["KG"].instruction["zh"].endswith("不存在的属性不输出, 属性存在多值就返回列表，并输出为可解析的json格式。")
    assert TASKS["SPO"].instruction["en"].startswith("You are an expert in spo(subject, predicate, object) triples")
    assert TASKS["EEA"].instruction["en"].endswith("return NAN or an empty dictionary. Please respond in the format "
                                                   "of a JSON string.")
    assert {t: s.split_num for t, s in TASKS.items()} == {"NER": 6, "RE": 4, "SPO": 4, "EE": 4, "EET": 4, "EEA": 4,
                                                          "KG": 1}
