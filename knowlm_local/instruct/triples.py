"""KG2Instruct-style IE instructions: knowledge-graph triples matched in texts, through the IE data builder.

InstructIE's KG2Instruct aligns knowledge-graph triples with texts that mention them (distant supervision) and
turns each text and its triples into extraction instructions. Here a triple ``(head, relation, tail)`` matches a
text when both its head and its tail occur in it verbatim. Each text with at least one match becomes one DuIE
record (``{"id", "text", "source", "spo_list": [{"subject", "predicate", "object", ...}]}``, with
``subject_type`` / ``object_type`` when the triple file gives ``head_type`` / ``tail_type``), and those records go
through :func:`knowlm_local.train.iedata.build_ie_data` with ``fmt="duie"``: the instructions are exactly what
``build-ie-data`` writes for that DuIE file (RE by default, and SPO when every triple of a text is typed; NER
with ``tasks``), with the same negatives, schema groups and train/dev split.

Inputs: triples as JSON Lines ``{"head", "relation", "tail"}`` (optional ``head_type``, ``tail_type``); texts as
JSON Lines ``{"id", "text"}`` or a ``.txt`` file with one text per line (ids ``STEM-LINE``). A file that is not
JSON Lines is refused (file:line); a triple missing a field, or whose head is its tail, is skipped and counted.

Matching is exact substring search; candidate heads are found through an index of their first two characters,
so the cost grows with the texts' length and the matches, not with texts x triples.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.jsonio import describe, iter_jsonl
from knowlm_local.train.iedata import BuildReport, build_ie_data

TRIPLE_HINT = 'each line must be one JSON object such as {"head": "...", "relation": "...", "tail": "..."}'


@dataclass(frozen=True)
class Triple:
    head: str
    relation: str
    tail: str
    head_type: str | None = None
    tail_type: str | None = None

    def spo(self) -> dict[str, str]:
        """The triple as a DuIE ``spo_list`` item."""
        out = {"predicate": self.relation, "subject": self.head, "object": self.tail}
        if self.head_type and self.tail_type:
            out.update(subject_type=self.head_type, object_type=self.tail_type)
        return out


@dataclass
class TriplesReport:
    triples: int = 0  # distinct usable triples
    skipped: Counter = field(default_factory=Counter)  # reason -> triple lines left out
    examples: list[str] = field(default_factory=list)
    texts: int = 0
    texts_matched: int = 0
    matches: int = 0  # (text, triple) pairs
    unmatched: int = 0  # triples found in no text
    build: BuildReport | None = None

    def lines(self) -> list[str]:
        out = [(f"{self.triples} triples, {self.texts} texts: {self.matches} matches in {self.texts_matched} texts; "
                f"{self.unmatched} triples matched no text, {self.texts - self.texts_matched} texts matched no triple")]
        if self.skipped:
            out.append("skipped triples: " + ", ".join(f"{r} {n}" for r, n in self.skipped.most_common()))
            out += [f"  e.g. {e}" for e in self.examples[:3]]
        return out + (self.build.lines() if self.build else [])


def _field(obj: dict[str, Any], key: str, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"\"{key}\" is {describe(value) if value is not None else 'missing'}, not a non-empty string")
    return value.strip()


def read_triples(path: str | Path, report: TriplesReport) -> list[Triple]:
    """Distinct triples of ``path``; malformed ones are counted in ``report``."""
    path = Path(path)
    seen: dict[Triple, None] = {}
    for line_no, obj in iter_jsonl(path, "triples", hint=TRIPLE_HINT):
        try:
            t = Triple(_field(obj, "head"), _field(obj, "relation"), _field(obj, "tail"),
                       _field(obj, "head_type", True), _field(obj, "tail_type", True))
        except ValueError as exc:
            report.skipped["malformed triple"] += 1
            if len(report.examples) < 5:
                report.examples.append(f"{path}:{line_no}: {exc}")
            continue
        if t.head == t.tail:
            report.skipped["head is the tail"] += 1
            continue
        if t in seen:
            report.skipped["duplicate"] += 1
            continue
        seen[t] = None
    if not seen:
        raise KnowLMError(f"{path} holds no usable triple", TRIPLE_HINT)
    return list(seen)


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """``(id, text)`` pairs: JSON Lines ``{"id", "text"}`` or a ``.txt`` file with one text per line."""
    from knowlm_local.instruct.records import read_documents

    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        out = []
        for line_no, obj in iter_jsonl(path, "texts", hint='each line must be one JSON object {"id": ..., "text": ...}'):
            text = obj.get("text")
            if not isinstance(text, str):
                raise KnowLMError(f"{path}:{line_no}: \"text\" is {describe(text) if text is not None else 'missing'}"
                                  ", not a string", 'give each line a "text" string')
            rid = obj.get("id")
            out.append((str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else f"{path.stem}-{line_no}",
                        text))
        return [t for t in out if t[1].strip()]
    return read_documents(path, split="line")


class _HeadIndex:
    """Triples by head, and heads by their first two characters, to find the heads a text contains."""

    def __init__(self, triples: list[Triple]) -> None:
        self.by_head: dict[str, list[Triple]] = {}
        for t in triples:
            self.by_head.setdefault(t.head, []).append(t)
        self.by_prefix: dict[str, list[str]] = {}
        for head in self.by_head:
            self.by_prefix.setdefault(head[:2], []).append(head)

    def heads_in(self, text: str) -> list[str]:
        grams = {text[i:i + 2] for i in range(len(text) - 1)} | set(text)
        return [h for g in grams for h in self.by_prefix.get(g, ()) if h in text]


def match(triples: list[Triple], texts: list[tuple[str, str]], report: TriplesReport) -> list[dict[str, Any]]:
    """DuIE records of the texts with at least one triple whose head and tail both occur in them."""
    index = _HeadIndex(triples)
    used: set[Triple] = set()
    records = []
    for rid, text in texts:
        found = [t for h in index.heads_in(text) for t in index.by_head[h] if t.tail in text]
        if not found:
            continue
        found.sort(key=lambda t: (text.find(t.head), text.find(t.tail), t.relation))
        used.update(found)
        report.matches += len(found)
        records.append({"id": rid, "text": text, "spo_list": [t.spo() for t in found]})
    report.texts, report.texts_matched = len(texts), len(records)
    report.unmatched = len(triples) - len(used)
    return records


def from_triples(triples: str | Path, texts: str | Path, output: str | Path, *, source: str | None = None,
                 duie_output: str | Path | None = None, force: bool = False, say: Callable[[str], Any] | None = None,
                 **build: Any) -> TriplesReport:
    """IE instruction records from ``triples`` matched in ``texts``, written by ``build_ie_data`` to ``output``.

    ``build`` takes :func:`~knowlm_local.train.iedata.build_ie_data`'s options (``tasks``, ``lang``, ``labels``,
    ``neg_share``, ``split_num``, ``dev_share``, ``dev_output``, ``seed``, ``shuffle``, ...); ``source`` names the
    records' source (default: the texts file's name); ``duie_output`` also keeps the intermediate DuIE file.
    """
    from knowlm_local.io_utils import atomic_write_text

    out = Path(output)
    for p in (Path(triples), Path(texts)):
        if p.exists() and p.resolve() == out.resolve():
            raise KnowLMError(f"the output {out} is also an input", "write the instructions to another file")
    if out.exists() and not force:  # checked before reading, as build_ie_data would after it
        raise KnowLMError(f"{out} already exists", "pass --force to overwrite it, or choose another output")
    if duie_output and Path(duie_output).exists() and not force:
        raise KnowLMError(f"{duie_output} already exists", "pass --force to overwrite it")
    report = TriplesReport()
    kg = read_triples(triples, report)
    report.triples = len(kg)
    docs = read_texts(texts)
    if not docs:
        raise KnowLMError(f"{texts} holds no text", 'give JSON Lines {"id", "text"} or a .txt file, one text a line')
    records = match(kg, docs, report)
    if not records:
        raise KnowLMError(f"no triple of {triples} matched a text of {texts} (head and tail must both occur)",
                          "check that the triples and texts are in the same language and spelling")
    name = source or Path(texts).stem
    body = "".join(json.dumps({"id": r["id"], "source": name, "text": r["text"], "spo_list": r["spo_list"]},
                              ensure_ascii=False) + "\n" for r in records)
    if duie_output:  # the builder then reads (and names in its messages) this file
        atomic_write_text(Path(duie_output), body)
        report.build = build_ie_data([str(duie_output)], str(out), fmt="duie", force=force, say=say, **build)
        return report
    with tempfile.TemporaryDirectory(prefix="knowlm-kg2instruct-") as tmp:
        duie = Path(tmp) / f"{name}.jsonl"
        duie.write_text(body, encoding="utf-8")
        quiet = (lambda text: None if text.startswith("reading ") else say(text)) if say else None  # not the temp name
        report.build = build_ie_data([str(duie)], str(out), fmt="duie", force=force, say=quiet, **build)
    return report
