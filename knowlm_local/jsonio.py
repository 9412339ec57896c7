"""Reading JSON and JSON Lines files that users hand us, with one error per problem and where it is.

Every JSON file a command reads (config.json, tokenizer files, adapter
configs, provenance, saved chats, gold and prediction files, training data)
comes through here, so every one of them reports the same way: the file, the
line and column (or byte) of the problem, and what to do. A file that is
missing, a folder, not UTF-8, nested too deep for Python's parser, or of the
wrong top-level type is one :class:`KnowLMError`, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a string"}


def describe(value: Any) -> str:
    """``value``'s JSON kind in words, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    if value is None:
        return "null"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def decode_utf8(raw: bytes, where: str, hint: str = "re-encode it as UTF-8") -> str:
    """``raw`` as text; a non-UTF-8 byte is reported with its line and byte offset."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KnowLMError(f"{where} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} "
                          f"(byte offset {exc.start})", hint) from None


def loads(text: str, where: str, hint: str) -> Any:
    """``json.loads`` whose failures name the place (line/column) and never escape as Python errors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnowLMError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                          hint) from None
    except RecursionError:
        raise KnowLMError(f"{where} nests JSON too deeply to read", hint) from None


def read_bytes(path: Path, what: str, hint: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KnowLMError(f"no such {what}: {path}", "check the path") from None
    except IsADirectoryError:
        raise KnowLMError(f"{path} is a folder, not a {what}", hint) from None
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None


def read_json(path: Path, what: str = "JSON file", expect: type | None = dict,
              hint: str = "the file is damaged: download or write it again") -> Any:
    """The parsed content of a JSON file, checked to be ``expect`` (a dict unless told otherwise)."""
    path = Path(path)
    text = decode_utf8(read_bytes(path, what, hint), str(path), hint)
    if not text.strip():
        raise KnowLMError(f"{path} is empty", hint)
    value = loads(text, str(path), hint)
    if expect is not None and not isinstance(value, expect):
        raise KnowLMError(f"{path} holds {describe(value)}, not {_TYPE_NAMES.get(expect, expect.__name__)}", hint)
    return value


def iter_jsonl(path: Path, what: str, hint: str = "each line must be one JSON object",
               skip_bad: bool = False, problems: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file, read as bytes.

    With ``skip_bad`` a line that is not UTF-8, not JSON or not an object is
    skipped and described in ``problems`` (file and line) instead of stopping
    the run: big training corpora always hold a few broken lines.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise KnowLMError(f"no such {what} file: {path}", "check the path") from None
    except IsADirectoryError:
        raise KnowLMError(f"{path} is a folder, not a {what} file", hint) from None
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
    with fh:
        head = fh.read(8192)
        if b"\x00" in head:
            raise KnowLMError(f"{path} looks like a binary file, not JSON Lines", hint)
        fh.seek(0)
        offset = 0
        for line_no, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise KnowLMError(f"{path} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line_no} "
                                      f"(byte offset {start + exc.start})", "re-encode it as UTF-8") from None
                obj = loads(text, f"line {line_no} of {path}", hint)
                if not isinstance(obj, dict):
                    raise KnowLMError(f"line {line_no} of {path} holds {describe(obj)}, not a JSON object", hint)
            except KnowLMError as exc:
                if not skip_bad:
                    raise
                if problems is not None:
                    problems.append(exc.message)
                continue
            yield line_no, obj
