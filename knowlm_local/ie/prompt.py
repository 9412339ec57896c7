"""IE prompts in the three forms a model may expect, always with the input text last.

* ``oneke``: OneKE's JSON instruction ``{"instruction", "schema", "input"}``
  (``json.dumps(..., ensure_ascii=False)`` with default separators, as the
  model card does) inside its ``[INST] <<SYS>>`` wrapper;
* ``alpaca``: KnowLM-13B-IE's Alpaca prompt, task instruction (with the label
  list) in ``### Instruction`` and the text in ``### Input``, as KnowLM's
  README describes;
* ``chat``: the same JSON instruction as OneKE, rendered through the model's
  own chat template (the embedded demo model and other chat models).

The text always comes last, so consecutive chunks and records asked with the
same schema share every token before it and llama.cpp re-uses that part of
the KV cache instead of evaluating it again.
"""

from __future__ import annotations

import json

from knowlm_local.ie.tasks import Schema, get_task
from knowlm_local.prompts import Template, alpaca_prompt, oneke_prompt

FORMS = ("oneke", "alpaca", "chat")

# KnowLM-13B-IE instructions. KnowLM publishes free-text templates with a
# {s_schema} label list and a {s_format} answer format (examples/ie_prompt.py);
# these follow that pattern and ask for the same JSON answer OneKE gives, so
# one parser and one decoding grammar serve both models.
_ALPACA: dict[str, dict[str, str]] = {
    "NER": {
        "zh": "我希望你根据实体类型列表从给定的输入中抽取可能的实体，并以JSON字符串的格式回答，键为实体类型，值为实体列表，不存在的实体类型返回空列表。实体类型列表={s_schema}。",
        "en": "From the given input, extract the possible entities of the entity types {s_schema}. Answer with a JSON "
              "string whose keys are the entity types and whose values are lists of entities; return an empty list for "
              "an entity type that does not occur.",
    },
    "RE": {
        "zh": "我希望你根据关系列表从给定的输入中抽取可能的关系三元组，并以JSON字符串的格式回答，键为关系，值为[{{'subject':'', 'object':''}}]形式的列表，不存在的关系返回空列表。关系列表={s_schema}。",
        "en": "From the given input, extract the possible relation triples for the relation list {s_schema}. Answer with a "
              "JSON string whose keys are the relations and whose values are lists of {{'subject':'', 'object':''}}; "
              "return an empty list for a relation that does not occur.",
    },
    "SPO": {
        "zh": "我希望你根据SPO列表从给定的输入中抽取可能的(主体,谓词,客体)三元组，并以JSON字符串的格式回答，键为谓词，值为[{{'subject':'', 'object':''}}]形式的列表，不存在的谓词返回空列表。SPO列表={s_schema}。",
        "en": "From the given input, extract the possible (subject, predicate, object) triples for the SPO list "
              "{s_schema}. Answer with a JSON string whose keys are the predicates and whose values are lists of "
              "{{'subject':'', 'object':''}}; return an empty list for a predicate that does not occur.",
    },
    "EE": {
        "zh": "我希望你根据事件列表从给定的输入中抽取可能的事件，并以JSON字符串的格式回答，键为事件类型，值为[{{'trigger':'', 'arguments':{{论元角色: 论元}}}}]形式的列表，不存在的事件返回空列表，不存在的论元返回NAN。事件列表={s_schema}。",
        "en": "From the given input, extract the possible events for the event list {s_schema}. Answer with a JSON string "
              "whose keys are the event types and whose values are lists of {{'trigger':'', 'arguments':{{role: "
              "argument}}}}; return an empty list for an event that does not occur and NAN for a missing argument.",
    },
    "EET": {
        "zh": "我希望你根据事件类型列表从给定的输入中抽取可能的事件触发词，并以JSON字符串的格式回答，键为事件类型，值为触发词列表，不存在的事件返回空列表。事件类型列表={s_schema}。",
        "en": "From the given input, extract the possible event trigger words for the event types {s_schema}. Answer with "
              "a JSON string whose keys are the event types and whose values are lists of trigger words; return an "
              "empty list for an event type that does not occur.",
    },
    "EEA": {
        "zh": "我希望你根据事件列表从给定的输入中抽取事件论元及论元角色，并以JSON字符串的格式回答，键为事件类型，值为[{{论元角色: 论元}}]形式的列表，不存在的论元返回NAN。事件列表={s_schema}。",
        "en": "From the given input, extract the event arguments and their roles for the event list {s_schema}. Answer "
              "with a JSON string whose keys are the event types and whose values are lists of {{role: argument}}; "
              "return NAN for a missing argument.",
    },
    "KG": {
        "zh": "我希望你根据实体类型及其属性列表从给定的输入中抽取实体实例及其属性，并以JSON字符串的格式回答，形式为{{实体类型: {{实体名称: {{属性: 属性值}}}}}}，不存在的属性不输出，属性存在多值就返回列表。实体类型及属性={s_schema}。",
        "en": "From the given input, extract the entity instances and their attributes for the entity types and "
              "attributes {s_schema}. Answer with a JSON string of the form {{entity type: {{entity name: {{attribute: "
              "value}}}}}}; leave out attributes that do not occur and give a list for an attribute with several values.",
    },
}


def form_for(template: Template) -> str:
    """Which prompt form a loaded model's template implies."""
    if template.name == "oneke":
        return "oneke"
    if template.name in ("alpaca", "raw"):
        return "alpaca"
    return "chat"


def oneke_instruction(task: str, lang: str, group: Schema, text: str) -> str:
    """OneKE's instruction JSON string for one schema group, exactly as its model card builds it."""
    spec = get_task(task)
    return json.dumps({"instruction": spec.instruction[lang], "schema": group, "input": text}, ensure_ascii=False)


def _schema_text(group: Schema) -> str:
    if isinstance(group, list) and all(isinstance(x, str) for x in group):
        return str(group)  # KnowLM writes label lists as Python lists: ['地点', '人名']
    return json.dumps(group, ensure_ascii=False)


def alpaca_instruction(task: str, lang: str, group: Schema) -> str:
    """The KnowLM-13B-IE instruction for one schema group."""
    spec = get_task(task)
    return _ALPACA[spec.name][lang].format(s_schema=_schema_text(group))


def build_prompt(form: str, task: str, lang: str, group: Schema, text: str, template: Template | None = None) -> str:
    """The full prompt string for one chunk of text and one schema group."""
    if form == "oneke":
        return oneke_prompt(oneke_instruction(task, lang, group, text))
    if form == "alpaca":
        return alpaca_prompt(alpaca_instruction(task, lang, group), text)
    if form == "chat":
        if template is None:
            raise ValueError("the chat form needs the model's template")
        return template.render([{"role": "user", "content": oneke_instruction(task, lang, group, text)}])
    raise ValueError(f"unknown prompt form {form!r}")
