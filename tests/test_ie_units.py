"""The model-free parts of extract: schemas and their files, chunking, spans, input/output files, the drafter."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.chunk import chunk_spans, sentence_spans
from knowlm_local.ie.constrain import answer_schema
from knowlm_local.ie.extract import detect_lang
from knowlm_local.ie.records import done_ids, open_source, prepare_output, read_records
from knowlm_local.ie.schema_io import load_schema_file, parse_schema_text
from knowlm_local.ie.spans import locate
from knowlm_local.ie.speculate import CopyDraft
from knowlm_local.ie.tasks import TASKS, get_task, group_labels, split_groups, validate_schema

# -- tasks and schemas ---------------------------------------------------------------------------

def test_unknown_task():
    with pytest.raises(KnowLMError, match="unknown task 'nerd'") as err:
        get_task("nerd")
    assert "NER, RE" in err.value.hint


@pytest.mark.parametrize("task,schema,match", [
    ("NER", [{"event_type": "x"}], "schema item 1 is an object; NER takes label strings"),
    ("RE", ["founder", 3], "schema item 2 is int"),
    ("EE", ["acquisition"], "schema item 1 is 'acquisition'; EE takes objects"),
    ("EE", [{"event_type": "a", "arguments": ["x"], "roles": []}], "keys \\['roles'\\]"),
    ("EE", [{"event_type": "a", "trigger": "yes", "arguments": []}], "trigger"),
    ("EEA", [{"event_type": "a", "arguments": "buyer"}], "list of non-empty strings"),
    ("KG", [{"entity_type": "person"}], "lists no attributes"),
    ("KG", {"person": "a human"}, "KG takes a list schema"),
    ("SPO", [{"subject_type": "a", "predicate": "b"}], "object_type"),
    ("NER", [], "non-empty list"),
    ("NER", "person", "non-empty list"),
])
def test_schema_types_the_task_does_not_allow(task, schema, match):
    with pytest.raises(KnowLMError, match=match):
        validate_schema(task, schema)


def test_split_groups_follow_split_num_and_dict_schemas_stay_whole():
    labels = [f"l{i}" for i in range(14)]
    assert [len(g) for g in split_groups("NER", labels)] == [6, 6, 2]
    assert [len(g) for g in split_groups("RE", labels)] == [4, 4, 4, 2]
    assert split_groups("NER", {"a": "x", "b": "y"}) == [{"a": "x", "b": "y"}]
    kg = [{"entity_type": "p", "attribute": ["a"]}, {"entity_type": "q", "attributes": ["b"]}]
    assert len(split_groups("KG", kg)) == 2
    assert group_labels("KG", kg) == {"p": ["a"], "q": ["b"]}


def test_answer_schemas_compile_to_grammars():
    import llama_cpp

    for name, spec in TASKS.items():
        for lang in ("zh", "en"):
            for group in split_groups(name, spec.default_schema[lang]):
                llama_cpp.LlamaGrammar.from_json_schema(json.dumps(answer_schema(name, group)), verbose=False)


@pytest.mark.parametrize("task,text,expected", [
    ("NER", "person, 地点、组织", ["person", "地点", "组织"]),
    ("EE", "acquisition: acquirer|acquired; layoff: company",
     [{"event_type": "acquisition", "trigger": True, "arguments": ["acquirer", "acquired"]},
      {"event_type": "layoff", "trigger": True, "arguments": ["company"]}]),
    ("EEA", "收购：收购方|时间", [{"event_type": "收购", "arguments": ["收购方", "时间"]}]),
    ("KG", "person: date of birth|occupation", [{"entity_type": "person", "attribute": ["date of birth", "occupation"]}]),
    ("SPO", "company/founder/person", [{"subject_type": "company", "predicate": "founder", "object_type": "person"}]),
    ("RE", '{"founder": "who founded a company"}', {"founder": "who founded a company"}),
])
def test_schema_text_forms(task, text, expected):
    assert parse_schema_text(task, text) == expected


def test_schema_text_errors():
    with pytest.raises(KnowLMError, match="TYPE: name"):
        parse_schema_text("EE", "acquisition")
    with pytest.raises(KnowLMError, match="subject_type/predicate/object_type"):
        parse_schema_text("SPO", "founder")
    with pytest.raises(KnowLMError, match="not valid JSON"):
        parse_schema_text("NER", '["a", ')


def test_schema_files_json_and_yaml(tmp_path):
    j = tmp_path / "events.json"
    j.write_text(json.dumps({"task": "ee", "schema": [{"event_type": "收购", "arguments": ["收购方"]}]}),
                 encoding="utf-8")
    assert load_schema_file("EE", j) == [{"event_type": "收购", "trigger": True, "arguments": ["收购方"]}]
    with pytest.raises(KnowLMError, match="schema for EE, not NER"):
        load_schema_file("NER", j)
    y = tmp_path / "labels.yaml"
    y.write_text("- person\n- location\n", encoding="utf-8")
    assert load_schema_file("NER", y) == ["person", "location"]


def test_schema_file_syntax_errors_say_where(tmp_path):
    j = tmp_path / "bad.json"
    j.write_text('[\n  "person",\n  "location"\n  "org"\n]\n', encoding="utf-8")
    with pytest.raises(KnowLMError, match="not valid JSON: .* at line 4, column 3"):
        load_schema_file("NER", j)
    y = tmp_path / "bad.yaml"
    y.write_text("- person\n- [location\n- org: x: y\n", encoding="utf-8")
    with pytest.raises(KnowLMError, match=r"not valid YAML: .* at line \d+, column \d+"):
        load_schema_file("NER", y)
    t = tmp_path / "schema.txt"
    t.write_text("{oops", encoding="utf-8")
    with pytest.raises(KnowLMError, match="not valid JSON: .* line 1, column 2"):
        load_schema_file("NER", t)
    with pytest.raises(KnowLMError, match="no such schema file"):
        load_schema_file("NER", tmp_path / "nope.json")
    e = tmp_path / "empty.yaml"
    e.write_text("", encoding="utf-8")
    with pytest.raises(KnowLMError, match="is empty"):
        load_schema_file("NER", e)


# -- chunking --------------------------------------------------------------------------------------

def _chars(s: str) -> int:
    return len(s)


def test_sentences_chinese_and_english():
    text = "马云创办了阿里巴巴。他说：“很好！”然后走了。Mr. Smith paid 3.5 dollars. J. K. Rowling wrote it!\nNext line"
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == ["马云创办了阿里巴巴。", "他说：“很好！”", "然后走了。", "Mr. Smith paid 3.5 dollars.",
                   "J. K. Rowling wrote it!", "Next line"]


def test_chunks_pack_whole_sentences_within_the_budget():
    text = "One two three. Four five six seven. Eight. Nine ten eleven twelve thirteen."
    chunks = chunk_spans(text, _chars, 40)
    pieces = [text[s:e] for s, e in chunks]
    assert pieces == ["One two three. Four five six seven.", "Eight. Nine ten eleven twelve thirteen."]
    assert all(len(p) <= 40 for p in pieces)
    assert chunk_spans("  short  ", _chars, 40) == [(2, 7)]
    assert chunk_spans("   ", _chars, 40) == []


def test_an_overlong_sentence_is_cut_at_clauses_then_words_then_characters():
    text = "甲乙丙丁戊，己庚辛壬癸，子丑寅卯辰巳午未申酉戌亥。"
    pieces = [text[s:e] for s, e in chunk_spans(text, _chars, 8)]
    assert pieces[:2] == ["甲乙丙丁戊，", "己庚辛壬癸，"]
    assert "".join(pieces) == text and all(len(p) <= 8 for p in pieces)
    words = "alpha beta gamma delta epsilon zeta eta theta"
    pieces = [words[s:e] for s, e in chunk_spans(words, _chars, 12)]
    assert all(len(p) <= 12 for p in pieces) and " ".join(pieces) == words
    blob = "x" * 50
    assert [e - s for s, e in chunk_spans(blob, _chars, 16)] == [16, 16, 16, 2]


# -- spans -----------------------------------------------------------------------------------------

def test_spans_all_occurrences_loose_matches_and_hallucinations():
    text = "Ada met Bob. Later ada   lovelace met Bob again in 伦敦。"
    result = {"person": ["Bob", "Ada Lovelace", "Carol"], "location": ["伦敦"]}
    spans = locate("NER", text, result)
    by_text = {s["text"]: s for s in spans}
    second = text.index("Bob", 10)
    assert by_text["Bob"]["offsets"] == [[8, 11], [second, second + 3]]
    assert by_text["Ada Lovelace"]["match"] == "loose"
    s, e = by_text["Ada Lovelace"]["offsets"][0]
    assert text[s:e] == "ada   lovelace"
    assert by_text["Carol"]["hallucinated"] and by_text["Carol"]["offsets"] == []
    s, e = by_text["伦敦"]["offsets"][0]
    assert text[s:e] == "伦敦" and not by_text["伦敦"]["hallucinated"]


def test_spans_for_events_skip_nan():
    result = {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "ACME", "time": "NAN",
                                                                  "acquired": ["Beta", "Gamma"]}}]}
    spans = locate("EE", "ACME bought Beta.", result)
    assert [(s["field"], s.get("role"), s["text"], s["hallucinated"]) for s in spans] == [
        ("trigger", None, "bought", False), ("argument", "acquirer", "ACME", False),
        ("argument", "acquired", "Beta", False), ("argument", "acquired", "Gamma", True)]


def test_language_detection():
    assert detect_lang("马云于1999年在杭州创办了阿里巴巴。") == "zh"
    assert detect_lang("Jack Ma founded Alibaba (阿里巴巴) in Hangzhou in 1999.") == "en"


# -- input and output files ------------------------------------------------------------------------

def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(KnowLMError, match="is empty"):
        open_source(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n  \n\t\n")
    with pytest.raises(KnowLMError, match="is empty"):
        open_source(str(blank))
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(KnowLMError, match="binary"):
        open_source(str(binary))
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("第一行\n马云创办了阿里巴巴。".encode("gbk"))
    with pytest.raises(KnowLMError, match="not UTF-8: byte 0x.. at line 1") as err:
        open_source(str(gbk))
    assert "iconv" in err.value.hint
    with pytest.raises(KnowLMError, match="no such file"):
        open_source(str(tmp_path / "missing.txt"))


def test_non_utf8_deep_in_a_large_file_names_its_line(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(("good line\n" * 20000).encode() + "坏".encode("gbk") + b"\n")
    src = open_source(str(big), split="line")
    with pytest.raises(KnowLMError, match="line 20001"):
        list(read_records(src))


def test_jsonl_and_text_modes(tmp_path):
    jl = tmp_path / "in.jsonl"
    jl.write_text('{"id": 7, "text": "a", "meta": 1}\n\n{"text": "b"}\n'
                  '{"instruction": "{\\"instruction\\": \\"x\\", \\"schema\\": [], \\"input\\": \\"c\\"}"}\n',
                  encoding="utf-8")
    recs = list(read_records(open_source(str(jl))))
    assert recs == [{"id": "7", "text": "a", "meta": 1}, {"id": "3", "text": "b"},
                    {"id": "4", "instruction": recs[2]["instruction"], "text": "c"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(KnowLMError, match="line 2 of .* not valid JSON"):
        list(read_records(open_source(str(bad))))
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"id": 1, "body": "a"}\n', encoding="utf-8")
    with pytest.raises(KnowLMError, match='no "text"'):
        list(read_records(open_source(str(notext))))
    txt = tmp_path / "doc.txt"
    txt.write_text("\ufeffPara one\nstill one.\n\n\nPara two.\n", encoding="utf-8")
    assert [r["text"] for r in read_records(open_source(str(txt), split="para"))] == ["Para one\nstill one.",
                                                                                      "Para two."]
    assert len(list(read_records(open_source(str(txt), split="line")))) == 3
    assert [r["id"] for r in read_records(open_source(str(txt)))] == ["1"]
    stdin = io.BytesIO(b'{"id": "s", "text": "from stdin"}\n')
    assert list(read_records(open_source("-", stdin=stdin))) == [{"id": "s", "text": "from stdin"}]


def test_output_path_rules_and_resume_cuts_a_partial_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1", "result": {}}\n{"id": "2", "result": {}}\n{"id": "1", "result": {}}\n{"id": "3", "re',
                   encoding="utf-8")
    with pytest.raises(KnowLMError, match="already exists") as err:
        prepare_output(str(out), resume=False, force=False)
    assert "--resume" in err.value.hint and "--force" in err.value.hint
    with pytest.raises(KnowLMError, match="contradict"):
        prepare_output(str(out), resume=True, force=True)
    with pytest.raises(KnowLMError, match="needs an output file"):
        prepare_output(None, resume=True, force=False)
    path, skip = prepare_output(str(out), resume=True, force=False)
    assert path == out and skip == {"1": 2, "2": 1}
    assert out.read_text(encoding="utf-8").endswith('{"id": "1", "result": {}}\n')  # the cut line is gone
    assert prepare_output(str(out), resume=False, force=True) == (out, {})
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n", encoding="utf-8")
    with pytest.raises(KnowLMError, match="not an extract record"):
        done_ids(junk)


# -- the drafter -----------------------------------------------------------------------------------

def test_copy_draft_proposes_from_previous_answers_and_the_text():
    d = CopyDraft(max_draft=4, min_match=2)
    prompt = [1, 2, 3, 50, 51, 52, 53, 54, 4, 5]
    # first answer: 9 7 8 9 ... the drafter sees it token by token
    for n in range(1, 6):
        d(np.array(prompt + [9, 7, 8, 9, 6][:n]))
    # a new prompt starts a new answer: the last one is remembered and its skeleton is proposed
    got = d(np.array(prompt[:-1] + [6, 9]))
    assert list(got) == []  # "6 9" was never followed by anything yet
    got = d(np.array(prompt[:-1] + [6, 9, 7]))
    assert list(got) == [8, 9, 6]  # from the remembered answer
    got = d(np.array(prompt + [9, 7, 8, 9, 6, 50, 51]))
    assert list(got) == [52, 53, 54, 4]  # copied from the text in the prompt
    assert d.proposed == 7 and 0 <= d.accepted <= d.proposed
