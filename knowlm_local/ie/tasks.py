"""The seven extraction tasks in OneKE/IEPile's format: instructions, schema shapes, defaults, groups.

OneKE was trained on instructions produced by IEPile's converter, so the
instruction texts below are the published ones character for character
(OneKE model card ``instruction_mapper``; the SPO texts come from IEPile's
``ie2instruction/convert/utils/instruction.py``). Long label lists are asked
in groups of ``split_num`` labels ("schema-based polling"), as OneKE was
trained, and the answers are merged afterwards.

Schema shapes (what a user may pass, as JSON/YAML or on the command line):

* NER, RE, EET: a list of label strings, or a dict ``label -> description``;
* EE: a list of ``{"event_type", "trigger": true, "arguments": [roles]}``;
* EEA: a list of ``{"event_type", "arguments": [roles]}`` (an optional
  ``"trigger"``, as IEPile writes it, is passed through);
* KG: a list of ``{"entity_type", "attribute": [names]}`` (IEPile's key; the
  model card's ``"attributes"`` is accepted too);
* SPO: a list of ``{"subject_type", "predicate", "object_type"}``.

EE and EEA also accept OneKE's description form (a dict keyed by event type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knowlm_local.errors import KnowLMError

Schema = list[Any] | dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    split_num: int
    instruction: dict[str, str]  # language -> OneKE instruction text
    default_schema: dict[str, Schema]  # language -> schema used when none is given
    item: str  # "label", "event", "event_args", "entity", "spo": the shape of one schema item
    dict_ok: bool  # whether the label -> description form is accepted


TASKS: dict[str, TaskSpec] = {
    "NER": TaskSpec(
        "NER", 6,
        {
            "zh": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in named entity recognition. Please extract entities that match the schema definition "
                  "from the input. Return an empty list if the entity type does not exist. Please respond in the format of "
                  "a JSON string.",
        },
        {"zh": ["人物", "地理位置", "组织机构"], "en": ["person", "location", "organization"]},
        "label", True,
    ),
    "RE": TaskSpec(
        "RE", 4,
        {
            "zh": "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in relationship extraction. Please extract relationship triples that match the schema "
                  "definition from the input. Return an empty list for relationships that do not exist. Please respond in "
                  "the format of a JSON string.",
        },
        {"zh": ["创始人", "出生地点", "总部地点", "所属组织"], "en": ["founder", "place of birth", "headquarters location", "employer"]},
        "label", True,
    ),
    "SPO": TaskSpec(
        "SPO", 4,
        {
            "zh": "你是专门进行SPO三元组抽取的专家。请从input中抽取出符合schema定义的spo关系三元组，不存在的关系返回空列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in spo(subject, predicate, object) triples extraction. Please extract SPO relationship "
                  "triples that match the schema definition from the input. Return an empty list for relationships that do "
                  "not exist. Please respond in the format of a JSON string.",
        },
        {
            "zh": [
                {"subject_type": "企业", "predicate": "创始人", "object_type": "人物"},
                {"subject_type": "人物", "predicate": "出生地点", "object_type": "地点"},
                {"subject_type": "企业", "predicate": "总部地点", "object_type": "地点"},
            ],
            "en": [
                {"subject_type": "company", "predicate": "founder", "object_type": "person"},
                {"subject_type": "person", "predicate": "place of birth", "object_type": "location"},
                {"subject_type": "company", "predicate": "headquarters location", "object_type": "location"},
            ],
        },
        "spo", False,
    ),
    "EE": TaskSpec(
        "EE", 4,
        {
            "zh": "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in event extraction. Please extract events from the input that conform to the schema "
                  "definition. Return an empty list for events that do not exist, and return NAN for arguments that do not "
                  "exist. If an argument has multiple values, please return a list. Respond in the format of a JSON string.",
        },
        {
            "zh": [
                {"event_type": "收购", "trigger": True, "arguments": ["收购方", "被收购方", "时间"]},
                {"event_type": "任职", "trigger": True, "arguments": ["人物", "职位", "组织", "时间"]},
                {"event_type": "裁员", "trigger": True, "arguments": ["裁员方", "裁员人数", "时间"]},
            ],
            "en": [
                {"event_type": "acquisition", "trigger": True, "arguments": ["acquirer", "acquired", "time"]},
                {"event_type": "appointment", "trigger": True, "arguments": ["person", "position", "organization", "time"]},
                {"event_type": "layoff", "trigger": True, "arguments": ["company", "number of employees", "time"]},
            ],
        },
        "event", True,
    ),
    "EET": TaskSpec(
        "EET", 4,
        {
            "zh": "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件类型及事件触发词，不存在的事件返回空列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in event extraction. Please extract event types and event trigger words from the input "
                  "that conform to the schema definition. Return an empty list for non-existent events. Please respond in "
                  "the format of a JSON string.",
        },
        {"zh": ["收购", "任职", "裁员", "袭击"], "en": ["acquisition", "appointment", "layoff", "attack"]},
        "label", True,
    ),
    "EEA": TaskSpec(
        "EEA", 4,
        {
            "zh": "你是专门进行事件论元提取的专家。请从input中抽取出符合schema定义的事件论元及论元角色，不存在的论元返回NAN或空字典，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
            "en": "You are an expert in event argument extraction. Please extract event arguments and their roles from the "
                  "input that conform to the schema definition, which already includes event trigger words. If an argument "
                  "does not exist, return NAN or an empty dictionary. Please respond in the format of a JSON string.",
        },
        {
            "zh": [
                {"event_type": "收购", "arguments": ["收购方", "被收购方", "时间"]},
                {"event_type": "任职", "arguments": ["人物", "职位", "组织", "时间"]},
            ],
            "en": [
                {"event_type": "acquisition", "arguments": ["acquirer", "acquired", "time"]},
                {"event_type": "appointment", "arguments": ["person", "position", "organization", "time"]},
            ],
        },
        "event_args", True,
    ),
    "KG": TaskSpec(
        "KG", 1,
        {
            "zh": "你是一个图谱实体知识结构化专家。根据输入实体类型(entity type)的schema描述，从文本中抽取出相应的实体实例和其属性信息，不存在的属性不输出, 属性存在多值就返回列表，并输出为可解析的json格式。",
            "en": "You are an expert in structured knowledge systems for graph entities. Based on the schema description of "
                  "the input entity type, you extract the corresponding entity instances and their attribute information "
                  "from the text. Attributes that do not exist should not be output. If an attribute has multiple values, "
                  "a list should be returned. The results should be output in a parsable JSON format.",
        },
        {
            "zh": [{"entity_type": "人物", "attribute": ["出生日期", "出生地点", "职业", "别名", "国籍"]}],
            "en": [{"entity_type": "person", "attribute": ["date of birth", "place of birth", "occupation", "alias",
                                                           "nationality"]}],
        },
        "entity", False,
    ),
}

SHAPE_HELP = {
    "label": 'a list of label strings, e.g. ["person", "location"], or {"label": "description"}',
    "event": 'a list of {"event_type": "...", "trigger": true, "arguments": ["role", ...]}',
    "event_args": 'a list of {"event_type": "...", "arguments": ["role", ...]}',
    "entity": 'a list of {"entity_type": "...", "attribute": ["name", ...]}',
    "spo": 'a list of {"subject_type": "...", "predicate": "...", "object_type": "..."}',
}


# Which strings of an answer are copied from the text (spans), by their path in the answer JSON.
# A path is the keys from the top (``*`` = any label, role or name) with ``[]`` for a list item and
# ``{key}`` for an object key itself; KG writes the entity name as a key. "span" must be a substring of the
# text, "span|NAN" may also be OneKE's absent marker. Everything else (labels, roles, "subject", "trigger",
# ...) is fixed by the schema's grammar. The copy constraint (knowlm_local.ie.copy) reads only this table.
ABSENT_WORD = "NAN"
SPAN_PATHS: dict[str, dict[tuple[str, ...], str]] = {
    "NER": {("*", "[]"): "span"},
    "EET": {("*", "[]"): "span"},
    "RE": {("*", "[]", "subject"): "span", ("*", "[]", "object"): "span"},
    "SPO": {("*", "[]", "subject"): "span", ("*", "[]", "object"): "span"},
    "EE": {("*", "[]", "trigger"): "span|NAN", ("*", "[]", "arguments", "*"): "span|NAN",
           ("*", "[]", "arguments", "*", "[]"): "span"},
    "EEA": {("*", "[]", "*"): "span|NAN", ("*", "[]", "*", "[]"): "span"},
    "KG": {("*", "{key}"): "span", ("*", "*", "*"): "span|NAN", ("*", "*", "*", "[]"): "span"},
}


# Tasks whose answer gives each span one label: flat NER annotates a mention with one type (MSRA, Weibo,
# CoNLL, IEPile's NER), so once a span stands under one label, a later label's list that repeats it has run
# out of its own items (small models write the last span again under every following label). The copy
# constraint closes that list there, as it does for a repeat inside one list; ``--multi-label`` turns it off.
ONE_LABEL_TASKS = frozenset({"NER"})


def span_kind(task: str, path: tuple[str, ...]) -> str | None:
    """``"span"``, ``"span|NAN"`` or None (not copied) for the string at ``path`` of an answer to ``task``."""
    for pattern, kind in SPAN_PATHS[get_task(task).name].items():
        if len(pattern) == len(path) and all(p == "*" and q not in ("[]", "{key}") or p == q
                                             for p, q in zip(pattern, path, strict=True)):
            return kind
    return None


def get_task(name: str) -> TaskSpec:
    spec = TASKS.get(str(name).strip().upper())
    if spec is None:
        raise KnowLMError(f"unknown task {name!r}", f"choose one of: {', '.join(TASKS)}")
    return spec


def _strings(value: Any, where: str, task: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowLMError(f"{where} must be a list of non-empty strings for {task}, got {value!r}",
                          f"{task} schema: {SHAPE_HELP[TASKS[task].item]}")
    return [v.strip() for v in value]


def _check_item(spec: TaskSpec, item: Any, i: int) -> Any:
    """One list item of a schema, checked and normalized; an error naming the item otherwise."""
    where = f"schema item {i + 1}"
    hint = f"{spec.name} schema: {SHAPE_HELP[spec.item]}"
    if spec.item == "label":
        if not isinstance(item, str) or not item.strip():
            kind = type(item).__name__ if not isinstance(item, dict) else "an object"
            raise KnowLMError(f"{where} is {kind}; {spec.name} takes label strings, got {item!r}", hint)
        return item.strip()
    if not isinstance(item, dict):
        raise KnowLMError(f"{where} is {item!r}; {spec.name} takes objects, not plain labels", hint)
    allowed = {"event": {"event_type", "trigger", "arguments"}, "event_args": {"event_type", "trigger", "arguments"},
               "entity": {"entity_type", "attribute", "attributes"},
               "spo": {"subject_type", "predicate", "object_type"}}[spec.item]
    unknown = set(item) - allowed
    if unknown:
        raise KnowLMError(f"{where} has keys {sorted(unknown)} that {spec.name} does not allow", hint)
    out = dict(item)
    if spec.item in ("event", "event_args"):
        if not isinstance(item.get("event_type"), str) or not item["event_type"].strip():
            raise KnowLMError(f"{where} needs an \"event_type\" string", hint)
        out["arguments"] = _strings(item.get("arguments", []), f"{where} \"arguments\"", spec.name)
        if spec.item == "event":
            trig = item.get("trigger", True)
            if not isinstance(trig, bool):
                raise KnowLMError(f"{where} \"trigger\" must be true or false for EE", hint)
            out = {"event_type": item["event_type"].strip(), "trigger": trig, "arguments": out["arguments"]}
        elif "trigger" in item and not isinstance(item["trigger"], (str, list)):
            raise KnowLMError(f"{where} \"trigger\" must be the trigger word(s) for EEA", hint)
    elif spec.item == "entity":
        if not isinstance(item.get("entity_type"), str) or not item["entity_type"].strip():
            raise KnowLMError(f"{where} needs an \"entity_type\" string", hint)
        if "attribute" in item and "attributes" in item:
            raise KnowLMError(f"{where} has both \"attribute\" and \"attributes\"", "keep one of them")
        key = "attributes" if "attributes" in item else "attribute"
        out[key] = _strings(item.get(key, []), f"{where} \"{key}\"", spec.name)
        if not out[key]:
            raise KnowLMError(f"{where} lists no attributes", hint)
    else:
        for key in ("subject_type", "predicate", "object_type"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise KnowLMError(f"{where} needs a \"{key}\" string", hint)
    return out


def validate_schema(task: str, schema: Any) -> Schema:
    """The schema checked against what ``task`` allows, lightly normalized (labels stripped, EE trigger filled)."""
    spec = get_task(task)
    hint = f"{spec.name} schema: {SHAPE_HELP[spec.item]}"
    if isinstance(schema, dict):
        if not spec.dict_ok:
            raise KnowLMError(f"{spec.name} takes a list schema, not a label -> description mapping", hint)
        if not schema:
            raise KnowLMError("the schema is empty", hint)
        for label, desc in schema.items():
            if spec.item == "label" and not isinstance(desc, str):
                raise KnowLMError(f"the description of {label!r} must be a string", hint)
            if spec.item in ("event", "event_args") and not isinstance(desc, dict):
                raise KnowLMError(f"event type {label!r} must map to an object with \"arguments\"", hint)
        return dict(schema)
    if not isinstance(schema, list) or not schema:
        raise KnowLMError(f"the schema must be a non-empty list, got {type(schema).__name__}", hint)
    items = [_check_item(spec, item, i) for i, item in enumerate(schema)]
    if spec.item == "label":
        items = list(dict.fromkeys(items))  # repeated labels would only repeat the question
    return items


def split_groups(task: str, schema: Schema) -> list[Schema]:
    """Schema groups of at most ``split_num`` items, one prompt each (a description dict is never split)."""
    spec = get_task(task)
    if isinstance(schema, dict):
        return [schema]
    n = spec.split_num
    return [schema[i:i + n] for i in range(0, len(schema), n)]


def group_labels(task: str, group: Schema) -> dict[str, list[str]]:
    """Output keys of a group (the labels the answer is keyed by), each with its roles/attributes (may be empty)."""
    spec = get_task(task)
    out: dict[str, list[str]] = {}
    if isinstance(group, dict):
        for label, desc in group.items():
            args = desc.get("arguments", []) if isinstance(desc, dict) else []
            out[label] = list(args.keys()) if isinstance(args, dict) else list(args)
        return out
    for item in group:
        if spec.item == "label":
            out[item] = []
        elif spec.item in ("event", "event_args"):
            roles = out.setdefault(item["event_type"], [])
            roles += [a for a in item["arguments"] if a not in roles]
        elif spec.item == "entity":
            out[item["entity_type"]] = list(item.get("attribute") or item.get("attributes") or [])
        else:
            out[item["predicate"]] = []
    return out
