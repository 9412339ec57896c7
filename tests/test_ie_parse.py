"""The tolerant parser on a corpus of broken answers, and normalization of what it reads."""

from __future__ import annotations

import pytest

from knowlm_local.ie.parse import parse_answer
from knowlm_local.ie.results import merge_into, normalize

CORPUS = [
    # (answer, expected value, expected repair notes (subset))
    ('{"person": ["Ada"]}', {"person": ["Ada"]}, []),
    ('```json\n{"person": ["Ada"]}\n```', {"person": ["Ada"]}, ["code fence"]),
    ("```\n{'person': ['Ada', 'Bob']}\n```", {"person": ["Ada", "Bob"]}, ["code fence", "single quotes"]),
    ("{'person': ['Ada'], 'org': None, 'ok': True}", {"person": ["Ada"], "org": None, "ok": True},
     ["single quotes", "Python literals"]),
    ('{"person": ["Ada", "Bob",], "org": [],}', {"person": ["Ada", "Bob"], "org": []}, ["trailing commas"]),
    ('{"time": NAN, "place": [NaN, "Rome"]}', {"time": "NAN", "place": ["NAN", "Rome"]}, ["bare NAN"]),
    ('{"person": ["Ada", "Bo', {"person": ["Ada"]}, ["truncated"]),  # a half string is dropped
    ('{"person": ["Ada"], "org": [{"subject": "X", "obj', {"person": ["Ada"], "org": [{"subject": "X"}]},
     ["truncated"]),
    ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}, ["truncated"]),
    ('{"person": ["unterminated', {"person": []}, ["truncated"]),
    ('Here you go: {"person": ["Ada"]} Hope this helps!', {"person": ["Ada"]},
     ["text before the JSON", "text after the JSON"]),
    ('{"person": ["Ada"] "org": ["ACME"]}', {"person": ["Ada"], "org": ["ACME"]}, ["missing commas"]),
    ("{person: [Ada Lovelace, Bob]}", {"person": ["Ada Lovelace", "Bob"]}, ["unquoted keys", "unquoted strings"]),
    ('{"人物": ["马云",], "地点": ["杭州"]}', {"人物": ["马云"], "地点": ["杭州"]}, ["trailing commas"]),
    ("{'quote': 'it\\'s', \"dq\": \"say \\\"hi\\\"\"}", {"quote": "it's", "dq": 'say "hi"'}, ["single quotes"]),
    ('{"u": "\\u4e2d\\u6587", "n": -1.5e2}', {"u": "中文", "n": -150.0}, []),
    ('{"a": ["x"]]}', {"a": ["x"]}, ["mismatched brackets"]),
    ('{"a": [], // a comment\n "b": []}', {"a": [], "b": []}, ["comments"]),
]


@pytest.mark.parametrize("answer,expected,notes", CORPUS)
def test_broken_answers_are_read(answer, expected, notes):
    got = parse_answer(answer)
    assert got.ok, got.error
    assert got.value == expected
    assert set(notes) <= set(got.repairs), got.repairs
    assert got.clean == (not notes)


@pytest.mark.parametrize("answer", ["", "   ", "I could not find any entities.", "[1, 2, 3]", '"just a string"',
                                    "{"])
def test_what_cannot_be_read_is_reported_not_raised(answer):
    got = parse_answer(answer)
    if got.ok:  # "{" alone still gives an (empty) object: usable, and marked truncated
        assert got.value == {} and "truncated" in got.repairs
    else:
        assert got.value is None and got.error


def test_deep_nesting_does_not_crash():
    got = parse_answer("[" * 5000)
    assert not got.ok


def test_normalize_keeps_schema_labels_and_task_shapes():
    labels = {"founder": [], "place of birth": []}
    answer = {"founder": [{"subject": "Apple", "object": "Steve Jobs"}, {"subject": "x"}, "junk"],
              "place of birth": [{"head": "Ada", "tail": "London"}], "other": []}
    result, notes = normalize("RE", labels, answer)
    assert result == {"founder": [{"subject": "Apple", "object": "Steve Jobs"}],
                      "place of birth": [{"subject": "Ada", "object": "London"}]}
    assert any("outside the schema" in n for n in notes) and any("dropped 2" in n for n in notes)


def test_normalize_events_fill_nan_and_merge_dedupes():
    labels = {"acquisition": ["acquirer", "acquired"]}
    a, _ = normalize("EE", labels, {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "ACME"}}]})
    assert a == {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "ACME", "acquired": "NAN"}}]}
    b, _ = normalize("EE", labels, {"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "ACME",
                                                                                          "acquired": "NAN"}},
                                                    {"trigger": "NAN", "arguments": {}}]})
    merge_into("EE", a, b)
    assert len(a["acquisition"]) == 1


def test_normalize_kg_and_merge_unions_attribute_values():
    labels = {"person": ["occupation", "alias"]}
    a, _ = normalize("KG", labels, {"person": {"Ada": {"occupation": "mathematician", "height": "1.6m"}}})
    b, _ = normalize("KG", labels, {"person": {"Ada": {"occupation": ["writer"], "alias": "NAN"}}})
    merge_into("KG", a, b)
    assert a == {"person": {"Ada": {"occupation": ["mathematician", "writer"]}}}
