"""The scorer against P/R/F1 computed by hand on small fixtures (extract output and IEPile-style files)."""

from __future__ import annotations

import json

import pytest

from knowlm_local.cli import app
from knowlm_local.errors import KnowLMError
from knowlm_local.ie.score import score_files


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def ner_files(tmp_path):
    pred = _write(tmp_path / "pred.jsonl", [
        {"id": "1", "text": "...", "task": "NER", "schema": [], "spans": [], "errors": [],
         "result": {"person": ["Ada", "Ada"], "location": ["London", "Paris"], "organization": []}},
        {"id": "2", "text": "...", "task": "NER", "schema": [], "spans": [],
         "errors": [{"kind": "unparseable", "chunk": 1, "group": 0}, {"kind": "truncated"}],
         "result": {"person": ["Bob"], "location": [], "organization": []}},
    ])
    gold = _write(tmp_path / "gold.jsonl", [  # IEPile source-file style
        {"id": "1", "text": "...", "entity": [{"entity": "Ada", "entity_type": "person"},
                                              {"entity": "London", "entity_type": "location"},
                                              {"entity": "ACME", "entity_type": "organization"}]},
        {"id": "2", "text": "...", "entity": [{"entity": "Bob", "entity_type": "person"},
                                              {"entity": "Carol", "entity_type": "person"}]},
        {"id": "3", "text": "...", "entity": [{"entity": "Rome", "entity_type": "location"}]},
    ])
    return pred, gold


def test_ner_micro_and_per_type_by_hand(ner_files):
    s = score_files(*ner_files)
    # pred tuples 5 (Ada twice: only one can match), gold 6, true positives 3 (Ada, London, Bob)
    overall = s["levels"]["tuple"]["overall"]
    assert (overall["tp"], overall["pred"], overall["gold"]) == (3, 5, 6)
    assert overall["precision"] == pytest.approx(0.6)
    assert overall["recall"] == pytest.approx(0.5)
    assert overall["f1"] == pytest.approx(6 / 11)
    per = s["levels"]["tuple"]["per_type"]
    assert per["person"]["f1"] == pytest.approx(2 / 3)
    assert (per["location"]["precision"], per["location"]["recall"]) == (0.5, 0.5)
    assert per["organization"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "pred": 0, "gold": 1}
    assert (s["records"], s["missing"], s["unparseable"], s["task"]) == (2, 1, 1, "NER")


def test_ee_events_and_arguments_with_iepile_label_strings(tmp_path):
    pred = _write(tmp_path / "p.jsonl", [{"id": "e1", "task": "EE", "errors": [], "result": {
        "acquisition": [{"trigger": "bought", "arguments": {"acquirer": "ACME", "acquired": "Gamma", "time": "NAN"}}],
        "layoff": [{"trigger": "cut", "arguments": {"company": "ACME"}}]}}])
    label = [{"event_type": "acquisition", "event_trigger": "bought",
              "arguments": [{"argument": "ACME", "role": "acquirer"}, {"argument": "Beta", "role": "acquired"}]}]
    gold = _write(tmp_path / "g.jsonl", [{"id": "e1", "instruction": "{}", "label": json.dumps(label)}])
    s = score_files(pred, gold)
    ev, arg = s["levels"]["event"]["overall"], s["levels"]["argument"]["overall"]
    assert (ev["tp"], ev["pred"], ev["gold"]) == (1, 2, 1)
    assert ev["f1"] == pytest.approx(2 / 3)
    assert (arg["tp"], arg["pred"], arg["gold"]) == (1, 3, 2)  # "NAN" is not an argument
    assert arg["precision"] == pytest.approx(1 / 3) and arg["recall"] == pytest.approx(0.5)
    assert arg["f1"] == pytest.approx(0.4)


def test_iepile_prediction_lines_are_merged_per_id(tmp_path):
    pred = _write(tmp_path / "p.jsonl", [
        {"id": "r1", "task": "RE", "output": '{"founder": [{"subject": "Apple", "object": "Steve Jobs"}]}'},
        {"id": "r1", "output": '{"place of birth": []}'},
        {"id": "r1", "output": "I am not sure."},
    ])
    gold = _write(tmp_path / "g.jsonl", [{"id": "r1", "relation": [
        {"head": "Apple", "relation": "founder", "tail": "Steve Jobs"},
        {"head": "Ada", "relation": "place of birth", "tail": "London"}]}])
    s = score_files(pred, gold)
    overall = s["levels"]["tuple"]["overall"]
    assert (overall["tp"], overall["pred"], overall["gold"]) == (1, 1, 2)
    assert overall["f1"] == pytest.approx(2 / 3)
    assert s["unparseable"] == 1


def test_kg_scores_entity_attribute_value_triples(tmp_path):
    pred = _write(tmp_path / "p.jsonl", [{"id": "k", "task": "KG", "errors": [], "result": {
        "人物": {"马三立": {"出生地点": "北京", "职业": ["相声演员", "艺术家"]}}}}])
    gold = _write(tmp_path / "g.jsonl", [{"id": "k", "relation": [
        {"head": "马三立", "relation": "出生地点", "tail": "北京"}, {"head": "马三立", "relation": "职业", "tail": "相声演员"},
        {"head": "马三立", "relation": "别名", "tail": "马桂福"}]}])
    overall = score_files(pred, gold)["levels"]["tuple"]["overall"]
    assert (overall["tp"], overall["pred"], overall["gold"]) == (2, 3, 3)


def test_errors_are_clear(tmp_path, ner_files):
    pred, _ = ner_files
    other = _write(tmp_path / "other.jsonl", [{"id": "zzz", "entity": []}])
    with pytest.raises(KnowLMError, match="no prediction matches"):
        score_files(pred, other)
    with pytest.raises(KnowLMError, match="no such gold file"):
        score_files(pred, tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "result": {}}\n{not json\n', encoding="utf-8")
    with pytest.raises(KnowLMError, match="line 2"):
        score_files(bad, pred, task="ner")
    notask = _write(tmp_path / "notask.jsonl", [{"id": "1", "result": {}}])
    with pytest.raises(KnowLMError, match="--task"):
        score_files(notask, pred)


def test_score_cli(runner, ner_files):
    pred, gold = ner_files
    result = runner.invoke(app, ["score", str(pred), str(gold), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["levels"]["tuple"]["overall"]["f1"] == pytest.approx(6 / 11)
    table = runner.invoke(app, ["score", str(pred), str(gold)], env={"COLUMNS": "120"})
    assert table.exit_code == 0 and "54.55" in table.stdout and "unparseable answers: 1" in table.stdout
    bad = runner.invoke(app, ["score", str(pred), str(gold), "--task", "nope"])
    assert bad.exit_code == 1 and "unknown task" in bad.output
