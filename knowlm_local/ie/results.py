"""Answers in one canonical shape: checked against the schema group, merged across chunks and groups.

A document becomes several prompts (chunks x schema groups); each answer is
normalized to the task's shape (see :mod:`knowlm_local.ie.constrain`), values
outside the asked labels are dropped with a note, and the answers are merged
into one result keyed by every label of the schema, in schema order, without
duplicates. The same walk over a result feeds the span finder and the scorer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

ABSENT = {"", "NAN", "NaN", "nan", "N/A", "None", "null"}


def _text(value: Any) -> str | None:
    """A usable extracted string, or None for absent markers and non-strings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return None if value in ABSENT else value


def values_of(value: Any) -> list[str]:
    """A role/attribute value (a string or a list of strings) as a list of usable strings."""
    items = value if isinstance(value, list) else [value]
    return [t for t in (_text(v) for v in items) if t is not None]


def _role_value(value: Any) -> Any:
    """Keep the answer's form (one string, a list, or NAN) but drop junk inside lists."""
    if isinstance(value, list):
        vals = values_of(value)
        return vals if vals else "NAN"
    text = _text(value)
    return text if text is not None else "NAN"


def empty_result(task: str, labels: dict[str, list[str]]) -> dict[str, Any]:
    return {label: ({} if task == "KG" else []) for label in labels}


def normalize(task: str, labels: dict[str, list[str]], answer: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One parsed answer as ``{label: values}`` for exactly ``labels``; notes say what was dropped."""
    notes: list[str] = []
    extra = [k for k in answer if k not in labels]
    if extra:
        notes.append(f"dropped labels outside the schema: {extra[:5]}")
    out = empty_result(task, labels)
    dropped = 0
    for label, roles in labels.items():
        value = answer.get(label)
        if value is None:
            continue
        if task == "KG":
            if not isinstance(value, dict):
                dropped += 1
                continue
            for name, attrs in value.items():
                name = _text(name)
                if name is None or not isinstance(attrs, dict):
                    dropped += 1
                    continue
                kept = {a: _role_value(v) for a, v in attrs.items() if a in roles and values_of(v)}
                dropped += len(attrs) - len(kept)
                out[label][name] = kept
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            norm = _item(task, item, roles)
            if norm is None:
                absent_marker = isinstance(item, str) and item.strip() in ABSENT
                dropped += 0 if absent_marker else 1
            else:
                out[label].append(norm)
    if dropped:
        notes.append(f"dropped {dropped} value(s) not in the task's shape")
    return out, notes


def _item(task: str, item: Any, roles: list[str]) -> Any:
    if task in ("NER", "EET"):
        return _text(item)
    if not isinstance(item, dict):
        return None
    if task in ("RE", "SPO"):
        subj = _text(item.get("subject", item.get("head")))
        obj = _text(item.get("object", item.get("tail")))
        return {"subject": subj, "object": obj} if subj and obj else None
    if task == "EE":
        args = item.get("arguments", {})
        args = args if isinstance(args, dict) else {}
        trigger = _text(item.get("trigger"))
        norm_args = {r: _role_value(args.get(r)) for r in roles}
        if trigger is None and all(v == "NAN" for v in norm_args.values()):
            return None
        return {"trigger": trigger or "NAN", "arguments": norm_args}
    if task == "EEA":
        norm = {r: _role_value(item.get(r)) for r in roles}
        return None if all(v == "NAN" for v in norm.values()) else norm
    return None


def _key(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def merge_into(task: str, acc: dict[str, Any], part: dict[str, Any]) -> None:
    """Add ``part`` to ``acc`` in place, keeping the first occurrence of each value."""
    for label, values in part.items():
        if task == "KG":
            entities = acc.setdefault(label, {})
            for name, attrs in values.items():
                have = entities.setdefault(name, {})
                for attr, value in attrs.items():
                    if attr not in have:
                        have[attr] = value
                        continue
                    merged = values_of(have[attr]) + [v for v in values_of(value) if v not in values_of(have[attr])]
                    have[attr] = merged[0] if len(merged) == 1 else merged
            continue
        have = acc.setdefault(label, [])
        seen = {_key(v) for v in have}
        for value in values:
            if _key(value) not in seen:
                seen.add(_key(value))
                have.append(value)


def mentions(task: str, result: dict[str, Any]) -> Iterator[tuple[str, str, str | None, str]]:
    """Every extracted string of a result as ``(label, field, role, text)``; absent markers skipped."""
    for label, values in result.items():
        if task == "KG":
            for name, attrs in values.items():
                yield label, "entity", None, name
                for attr, value in attrs.items():
                    for text in values_of(value):
                        yield label, "attribute", attr, text
            continue
        for item in values:
            if task in ("NER", "EET"):
                yield label, "entity" if task == "NER" else "trigger", None, item
            elif task in ("RE", "SPO"):
                yield label, "subject", None, item["subject"]
                yield label, "object", None, item["object"]
            else:
                args = item.get("arguments", {}) if task == "EE" else item
                if task == "EE" and _text(item.get("trigger")):
                    yield label, "trigger", None, item["trigger"]
                for role, value in args.items():
                    for text in values_of(value):
                        yield label, "argument", role, text
