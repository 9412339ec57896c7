"""The IE instruction data builder: every input format to exact instruction records, negatives, groups, splits.

Expected records are written out by hand. Where labels are shuffled, the
order in the expected schema is the one the fixed seed gives (pinned here, so
a change of the shuffle shows up); everything else (which labels, answers,
ids, texts) follows from the fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.prompt import oneke_instruction
from knowlm_local.ie.results import normalize
from knowlm_local.ie.tasks import group_labels, validate_schema
from knowlm_local.train.iedata import build_ie_data, cut_groups

# -- helpers ---------------------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, content: str | bytes | list) -> str:
    path = tmp_path / name
    if isinstance(content, list):
        content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def _read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _check(rec: dict) -> None:
    """What every IE instruction record must satisfy: extract's instruction, a normalized answer."""
    task, schema = rec["task"], rec["schema"]
    assert validate_schema(task, schema) == schema
    assert rec["instruction"] == oneke_instruction(task, rec["lang"], schema, rec["text"])
    answer = json.loads(rec["output"])
    labels = group_labels(task, schema)
    assert list(answer) == list(labels)
    assert normalize(task, labels, answer) == (answer, [])


def _build(tmp_path: Path, inputs: list[str], **kw) -> tuple[list[dict], object]:
    out = tmp_path / "out.jsonl"
    report = build_ie_data(inputs, str(out), force=True, **kw)
    recs = _read(out)
    for rec in recs:
        if rec["task"] != "general":
            _check(rec)
    return recs, report


def _rec(rid: str, task: str, lang: str, text: str, schema, answer: dict, source: str) -> dict:
    return {"id": rid, "task": task, "source": source, "lang": lang, "text": text, "schema": schema,
            "instruction": oneke_instruction(task, lang, schema, text),
            "output": json.dumps(answer, ensure_ascii=False)}


def _order(recs: list[dict]) -> list[tuple[str, list]]:
    return [(r["id"], r["schema"]) for r in recs]


# -- fixtures -----------------------------------------------------------------------------------------

T1 = "Ann founded Acme in Paris."
T2 = "Bob and Eve moved to Rome."
T3 = "In 2001 Carl founded Zeta."
IEPILE = [
    {"id": "r1", "text": T1,
     "entity": [{"entity": "Ann", "entity_type": "person"}, {"entity": "Paris", "entity_type": "location"},
                {"entity": "Acme", "entity_type": "organization"}],
     "relation": [{"head": "Acme", "relation": "founder", "tail": "Ann"},
                  {"head": "Acme", "relation": "headquarters", "tail": "Paris"}],
     "event": [{"event_trigger": "founded", "event_type": "founding",
                "arguments": [{"argument": "Ann", "role": "founder"}, {"argument": "Acme", "role": "organization"}]}]},
    {"id": "r2", "text": T2,
     "entity": [{"entity": "Eve", "entity_type": "person"}, {"entity": "Bob", "entity_type": "person"},
                {"entity": "Rome", "entity_type": "location"}, {"entity": "Bob", "entity_type": "person"}],
     "relation": [],
     "event": [{"event_trigger": "moved", "event_type": "movement",
                "arguments": [{"argument": "Eve", "role": "mover"}, {"argument": "Bob", "role": "mover"},
                              {"argument": "Rome", "role": "destination"}]}]},
    {"id": "r3", "text": T3, "source": "news",
     "event": [{"event_trigger": "founded", "event_type": "founding",
                "arguments": [{"argument": "2001", "role": "time"}, {"argument": "Carl", "role": "founder"}]}]},
]
FOUNDING = {"event_type": "founding", "trigger": True, "arguments": ["founder", "organization", "time"]}
MOVEMENT = {"event_type": "movement", "trigger": True, "arguments": ["mover", "destination"]}


# -- IEPile raw -----------------------------------------------------------------------------------------

def test_iepile_default_tasks_exact_records(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "iepile.jsonl", IEPILE)])
    r1_ee = {"movement": [], "founding": [{"trigger": "founded", "arguments": {"founder": "Ann",
                                                                               "organization": "Acme", "time": "NAN"}}]}
    assert recs == [
        _rec("r1-NER-0", "NER", "en", T1, ["person", "location", "organization"],
             {"person": ["Ann"], "location": ["Paris"], "organization": ["Acme"]}, "iepile"),
        _rec("r1-RE-0", "RE", "en", T1, ["founder", "headquarters"],
             {"founder": [{"subject": "Acme", "object": "Ann"}],
              "headquarters": [{"subject": "Acme", "object": "Paris"}]}, "iepile"),
        _rec("r1-EE-0", "EE", "en", T1, [MOVEMENT, FOUNDING], r1_ee, "iepile"),
        _rec("r2-NER-0", "NER", "en", T2, ["organization", "location", "person"],
             {"organization": [], "location": ["Rome"], "person": ["Bob", "Eve"]}, "iepile"),
        _rec("r2-RE-0", "RE", "en", T2, ["founder", "headquarters"], {"founder": [], "headquarters": []}, "iepile"),
        _rec("r2-EE-0", "EE", "en", T2, [MOVEMENT, FOUNDING],
             {"movement": [{"trigger": "moved", "arguments": {"mover": ["Bob", "Eve"], "destination": "Rome"}}],
              "founding": []}, "iepile"),
        _rec("r3-EE-0", "EE", "en", T3, [MOVEMENT, FOUNDING],
             {"movement": [], "founding": [{"trigger": "founded", "arguments": {"founder": "Carl", "organization": "NAN",
                                                                                "time": "2001"}}]}, "news"),
    ]
    assert report.records == 3 and report.train == 7 and report.dev == 0
    assert report.tasks == {"NER": 2, "RE": 2, "EE": 3}


def test_iepile_event_subtasks_when_asked(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "iepile.jsonl", IEPILE)], tasks=["eet", "EEA", "NER"])
    eea_f = {"event_type": "founding", "arguments": ["founder", "organization", "time"]}
    eea_m = {"event_type": "movement", "arguments": ["mover", "destination"]}
    by_id = {r["id"]: r for r in recs}
    assert set(by_id) == {"r1-EET-0", "r1-EEA-0", "r1-NER-0", "r2-EET-0", "r2-EEA-0", "r2-NER-0",
                          "r3-EET-0", "r3-EEA-0"}
    assert by_id["r1-EET-0"] == _rec("r1-EET-0", "EET", "en", T1, ["movement", "founding"],
                                     {"movement": [], "founding": ["founded"]}, "iepile")
    assert by_id["r2-EEA-0"] == _rec("r2-EEA-0", "EEA", "en", T2, [eea_f, eea_m],
                                     {"founding": [], "movement": [{"mover": ["Bob", "Eve"], "destination": "Rome"}]},
                                     "iepile")
    assert by_id["r3-EEA-0"] == _rec("r3-EEA-0", "EEA", "en", T3, [eea_f, eea_m],
                                     {"founding": [{"founder": "Carl", "organization": "NAN", "time": "2001"}],
                                      "movement": []}, "news")
    assert report.unbuilt == {"NER: the record has no annotations for it": 1}  # r3 has events only


def test_given_event_labels_replace_the_seen_ones_and_serve_eet_and_eea(tmp_path):
    labels = {"EE": [{"event_type": "founding", "trigger": True, "arguments": ["founder", "time"]},
                     {"event_type": "layoff", "trigger": True, "arguments": ["company"]}]}
    recs, _ = _build(tmp_path, [_write(tmp_path, "iepile.jsonl", IEPILE[2:])], tasks=["EE", "EET", "EEA"],
                     labels=labels)
    layoff = {"event_type": "layoff", "trigger": True, "arguments": ["company"]}
    founding = {"event_type": "founding", "trigger": True, "arguments": ["founder", "time"]}
    by_task = {r["task"]: r for r in recs}
    assert sorted(by_task) == ["EE", "EEA", "EET"] and len(recs) == 3  # "movement" is not in the given set
    assert sorted(by_task["EE"]["schema"], key=str) == sorted([founding, layoff], key=str)
    assert json.loads(by_task["EE"]["output"]) == {
        "founding": [{"trigger": "founded", "arguments": {"founder": "Carl", "time": "2001"}}], "layoff": []}
    assert sorted(by_task["EET"]["schema"]) == ["founding", "layoff"]
    assert json.loads(by_task["EEA"]["output"]) == {"founding": [{"founder": "Carl", "time": "2001"}], "layoff": []}


def test_chinese_record_gets_the_chinese_instruction(tmp_path):
    text = "马云创办了阿里巴巴。"
    rec = {"id": "z", "text": text, "entity": [{"entity": "马云", "entity_type": "人物"}]}
    recs, _ = _build(tmp_path, [_write(tmp_path, "zh.jsonl", [rec])], labels={"NER": ["人物", "组织机构"]},
                     neg_share=0)
    assert recs == [_rec("z-NER-0", "NER", "zh", text, ["人物"], {"人物": ["马云"]}, "zh")]
    assert "你是专门进行实体抽取的专家" in recs[0]["instruction"]


def test_entity_string_not_in_text_is_skipped_and_counted(tmp_path):
    said: list[str] = []
    bad = {"id": "bad", "text": "Bob lives here.", "entity": [{"entity": "Carl", "entity_type": "person"}]}
    recs, report = _build(tmp_path, [_write(tmp_path, "d.jsonl", [IEPILE[1], bad])], say=said.append)
    assert [r["id"] for r in recs] == ["r2-NER-0", "r2-EE-0"]  # no relation label anywhere: nothing to ask
    assert report.unbuilt == {"RE: no label to ask (no positive and no negative label)": 1}
    assert report.skipped == {"entity string not in text": 1}
    assert report.records == 2
    assert any("d.jsonl:2 (bad): entity string not in text: 'Carl'" in s for s in said)
    assert any("entity string not in text 1" in line for line in report.lines())


# -- negatives, groups, shuffling -------------------------------------------------------------------

def test_cut_groups_remainder_rule():
    assert [len(g) for g in cut_groups(list(range(13)), 6)] == [6, 7]
    assert [len(g) for g in cut_groups(list(range(10)), 6)] == [6, 4]
    assert [len(g) for g in cut_groups(list(range(9)), 6)] == [6, 3]
    assert [len(g) for g in cut_groups(list(range(5)), 4)] == [5]
    assert [len(g) for g in cut_groups(list(range(6)), 4)] == [4, 2]
    assert [len(g) for g in cut_groups(list(range(3)), 6)] == [3]
    assert [len(g) for g in cut_groups(list(range(3)), 1)] == [1, 1, 1]
    assert cut_groups(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5, 6]]


LABELS13 = [f"type{i:02d}" for i in range(13)]
NER_REC = {"id": "n1", "text": "Ann met Bob in Oslo.",
           "entity": [{"entity": "Bob", "entity_type": "type03"}, {"entity": "Ann", "entity_type": "type03"},
                      {"entity": "Oslo", "entity_type": "type07"}]}


@pytest.mark.parametrize("n,sizes", [(13, [6, 7]), (10, [6, 4])])
def test_ner_groups_of_six_with_every_label_once(tmp_path, n, sizes):
    recs, _ = _build(tmp_path, [_write(tmp_path, "n.jsonl", [NER_REC])], labels={"NER": LABELS13[:n]})
    assert [r["id"] for r in recs] == [f"n1-NER-{i}" for i in range(len(sizes))]
    assert [len(r["schema"]) for r in recs] == sizes
    asked = [label for r in recs for label in r["schema"]]
    assert sorted(asked) == LABELS13[:n]
    merged = {k: v for r in recs for k, v in json.loads(r["output"]).items()}
    assert merged == {label: (["Ann", "Bob"] if label == "type03" else ["Oslo"] if label == "type07" else [])
                      for label in LABELS13[:n]}


def test_exact_groups_for_thirteen_labels(tmp_path):
    recs, _ = _build(tmp_path, [_write(tmp_path, "n.jsonl", [NER_REC])], labels={"NER": LABELS13})
    g0 = ["type05", "type07", "type00", "type02", "type09", "type08"]
    g1 = ["type10", "type01", "type11", "type04", "type12", "type03", "type06"]
    assert recs == [
        _rec("n1-NER-0", "NER", "en", NER_REC["text"], g0, {k: ["Oslo"] if k == "type07" else [] for k in g0}, "n"),
        _rec("n1-NER-1", "NER", "en", NER_REC["text"], g1, {k: ["Ann", "Bob"] if k == "type03" else [] for k in g1},
             "n"),
    ]


def test_split_num_override(tmp_path):
    recs, _ = _build(tmp_path, [_write(tmp_path, "n.jsonl", [NER_REC])], labels={"NER": LABELS13},
                     split_num={"ner": 4})
    assert [len(r["schema"]) for r in recs] == [4, 4, 5]  # 13 = 4 + 4 + 4 + 1, the 1 joins
    with pytest.raises(KnowLMError, match="split_num for NER"):
        build_ie_data([str(tmp_path / "n.jsonl")], str(tmp_path / "o.jsonl"), split_num={"NER": 0})


def test_shuffle_is_deterministic_and_follows_the_seed(tmp_path):
    src = _write(tmp_path, "n.jsonl", [NER_REC, {**NER_REC, "id": "n2"}])
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    c = tmp_path / "c.jsonl"
    build_ie_data([src], str(a), labels={"NER": LABELS13}, seed=3)
    build_ie_data([src], str(b), labels={"NER": LABELS13}, seed=3)
    build_ie_data([src], str(c), labels={"NER": LABELS13}, seed=4)
    assert a.read_bytes() == b.read_bytes()
    ra, rc = _read(a), _read(c)
    assert _order(ra) != _order(rc)
    assert [sorted(r["schema"]) for r in ra] != [r["schema"] for r in ra]  # shuffled, not sorted
    assert sorted(x for r in ra for x in r["schema"]) == sorted(x for r in rc for x in r["schema"])
    assert [r["schema"] for r in ra[:2]] != [r["schema"] for r in ra[2:]]  # each record its own order


def test_neg_share_zero_and_half(tmp_path):
    src = _write(tmp_path, "n.jsonl", [NER_REC])
    recs, _ = _build(tmp_path, [src], labels={"NER": LABELS13}, neg_share=0)
    assert recs == [_rec("n1-NER-0", "NER", "en", NER_REC["text"], ["type03", "type07"],
                         {"type03": ["Ann", "Bob"], "type07": ["Oslo"]}, "n")]
    recs, _ = _build(tmp_path, [src], labels={"NER": LABELS13}, neg_share=0.5)
    asked = [x for r in recs for x in r["schema"]]
    assert len(asked) == 2 + 6 and {"type03", "type07"} <= set(asked)  # half of the 11 absent, rounded up
    with pytest.raises(KnowLMError, match="neg_share"):
        build_ie_data([src], str(tmp_path / "o.jsonl"), neg_share=1.5)


def test_hard_negatives_are_always_added(tmp_path):
    src = _write(tmp_path, "n.jsonl", [NER_REC])
    hard = _write(tmp_path, "hard.json", json.dumps({"type03": ["type04", "type07", "people"],
                                                     "type09": ["type10"]}))
    recs, _ = _build(tmp_path, [src], labels={"NER": LABELS13}, neg_share=0, hard_negatives=hard)
    # type07 is positive (not a negative), "people" is outside the label set, type10 hangs off an absent label
    assert recs == [_rec("n1-NER-0", "NER", "en", NER_REC["text"], ["type07", "people", "type03", "type04"],
                         {"type07": ["Oslo"], "people": [], "type03": ["Ann", "Bob"], "type04": []}, "n")]
    bad = _write(tmp_path, "bad.json", json.dumps({"type03": "type04"}))
    with pytest.raises(KnowLMError, match="similar labels of 'type03'"):
        build_ie_data([src], str(tmp_path / "o.jsonl"), hard_negatives=bad)


# -- CoNLL / BIO ------------------------------------------------------------------------------------

ZH_BIO = "上 O\n海 O\n的 O\n张 B-PER\n三 I-PER\n在 O\n北 B-LOC\n京 I-LOC\n\n我 O\n爱 O\n北 B-LOC\n京 I-LOC\n"
ZH_BIOES = "张\tB-PER\n小\tM-PER\n三\tE-PER\n去\tO\n京\tS-LOC\n"
EN_BIO = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n"
          "call NN I-NP O\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\nof IN O O\nNew NNP B-NP B-LOC\n"
          "York NNP I-NP I-LOC\n")
EN_BIOES = ("EU NNP B-NP S-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP S-MISC\ncall NN I-NP O\n\n"
            "Peter NNP B-NP B-PER\nBlackburn NNP I-NP E-PER\nof IN O O\nNew NNP B-NP B-LOC\nYork NNP I-NP E-LOC\n")


def test_bio_chinese_two_columns_exact(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "msra.bio", ZH_BIO)])
    assert recs == [
        _rec("msra-1-NER-0", "NER", "zh", "上海的张三在北京", ["LOC", "PER"], {"LOC": ["北京"], "PER": ["张三"]}, "msra"),
        _rec("msra-2-NER-0", "NER", "zh", "我爱北京", ["LOC", "PER"], {"LOC": ["北京"], "PER": []}, "msra"),
    ]
    assert report.repaired == 0


def test_bio_chinese_bioes_with_m_tags_and_type_map(tmp_path):
    recs, _ = _build(tmp_path, [_write(tmp_path, "w.txt", ZH_BIOES)], type_map={"PER": "人物"}, neg_share=0)
    assert recs == [_rec("w-1-NER-0", "NER", "zh", "张小三去京", ["LOC", "人物"], {"LOC": ["京"], "人物": ["张小三"]}, "w")]


@pytest.mark.parametrize("content", [EN_BIO, EN_BIOES], ids=["bio", "bioes"])
def test_bio_english_conll_four_columns_exact(tmp_path, content):
    recs, _ = _build(tmp_path, [_write(tmp_path, "conll.txt", content)])
    t1, t2 = "EU rejects German call", "Peter Blackburn of New York"
    assert recs == [
        _rec("conll-1-NER-0", "NER", "en", t1, ["ORG", "MISC", "LOC", "PER"],
             {"ORG": ["EU"], "MISC": ["German"], "LOC": [], "PER": []}, "conll"),
        _rec("conll-2-NER-0", "NER", "en", t2, ["PER", "LOC", "ORG", "MISC"],
             {"PER": ["Peter Blackburn"], "LOC": ["New York"], "ORG": [], "MISC": []}, "conll"),
    ]


def test_bio_sequence_starting_with_i_is_repaired_and_counted(tmp_path):
    src = _write(tmp_path, "r.conll", "John I-PER\nSmith I-PER\nsaw O\nMary I-PER\n\nin O\nParis B-LOC\n")
    recs, report = _build(tmp_path, [src], neg_share=0)
    assert [json.loads(r["output"]) for r in recs] == [{"PER": ["John Smith", "Mary"]}, {"LOC": ["Paris"]}]
    assert report.repaired == 2
    assert any("repaired 2 BIO sequence" in line for line in report.lines())


def test_bioes_sequence_starting_with_e_is_repaired(tmp_path):
    src = _write(tmp_path, "r.bioes", "a O\nBob E-PER\nand O\nAl B-PER\nLee E-PER\n")
    recs, report = _build(tmp_path, [src], neg_share=0)
    assert json.loads(recs[0]["output"]) == {"PER": ["Bob", "Al Lee"]}
    assert report.repaired == 1


def test_bio_mixed_schemes_are_refused_with_the_line(tmp_path):
    src = _write(tmp_path, "m.bio", "John B-PER\nSmith I-PER\nsaw O\n\nParis S-LOC\n")
    with pytest.raises(KnowLMError, match=r"m\.bio mixes tagging schemes.*line 5 has the BIOES tag 'S-LOC'") as err:
        build_ie_data([src], str(tmp_path / "out.jsonl"))
    assert "line 2" in err.value.message and "BIO or BIOES" in err.value.hint
    assert not (tmp_path / "out.jsonl").exists()
    src = _write(tmp_path, "m2.bio", "Paris S-LOC\nis O\n\nJohn B-PER\nsaw O\n")  # BIOES first, then a B- alone
    with pytest.raises(KnowLMError, match="found at line 4"):
        build_ie_data([src], str(tmp_path / "out.jsonl"))


@pytest.mark.parametrize("content,match", [
    ("EU NNP B-NP B-ORG\nrejects VBZ O\n", r"line 2 has 3 column\(s\), expected 4"),
    ("EU\n", r"line 1 has 1 column\(s\)"),
    ("EU B-ORG\nsays X-ORG\n", r"line 2: 'X-ORG' is not a BIO/BIOES tag"),
])
def test_bio_malformed_lines_are_refused_with_the_line(tmp_path, content, match):
    with pytest.raises(KnowLMError, match=match):
        build_ie_data([_write(tmp_path, "bad.conll", content)], str(tmp_path / "out.jsonl"))


# -- DuIE ------------------------------------------------------------------------------------------------

D1 = "《星际穿越》的导演是诺兰，诺兰出生于伦敦。"
D2 = "伦敦是英国的首都。"
DUIE = [
    {"text": D1, "spo_list": [
        {"predicate": "导演", "subject": "星际穿越", "subject_type": "影视作品",
         "object": {"@value": "诺兰"}, "object_type": {"@value": "人物"}},
        {"predicate": "出生地", "subject": "诺兰", "subject_type": "人物", "object": {"@value": "伦敦"},
         "object_type": {"@value": "地点"}}]},
    {"text": D2, "spo_list": [{"predicate": "首都", "subject": "英国", "subject_type": "国家", "object": "伦敦",
                               "object_type": "城市"}]},
]
SPO_D = {"subject_type": "影视作品", "predicate": "导演", "object_type": "人物"}
SPO_B = {"subject_type": "人物", "predicate": "出生地", "object_type": "地点"}
SPO_C = {"subject_type": "国家", "predicate": "首都", "object_type": "城市"}


def test_duie_re_and_spo_exact(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "duie.json", DUIE)])
    director = [{"subject": "星际穿越", "object": "诺兰"}]
    born = [{"subject": "诺兰", "object": "伦敦"}]
    capital = [{"subject": "英国", "object": "伦敦"}]
    assert recs == [
        _rec("duie-1-RE-0", "RE", "zh", D1, ["出生地", "导演", "首都"],
             {"出生地": born, "导演": director, "首都": []}, "duie"),
        _rec("duie-1-SPO-0", "SPO", "zh", D1, [SPO_D, SPO_C, SPO_B],
             {"导演": director, "首都": [], "出生地": born}, "duie"),
        _rec("duie-2-RE-0", "RE", "zh", D2, ["出生地", "首都", "导演"],
             {"出生地": [], "首都": capital, "导演": []}, "duie"),
        _rec("duie-2-SPO-0", "SPO", "zh", D2, [SPO_C, SPO_B, SPO_D],
             {"首都": capital, "出生地": [], "导演": []}, "duie"),
    ]
    assert report.tasks == {"RE": 2, "SPO": 2}


def test_duie_ner_when_asked(tmp_path):
    recs, _ = _build(tmp_path, [_write(tmp_path, "duie.json", DUIE)], tasks=["NER"], neg_share=0)
    assert recs == [
        _rec("duie-1-NER-0", "NER", "zh", D1, ["地点", "影视作品", "人物"],
             {"地点": ["伦敦"], "影视作品": ["星际穿越"], "人物": ["诺兰"]}, "duie"),
        _rec("duie-2-NER-0", "NER", "zh", D2, ["城市", "国家"], {"城市": ["伦敦"], "国家": ["英国"]}, "duie"),
    ]


# -- extract output (distillation) --------------------------------------------------------------------

KG_TEXT = "Ann was born in 1990 in Paris. Bob too."
EXTRACT = [
    {"id": "x1", "text": KG_TEXT, "task": "KG",
     "schema": [{"entity_type": "person", "attribute": ["date of birth", "place of birth"]},
                {"entity_type": "city", "attribute": ["country"]}],
     "result": {"person": {"Ann": {"date of birth": "1990", "place of birth": "Paris"}}, "city": {}},
     "spans": [], "errors": [{"kind": "repaired", "message": "ignored"}]},
    {"id": "x2", "text": "Ann met Bob in Rome.", "task": "NER", "schema": ["person", "location", "organization"],
     "result": {"person": ["Bob", "Ann"], "location": ["Rome"], "organization": []}},
    {"id": "x3", "text": "Ann met Bob.", "task": "NER", "schema": ["person"], "result": {"person": ["Zed"]}},
    {"id": "x4", "text": "Acme bought Zeta.", "task": "EE",
     "schema": [{"event_type": "acquisition", "trigger": True, "arguments": ["acquirer", "acquired", "time"]}],
     "result": {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "Acme", "acquired": ["Zeta"],
                                                                     "time": "NAN"}}]}},
]


def test_extract_output_exact(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "pred.jsonl", EXTRACT)])
    person = {"entity_type": "person", "attribute": ["date of birth", "place of birth"]}
    city = {"entity_type": "city", "attribute": ["country"]}
    acq = {"event_type": "acquisition", "trigger": True, "arguments": ["acquirer", "acquired", "time"]}
    assert recs == [
        _rec("x1-KG-0", "KG", "en", KG_TEXT, [person],
             {"person": {"Ann": {"date of birth": "1990", "place of birth": "Paris"}}}, "pred"),
        _rec("x1-KG-1", "KG", "en", KG_TEXT, [city], {"city": {}}, "pred"),
        _rec("x2-NER-0", "NER", "en", "Ann met Bob in Rome.", ["location", "organization", "person"],
             {"location": ["Rome"], "organization": [], "person": ["Ann", "Bob"]}, "pred"),
        _rec("x4-EE-0", "EE", "en", "Acme bought Zeta.", [acq],
             {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "Acme", "acquired": "Zeta",
                                                                   "time": "NAN"}}]}, "pred"),
    ]
    assert report.skipped == {"result string not in text": 1}
    assert report.examples[0].endswith("pred.jsonl:3 (x3): result string not in text: 'Zed'")


# -- Alpaca passthrough and mixing ----------------------------------------------------------------------

def test_alpaca_passthrough_mixed_with_ie(tmp_path):
    alpaca = [{"instruction": "Say hi", "input": "", "output": "hi"},
              {"id": 7, "task": "old", "instruction": "Add", "input": "1+1", "output": "2"}]
    recs, report = _build(tmp_path, [_write(tmp_path, "alpaca.jsonl", alpaca),
                                     _write(tmp_path, "n.jsonl", [NER_REC])], labels={"NER": ["type03", "type07"]})
    assert recs[:2] == [{"id": "alpaca-1", "task": "general", "instruction": "Say hi", "input": "", "output": "hi"},
                        {"id": "7", "task": "general", "instruction": "Add", "input": "1+1", "output": "2"}]
    assert [r["task"] for r in recs[2:]] == ["NER"]
    assert report.tasks == {"general": 2, "NER": 1}


def test_alpaca_json_array_file(tmp_path):
    src = _write(tmp_path, "alpaca_data.json", json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    recs, _ = _build(tmp_path, [src])
    assert recs == [{"id": "alpaca_data-1", "task": "general", "instruction": "a", "input": "", "output": "b"}]


# -- bad input files -------------------------------------------------------------------------------------------

def test_broken_json_lines_are_skipped_and_reported(tmp_path):
    src = _write(tmp_path, "b.jsonl", json.dumps(NER_REC) + "\n{not json\n[1, 2]\n")
    recs, report = _build(tmp_path, [src], labels={"NER": ["type03", "type07"]})
    assert [r["id"] for r in recs] == ["n1-NER-0"]
    assert report.skipped == {"unparseable line": 2}
    assert report.records == 1
    assert [line.split(": ")[0] for line in report.bad_lines] == [f"{src}:2", f"{src}:3"]


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"\x00\x01\x02binary", "looks like a binary file"),
    (json.dumps(NER_REC).encode() + b"\n" + '{"text": "caf\u00e9"}'.encode("latin-1") + b"\n",
     "not UTF-8: byte 0xe9 at line 2"),
    (b"{nope\n{nope either\n", "has no readable record"),
    (b'{"foo": 1}\n', "cannot tell the format"),
])
def test_bad_files_are_refused(tmp_path, content, match):
    src = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(KnowLMError, match=match):
        build_ie_data([src], str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_input_and_unknown_format(tmp_path):
    with pytest.raises(KnowLMError, match="no such input file"):
        build_ie_data([str(tmp_path / "nope.jsonl")], str(tmp_path / "out.jsonl"))
    src = _write(tmp_path, "n.jsonl", [NER_REC])
    with pytest.raises(KnowLMError, match="unknown input format 'xml'"):
        build_ie_data([src], str(tmp_path / "out.jsonl"), fmt="xml")
    with pytest.raises(KnowLMError, match="unknown task"):
        build_ie_data([src], str(tmp_path / "out.jsonl"), tasks=["NERD"])


def test_duplicate_record_ids_are_skipped(tmp_path):
    recs, report = _build(tmp_path, [_write(tmp_path, "n.jsonl", [NER_REC, NER_REC])], neg_share=0)
    assert [r["id"] for r in recs] == ["n1-NER-0"]
    assert report.skipped == {"duplicate record id": 1}


# -- train/dev split ------------------------------------------------------------------------------------------

def _many(n: int) -> list[dict]:
    return [{"id": f"rec{i}", "text": f"Person{i} visited City{i}.",
             "entity": [{"entity": f"Person{i}", "entity_type": "person"}, {"entity": f"City{i}", "entity_type": "city"}]}
            for i in range(n)]


def test_dev_split_is_deterministic_by_record(tmp_path):
    src = _write(tmp_path, "many.jsonl", _many(200))
    out, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    labels = {"NER": [f"t{i}" for i in range(10)] + ["person", "city"]}  # 12 labels: two groups per record
    report = build_ie_data([src], str(out), dev_share=0.25, dev_output=str(dev), labels=labels)
    train_recs, dev_recs = _read(out), _read(dev)
    train_ids = {r["id"].rsplit("-NER-", 1)[0] for r in train_recs}
    dev_ids = {r["id"].rsplit("-NER-", 1)[0] for r in dev_recs}
    assert not train_ids & dev_ids
    assert train_ids | dev_ids == {f"rec{i}" for i in range(200)}
    assert 30 <= len(dev_ids) <= 70  # 25 % of 200 = 50
    assert len(train_recs) == 2 * len(train_ids) and len(dev_recs) == 2 * len(dev_ids)
    assert report.dev_records == len(dev_ids) and report.dev == len(dev_recs) and report.train == len(train_recs)
    first = (out.read_bytes(), dev.read_bytes())
    build_ie_data([src], str(out), dev_share=0.25, dev_output=str(dev), labels=labels, force=True)
    assert (out.read_bytes(), dev.read_bytes()) == first
    build_ie_data([src], str(out), dev_share=0.25, dev_output=str(dev), labels=labels, force=True, seed=9)
    assert {r["id"].rsplit("-NER-", 1)[0] for r in _read(dev)} == dev_ids  # the seed reshuffles, never re-splits


def test_dev_output_defaults_beside_the_output(tmp_path):
    src = _write(tmp_path, "many.jsonl", _many(40))
    report = build_ie_data([src], str(tmp_path / "train.jsonl"), dev_share=0.5, neg_share=0)
    assert report.dev_output == str(tmp_path / "train.dev.jsonl")
    assert len(_read(tmp_path / "train.dev.jsonl")) == report.dev > 0
    with pytest.raises(KnowLMError, match="dev_share is 0"):
        build_ie_data([src], str(tmp_path / "x.jsonl"), dev_output=str(tmp_path / "d.jsonl"))


# -- the output file ------------------------------------------------------------------------------------------

def test_existing_output_is_refused_without_force(tmp_path):
    src = _write(tmp_path, "n.jsonl", [NER_REC])
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(KnowLMError, match="already exists") as err:
        build_ie_data([src], str(out))
    assert "--force" in err.value.hint
    assert out.read_text() == "old\n"
    build_ie_data([src], str(out), force=True)
    assert _read(out)[0]["id"] == "n1-NER-0"
    with pytest.raises(KnowLMError, match="is also an input"):
        build_ie_data([src], src, force=True)


@pytest.mark.parametrize("labels", [None, {"NER": ["person", "city"]}], ids=["two-pass", "one-pass"])
def test_failed_build_leaves_no_partial_file(tmp_path, labels):
    good = "".join(json.dumps(r) + "\n" for r in _many(150))
    src = _write(tmp_path, "late.jsonl", good.encode() + b'{"text": "caf\xe9"}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(KnowLMError, match="line 151"):
        build_ie_data([src], str(out), labels=labels, tasks=["NER"])
    assert not out.exists()
    out.write_text("old\n")
    with pytest.raises(KnowLMError, match="line 151"):
        build_ie_data([src], str(out), labels=labels, tasks=["NER"], force=True, dev_share=0.5)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.jsonl", "out.jsonl"]  # no temp file left


def test_keep_order_asks_labels_in_the_label_sets_order_as_extract_does(tmp_path):
    from knowlm_local.ie.prompt import oneke_instruction

    labels = ["person", "location", "organization"]
    src = _write(tmp_path, "in.jsonl", [
        {"id": str(i), "text": "Ann moved to Paris to work for Nimbus.",
         "entity": [{"entity": "Nimbus", "entity_type": "organization"}, {"entity": "Ann", "entity_type": "person"}]}
        for i in range(6)])
    records, _ = _build(tmp_path, [src], tasks=["NER"], labels={"NER": labels}, shuffle=False)
    assert all(r["schema"] == labels for r in records)  # the order extract uses for its default schema
    assert all(r["instruction"] == oneke_instruction("NER", "en", labels, r["text"]) for r in records)
    assert json.loads(records[0]["output"]) == {"person": ["Ann"], "location": [], "organization": ["Nimbus"]}
    shuffled, _ = _build(tmp_path, [src], tasks=["NER"], labels={"NER": labels})
    assert any(r["schema"] != labels for r in shuffled)  # the default shuffles per record
