"""Instruction records in and out: seed tasks, documents, Alpaca JSON Lines, and outputs that are never half-written.

Records are Alpaca dicts ``{"id", "instruction", "input", "output", "origin", ...}``; ``finetune`` reads them as
Alpaca records (it looks at ``instruction``, ``input`` and ``output`` and ignores the rest; a record never carries
``task`` or ``messages``, which would make it an IE or chat record there).

Seed and input files are JSON Lines of Alpaca records, or of self-instruct's seed tasks
(``{"instruction", "instances": [{"input", "output"}, ...]}``: the first instance is used). A file that is not
JSON Lines, or a line without an instruction, is refused with its file and line.

Outputs: :func:`check_output` refuses an existing output without ``force`` (or ``resume``), before any model is
loaded. Short jobs write through :func:`write_jsonl` (a temporary file renamed into place). Long jobs write
through :class:`JobOutput`: each record is appended and flushed to ``OUTPUT.partial`` as it is made, and the
partial file is renamed to ``OUTPUT`` when the job ends; ``resume`` continues from the complete lines of the
partial file (or of a finished output, to extend it), so an interrupted run loses at most the record in flight.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import atomic_path, write_error
from knowlm_local.jsonio import describe, iter_jsonl

ALPACA_HINT = 'each line must be one JSON object such as {"instruction": "...", "input": "", "output": "..."}'


@dataclass
class Item:
    """One input record, normalized: where it came from (file:line) and its Alpaca fields."""

    id: str
    instruction: str
    input: str
    output: str
    where: str
    extra: dict[str, Any]
    raw: dict[str, Any]

    def alpaca(self) -> dict[str, Any]:
        """The record as it was read when it is Alpaca-shaped already, else rebuilt in Alpaca shape."""
        if "instances" not in self.raw:
            return self.raw
        return {"id": self.id, "instruction": self.instruction, "input": self.input, "output": self.output,
                **self.extra}


def _text(obj: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise KnowLMError(f"{where}: \"{key}\" is {describe(value) if value is not None else 'missing'}, "
                          f"not a{' non-empty' if required else ''} string", ALPACA_HINT)
    return value.strip()


def _starts_with_array(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False  # iter_jsonl says what is wrong with the path
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def read_items(path: str | Path, what: str = "seed") -> list[Item]:
    """The records of an Alpaca (or self-instruct seed task) JSON Lines file; refuses a file that is not one."""
    path = Path(path)
    if _starts_with_array(path):
        raise KnowLMError(f"{path} holds one JSON array, not JSON Lines",
                          f"write one record per line: jq -c '.[]' {path.name} > {path.stem}.jsonl")
    items: list[Item] = []
    for line_no, obj in iter_jsonl(path, what, hint=ALPACA_HINT):
        where = f"{path}:{line_no}"
        instances = obj.get("instances")
        if isinstance(instances, list) and instances and isinstance(instances[0], dict):
            inst = instances[0]
        elif instances is not None and "output" not in obj:
            raise KnowLMError(f"{where}: \"instances\" is not a list of {{\"input\", \"output\"}} objects", ALPACA_HINT)
        else:
            inst = obj
        rid = obj.get("id")
        rid = str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else f"{path.stem}-{line_no}"
        extra = {k: v for k, v in obj.items() if k not in ("id", "instruction", "input", "output", "instances")}
        items.append(Item(rid, _text(obj, "instruction", where, required=True), _text(inst, "input", where),
                          _text(inst, "output", where), where, extra, obj))
    if not items:
        raise KnowLMError(f"{path} holds no records", ALPACA_HINT)
    return items


def read_documents(path: str | Path, split: str = "para", field: str = "text") -> list[tuple[str, str]]:
    """``(id, text)`` of each document: ``.jsonl`` records' ``field``, or text split by blank lines or lines."""
    path = Path(path)
    if split not in ("para", "line"):
        raise KnowLMError(f"unknown --split {split!r}", "choose para (blank-line separated) or line")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        docs = []
        for line_no, obj in iter_jsonl(path, "document", hint=f'each line must be a JSON object with a "{field}"'):
            text = obj.get(field)
            if not isinstance(text, str):
                raise KnowLMError(f"{path}:{line_no}: \"{field}\" is {describe(text) if text is not None else 'missing'}"
                                  ", not a string", f"give each line a \"{field}\" string (or choose --text-field)")
            rid = obj.get("id")
            docs.append((str(rid) if isinstance(rid, (str, int)) else f"{path.stem}-{line_no}", text.strip()))
        return [d for d in docs if d[1]]
    from knowlm_local.jsonio import decode_utf8, read_bytes

    text = decode_utf8(read_bytes(path, "document file", "pass a .txt or .jsonl file"), str(path))
    if "\x00" in text[:8192]:
        raise KnowLMError(f"{path} looks like a binary file", "pass a UTF-8 .txt or .jsonl file")
    text = text.replace("\r\n", "\n")
    parts = text.split("\n\n") if split == "para" else text.split("\n")
    docs = [(f"{path.stem}-{i}", " ".join(p.split()) if split == "para" else p.strip())
            for i, p in enumerate(parts, start=1)]
    return [d for d in docs if d[1]]


def record(rid: str, instruction: str, input_text: str, output: str, origin: str, **extra: Any) -> dict[str, Any]:
    """An output record in Alpaca shape."""
    return {"id": rid, "instruction": instruction, "input": input_text, "output": output, "origin": origin, **extra}


def dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


# -- outputs ---------------------------------------------------------------------------------------------

def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def check_output(output: str | Path, force: bool, resume: bool = False, inputs: Iterable[str | Path] = (),
                 resumable: bool = True) -> Path:
    """The output path, checked before any work: not an input, not existing unless ``force`` / ``resume``."""
    out = Path(output)
    if resume and force:
        raise KnowLMError("--resume and --force contradict each other", "keep one: continue the output or overwrite it")
    if out.is_dir():
        raise KnowLMError(f"{out} is a folder", "give -o a file name such as out.jsonl")
    for p in inputs:
        if Path(p).exists() and Path(p).resolve() == out.resolve():
            raise KnowLMError(f"the output {out} is also an input", "write to another file")
    if not resume and not force and out.exists():
        raise KnowLMError(f"{out} already exists",
                          "pass --force to overwrite it" + (", or --resume to continue it" if resumable else ""))
    if not resume and not force and partial_path(out).exists():
        raise KnowLMError(f"an interrupted run left {partial_path(out)}",
                          "pass --resume to continue it, or --force to start over")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out) from None
    if not os.access(out.parent, os.W_OK):
        raise KnowLMError(f"cannot write {out}: permission denied", "choose a folder you can write to with -o")
    return out


def write_jsonl(output: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` to ``output`` through a temporary file; returns how many were written."""
    n = 0
    with atomic_path(output) as tmp:
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                for rec in records:
                    fh.write(dumps(rec))
                    n += 1
        except OSError as exc:
            raise write_error(exc, output) from None
    return n


def _complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of the complete lines of ``path`` (a last line cut by a kill is left out)."""
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    for line in raw[:end].decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


class JobOutput:
    """A long job's output: records appended to ``OUTPUT.partial``, renamed to ``OUTPUT`` by :meth:`finish`."""

    def __init__(self, output: Path, resume: bool) -> None:
        self.output = output
        self.partial = partial_path(output)
        self.done: list[dict[str, Any]] = []
        if resume and self.partial.exists():
            self.done = list(_complete_lines(self.partial))
        elif resume and output.exists():
            self.done = list(_complete_lines(output))
        try:
            self._fh = open(self.partial, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (open across calls)
            for rec in self.done:
                self._fh.write(dumps(rec))
            self._fh.flush()
        except OSError as exc:
            raise write_error(exc, output) from None

    def write(self, rec: dict[str, Any]) -> None:
        try:
            self._fh.write(dumps(rec))
            self._fh.flush()
        except OSError as exc:
            raise write_error(exc, self.output) from None
        self.done.append(rec)

    def finish(self) -> None:
        """Close the partial file and rename it to the output."""
        self._fh.close()
        try:
            os.replace(self.partial, self.output)
        except OSError as exc:
            raise write_error(exc, self.output) from None

    @contextlib.contextmanager
    def guard(self, progress: Callable[[], str]) -> Iterator[None]:
        """Finish the job when the block ends; on Ctrl-C or an error keep the partial file for ``--resume``.

        ``progress()`` says how far the run got ("12 documents"), for the message on Ctrl-C.
        """
        try:
            yield
        except KeyboardInterrupt:
            self.close()
            raise KnowLMError(f"interrupted after {progress()} (kept in {self.partial})",
                              "run the same command with --resume to continue where it stopped") from None
        except BaseException:
            self.close()
            raise
        self.finish()

    def close(self) -> None:
        """Close without finishing (an interrupted or failed run): the partial file stays for ``--resume``."""
        if not self._fh.closed:
            self._fh.close()
