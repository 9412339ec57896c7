"""instruct from-triples: exactly the instructions build-ie-data writes for the equivalent DuIE file, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_instruct_generate import read_jsonl, write_jsonl

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.triples import from_triples
from knowlm_local.train.iedata import build_ie_data

TRIPLES = [
    {"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw", "head_type": "person", "tail_type": "city"},
    {"head": "Marie Curie", "relation": "award received", "tail": "Nobel Prize", "head_type": "person",
     "tail_type": "award"},
    {"head": "Warsaw", "relation": "country", "tail": "Poland", "head_type": "city", "tail_type": "country"},
    {"head": "Alan Turing", "relation": "place of birth", "tail": "London"},  # in no text
    {"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw", "head_type": "person",
     "tail_type": "city"},  # a repeat
    {"head": "Poland", "relation": "capital", "tail": "Warsaw"},  # untyped
    {"head": "Paris", "relation": "twin city"},  # no tail
    {"head": "Rome", "relation": "same as", "tail": "Rome"},
]
TEXTS = [
    {"id": "t1", "text": "Marie Curie was born in Warsaw and received the Nobel Prize twice."},
    {"id": "t2", "text": "Warsaw is the capital of Poland."},
    {"id": "t3", "text": "The weather was fine."},
    {"id": "t4", "text": "Marie Curie moved to Paris."},  # head without its tail
]
# What a person would write as DuIE input for the same knowledge: one record per text with its triples.
DUIE = [
    {"id": "t1", "source": "texts", "text": TEXTS[0]["text"], "spo_list": [
        {"predicate": "place of birth", "subject": "Marie Curie", "object": "Warsaw", "subject_type": "person",
         "object_type": "city"},
        {"predicate": "award received", "subject": "Marie Curie", "object": "Nobel Prize", "subject_type": "person",
         "object_type": "award"}]},
    {"id": "t2", "source": "texts", "text": TEXTS[1]["text"], "spo_list": [
        {"predicate": "country", "subject": "Warsaw", "object": "Poland", "subject_type": "city",
         "object_type": "country"},
        {"predicate": "capital", "subject": "Poland", "object": "Warsaw"}]},
]


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "triples.jsonl", TRIPLES), write_jsonl(tmp_path / "texts.jsonl", TEXTS)


@pytest.mark.parametrize("options", [{}, {"tasks": ["re", "ner", "spo"], "neg_share": 0.5, "seed": 3},
                                     {"shuffle": False, "dev_share": 0.5}])
def test_from_triples_writes_what_build_ie_data_writes_for_the_duie_file(inputs, tmp_path, options):
    triples, texts = inputs
    (tmp_path / "by-hand").mkdir()
    duie = write_jsonl(tmp_path / "by-hand" / "texts.jsonl", DUIE)  # named like the texts: the same source stem
    dev = {"dev_output": str(tmp_path / "ours.dev.jsonl")} if options.get("dev_share") else {}
    ref_dev = {"dev_output": str(tmp_path / "ref.dev.jsonl")} if options.get("dev_share") else {}
    report = from_triples(triples, texts, tmp_path / "ours.jsonl", **options, **dev)
    build_ie_data([str(duie)], str(tmp_path / "ref.jsonl"), fmt="duie", **options, **ref_dev)
    ours, ref = (tmp_path / "ours.jsonl").read_bytes(), (tmp_path / "ref.jsonl").read_bytes()
    assert ours == ref and ours
    if dev:
        assert (tmp_path / "ours.dev.jsonl").read_bytes() == (tmp_path / "ref.dev.jsonl").read_bytes()
    assert report.triples == 5 and report.matches == 4 and report.texts_matched == 2 and report.texts == 4
    assert report.unmatched == 1  # Alan Turing
    assert dict(report.skipped) == {"duplicate": 1, "malformed triple": 1, "head is the tail": 1}
    assert "triples.jsonl:7" in report.examples[0]
    assert report.lines()[0] == ("5 triples, 4 texts: 4 matches in 2 texts; 1 triples matched no text, "
                                 "2 texts matched no triple")


def test_instruction_records_answer_with_the_matched_triples(inputs, tmp_path):
    triples, texts = inputs
    from_triples(triples, texts, tmp_path / "ie.jsonl", tasks=["re"], shuffle=False)
    first = read_jsonl(tmp_path / "ie.jsonl")[0]
    assert first["id"] == "t1-RE-0" and first["task"] == "RE" and first["source"] == "texts"
    answer = json.loads(first["output"])
    assert answer["place of birth"] == [{"subject": "Marie Curie", "object": "Warsaw"}]
    assert answer["award received"] == [{"subject": "Marie Curie", "object": "Nobel Prize"}]
    assert answer["country"] == [] and answer["capital"] == []  # relations of other texts are negatives here


def test_plain_text_input_keeps_a_duie_copy_and_refuses_what_it_cannot_use(inputs, tmp_path):
    triples, _ = inputs
    txt = tmp_path / "wiki.txt"
    txt.write_text("Warsaw is the capital of Poland.\n\nNothing here.\n", encoding="utf-8")
    report = from_triples(triples, txt, tmp_path / "ie.jsonl", duie_output=tmp_path / "matched.jsonl")
    assert [r["id"] for r in read_jsonl(tmp_path / "matched.jsonl")] == ["wiki-1"]
    assert report.texts == 2 and report.build.train > 0
    with pytest.raises(KnowLMError, match="already exists"):
        from_triples(triples, txt, tmp_path / "ie.jsonl")
    with pytest.raises(KnowLMError, match="no triple of .* matched a text"):
        from_triples(triples, write_jsonl(tmp_path / "none.jsonl", [TEXTS[2]]), tmp_path / "x.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRIPLES[0]) + "\nhead,relation,tail\n", encoding="utf-8")
    with pytest.raises(KnowLMError, match="line 2 of .*bad.jsonl is not valid JSON"):
        from_triples(bad, txt, tmp_path / "y.jsonl")
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()
