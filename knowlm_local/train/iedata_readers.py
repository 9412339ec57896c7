"""Readers for the IE instruction data builder: each input format as a stream of :class:`Sample` / :class:`Skip`.

A sample holds, per task it supports, the annotated values keyed by label
(``ann``) and the schema item of each label it knows (``items``); the builder
(:mod:`knowlm_local.train.iedata`) adds negatives, groups and answers. Values
are kept raw here (lists per role) and put in the answer shape there.

Formats: ``iepile`` (IEPile raw JSONL), ``duie`` (``spo_list`` lines),
``extract`` (``knowlm-local extract`` output), ``alpaca`` (passed through) and
``bio`` (CoNLL / BIO / BIOES, see :func:`read_bio`). JSON inputs may also be
one JSON array of objects. How broken input is treated is described in the
builder's module docstring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.results import ABSENT, mentions, normalize, values_of
from knowlm_local.ie.tasks import get_task, group_labels, validate_schema
from knowlm_local.jsonio import describe, loads, read_json

FORMATS = ("auto", "iepile", "bio", "duie", "extract", "alpaca")
JSON_FORMATS = ("iepile", "duie", "extract", "alpaca")
BIO_SUFFIXES = {".conll", ".conllx", ".bio", ".bioes", ".bmes", ".iob", ".iob2", ".bio2", ".tsv", ".ner"}
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
FORMAT_HINT = "pass --format iepile, bio, duie, extract or alpaca"


@dataclass
class Sample:
    id: str
    source: str
    text: str
    lang: str
    where: str  # "file:line" for messages
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> label key -> raw values
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> label key -> schema item
    default_tasks: tuple[str, ...] = ()
    repaired: int = 0  # BIO sequences repaired
    dropped: int = 0  # annotated values that were absent markers ("", "NAN", "None", ...)
    passthrough: dict[str, Any] | None = None  # an Alpaca record, written as it is


@dataclass
class Skip:
    where: str
    id: str | None
    reason: str
    detail: str = ""


class SkipRecord(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def item_key(task: str, item: Any) -> str:
    """The identity of a schema item inside one task's label set."""
    if task == "SPO":
        return json.dumps([item["subject_type"], item["predicate"], item["object_type"]], ensure_ascii=False)
    return answer_key(task, item)


def answer_key(task: str, item: Any) -> str:
    """The answer key an item is asked under (what ``group_labels`` gives)."""
    if isinstance(item, str):
        return item
    return item.get("event_type") or item.get("entity_type") or item["predicate"]


# -- small checks shared by the JSON readers --------------------------------------------------------

class _Ctx:
    def __init__(self, text: str) -> None:
        self.text = text
        self.dropped = 0

    def span(self, value: Any, kind: str) -> str | None:
        """An annotated string checked to be in the text; None for an absent marker (counted)."""
        if not isinstance(value, str):
            raise SkipRecord("malformed annotation", f"{kind} string is {describe(value)}")
        s = value.strip()
        if s in ABSENT:
            self.dropped += 1
            return None
        if s not in self.text:
            raise SkipRecord(f"{kind} string not in text", repr(s))
        return s


def _label(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, dict):
        value = value.get("@value")
    if not isinstance(value, str) or not value.strip():
        raise SkipRecord("malformed annotation", f"no {key!r} string in {json.dumps(obj, ensure_ascii=False)[:80]}")
    return value.strip()


def _list(obj: dict[str, Any], key: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise SkipRecord("malformed annotation", f"{key!r} is {describe(value)}, not a list")
    return value


def _add_roles(roles: list[str], new: list[str]) -> list[str]:
    return roles + [r for r in new if r not in roles]


# -- one JSON record per format -------------------------------------------------------------------

def _iepile(obj: dict[str, Any], c: _Ctx, s: Sample) -> None:
    defaults = []
    ents = _list(obj, "entity")
    if ents is not None:
        ner: dict[str, list[str]] = {}
        for e in ents:
            t = _label(e, "entity_type")
            v = c.span(e.get("entity"), "entity")
            ner.setdefault(t, []).extend([v] if v else [])
        s.ann["NER"], s.items["NER"] = ner, {t: t for t in ner}
        defaults.append("NER")
    rels = _list(obj, "relation")
    if rels is not None:
        rel: dict[str, list[dict[str, str]]] = {}
        for r in rels:
            p = _label(r, "relation")
            h, t = c.span(r.get("head"), "relation"), c.span(r.get("tail"), "relation")
            rel.setdefault(p, []).extend([{"subject": h, "object": t}] if h and t else [])
        s.ann["RE"], s.items["RE"] = rel, {p: p for p in rel}
        defaults.append("RE")
    events = _list(obj, "event")
    if events is not None:
        ee: dict[str, list[dict[str, Any]]] = {}
        roles: dict[str, list[str]] = {}
        for ev in events:
            t = _label(ev, "event_type")
            trig = ev.get("event_trigger", ev.get("trigger"))
            trig = c.span(trig, "event") if trig is not None else None
            args: dict[str, list[str]] = {}
            for a in _list(ev, "arguments") or []:
                role = _label(a, "role")
                v = c.span(a.get("argument"), "event")
                args.setdefault(role, []).extend([v] if v else [])
            roles[t] = _add_roles(roles.get(t, []), list(args))
            ee.setdefault(t, []).append({"trigger": trig, "arguments": args})
        s.ann["EE"] = ee
        s.items["EE"] = {t: {"event_type": t, "trigger": True, "arguments": roles[t]} for t in ee}
        s.ann["EET"] = {t: [e["trigger"] for e in evs if e["trigger"]] for t, evs in ee.items()}
        s.items["EET"] = {t: t for t in ee}
        s.ann["EEA"] = {t: [e["arguments"] for e in evs] for t, evs in ee.items()}
        s.items["EEA"] = {t: {"event_type": t, "arguments": roles[t]} for t in ee}
        defaults.append("EE")
    if not defaults:
        raise SkipRecord("no annotations", "the record has no \"entity\", \"relation\" or \"event\" list")
    s.default_tasks = tuple(defaults)


def _duie(obj: dict[str, Any], c: _Ctx, s: Sample) -> None:
    spos = _list(obj, "spo_list")
    if spos is None:
        raise SkipRecord("no annotations", "the record has no \"spo_list\"")
    rel: dict[str, list[dict[str, str]]] = {}
    spo: dict[str, list[dict[str, str]]] = {}
    spo_items: dict[str, dict[str, str]] = {}
    ner: dict[str, list[str]] = {}
    typed = True
    for t in spos:
        p = _label(t, "predicate")
        obj_value = t.get("object")
        subj = c.span(t.get("subject"), "relation")
        obj_s = c.span(obj_value.get("@value") if isinstance(obj_value, dict) else obj_value, "relation")
        pair = [{"subject": subj, "object": obj_s}] if subj and obj_s else []
        rel.setdefault(p, []).extend(pair)
        if not (t.get("subject_type") and t.get("object_type")):
            typed = False
            continue
        st, ot = _label(t, "subject_type"), _label(t, "object_type")
        item = {"subject_type": st, "predicate": p, "object_type": ot}
        key = item_key("SPO", item)
        spo_items[key] = item
        spo.setdefault(key, []).extend(pair)
        ner.setdefault(st, []).extend([subj] if subj else [])
        ner.setdefault(ot, []).extend([obj_s] if obj_s else [])
    s.ann["RE"], s.items["RE"] = rel, {p: p for p in rel}
    s.default_tasks = ("RE",)
    if typed:  # SPO and NER need every triple's types
        s.ann["SPO"], s.items["SPO"] = spo, spo_items
        s.ann["NER"], s.items["NER"] = ner, {t: t for t in ner}
        s.default_tasks = ("RE", "SPO")


def _schema_items(task: str, schema: Any) -> list[Any]:
    """A validated schema (list or description dict) as plain schema items."""
    if isinstance(schema, list):
        return [{"entity_type": i["entity_type"], "attribute": i.get("attribute") or i.get("attributes")}
                if task == "KG" else i for i in schema]
    out: list[Any] = []
    for label, roles in group_labels(task, schema).items():
        if task in ("EE", "EEA"):
            out.append({"event_type": label, "trigger": True, "arguments": roles} if task == "EE"
                       else {"event_type": label, "arguments": roles})
        else:
            out.append(label)
    return out


def _extract(obj: dict[str, Any], c: _Ctx, s: Sample) -> None:
    try:
        task = get_task(obj.get("task")).name
        schema = validate_schema(task, obj.get("schema"))
    except KnowLMError as exc:
        raise SkipRecord("bad task or schema", exc.message) from None
    result = obj.get("result")
    if not isinstance(result, dict):
        raise SkipRecord("no result", f"\"result\" is {describe(result)}")
    labels = group_labels(task, schema)
    norm, _ = normalize(task, labels, result)
    for _label_, _field, _role, value in mentions(task, norm):
        if value not in c.text:
            raise SkipRecord("result string not in text", repr(value))
    items = {item_key(task, i): i for i in _schema_items(task, schema)}
    ann: dict[str, Any] = {}
    for key, item in items.items():
        value = norm.get(answer_key(task, item))
        if task == "KG":
            ann[key] = {name: {a: values_of(v) for a, v in attrs.items()} for name, attrs in (value or {}).items()}
        elif task == "EE":
            ann[key] = [{"trigger": None if e["trigger"] == "NAN" else e["trigger"],
                         "arguments": {r: values_of(v) for r, v in e["arguments"].items()}} for e in value or []]
        elif task == "EEA":
            ann[key] = [{r: values_of(v) for r, v in e.items()} for e in value or []]
        else:
            ann[key] = list(value or [])
    s.ann[task], s.items[task], s.default_tasks = ann, items, (task,)


def _alpaca(obj: dict[str, Any], s: Sample) -> None:
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str):
            raise SkipRecord("malformed alpaca record", f"\"{key}\" is {describe(obj.get(key))}, not a string")
    if not isinstance(obj.get("input", ""), str):
        raise SkipRecord("malformed alpaca record", "\"input\" is not a string")
    rest = {k: v for k, v in obj.items() if k not in ("id", "task")}
    s.passthrough = {"id": s.id, "task": "general", **rest}
    s.default_tasks = ("general",)


def sniff(obj: dict[str, Any]) -> str | None:
    """The JSON format one record looks like, or None."""
    if "spo_list" in obj:
        return "duie"
    if "result" in obj and "task" in obj:
        return "extract"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "text" in obj and any(k in obj for k in ("entity", "relation", "event")):
        return "iepile"
    return None


def json_sample(obj: Any, kind: str, stem: str, where: str, n: int, lang: str | None) -> Sample | Skip:
    """One JSON record of ``kind`` as a Sample, or a Skip saying why not."""
    from knowlm_local.ie.extract import detect_lang

    if not isinstance(obj, dict):
        return Skip(where, None, "unparseable line", f"holds {describe(obj)}, not a JSON object")
    rid = obj.get("id")
    rid = str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else f"{stem}-{n}"
    src = obj.get("source") if isinstance(obj.get("source"), str) and obj["source"].strip() else stem
    if kind == "alpaca":
        s = Sample(rid, src, "", "", where)
        try:
            _alpaca(obj, s)
        except SkipRecord as exc:
            return Skip(where, rid, exc.reason, exc.detail)
        return s
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return Skip(where, rid, "no text", "the record has no \"text\" string")
    s = Sample(rid, src, text, lang or detect_lang(text), where)
    c = _Ctx(text)
    try:
        {"iepile": _iepile, "duie": _duie, "extract": _extract}[kind](obj, c, s)
    except SkipRecord as exc:
        return Skip(where, rid, exc.reason, exc.detail)
    s.dropped = c.dropped
    return s


# -- files --------------------------------------------------------------------------------------------

def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except FileNotFoundError:
        raise KnowLMError(f"no such input file: {path}", "check the path") from None
    except IsADirectoryError:
        raise KnowLMError(f"{path} is a folder, not an input file", "pass the data files themselves") from None
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
    if not raw.strip():
        raise KnowLMError(f"{path} is empty", "give a file with annotated records in it")
    if b"\x00" in raw:
        raise KnowLMError(f"{path} looks like a binary file", "IE data files are UTF-8 text (JSON Lines or CoNLL)")
    return raw


def file_kind(path: Path, fmt: str) -> str:
    """"bio", "json" (array or lines, format sniffed per file) or one of the JSON formats; checks the head."""
    if fmt not in FORMATS:
        raise KnowLMError(f"unknown input format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    head = _head(path)
    if fmt != "auto":
        return fmt
    if path.suffix.lower() in BIO_SUFFIXES:
        return "bio"
    if path.suffix.lower() in JSON_SUFFIXES or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "json"
    return "bio"


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KnowLMError(f"{path} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line_no}",
                          f"re-encode it, e.g. iconv -f GB18030 -t UTF-8 {path.name} > converted") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield line_no, _decode(raw, path, line_no)


def read_json_file(path: Path, kind: str, lang: str | None) -> Iterator[Sample | Skip]:
    """Samples of a JSON Lines (or JSON array) file; broken lines come out as Skips."""
    head = _head(path).lstrip(b"\xef\xbb\xbf \t\r\n")
    fmt = None if kind == "json" else kind
    if head[:1] == b"[":
        objs = read_json(path, "JSON file", expect=list, hint="give a JSON array of records, or JSON Lines")
        rows: Iterator[tuple[int, str, Any]] = ((i, f"{path} item {i}", o) for i, o in enumerate(objs, start=1))
    else:
        rows = ((n, f"{path}:{n}", t) for n, t in _lines(path) if t.strip())
    good, first_bad = 0, None
    for n, where, value in rows:
        if isinstance(value, str):
            try:
                value = loads(value, f"line {n} of {path}", "each line must be one JSON object")
            except KnowLMError as exc:
                first_bad = first_bad or exc
                yield Skip(where, None, "unparseable line", exc.message)
                continue
        if isinstance(value, dict) and fmt is None:
            fmt = sniff(value)
            if fmt is None:
                raise KnowLMError(f"cannot tell the format of {path} from {where} (keys: {sorted(value)[:8]})",
                                  FORMAT_HINT)
        sample = json_sample(value, fmt or "iepile", path.stem, where, n, lang)
        if isinstance(sample, Sample):
            good += 1
        yield sample
    if not good and first_bad is not None:
        raise KnowLMError(f"{path} has no readable record: {first_bad.message}", first_bad.hint)


# -- CoNLL / BIO -------------------------------------------------------------------------------------

_TAG = re.compile(r"^([BIESM])-(.+)$")


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


class _Scheme:
    """Evidence for BIO and BIOES across a file; both at once is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bioes: tuple[int, str] | None = None  # first E-/S- tag
        self.bio: tuple[int, str] | None = None  # first entity that ends without E-

    def saw_bioes(self, line: int, tag: str) -> None:
        self.bioes = self.bioes or (line, tag)
        self._check(line)

    def saw_bio(self, line: int, tag: str) -> None:
        self.bio = self.bio or (line, tag)
        self._check(line)

    def _check(self, line: int) -> None:
        if self.bio and self.bioes:
            raise KnowLMError(
                f"{self.path} mixes tagging schemes (found at line {line}): line {self.bioes[0]} has the BIOES tag "
                f"{self.bioes[1]!r}, but the entity tagged {self.bio[1]!r} at line {self.bio[0]} ends without an "
                "E- tag (BIO style)", "convert the file to one scheme, BIO or BIOES, and run again")

    @property
    def name(self) -> str:
        return "BIOES" if self.bioes else "BIO"


def _spans(tags: list[tuple[int, str]], scheme: _Scheme) -> tuple[list[tuple[str, int, int]], int]:
    """Entity spans (type, first token, last token) of one sentence and the number of repaired starts."""
    spans: list[tuple[str, int, int]] = []
    repaired = 0
    cur: list[Any] | None = None  # [type, start, last line, first tag]

    def close(i: int) -> None:
        nonlocal cur
        if cur is not None:
            scheme.saw_bio(cur[2], cur[3])
            spans.append((cur[0], cur[1], i - 1))
            cur = None

    for i, (line, tag) in enumerate(tags):
        if tag == "O":
            close(i)
            continue
        prefix, typ = _TAG.match(tag).groups()
        if prefix in "ES":
            scheme.saw_bioes(line, tag)
        if prefix in "IME" and (cur is None or cur[0] != typ):
            close(i)
            repaired += 1
            prefix = "S" if prefix == "E" else "B"
        if prefix in "BS":
            close(i)
            cur = [typ, i, line, tag]
            if prefix == "S":
                spans.append((typ, i, i))
                cur = None
        elif prefix == "E":
            spans.append((typ, cur[1], i))
            cur = None
        else:
            cur[2], cur[3] = line, tag
    close(len(tags))
    return spans, repaired


def read_bio(path: Path, lang: str | None, type_map: dict[str, str] | None = None) -> Iterator[Sample]:
    """Sentences of a CoNLL/BIO file: blank-line separated, ``token ... tag`` lines (tag last).

    The column count is the first token line's and must hold for every line;
    ``-DOCSTART-`` lines end a sentence. Tags are ``O``, ``B-/I-`` (BIO) or
    ``B-/I-/E-/S-`` (BIOES; ``M-`` reads as ``I-``); a file showing both
    schemes is refused. Tokens are joined with "" for Chinese (or single CJK
    characters), else with one space.
    """
    from knowlm_local.ie.extract import detect_lang

    scheme = _Scheme(path)
    columns = None
    sent: list[tuple[int, str, str]] = []
    n = 0

    def flush() -> Sample | None:
        nonlocal n
        if not sent:
            return None
        n += 1
        toks = [t for _, t, _ in sent]
        spans, repaired = _spans([(ln, tag) for ln, _, tag in sent], scheme)
        single_cjk = all(len(t) == 1 for t in toks) and any(_is_cjk(t) for t in toks)
        joined_zh = lang == "zh" or single_cjk or (lang is None and detect_lang(" ".join(toks)) == "zh")
        sep = "" if joined_zh else " "
        starts, pos = [], 0
        for t in toks:
            starts.append(pos)
            pos += len(t) + len(sep)
        text = sep.join(toks)
        ner: dict[str, list[str]] = {}
        for typ, a, b in spans:
            typ = (type_map or {}).get(typ, typ)
            ner.setdefault(typ, []).append(text[starts[a]:starts[b] + len(toks[b])])
        s = Sample(f"{path.stem}-{n}", path.stem, text, lang or detect_lang(text), f"{path}:{sent[0][0]}",
                   {"NER": ner}, {"NER": {t: t for t in ner}}, ("NER",), repaired)
        sent.clear()
        return s

    for line_no, line in _lines(path):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            s = flush()
            if s:
                yield s
            continue
        columns = columns or len(cols)
        if len(cols) != columns or columns < 2:
            raise KnowLMError(f"{path}: line {line_no} has {len(cols)} column(s), expected {max(columns, 2)} "
                              f"(token ... tag): {line.strip()[:60]!r}",
                              "every line is `token tag` (or `word POS chunk tag`), sentences split by blank lines")
        tag = cols[-1]
        if tag != "O" and not _TAG.match(tag):
            raise KnowLMError(f"{path}: line {line_no}: {tag!r} is not a BIO/BIOES tag",
                              "tags are O, B-TYPE, I-TYPE (BIO) or B-/I-/E-/S-TYPE (BIOES), in the last column")
        sent.append((line_no, cols[0], tag))
    s = flush()
    if s:
        yield s

