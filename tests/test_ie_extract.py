"""Extraction end to end with the embedded SmolLM2 through llama.cpp: every task in Chinese and English,
offsets, identical answers with speculation, the CLI, bad input, and resume after a real kill."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import kill_after_records, knowlm_exe

from knowlm_local.cli import app
from knowlm_local.ie.extract import Extractor
from knowlm_local.ie.run import load_for_extract
from knowlm_local.ie.tasks import TASKS, group_labels
from knowlm_local.runtime import LoadOptions

DOCS = {
    "en": [
        {"id": "en1", "text": "Marie Curie was born in Warsaw. She later worked at the University of Paris.",
         "source": "test"},
        {"id": "en2", "text": "Apple was founded by Steve Jobs in Cupertino, California."},
    ],
    "zh": [
        {"id": "zh1", "text": "马云于1999年在杭州创办了阿里巴巴。", "source": "test"},
        {"id": "zh2", "text": "鲁迅出生于浙江绍兴，是中国现代文学的奠基人。"},
    ],
}
FAST = ["--ctx", "1024", "-n", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def model():
    loaded, _ = load_for_extract("smollm2", LoadOptions(n_ctx=1024, seed=0, n_threads=1))
    yield loaded
    loaded.backend.close()


def _params(model, n=40):
    return model.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=n)


def _check_record(rec, src, task, lang):
    assert {"id", "text", "task", "schema", "result", "spans", "errors"} <= set(rec)
    assert all(rec[k] == v for k, v in src.items())  # input fields kept as they were
    assert rec["task"] == task and rec["schema"] == TASKS[task].default_schema[lang]
    assert list(rec["result"]) == list(group_labels(task, rec["schema"]))
    assert not [e for e in rec["errors"] if e["kind"] == "unparseable"], rec["errors"]
    text = rec["text"]
    for span in rec["spans"]:
        assert span["hallucinated"] == (not span["offsets"])
        for start, end in span["offsets"]:
            found = text[start:end]
            if span.get("match") == "loose":
                assert " ".join(found.lower().split()) == " ".join(span["text"].lower().split())
            else:
                assert found == span["text"]


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_in_both_languages(model, task):
    ex = Extractor(model, task, params=_params(model))
    for lang, docs in DOCS.items():
        for doc in docs:
            rec = ex.extract(dict(doc))
            _check_record(rec, doc, task, lang)
    st = ex.stats
    assert st.records == 4 and st.calls >= 4 and st.unparseable == 0
    assert st.cached_tokens > 0  # the shared instruction prefix was re-used from the KV cache


@pytest.mark.parametrize("form", ["oneke", "alpaca"])
def test_the_oneke_and_alpaca_prompt_forms_run_end_to_end(model, form):
    ex = Extractor(model, "RE", form=form, params=_params(model, 32))
    rec = ex.extract(dict(DOCS["zh"][0]))
    _check_record(rec, DOCS["zh"][0], "RE", "zh")
    assert ex.form == form and ex.stats.calls == 1


def test_offsets_point_at_the_right_characters_in_a_longer_document(model):
    text = ("第一段：张三在北京工作。\n\n" + "Alice Moreau joined Northwind Labs in Lisbon. " * 3).strip()
    ex = Extractor(model, "NER", schema=["person", "organization", "location"], lang="en",
                   params=_params(model, 64), chunk_tokens=24)
    rec = ex.extract({"id": "x", "text": text})
    assert ex.stats.chunks >= 3  # 24-token chunks: the document was cut at sentence boundaries
    for span in rec["spans"]:
        for s, e in span["offsets"]:
            assert text[s:e] == span["text"] or span.get("match") == "loose"
    # a string the model copied from the repeated sentence is found at every occurrence
    for span in rec["spans"]:
        if span["text"] in ("Alice Moreau", "Northwind Labs", "Lisbon"):
            assert len(span["offsets"]) == 3


def test_speculative_drafts_do_not_change_greedy_answers(model):
    """On one CPU thread with flash attention, verified drafts give exactly the plain greedy answers."""
    spec, draft = load_for_extract("smollm2", LoadOptions(n_ctx=1024, seed=0, n_threads=1), prompt_lookup=8)
    try:
        for task in ("NER", "RE"):
            plain = Extractor(model, task, params=_params(model))
            fast = Extractor(spec, task, params=_params(spec), draft=draft)
            for doc in DOCS["en"] + DOCS["zh"]:
                assert fast.extract(dict(doc))["result"] == plain.extract(dict(doc))["result"]
        assert draft.proposed > 0 and draft.accepted > 0
    finally:
        spec.backend.close()


def test_cli_table_from_stdin_and_jsonl_to_a_file(runner, tmp_path):
    result = runner.invoke(app, ["extract", "-", "--task", "ner", "--format", "table", *FAST],
                           input="马云于1999年在杭州创办了阿里巴巴。\n", env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "NER · id 1" in result.output and "built-in extraction model smollm2-ie" in result.output
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS["en"]), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["extract", str(src), "--task", "re", "--schema", "founder,place of birth",
                                 "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["en1", "en2"]
    assert all(r["schema"] == ["founder", "place of birth"] and r["task"] == "RE" for r in rows)


def _fails(runner, args, *needles):
    result = runner.invoke(app, ["extract", *args])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "hint:" in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_bad_input_is_refused_before_loading_a_model(runner, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Ada met Bob.", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    _fails(runner, [str(tmp_path / "empty.txt")], "is empty")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01\x02GGUF" * 20)
    _fails(runner, [str(tmp_path / "x.bin")], "binary")
    (tmp_path / "gbk.txt").write_bytes("马云创办了阿里巴巴".encode("gbk"))
    _fails(runner, [str(tmp_path / "gbk.txt")], "not UTF-8", "iconv")
    _fails(runner, [str(good), "--task", "ner2"], "unknown task")
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text('["person",\n "location",,\n]', encoding="utf-8")
    _fails(runner, [str(good), "--schema-file", str(bad_schema)], "line 2, column")
    bad_yaml = tmp_path / "schema.yaml"
    bad_yaml.write_text("- person\n- [location\n", encoding="utf-8")
    _fails(runner, [str(good), "--schema-file", str(bad_yaml)], "not valid YAML", "line")
    wrong = tmp_path / "events.json"
    wrong.write_text('["acquisition"]', encoding="utf-8")
    _fails(runner, [str(good), "--task", "ee", "--schema-file", str(wrong)], "EE takes objects")
    _fails(runner, [str(good), "--task", "ner", "--schema", '[{"event_type": "x"}]'], "NER takes label strings")
    existing = tmp_path / "out.jsonl"
    existing.write_text('{"id": "1"}\n', encoding="utf-8")
    _fails(runner, [str(good), "-o", str(existing)], "already exists", "--resume", "--force")
    _fails(runner, [str(good), "--resume"], "needs an output file")
    _fails(runner, [str(tmp_path / "missing.txt")], "no such file")


def test_resume_after_a_real_kill_loses_nothing_and_repeats_nothing(tmp_path, cli_env):
    names = ["Alice Moreau", "Daniel Okafor", "Mei Lin", "Tomas Novak", "Priya Raman", "Jonas Berg"]
    cities = ["Lisbon", "Nairobi", "Osaka", "Prague"]
    src = tmp_path / "in.jsonl"
    ids = [f"r{i:02d}" for i in range(24)]
    src.write_text("".join(json.dumps({"id": rid, "text": f"{names[i % 6]} moved to {cities[i % 4]} in {1990 + i}."})
                           + "\n" for i, rid in enumerate(ids)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # One record at a time here; test_engine.py kills a run with several records in flight (--parallel 4).
    cmd = [knowlm_exe(), "extract", str(src), "--task", "ner", "-o", str(out), "-m", "smollm2", "--parallel", "1",
           *FAST]
    written = kill_after_records(cmd, cli_env, out)
    assert 3 <= len(written) < len(ids) and written == ids[:len(written)]

    again = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(written)} already done" in resumed.stderr.replace("\n", " ")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids  # every record once, in order
    assert all(json.loads(line)["task"] == "NER" for line in lines)
