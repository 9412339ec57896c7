"""Copy-constrained extraction on real models: every span is in the text, no list repeats, answers end,
and wherever nothing is refused the tokens are exactly those of plain greedy decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)

from knowlm_local.ie.copy import DUP, REFUSED, Constraint
from knowlm_local.ie.extract import Extractor
from knowlm_local.ie.run import load_for_extract
from knowlm_local.ie.tasks import get_task
from knowlm_local.runtime import LoadOptions

ROOT = Path(__file__).resolve().parents[1]
ZH = [
    "陈思远于2015年在成都创立了云杉科技。出生于大理的李晓彤目前在云杉科技担任首席工程师。",
    "1999年，千富美在京都成立了樱花出版社，总部后来迁到大阪。",
    "台风“海燕”登陆后，厦门市气象台发布了暴雨红色预警。",
]
EN = [
    "Marta Oliveira founded Tidewater Analytics in Porto in 2016.",
    "Kenji Watanabe, who was born in Sapporo, joined Tidewater Analytics as its chief engineer.",
]
ODD = [
    "Ｔｉｄｅｗａｔｅｒ　Ａｎａｌｙｔｉｃｓ（波尔图）于２０１６年成立。",  # full-width letters, digits, space, brackets
    "The 🐋 whale-watching firm Blue Fin 🐬 Tours is based in Húsavík, Iceland.",  # emoji, accents
    'He said "stop" \\ and left\nthe room.',  # characters JSON must escape
]


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory, tiny_llama_dir):
    from knowlm_local.convert.pipeline import convert

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f16.gguf"
    convert(str(tiny_llama_dir), quants="f16", output=out)
    return out


@pytest.fixture(scope="module")
def model():
    loaded, _ = load_for_extract("smollm2", LoadOptions(n_ctx=2048, seed=0, n_threads=1))
    yield loaded
    loaded.backend.close()


def _extractor(model, task="ner", copy="strict", n=160, **kw):
    return Extractor(model, task, copy=copy, params=model.default_params(temperature=0.0, repeat_penalty=1.0,
                                                                          max_tokens=n), **kw)


def _check_spans(rec):
    text = rec["text"]
    for span in rec["spans"]:
        assert not span["hallucinated"], span
        assert span.get("match") != "loose", span  # strict: exact copies
        assert span["offsets"] and all(text[a:b] == span["text"] for a, b in span["offsets"])


def _no_repeats(result):
    for label, values in result.items():
        if isinstance(values, list):
            keys = [json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values]
            assert len(keys) == len(set(keys)), (label, values)


@pytest.mark.parametrize("task", ["ner", "re", "ee", "kg"])
def test_strict_spans_are_exact_copies_and_no_list_repeats(model, task):
    ex = _extractor(model, task)
    for i, text in enumerate(ZH + EN + ODD):
        rec = ex.extract({"id": str(i), "text": text})
        _check_spans(rec)
        _no_repeats(rec["result"])
        assert not [e for e in rec["errors"] if e["kind"] == "unparseable"], rec["errors"]
    assert ex.stats.hallucinated == 0 and ex.stats.spans > 0


def test_answers_that_looped_now_end(model):
    """Chinese NER on the embedded model loops (repeated or invented items) until max_tokens without the
    rule; with it every answer closes on its own, far earlier."""
    off, strict = _extractor(model, copy="off", n=512), _extractor(model, n=512)
    used = []
    for i, text in enumerate(ZH):
        off.extract({"id": str(i), "text": text})
        group = get_task("NER").default_schema["zh"]
        _, last = model.backend.complete(strict.prompt("zh", group, text), strict.params,
                                         json_schema=strict._grammar(group), copy=Constraint("NER", text))
        used.append(last.completion_tokens)
        assert last.finish_reason == "stop"
    assert off.stats.truncated >= 2  # the failure this issue is about
    assert max(used) < 512 * 0.6, used  # well before --max-tokens


def _generated(model, prompt, params, schema, copy):
    """The answer and its token ids (llama-cpp-python's path: the tokens it evaluated; ours reports them)."""
    backend = model.backend
    backend.reset_cache()  # both runs evaluate the whole prompt in the same batches
    n_prompt = len(backend.tokenize(prompt))
    text, last = backend.complete(prompt, params, json_schema=schema, copy=copy)
    if copy is not None:
        return text, last.extra["tokens"], last
    return text, [int(t) for t in backend.llm.input_ids[n_prompt:backend.llm.n_tokens]], last


def test_greedy_choices_are_unchanged_until_the_first_refused_token(model):
    """Token for token, strict and off agree up to the first token of off's answer that the rule refuses;
    where nothing is refused (the whole answer was already a valid copy) the answers are identical."""
    vocab = model.backend.vocab()
    full = prefix = 0
    for task in ("ner", "re", "eet"):
        ex = _extractor(model, task, n=64)
        spec = get_task(task)
        for lang, texts in (("en", EN + [json.loads(x)["text"] for x in
                                          (ROOT / "examples" / "records.jsonl").read_text().splitlines()]),
                            ("zh", ZH)):
            group = spec.default_schema[lang][:spec.split_num]
            schema = ex._grammar(group)
            for text in texts:
                prompt = ex.prompt(lang, group, text)
                off_text, off_ids, off_last = _generated(model, prompt, ex.params, schema, None)
                strict_text, strict_ids, _ = _generated(model, prompt, ex.params, schema, Constraint(ex.task, text))
                tracker = Constraint(ex.task, text).start()
                k, verdict = 0, None
                for k, token in enumerate(off_ids):
                    verdict = tracker.feed(vocab.pieces[token])
                    if verdict in (REFUSED, DUP):
                        break
                else:
                    k = len(off_ids)
                assert strict_ids[:k] == off_ids[:k], (task, text)
                prefix += k
                if k == len(off_ids) and off_last.finish_reason == "stop":
                    assert strict_text == off_text  # so the scorer sees the same answer too
                    full += 1
    assert full >= 3 and prefix >= 100  # the property was exercised on whole answers and long prefixes


def test_byte_fallback_tokens_of_a_sentencepiece_vocabulary(tiny_llama_gguf):
    """A LLaMA-style vocabulary (SentencePiece with <0xNN> byte tokens) on a random model: whatever it
    writes, every span is an exact, whole-word copy, including characters it can only spell in bytes."""
    loaded, _ = load_for_extract(str(tiny_llama_gguf), LoadOptions(n_ctx=512, seed=0, n_threads=1, template="oneke"))
    try:
        ex = _extractor(loaded, "ner", n=96)
        for i, text in enumerate(ZH + ODD):
            rec = ex.extract({"id": str(i), "text": text})
            _check_spans(rec)
            _no_repeats(rec["result"])
        assert ex.stats.hallucinated == 0
    finally:
        loaded.backend.close()


def test_empty_text_labels_in_the_text_and_bad_modes(model, runner, tmp_path):
    ex = _extractor(model)
    rec = ex.extract({"id": "e", "text": "   "})
    assert rec["result"] == {"person": [], "location": [], "organization": []} and ex.stats.calls == 0
    rec = ex.extract({"id": "l", "text": "person location organization"})  # labels are keys, not spans
    assert list(rec["result"]) == ["person", "location", "organization"]
    _check_spans(rec)
    from knowlm_local.cli import app

    src = tmp_path / "in.txt"
    src.write_text("Ann lives in Paris.\n")
    result = runner.invoke(app, ["extract", str(src), "--copy", "sometimes"])
    assert result.exit_code == 1 and "unknown --copy mode 'sometimes'" in result.output


def test_cli_copy_modes_run(runner, tmp_path):
    from knowlm_local.cli import app

    src = tmp_path / "in.txt"
    src.write_text("陈思远于2015年在成都创立了云杉科技。\n", encoding="utf-8")
    for mode in ("strict", "loose", "off"):
        out = tmp_path / f"{mode}.jsonl"
        result = runner.invoke(app, ["extract", str(src), "--copy", mode, "-o", str(out), "--ctx", "1024", "-n", "96",
                                     "--threads", "1"])
        assert result.exit_code == 0, result.output
        rec = json.loads(out.read_text(encoding="utf-8"))
        if mode != "off":
            assert all(not s["hallucinated"] for s in rec["spans"])
