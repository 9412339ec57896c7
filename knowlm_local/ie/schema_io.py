"""Reading a schema from the command line (``--schema``) or a file (``--schema-file``).

A typo in a 200-line YAML schema should cost the user seconds, so a file that
does not parse is reported with its line and column, and a schema that parses
but has the wrong shape for the task names the offending item (see
:func:`knowlm_local.ie.tasks.validate_schema`).

Command-line forms, for quick runs without a file:

* NER, RE, EET: ``"person,location"`` (commas, ``，`` or ``、`` separate labels);
* EE, EEA: ``"acquisition: acquirer|acquired|time; layoff: company|time"``;
* KG: ``"person: date of birth|occupation"``;
* SPO: ``"company/founder/person, person/place of birth/location"``;
* any task: inline JSON (text starting with ``[`` or ``{``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.tasks import SHAPE_HELP, Schema, get_task, validate_schema

_LABEL_SEP = re.compile(r"[,，、]")


def _split(text: str, sep: re.Pattern[str] | str) -> list[str]:
    parts = sep.split(text) if isinstance(sep, re.Pattern) else text.split(sep)
    return [p.strip() for p in parts if p.strip()]


def parse_schema_text(task: str, text: str) -> Schema:
    """The ``--schema`` option's value as a checked schema."""
    spec = get_task(task)
    text = text.strip()
    if text[:1] in "[{":
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KnowLMError(f"--schema is not valid JSON: {exc.msg} at column {exc.colno}",
                              f"{spec.name} schema: {SHAPE_HELP[spec.item]}") from None
        except RecursionError:
            raise KnowLMError("--schema nests JSON too deeply", f"{spec.name} schema: {SHAPE_HELP[spec.item]}") from None
        return validate_schema(spec.name, value)
    if spec.item == "label":
        return validate_schema(spec.name, _split(text, _LABEL_SEP))
    if spec.item == "spo":
        items = []
        for part in _split(text, _LABEL_SEP):
            pieces = [p.strip() for p in part.split("/")]
            if len(pieces) != 3 or not all(pieces):
                raise KnowLMError(f"--schema item {part!r} is not subject_type/predicate/object_type",
                                  'example: --schema "company/founder/person"')
            items.append(dict(zip(("subject_type", "predicate", "object_type"), pieces, strict=True)))
        return validate_schema(spec.name, items)
    items = []
    for part in _split(text, re.compile(r"[;；]")):
        name, colon, rest = part.partition(":") if ":" in part else part.partition("：")
        roles = _split(rest, re.compile(r"[|,，、]"))
        if not colon or not name.strip() or not roles:
            example = "person: date of birth|occupation" if spec.item == "entity" else "acquisition: acquirer|acquired"
            raise KnowLMError(f"--schema item {part!r} is not TYPE: name|name|...", f'example: --schema "{example}"')
        if spec.item == "entity":
            items.append({"entity_type": name.strip(), "attribute": roles})
        elif spec.item == "event":
            items.append({"event_type": name.strip(), "trigger": True, "arguments": roles})
        else:
            items.append({"event_type": name.strip(), "arguments": roles})
    return validate_schema(spec.name, items)


def _json_error(path: Path, exc: json.JSONDecodeError) -> KnowLMError:
    return KnowLMError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                       "fix the file there (a JSON or YAML list of labels or schema objects)")


def _yaml_error(path: Path, exc: Exception) -> KnowLMError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return KnowLMError(f"{path} is not valid YAML: {problem}{where}",
                       "fix the file there (a JSON or YAML list of labels or schema objects)")


def _load_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise KnowLMError("reading YAML schema files needs PyYAML",
                          "pip install pyyaml, or write the schema as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    except RecursionError:
        raise KnowLMError(f"{path} nests YAML too deeply to read",
                          "a schema is a flat list of labels or schema objects") from None


def load_schema_file(task: str, path: str | Path) -> Schema:
    """A schema from a ``.json`` / ``.yaml`` / ``.yml`` file (others: JSON first, then YAML).

    The file holds the schema itself, or an object ``{"schema": ...}`` (an
    optional ``"task"`` there must agree with ``--task``).
    """
    spec = get_task(task)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KnowLMError(f"no such schema file: {path}", "check the path given to --schema-file") from None
    except IsADirectoryError:
        raise KnowLMError(f"{path} is a folder, not a schema file", "pass a .json or .yaml file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnowLMError(f"{path} is not UTF-8 text (byte {exc.start})", "save the schema file as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        value = _load_yaml(path, text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if suffix == ".json" or text.lstrip()[:1] in "[{":
                raise _json_error(path, exc) from None
            value = _load_yaml(path, text)
        except RecursionError:
            raise KnowLMError(f"{path} nests JSON too deeply to read",
                              "a schema is a flat list of labels or schema objects") from None
    if value is None:
        raise KnowLMError(f"{path} is empty", f"{spec.name} schema: {SHAPE_HELP[spec.item]}")
    if isinstance(value, dict) and "schema" in value and set(value) <= {"schema", "task"}:
        named = value.get("task")
        if named is not None and get_task(named).name != spec.name:
            raise KnowLMError(f"{path} is a schema for {get_task(named).name}, not {spec.name}",
                              f"run with --task {get_task(named).name.lower()} or use another schema file")
        value = value["schema"]
    return validate_schema(spec.name, value)
