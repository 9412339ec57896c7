"""Property-based fuzzing of every parser a user's input reaches: nothing but KnowLMError ever escapes.

Targets: the tolerant JSON answer parser, the schema parsers (command line,
JSON/YAML files, already-parsed values), answer normalization + merging + the
span finder, the GGUF header reader, the scorer's readers, and the JSONL
record reader. The ``@example`` lines are the crashers fuzzing found, kept as
regression tests. ``HYPOTHESIS_PROFILE=long`` runs many more examples (the
long fuzz run in the issue note used it).
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.parse import parse_answer
from knowlm_local.ie.results import empty_result, merge_into, normalize
from knowlm_local.ie.schema_io import load_schema_file, parse_schema_text
from knowlm_local.ie.spans import locate
from knowlm_local.ie.tasks import TASKS, get_task, group_labels, split_groups, validate_schema

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

TASK_NAMES = sorted(TASKS)
# Text that looks like model answers: JSON punctuation, quotes, NAN, CJK and full-width characters, escapes.
ANSWER_ALPHABET = st.sampled_from(list('{}[]:,"\'\\ \n\tNAntruefalsn0123456789.-eE人物北京，。“”｛｝\u3000`uU') + ["\\u4e2d"])
answer_text = st.lists(ANSWER_ALPHABET, max_size=80).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def only_knowlm_errors(fn, *args):
    try:
        return fn(*args)
    except KnowLMError:
        return None


@given(st.one_of(answer_text, st.text(max_size=200), json_values.map(lambda v: json.dumps(v, ensure_ascii=False))))
@example('{"a": [' * 3000)
@example("```json\n{'person': ['Ann',], }\n```")
@example('{"x": "\\')
def test_parse_answer_never_raises(text):
    parsed = parse_answer(text)
    assert parsed.ok == (parsed.error is None)
    if parsed.ok:
        assert isinstance(parsed.value, dict)


@given(st.sampled_from(TASK_NAMES), st.one_of(st.text(max_size=60), answer_text))
@example("EE", "a: ;b")
@example("SPO", "a/b/c, d/e")
@example("KG", "：")
def test_schema_text_raises_only_knowlm_errors(task, text):
    schema = only_knowlm_errors(parse_schema_text, task, text)
    if schema is not None:
        for group in split_groups(task, schema):
            group_labels(task, group)


@given(st.sampled_from(TASK_NAMES), json_values)
@example("EE", {"acquisition": {"arguments": {"1": 2}}})
@example("NER", {"person": "a person"})
def test_schema_values_raise_only_knowlm_errors(task, value):
    schema = only_knowlm_errors(validate_schema, task, value)
    if schema is not None:
        for group in split_groups(task, schema):
            group_labels(task, group)


@given(st.binary(max_size=300), st.sampled_from([".json", ".yaml", ".txt"]))
@example(b"[" * 5000, ".json")
@example(b"- " * 3000 + b"x", ".yaml")
def test_schema_files_raise_only_knowlm_errors(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("schema") / f"s{suffix}"
    path.write_bytes(data)
    only_knowlm_errors(load_schema_file, "NER", path)
    only_knowlm_errors(load_schema_file, "EE", path)


TEXT = "Ann Lee founded Nimbus in Paris. 李娜出生于杭州，后来加入了阿里巴巴。 NEW  york 　ｆｕｌｌ"


@given(st.sampled_from(TASK_NAMES), json_values, st.text(max_size=40) | st.just(TEXT))
def test_answer_to_spans_never_raises_and_offsets_point_at_the_text(task, answer, text):
    schema = get_task(task).default_schema["en"]
    labels = group_labels(task, schema)
    result = empty_result(task, labels)
    if isinstance(answer, dict):
        part, _notes = normalize(task, labels, answer)
        merge_into(task, result, part)
        merge_into(task, result, part)  # merging twice adds nothing
    for span in locate(task, text, result):
        for start, end in span["offsets"]:
            found = text[start:end]
            if span.get("match") == "loose":
                from knowlm_local.ie.textindex import fold

                assert fold(found).strip() == fold(span["text"]).strip()
            else:
                assert found == span["text"]
        assert span["hallucinated"] == (not span["offsets"])


def _small_gguf(path: Path) -> bytes:
    """A real GGUF written by the gguf package: a few keys of each type, an array, two tensors."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    w.add_tensor("a", np.ones((4, 8), dtype=np.float32))
    w.add_tensor("b", np.zeros((8,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_sample(tmp_path_factory) -> bytes:
    return _small_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@given(data=st.data())
def test_gguf_reader_raises_only_knowlm_errors(tmp_path_factory, gguf_sample, data):
    from knowlm_local.gguf_check import read_metadata, scan

    raw = bytearray(gguf_sample)
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(raw) - 1)), st.integers(0, 255)), max_size=6))
    for pos, value in flips:
        raw[pos] = value
    path = tmp_path_factory.mktemp("g") / "f.gguf"
    path.write_bytes(bytes(raw[:cut]))
    only_knowlm_errors(read_metadata, path, {"llama.block_count", "general.name", "missing.key"})
    layout = only_knowlm_errors(scan, path)
    if layout is not None:
        assert layout.data_end <= len(raw[:cut])


def test_the_intact_sample_scans(tmp_path, gguf_sample):
    from knowlm_local.gguf_check import read_metadata, scan

    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_sample)
    assert read_metadata(path, {"llama.block_count", "general.name"}) == {"llama.block_count": 2, "general.name": "tiny"}
    layout = scan(path)
    assert [t.name for t in layout.tensors] == ["a", "b"] and layout.data_end <= len(gguf_sample)
    cut = layout.data_end - 1  # the last byte of tensor data (the file may end in alignment padding)
    path.write_bytes(gguf_sample[:cut])
    with pytest.raises(KnowLMError, match=f"truncated at byte {cut}: tensor 'b' needs bytes"):
        scan(path)


@given(st.sampled_from(TASK_NAMES), json_values, json_values)
@example("EE", {"label": [{"event_type": "x", "arguments": ["a", 1]}]}, {"result": {"x": [{"trigger": 1}]}})
@example("NER", {"entity": [{"entity": {"a": 1}, "entity_type": []}]}, {"result": {"p": 5}})
@example("KG", {"result": {"person": ["not a dict"]}}, {"result": {"person": {"Ann": ["x"]}}})
def test_scorer_readers_raise_only_knowlm_errors(task, gold, pred):
    from knowlm_local.ie.score import Tally, gold_tuples, result_tuples

    gold = gold if isinstance(gold, dict) else {"label": gold}
    levels = only_knowlm_errors(gold_tuples, task, gold)
    if levels is None:
        return
    result = pred.get("result") if isinstance(pred, dict) else pred
    got = result_tuples(task, result if isinstance(result, dict) else {})
    for level, items in levels.items():
        Tally().add(items, got.get(level, []))


@given(st.binary(max_size=400), st.binary(max_size=400))
@example(b'{"id": 1, "task": "NER", "result": {"p": ["a"]}}\n', b'{"id": 1, "entity": [{"entity": 5}]}\n')
@example(b'{"id": 1, "task": "NER", "result": {}}\n', b"\xff\xfe")
def test_score_files_raise_only_knowlm_errors(tmp_path_factory, pred, gold):
    from knowlm_local.ie.score import score_files

    folder = tmp_path_factory.mktemp("score")
    (folder / "p.jsonl").write_bytes(pred)
    (folder / "g.jsonl").write_bytes(gold)
    only_knowlm_errors(score_files, folder / "p.jsonl", folder / "g.jsonl")
    only_knowlm_errors(score_files, folder / "p.jsonl", folder / "g.jsonl", "ee")


@given(st.binary(max_size=400), st.sampled_from(["doc", "para", "line"]), st.sampled_from(["auto", "txt", "jsonl"]))
@example(b'{"id": {"a": 1}, "text": "x"}\n', "doc", "jsonl")
@example(b"\xef\xbb\xbf{\"text\": \"a\"}\n", "doc", "auto")
def test_record_reader_raises_only_knowlm_errors(data, split, kind):
    from knowlm_local.ie.records import open_source, read_records

    def read():
        src = open_source("-", split=split, kind=kind, stdin=io.BufferedReader(io.BytesIO(data)))
        return list(read_records(src))

    records = only_knowlm_errors(read)
    for record in records or []:
        assert isinstance(record["text"], str) and isinstance(record["id"], str)


@given(st.binary(max_size=64))
@example(struct.pack("<Q", 10) + b"{}")
@example(struct.pack("<Q", 2) + b"[]")
@example(struct.pack("<Q", 30) + b'{"t": {"dtype": "F32"}}       ')
def test_safetensors_header_raises_only_knowlm_errors(tmp_path_factory, data):
    from knowlm_local.convert.tensors import read_safetensors_header

    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    path.write_bytes(data)
    only_knowlm_errors(read_safetensors_header, path)
