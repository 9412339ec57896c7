"""Input records from .txt, .jsonl or stdin, streamed; the output file, incremental and resumable.

Inputs are read as bytes a line at a time, so a file far larger than memory
is never loaded whole (except in ``doc`` mode, where the file *is* the
record), and a decoding error can name its line and byte offset. A file that
is empty, binary or not UTF-8 is refused before any model is loaded.

The output is JSONL, one line per input record, flushed as soon as the record
is done. ``--resume`` reads back the ids already written (dropping a last
line cut short by a kill) and skips exactly those records, counting repeated
ids, so an interrupted run loses nothing and repeats nothing.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import write_error

SPLITS = ("doc", "para", "line")
DOC_LIMIT = 64 * 1024 * 1024  # one-document mode holds the file in memory: refuse beyond this


@dataclass
class Source:
    """Where records come from: a path or stdin (``-``), how to read it, and how big it is (for the ETA)."""

    name: str
    kind: str  # "jsonl" or "txt"
    split: str  # for txt: "doc", "para" or "line"
    size: int | None  # bytes, None for stdin
    stream: IO[bytes]
    bytes_read: int = 0


def _check_head(name: str, head: bytes) -> None:
    if not head.strip():
        raise KnowLMError(f"{name} is empty", "give a file with text in it (.txt, or .jsonl with a \"text\" field)")
    if b"\x00" in head[:8192]:
        raise KnowLMError(f"{name} looks like a binary file, not text",
                          "extract reads UTF-8 .txt or .jsonl files; convert documents to text first")


def _decode(name: str, raw: bytes, line_no: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KnowLMError(
            f"{name} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line_no} (byte offset {offset + exc.start})",
            f"re-encode it, e.g. iconv -f GB18030 -t UTF-8 {name} > converted.txt",
        ) from None


def open_source(path: str, split: str = "doc", kind: str = "auto", stdin: IO[bytes] | None = None) -> Source:
    """Open ``path`` (``-`` for stdin), sniff its kind and refuse empty, binary and (leading) non-UTF-8 input."""
    if split not in SPLITS:
        raise KnowLMError(f"unknown --split {split!r}", f"choose one of: {', '.join(SPLITS)}")
    if kind not in ("auto", "txt", "jsonl"):
        raise KnowLMError(f"unknown --input-format {kind!r}", "choose auto, txt or jsonl")
    if path == "-":
        stream = stdin or sys.stdin.buffer
        name, size = "stdin", None
    else:
        p = Path(path)
        if p.is_dir():
            raise KnowLMError(f"{path} is a folder", "pass a .txt or .jsonl file, or - for stdin")
        try:
            stream = open(p, "rb")
        except FileNotFoundError:
            raise KnowLMError(f"no such file: {path}", "check the path, or pass - to read stdin") from None
        name, size = str(p), p.stat().st_size
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # type: ignore[arg-type]
    head = stream.peek(65536)[:65536]
    _check_head(name, head)
    try:  # an incremental decoder accepts a character cut at the end of the peeked bytes
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        line = head.count(b"\n", 0, exc.start) + 1
        raise KnowLMError(f"{name} is not UTF-8: byte 0x{head[exc.start]:02x} at line {line} (byte offset {exc.start})",
                          f"re-encode it, e.g. iconv -f GB18030 -t UTF-8 {name} > converted.txt") from None
    if kind == "auto":
        if path != "-" and path.lower().endswith((".jsonl", ".ndjson")):
            kind = "jsonl"
        elif path != "-" and path.lower().endswith(".json"):
            kind = "jsonl" if head.lstrip()[:1] == b"{" else "txt"
        else:
            kind = "jsonl" if path == "-" and head.lstrip()[:1] == b"{" else "txt"
    return Source(name=name, kind=kind, split=split, size=size, stream=stream)


def _lines(src: Source) -> Iterator[tuple[int, str]]:
    for line_no, raw in enumerate(iter(src.stream.readline, b""), start=1):
        offset = src.bytes_read
        src.bytes_read += len(raw)
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        yield line_no, _decode(src.name, raw, line_no, offset)


def _text_of(obj: dict[str, Any]) -> str | None:
    """The text of a JSONL record: ``text``, else ``input``, else the input inside an IEPile ``instruction``."""
    for key in ("text", "input"):
        if isinstance(obj.get(key), str):
            return obj[key]
    instr = obj.get("instruction")
    if isinstance(instr, str):
        try:
            inner = json.loads(instr)
        except (json.JSONDecodeError, RecursionError):
            return None
        if isinstance(inner, dict) and isinstance(inner.get("input"), str):
            return inner["input"]
    return None


def read_records(src: Source) -> Iterator[dict[str, Any]]:
    """Records ``{"id", "text", ...}`` in input order; ids default to the line (or paragraph) number."""
    count = 0
    if src.kind == "jsonl":
        for line_no, line in _lines(src):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KnowLMError(f"line {line_no} of {src.name} is not valid JSON: {exc.msg} (column {exc.colno})",
                                  "fix that line, or read the file as plain text with --input-format txt") from None
            except RecursionError:
                raise KnowLMError(f"line {line_no} of {src.name} nests JSON too deeply to read",
                                  "fix that line, or read the file as plain text with --input-format txt") from None
            if not isinstance(obj, dict) or _text_of(obj) is None:
                raise KnowLMError(f"line {line_no} of {src.name} has no \"text\" string",
                                  'each line must be an object like {"id": "1", "text": "..."}')
            record = dict(obj)
            record["text"] = _text_of(obj)
            record["id"] = str(obj["id"]) if obj.get("id") is not None else str(line_no)
            count += 1
            yield record
    elif src.split == "doc":
        if src.size is not None and src.size > DOC_LIMIT:
            raise KnowLMError(f"{src.name} is {src.size // 2**20} MB, too large to read as one document",
                              "use --split para (blank-line separated) or --split line to stream it")
        text = "".join(line for _, line in _lines(src))
        if text.strip():
            count += 1
            yield {"id": "1", "text": text}
    else:
        para: list[str] = []
        for _, line in _lines(src):
            if src.split == "line":
                if line.strip():
                    count += 1
                    yield {"id": str(count), "text": line.rstrip("\r\n")}
            elif line.strip():
                para.append(line)
            elif para:
                count += 1
                yield {"id": str(count), "text": "".join(para).rstrip("\r\n")}
                para = []
        if para:
            count += 1
            yield {"id": str(count), "text": "".join(para).rstrip("\r\n")}
    if count == 0:
        raise KnowLMError(f"no records in {src.name}", "the input holds only blank lines")


def done_ids(path: Path) -> Counter[str]:
    """Ids already in an output file; a partial last line (from a kill) is cut off the file."""
    done: Counter[str] = Counter()
    good_end = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(iter(fh.readline, b""), start=1):
            if not raw.endswith(b"\n"):
                break  # cut short mid-write: dropped below, the record is redone
            try:
                rec = json.loads(raw)
                done[str(rec["id"])] += 1
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
                raise KnowLMError(f"line {line_no} of {path} is not an extract record",
                                  "this is not an output of `knowlm-local extract`; use --force to overwrite it") from None
            good_end += len(raw)
    if good_end < path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


class Output:
    """JSONL written one line per record and flushed at once (``path`` None: stdout)."""

    def __init__(self, path: Path | None, append: bool, stdout: IO[str] | None = None) -> None:
        self.path = path
        self.count = 0
        self.created = path is not None and not path.exists()
        if path is None:
            self.fh = stdout or sys.stdout
            self.own = False
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(path, "a" if append else "w", encoding="utf-8", newline="\n")
            except OSError as exc:
                raise write_error(exc, path) from None
            self.own = True

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.fh.flush()
            self.count += 1
        except OSError as exc:
            if self.path is None:
                raise
            raise write_error(exc, self.path) from None

    def close(self) -> None:
        if self.own:
            try:
                self.fh.flush()
                os.fsync(self.fh.fileno())
            except OSError as exc:
                raise write_error(exc, self.path) from None
            finally:
                self.fh.close()

    def discard_if_empty(self) -> None:
        """Remove the file this run created when nothing was written to it (a run that failed at once)."""
        if self.own and self.created and self.count == 0:
            self.path.unlink(missing_ok=True)


def prepare_output(path: str | None, resume: bool, force: bool) -> tuple[Path | None, Counter[str]]:
    """Check the output path against --resume/--force; return it and the ids to skip."""
    if path in (None, "-"):
        if resume:
            raise KnowLMError("--resume needs an output file", "add -o out.jsonl")
        return None, Counter()
    if resume and force:
        raise KnowLMError("--resume and --force contradict each other", "keep one: resume the file or overwrite it")
    out = Path(path)
    if out.is_dir():
        raise KnowLMError(f"{out} is a folder", "give -o a file name such as out.jsonl")
    if out.exists() and out.stat().st_size > 0:
        if resume:
            return out, done_ids(out)
        if not force:
            raise KnowLMError(f"{out} already exists",
                              "pass --resume to continue it, or --force to overwrite it")
    check_writable(out)
    return out, Counter()


def check_writable(out: Path) -> None:
    """Fail now, not after loading a model, when ``out`` cannot be written (missing, read-only folder)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out) from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise KnowLMError(f"cannot write {out}: permission denied", "choose a folder you can write to with -o")
