"""IEPile-compatible scoring: micro precision / recall / F1 on exact-match tuples, overall and per type.

Tuples follow IEPile's ``ie2instruction/eval`` code: NER ``(entity, type)``,
RE / SPO ``(head, relation, tail)``, KG ``(entity, attribute, value)``, EET
``(trigger, event type)``, and for EE / EEA two levels, events
``(event type, trigger)`` (trigger ``""`` for EEA) and arguments
``(event type, argument, role)``. Matching counts duplicates, as IEPile's
default ``normal`` mode does: each gold tuple can be matched once.

Predictions are records written by ``knowlm-local extract`` (``result`` and
``errors``) or IEPile-style lines with a raw ``output`` string (several lines
per id are merged, as IEPile's evaluator does). Gold is IEPile-style: test
files with a ``label`` (a JSON string or list), source files with ``entity`` /
``relation`` / ``event`` lists, or extract records (``result``). Records pair
by ``id`` (by line number where a file has no ids).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.parse import parse_answer
from knowlm_local.ie.results import ABSENT, values_of
from knowlm_local.ie.tasks import get_task

Tuple = tuple[str, ...]


def _s(value: Any) -> str:
    """A tuple element as a string: files from other tools put numbers (or worse) where strings belong."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def result_tuples(task: str, result: dict[str, Any]) -> dict[str, list[tuple[str, Tuple]]]:
    """Tuples of an extract ``result`` by level, each with its type (for per-type scores).

    Values of the wrong shape (a number where a list belongs, say) contribute
    nothing rather than failing the whole file: one odd record must not hide
    the scores of the other 10,000.
    """
    levels: dict[str, list[tuple[str, Tuple]]] = {}
    ev = levels.setdefault("event" if task in ("EE", "EEA") else "tuple", [])
    args = levels.setdefault("argument", []) if task in ("EE", "EEA") else None
    for label, values in _dict(result).items():
        if task == "KG":
            for name, attrs in _dict(values).items():
                for attr, value in _dict(attrs).items():
                    ev += [(attr, (name, attr, v)) for v in values_of(value)]
            continue
        for item in _list(values):
            if task in ("NER", "EET"):
                if isinstance(item, str) and item not in ABSENT:
                    ev.append((label, (item, label)))
            elif task in ("RE", "SPO"):
                if isinstance(item, dict):
                    ev.append((label, (_s(item.get("subject", "")), label, _s(item.get("object", "")))))
            elif isinstance(item, dict):
                trigger = _s(item.get("trigger", "")) if task == "EE" else ""
                ev.append((label, (label, "" if trigger in ABSENT else trigger)))
                roles = item.get("arguments", {}) if task == "EE" else item
                for role, value in _dict(roles).items():
                    args += [(label, (label, v, role)) for v in values_of(value)]  # type: ignore[operator]
    return levels


def gold_tuples(task: str, record: dict[str, Any]) -> dict[str, list[tuple[str, Tuple]]]:
    """Tuples of a gold record in any of the accepted forms."""
    if "result" in record and isinstance(record["result"], dict):
        return result_tuples(task, record["result"])
    label = record.get("label")
    if isinstance(label, str):
        from knowlm_local.jsonio import loads

        label = loads(label, f"the \"label\" of gold record {record.get('id')!r}",
                      "IEPile test files store the label as a JSON string")
    if label is None:
        label = record.get({"NER": "entity", "EE": "event", "EEA": "event", "EET": "event"}.get(task, "relation"), [])
    levels = result_tuples(task, {})
    for it in _list(label):
        if not isinstance(it, dict):
            continue
        if task == "NER":
            kind = _s(it.get("entity_type", ""))
            levels["tuple"].append((kind, (_s(it.get("entity", "")), kind)))
        elif task in ("RE", "SPO", "KG"):
            rel = _s(it.get("relation", ""))
            levels["tuple"].append((rel, (_s(it.get("head", "")), rel, _s(it.get("tail", "")))))
        elif task == "EET":
            kind = _s(it.get("event_type", ""))
            levels["tuple"].append((kind, (_s(it.get("event_trigger", "")), kind)))
        else:
            etype = _s(it.get("event_type", ""))
            levels["event"].append((etype, (etype, _s(it.get("event_trigger", "")) if task == "EE" else "")))
            for arg in _list(it.get("arguments")):
                if isinstance(arg, dict):
                    levels["argument"].append((etype, (etype, _s(arg.get("argument", "")), _s(arg.get("role", "")))))
    return levels


class Tally:
    """Micro counts for one level, overall and per type."""

    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.pred: Counter[str] = Counter()
        self.gold: Counter[str] = Counter()

    def add(self, gold: list[tuple[str, Tuple]], pred: list[tuple[str, Tuple]]) -> None:
        remaining = Counter(t for _, t in gold)
        for kind, _ in gold:
            self.gold[kind] += 1
        for kind, t in pred:
            self.pred[kind] += 1
            if remaining[t] > 0:
                remaining[t] -= 1
                self.tp[kind] += 1

    @staticmethod
    def prf(tp: int, pred: int, gold: int) -> dict[str, float | int]:
        p = tp / pred if pred else 0.0
        r = tp / gold if gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"precision": p, "recall": r, "f1": f, "tp": tp, "pred": pred, "gold": gold}

    def report(self) -> dict[str, Any]:
        kinds = sorted(set(self.pred) | set(self.gold))
        return {"overall": self.prf(sum(self.tp.values()), sum(self.pred.values()), sum(self.gold.values())),
                "per_type": {k: self.prf(self.tp[k], self.pred[k], self.gold[k]) for k in kinds}}


def _read_jsonl(path: Path, what: str) -> Iterable[tuple[int, dict[str, Any]]]:
    from knowlm_local.jsonio import iter_jsonl

    return iter_jsonl(path, what, hint=f"the {what} file must be JSON Lines, one object per line")


def _load_predictions(path: Path, task: str | None) -> tuple[str | None, dict[str, dict[str, Any]], int]:
    """Predictions by id: merged ``result`` (or parsed IEPile ``output`` strings); the unparseable count."""
    preds: dict[str, dict[str, Any]] = {}
    unparseable = 0
    for line_no, rec in _read_jsonl(path, "prediction"):
        task = task or (rec.get("task") if isinstance(rec.get("task"), str) else None)
        key = str(rec.get("id", line_no))
        entry = preds.setdefault(key, {"result": {}, "outputs": []})
        if isinstance(rec.get("result"), dict):
            entry["result"] = rec["result"]
            unparseable += sum(1 for e in _list(rec.get("errors")) if isinstance(e, dict) and e.get("kind") == "unparseable")
        elif isinstance(rec.get("output"), str):
            parsed = parse_answer(rec["output"])
            if parsed.ok:
                entry["outputs"].append(parsed.value)
            else:
                unparseable += 1
        else:
            raise KnowLMError(f"line {line_no} of {path} has neither \"result\" nor \"output\"",
                              "score reads `knowlm-local extract` output or IEPile-style prediction files")
    return task, preds, unparseable


def score_files(pred_path: str | Path, gold_path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Scores of a prediction file against a gold file (see the module docstring for the accepted forms)."""
    task_name, preds, unparseable = _load_predictions(Path(pred_path), get_task(task).name if task else None)
    if task_name is None:
        raise KnowLMError("cannot tell the task from the prediction file", "pass --task")
    task_name = get_task(task_name).name
    levels = ["event", "argument"] if task_name in ("EE", "EEA") else ["tuple"]
    tallies = {level: Tally() for level in levels}
    missing = 0
    matched = 0
    for line_no, gold in _read_jsonl(Path(gold_path), "gold"):
        key = str(gold.get("id", line_no))
        gold_levels = gold_tuples(task_name, gold)
        pred = preds.get(key)
        if pred is None:
            missing += 1
            pred_levels = result_tuples(task_name, {})
        else:
            matched += 1
            pred_levels = result_tuples(task_name, pred["result"])
            for out in pred["outputs"]:
                for level, items in result_tuples(task_name, out).items():
                    pred_levels[level] += items
        for level in levels:
            tallies[level].add(gold_levels[level], pred_levels[level])
    if matched == 0:
        raise KnowLMError("no prediction matches a gold record by id",
                          "check that both files use the same ids (or both have none)")
    return {"task": task_name, "records": matched, "missing": missing, "unparseable": unparseable,
            "levels": {level: t.report() for level, t in tallies.items()}}


def print_scores(scores: dict[str, Any], console: Any) -> None:
    """The scores as rich tables (percentages, like IEPile's evaluator prints them)."""
    from rich.markup import escape
    from rich.table import Table

    for level, rep in scores["levels"].items():
        table = Table(title=f"{scores['task']} · {level}s", title_justify="left")
        for col in ("type", "P", "R", "F1", "tp", "pred", "gold"):
            table.add_column(col, justify="left" if col == "type" else "right")
        rows = list(rep["per_type"].items()) + [("[bold]overall (micro)[/bold]", rep["overall"])]
        for name, s in rows:
            table.add_row(name if name.startswith("[bold]") else escape(name), f"{100 * s['precision']:.2f}",
                          f"{100 * s['recall']:.2f}", f"{100 * s['f1']:.2f}", str(s["tp"]), str(s["pred"]),
                          str(s["gold"]))
        console.print(table)
    console.print(f"records scored: {scores['records']}; gold records without a prediction: {scores['missing']}; "
                  f"unparseable answers: {scores['unparseable']}", highlight=False)
