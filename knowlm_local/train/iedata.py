"""The IE instruction data builder: annotated data -> IEPile/OneKE-style instruction records for fine-tuning.

Each input record gives, per task, its positive labels; the builder adds
negative labels (absent labels drawn from the task's label set), shuffles the
list, cuts it into groups of ``split_num`` labels and writes one instruction
record per group. The instruction is :func:`knowlm_local.ie.prompt.oneke_instruction`
of the group and the whole text, exactly what ``knowlm-local extract`` sends,
and the output is the answer JSON in the shapes of :mod:`knowlm_local.ie.constrain`
(it passes :func:`knowlm_local.ie.results.normalize` unchanged).

Choices where IEPile leaves room:

* label order: positives and negatives are shuffled with ``random.Random``
  seeded by ``seed``, the record id and the task, so a run is repeatable and a
  record's order does not depend on the rest of the input; the final
  remainder of fewer than half a group joins the last group;
* the label set (when ``labels`` does not give it) is the union over all
  inputs, read in a first pass; an EE/EEA label is an event type with the
  union of its roles, a KG label an entity type with its attributes;
* the train/dev split hashes the record id only (not ``seed``), so changing
  the seed reshuffles labels but never moves a record between train and dev;
* broken JSON lines (not JSON, or not an object) are skipped and counted
  (``skipped["unparseable line"]`` and ``bad_lines`` with file:line); a file
  with no readable record, an empty, binary or non-UTF-8 file, a bad CoNLL
  line and a file mixing BIO and BIOES are refused (KnowLMError naming file
  and line), and nothing is written;
* records with an annotated string that is not in the text are skipped and
  counted, as are repeated record ids; annotated values that are absent
  markers ("", "NAN", "None", ...) are dropped and counted, since an answer
  cannot carry them;
* Alpaca records are always passed through (whatever ``tasks`` says), with
  ``"task": "general"`` and an id; ``type_map`` renames BIO entity types only;
* extract output: the record's schema is the label set it adds (a label -> description schema
  keeps its labels, not the descriptions) and its result is the answer, re-ordered by the text;
* an EEA schema item is ``{"event_type", "arguments"}`` (no trigger), one answer
  item per event; DuIE builds RE and SPO by default, NER when asked, from the
  ``@value`` of complex objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.prompt import oneke_instruction
from knowlm_local.ie.tasks import TASKS, get_task, group_labels, validate_schema
from knowlm_local.io_utils import atomic_path, write_error
from knowlm_local.jsonio import read_json
from knowlm_local.train.iedata_readers import (
    Sample,
    Skip,
    answer_key,
    file_kind,
    item_key,
    read_bio,
    read_json_file,
)

MAX_EXAMPLES = 20  # skipped records described one by one (in the report and through ``say``)
MAX_BAD_LINES = 100


@dataclass
class BuildReport:
    """What a build read, wrote and left out."""

    output: str
    dev_output: str | None = None
    files: int = 0
    records: int = 0  # input records read (skipped ones included, unparseable lines not)
    dev_records: int = 0  # input records sent to dev
    train: int = 0  # instruction records written to output
    dev: int = 0  # instruction records written to dev_output
    tasks: Counter = field(default_factory=Counter)  # task -> instruction records (train + dev)
    skipped: Counter = field(default_factory=Counter)  # reason -> records (or lines) left out
    examples: list[str] = field(default_factory=list)  # the first skipped records: "where (id): reason: detail"
    bad_lines: list[str] = field(default_factory=list)  # "file:line: message" of unparseable lines
    repaired: int = 0  # BIO sequences that started with I-/E- and were read as B-
    dropped_values: int = 0  # annotated absent markers left out of answers
    unbuilt: Counter = field(default_factory=Counter)  # "TASK: why" -> records that gave no instruction for it

    def lines(self) -> list[str]:
        written = f"wrote {self.train + self.dev} instruction records (train {self.train} -> {self.output}"
        written += f", dev {self.dev} -> {self.dev_output})" if self.dev_output else ")"
        out = [f"read {self.records} records from {self.files} file(s); {written}"]
        if self.tasks:
            out.append("by task: " + ", ".join(f"{t} {n}" for t, n in sorted(self.tasks.items())))
        if self.dev_output:
            out.append(f"dev: {self.dev_records} of {self.records} records")
        if self.skipped:
            reasons = ", ".join(f"{r} {n}" for r, n in self.skipped.most_common())
            out.append(f"skipped {sum(self.skipped.values())}: {reasons}")
            out += [f"  e.g. {e}" for e in self.examples[:3]]
        if self.repaired:
            out.append(f"repaired {self.repaired} BIO sequence(s) that started with I- or E-")
        if self.dropped_values:
            out.append(f"dropped {self.dropped_values} annotated value(s) that were absent markers (NAN, None, ...)")
        if self.unbuilt:
            out.append("not built: " + ", ".join(f"{k} {n}" for k, n in self.unbuilt.most_common()))
        return out


# -- options -----------------------------------------------------------------------------------------

def _share(name: str, value: float, top: float = 1.0) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= top:
        raise KnowLMError(f"{name} must be between 0 and {top:g}, got {value!r}", f"e.g. {name} 0.1")
    return float(value)


def _item_of(task: str, item: Any) -> Any:
    if task == "KG" and isinstance(item, dict):
        return {"entity_type": item["entity_type"], "attribute": item.get("attribute") or item.get("attributes")}
    return item


def _user_labels(labels: dict[str, list] | None) -> dict[str, dict[str, Any]]:
    """``labels`` as task -> label key -> schema item; EE, EET and EEA fill each other in."""
    out: dict[str, dict[str, Any]] = {}
    for task, schema in (labels or {}).items():
        name = get_task(task).name
        if name == "EEA" and isinstance(schema, list):
            schema = [{k: v for k, v in i.items() if not (k == "trigger" and isinstance(v, bool))}
                      if isinstance(i, dict) else i for i in schema]
        schema = validate_schema(name, schema)
        if isinstance(schema, dict):  # label -> description: keep the labels (and roles)
            roles = group_labels(name, schema)
            schema = [{"event_type": k, "trigger": True, "arguments": r} if name == "EE" else
                      {"event_type": k, "arguments": r} if name == "EEA" else k for k, r in roles.items()]
        out[name] = {item_key(name, _item_of(name, i)): _item_of(name, i) for i in schema}
    for src in ("EE", "EEA"):
        if src in out:
            roles = {k: i["arguments"] for k, i in out[src].items()}
            out.setdefault("EET", {k: k for k in roles})
            out.setdefault("EE", {k: {"event_type": k, "trigger": True, "arguments": r} for k, r in roles.items()})
            out.setdefault("EEA", {k: {"event_type": k, "arguments": r} for k, r in roles.items()})
    return out


def _hard_negatives(path: str | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    hint = 'the file is one JSON object {"label": ["similar label", ...]}'
    value = read_json(Path(path), "hard negatives file", expect=dict, hint=hint)
    for label, similar in value.items():
        if not isinstance(similar, list) or not all(isinstance(s, str) and s.strip() for s in similar):
            raise KnowLMError(f"{path}: the similar labels of {label!r} must be a list of strings", hint)
    return {k.strip(): [s.strip() for s in v] for k, v in value.items()}


def _split_nums(split_num: dict[str, int] | None) -> dict[str, int]:
    out = {name: spec.split_num for name, spec in TASKS.items()}
    for task, n in (split_num or {}).items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise KnowLMError(f"split_num for {task} must be a whole number of at least 1, got {n!r}",
                              "e.g. NER=6,RE=4")
        out[get_task(task).name] = n
    return out


# -- labels, groups, answers --------------------------------------------------------------------------

def cut_groups(labels: list[Any], n: int) -> list[list[Any]]:
    """Groups of ``n``; a final remainder of fewer than half a group joins the last group (IEPile)."""
    groups = [labels[i:i + n] for i in range(0, len(labels), n)]
    if len(groups) > 1 and 2 * len(groups[-1]) < n:
        last = groups.pop()
        groups[-1] = groups[-1] + last
    return groups


def _merge(task: str, a: Any, b: Any) -> Any:
    """One label's schema item from two sources (the roles or attributes of both, first seen first)."""
    if a is None or b is None:
        return b if a is None else a
    if task in ("EE", "EEA", "KG"):
        key = "attribute" if task == "KG" else "arguments"
        return {**a, key: a[key] + [r for r in b[key] if r not in a[key]]}
    return a


def _default_item(task: str, label: str) -> Any:
    """A schema item for a hard-negative label not in the label set (None when one cannot be made)."""
    if task in ("NER", "RE", "EET"):
        return label
    if task == "EE":
        return {"event_type": label, "trigger": True, "arguments": []}
    return {"event_type": label, "arguments": []} if task == "EEA" else None


def _pos(text: str, s: str | None) -> int:
    i = text.find(s) if s else -1
    return i if i >= 0 else len(text) + 1


def _ordered(text: str, values: list[str]) -> list[str]:
    return sorted(dict.fromkeys(v for v in values if v), key=lambda v: _pos(text, v))


def _one(values: list[str]) -> Any:
    return "NAN" if not values else values[0] if len(values) == 1 else values


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for it in items:
        seen.setdefault(json.dumps(it, ensure_ascii=False, sort_keys=True), it)
    return list(seen.values())


def answer_value(task: str, roles: list[str], raws: list[Any], text: str) -> Any:
    """One label's answer from its raw annotations: canonical shape, text order, no duplicates."""
    if task in ("NER", "EET"):
        return _ordered(text, [v for r in raws for v in r])
    if task in ("RE", "SPO"):
        pairs = dict.fromkeys((p["subject"], p["object"]) for r in raws for p in r)
        return [{"subject": s, "object": o} for s, o in sorted(pairs, key=lambda p: (_pos(text, p[0]),
                                                                                        _pos(text, p[1])))]
    if task == "KG":
        names: dict[str, dict[str, list[str]]] = {}
        for r in raws:
            for name, attrs in r.items():
                have = names.setdefault(name, {})
                for a, vals in attrs.items():
                    have.setdefault(a, []).extend(vals)
        return {name: {a: _one(_ordered(text, names[name][a])) for a in roles if _ordered(text, names[name].get(a, []))}
                for name in sorted(names, key=lambda n: _pos(text, n))}
    events = []
    for r in raws:
        for e in r:
            args = e["arguments"] if task == "EE" else e
            norm = {role: _one(_ordered(text, args.get(role, []))) for role in roles}
            trigger = (e["trigger"] or "NAN") if task == "EE" else None
            if trigger in (None, "NAN") and all(v == "NAN" for v in norm.values()):
                continue
            events.append({"trigger": trigger, "arguments": norm} if task == "EE" else norm)
    if task == "EE":
        return sorted(_unique(events), key=lambda e: _pos(text, e["trigger"]))
    first = [min([_pos(text, x) for v in e.values() for x in ([v] if isinstance(v, str) else v)]) for e in events]
    order = sorted(range(len(events)), key=lambda i: first[i])
    return _unique([events[i] for i in order])


class _Builder:
    def __init__(self, universe: dict[str, dict[str, Any]], hard: dict[str, list[str]], neg_share: float,
                 split_nums: dict[str, int], seed: int, shuffle: bool = True) -> None:
        self.universe, self.hard, self.neg_share, self.split_nums, self.seed = (universe, hard, neg_share,
                                                                               split_nums, seed)
        self.shuffle = shuffle

    def label_list(self, s: Sample, task: str) -> tuple[list[str], dict[str, Any]]:
        """The record's shuffled label keys (positives + negatives) and the schema item of each."""
        items = dict(self.universe.get(task, {}))
        for k, it in s.items[task].items():
            items[k] = _merge(task, items.get(k), it)
        ann = s.ann[task]
        positives = sorted(k for k in items if ann.get(k))
        by_answer: dict[str, list[str]] = {}
        for k, it in items.items():
            by_answer.setdefault(answer_key(task, it), []).append(k)
        hard: list[str] = []
        for label in sorted({answer_key(task, items[k]) for k in positives}):
            for similar in self.hard.get(label, []):
                keys = by_answer.get(similar)
                if keys is None and _default_item(task, similar) is not None:
                    items[similar] = _default_item(task, similar)
                    keys = [similar]
                hard += [k for k in keys or [] if k not in positives and k not in hard]
        rest = sorted(k for k in items if k not in positives and k not in hard)
        rng = random.Random(f"{self.seed}\x00{s.id}\x00{task}")
        chosen = positives + hard + rng.sample(rest, int(len(rest) * self.neg_share + 0.5))
        if self.shuffle:
            rng.shuffle(chosen)
        else:  # the label set's own order: the prompts are then exactly extract's for that schema
            order = {k: i for i, k in enumerate(items)}
            chosen.sort(key=lambda k: order[k])
        return chosen, items

    def records(self, s: Sample, task: str) -> Iterator[dict[str, Any]]:
        keys, items = self.label_list(s, task)
        for gi, group_keys in enumerate(cut_groups(keys, self.split_nums[task])):
            schema = validate_schema(task, [items[k] for k in group_keys])
            raws: dict[str, list[Any]] = {}
            for k in group_keys:
                raws.setdefault(answer_key(task, items[k]), []).append(s.ann[task].get(k) or
                                                                        ({} if task == "KG" else []))
            answer = {label: answer_value(task, roles, raws[label], s.text)
                      for label, roles in group_labels(task, schema).items()}
            yield {"id": f"{s.id}-{task}-{gi}", "task": task, "source": s.source, "lang": s.lang, "text": s.text,
                   "schema": schema, "instruction": oneke_instruction(task, s.lang, schema, s.text),
                   "output": json.dumps(answer, ensure_ascii=False)}


# -- the build ---------------------------------------------------------------------------------------

def _dev_unit(record_id: str) -> float:
    digest = hashlib.sha256(f"dev\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _read(files: list[tuple[Path, str]], lang: str | None, type_map: dict[str, str] | None,
          say: Callable[[str], Any] | None = None) -> Iterator[Sample | Skip]:
    for path, kind in files:
        if say:
            say(f"reading {path} ({kind})")
        yield from read_bio(path, lang, type_map) if kind == "bio" else read_json_file(path, kind, lang)


def build_ie_data(inputs: list[str], output: str, tasks: list[str] | None = None, fmt: str = "auto",
                  lang: str | None = None, labels: dict[str, list] | None = None, neg_share: float = 1.0,
                  hard_negatives: str | None = None, split_num: dict[str, int] | None = None,
                  dev_share: float = 0.0, dev_output: str | None = None, seed: int = 0, force: bool = False,
                  say: Callable[[str], Any] | None = None, type_map: dict[str, str] | None = None,
                  shuffle: bool = True) -> BuildReport:
    """Build instruction records from ``inputs`` into ``output`` (and ``dev_output``); see the module docstring."""
    if not inputs:
        raise KnowLMError("no input files", "pass one or more annotated data files")
    wanted = None if tasks is None else list(dict.fromkeys(get_task(t).name for t in tasks))
    if lang not in (None, "zh", "en"):
        raise KnowLMError(f"unknown language {lang!r}", "use zh or en (or leave it out to detect per record)")
    neg_share = _share("neg_share", neg_share)
    dev_share = _share("dev_share", dev_share, top=1.0)
    user, hard, split_nums = _user_labels(labels), _hard_negatives(hard_negatives), _split_nums(split_num)
    out = Path(output)
    dev = Path(dev_output) if dev_output else (out.with_name(f"{out.stem}.dev{out.suffix}") if dev_share else None)
    if dev is not None and not dev_share:
        raise KnowLMError("a dev output was given but dev_share is 0", "set the dev share, e.g. --dev-share 0.05")
    ins = [Path(p) for p in inputs]
    for target in [out] + ([dev] if dev else []):
        if any(target.resolve() == p.resolve() for p in ins):
            raise KnowLMError(f"the output {target} is also an input", "write the instructions to another file")
        if target.exists() and not force:
            raise KnowLMError(f"{target} already exists", "pass --force to overwrite it, or choose another output")
    if dev is not None and dev.resolve() == out.resolve():
        raise KnowLMError("the dev output is the train output", "give the dev split its own file")
    files = [(p, file_kind(p, fmt)) for p in ins]
    universe = dict(user)
    if wanted is None or any(t not in user for t in wanted):  # first pass: the label set seen in the input
        collected: dict[str, dict[str, Any]] = {}
        for s in _read(files, lang, type_map):
            if isinstance(s, Sample):
                for task, items in s.items.items():
                    have = collected.setdefault(task, {})
                    for k, it in items.items():
                        have[k] = _merge(task, have.get(k), it)
        universe = {**collected, **user}
    builder = _Builder(universe, hard, neg_share, split_nums, seed, shuffle)
    report = BuildReport(str(out), str(dev) if dev else None, files=len(files))
    seen: set[str] = set()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out))
        dtmp = stack.enter_context(atomic_path(dev)) if dev else None
        fh = stack.enter_context(_open(tmp, out))
        dfh = stack.enter_context(_open(dtmp, dev)) if dtmp else None
        for s in _read(files, lang, type_map, say):
            if isinstance(s, Sample) and s.id in seen:
                s = Skip(s.where, s.id, "duplicate record id", "an earlier record has the same id")
            if isinstance(s, Skip):
                report.records += s.reason != "unparseable line"
                _skip(report, s, say)
                continue
            seen.add(s.id)
            report.records += 1
            report.repaired += s.repaired
            report.dropped_values += s.dropped
            to_dev = dfh is not None and _dev_unit(s.id) < dev_share
            report.dev_records += to_dev
            target = dfh if to_dev else fh
            for rec in _instructions(builder, s, wanted, report):
                target.write(json.dumps(rec, ensure_ascii=False) + "\n")
                report.tasks[rec["task"]] += 1
                report.dev += to_dev
                report.train += not to_dev
    return report


@contextlib.contextmanager
def _open(tmp: Path, dest: Path) -> Iterator[Any]:
    """``tmp`` open for writing; a failed write (a full disk, too) is reported as a write to ``dest``."""
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
    except OSError as exc:
        raise write_error(exc, dest) from None


def _instructions(builder: _Builder, s: Sample, wanted: list[str] | None,
                  report: BuildReport) -> Iterator[dict[str, Any]]:
    if s.passthrough is not None:
        yield s.passthrough
        return
    for task in wanted or s.default_tasks:
        if task not in s.ann:
            report.unbuilt[f"{task}: the record has no annotations for it"] += 1
            continue
        n = 0
        for rec in builder.records(s, task):
            n += 1
            yield rec
        if not n:
            report.unbuilt[f"{task}: no label to ask (no positive and no negative label)"] += 1


def _skip(report: BuildReport, s: Skip, say: Callable[[str], Any] | None) -> None:
    report.skipped[s.reason] += 1
    line = f"{s.where}" + (f" ({s.id})" if s.id else "") + f": {s.reason}" + (f": {s.detail}" if s.detail else "")
    if s.reason == "unparseable line" and len(report.bad_lines) < MAX_BAD_LINES:
        report.bad_lines.append(line)
    if len(report.examples) < MAX_EXAMPLES:
        report.examples.append(line)
        if say:
            say(f"skipped {line}")


__all__ = ["BuildReport", "answer_value", "build_ie_data", "cut_groups"]
