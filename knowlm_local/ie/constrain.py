"""The JSON schema of one answer, for constrained decoding (llama.cpp turns it into a grammar).

The shapes are the ones OneKE was trained to write (IEPile ``output`` fields):

* NER ``{"person": ["..."], ...}``; EET ``{"event type": ["trigger", ...]}``;
* RE / SPO ``{"relation": [{"subject": "...", "object": "..."}]}``;
* EE ``{"event type": [{"trigger": "...", "arguments": {"role": "..." | ["..."]}}]}``
  (every role present, ``"NAN"`` when absent, as in IEPile's data);
* EEA ``{"event type": [{"role": "..." | ["..."]}]}``;
* KG ``{"entity type": {"entity name": {"attribute": "..." | ["..."]}}}``
  (absent attributes are left out, so none is required).

Every label of the group is required and ``additionalProperties`` is false,
so keys come out in the schema's order and nothing outside the schema can be
written. Lists and strings are bounded so that a small model cannot loop
forever inside one value; the answer budget (``max_tokens``) still applies.
"""

from __future__ import annotations

from typing import Any

from knowlm_local.ie.tasks import Schema, get_task, group_labels

MAX_ITEMS = 24  # values per label in one chunk's answer
MAX_CHARS = 160  # characters in one extracted string

_STR: dict[str, Any] = {"type": "string", "maxLength": MAX_CHARS}


def _obj(props: dict[str, Any], required: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(props)
    return out


def answer_schema(task: str, group: Schema, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    """The JSON schema an answer to ``group`` must match (lists of at most ``max_items`` values)."""
    spec = get_task(task)
    labels = group_labels(spec.name, group)
    _STRS = {"type": "array", "items": _STR, "maxItems": max_items}  # noqa: N806
    _ONE_OR_MANY = {"anyOf": [_STR, _STRS]}  # noqa: N806

    def _many(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": item, "maxItems": max_items}

    props: dict[str, Any] = {}
    for label, roles in labels.items():
        if spec.name in ("NER", "EET"):
            props[label] = _STRS
        elif spec.name in ("RE", "SPO"):
            props[label] = _many(_obj({"subject": _STR, "object": _STR}))
        elif spec.name == "EE":
            props[label] = _many(_obj({"trigger": _STR, "arguments": _obj({r: _ONE_OR_MANY for r in roles})}))
        elif spec.name == "EEA":
            props[label] = _many(_obj({r: _ONE_OR_MANY for r in roles}))
        else:  # KG
            props[label] = {"type": "object",
                            "additionalProperties": _obj({a: _ONE_OR_MANY for a in roles}, required=False)}
    return _obj(props)
