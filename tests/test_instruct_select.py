"""instruct select: each selector against a hand-made fixture whose survivors are known, perplexity under the
embedded model, and the output read by finetune's data loader."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from test_instruct_generate import canned_model, read_jsonl, write_jsonl

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.select import Selection, select

RECORDS = [
    {"id": "r1", "instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, sleep enough and walk every day."},
    {"id": "r2", "instruction": "give three tips for staying   healthy", "input": "", "output": "Drink water."},
    {"id": "r3", "instruction": "Hi.", "input": "", "output": "Hello there, how can I help?"},
    {"id": "r4", "instruction": "Write a short poem about the sea at night", "input": "",
     "output": "Dark waves hum below silver stars."},
    {"id": "r5", "instruction": "Write a short poem about the sea at dawn", "input": "",
     "output": "Pink light wakes sleepy gulls."},
    {"id": "r6", "instruction": "Translate the sentence into German.", "input": "Good morning.", "output": "Guten Morgen."},
    {"id": "r7", "instruction": "Translate the sentence into French.", "input": "Good morning.", "output": "Bonjour."},
    {"id": "r8", "instruction": "Describe your morning routine.", "input": "",
     "output": "I wake up I wake up I wake up I wake up I wake up"},
    {"id": "r9", "instruction": "Please list every single country in the world together with its capital city "
                                "and population", "input": "", "output": "That is a long list."},
    {"id": "r10", "instruction": "Explain why the sky is blue.", "input": "",
     "output": "Air scatters blue sunlight more than red light."},
]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "gen.jsonl", RECORDS)


def ids(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


def test_every_cheap_selector_drops_exactly_the_records_worked_out_by_hand(data, tmp_path):
    out, rej = tmp_path / "train.jsonl", tmp_path / "rej.jsonl"
    sel = Selection(dedup=True, min_len=3, max_len=12, mtld_min=8, near_dup=0.7, rouge=0.7)
    report = select([data], out, sel, rejected=rej)
    # r3: 1 word; r9: 15 words; r2 = r1 up to case/spacing/punctuation; r8: MTLD 5 (a factor every 5 tokens);
    # r5: 3-gram Jaccard 6/8 = 0.75 with r4; r7: ROUGE-L 8/10 = 0.8 with r6 (its 3-gram Jaccard is only 2/8)
    assert ids(out) == ["r1", "r4", "r6", "r10"]
    assert report.read == 10 and report.kept == 4
    assert report.dropped == Counter({"length": 2, "dedup": 1, "mtld": 1, "near-dup": 1, "rouge": 1})
    why = {r["id"]: r["rejected"] for r in read_jsonl(rej)}
    assert why == {"r3": "length: instruction of 1 words < 3", "r9": "length: instruction of 15 words > 12",
                   "r2": "dedup: same as r1", "r8": "mtld: MTLD 5.0 < 8",
                   "r5": "near-dup: Jaccard 0.75 with r4", "r7": "rouge: ROUGE-L 0.80 with r6"}
    assert report.lines()[1] == "dropped: length 2, dedup 1, mtld 1, near-dup 1, rouge 1"
    # kept records are written exactly as they were read
    assert read_jsonl(out)[0] == RECORDS[0]


def test_single_selectors(data, tmp_path):
    select([data], tmp_path / "a.jsonl", Selection(rouge=0.7))
    assert ids(tmp_path / "a.jsonl") == ["r1", "r3", "r4", "r6", "r8", "r9", "r10"]  # r2 1.0, r5 0.89, r7 0.8
    select([data], tmp_path / "b.jsonl", Selection(near_dup=0.8))
    assert "r5" in ids(tmp_path / "b.jsonl")  # 0.75 < 0.8
    select([data], tmp_path / "c.jsonl", Selection(min_output=5, max_output=8))
    assert ids(tmp_path / "c.jsonl") == ["r1", "r3", "r4", "r5", "r9", "r10"]  # outputs of 8, 6, 6, 5, 5, 8 words
    select([data], tmp_path / "d.jsonl", Selection(sample=3, seed=7), scores=True)
    first = ids(tmp_path / "d.jsonl")
    assert len(first) == 3 and first == sorted(first, key=[r["id"] for r in RECORDS].index)
    select([data], tmp_path / "e.jsonl", Selection(sample=3, seed=7))
    assert ids(tmp_path / "e.jsonl") == first  # the seed decides
    assert all("scores" in r for r in read_jsonl(tmp_path / "d.jsonl"))


def test_select_refuses_bad_input_and_existing_output(data, tmp_path):
    with pytest.raises(KnowLMError, match="no selector given"):
        select([data], tmp_path / "x.jsonl", Selection())
    with pytest.raises(KnowLMError, match="is also an input"):
        select([data], data, Selection(dedup=True), force=True)
    (tmp_path / "out.jsonl").write_text("keep me\n")
    with pytest.raises(KnowLMError, match="already exists") as err:
        select([data], tmp_path / "out.jsonl", Selection(dedup=True))
    assert "--force" in err.value.hint and "--resume" not in err.value.hint
    select([data], tmp_path / "out.jsonl", Selection(dedup=True), force=True)
    assert len(ids(tmp_path / "out.jsonl")) == 9
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(KnowLMError, match="line 2 of .*broken.jsonl is not valid JSON"):
        select([broken], tmp_path / "y.jsonl", Selection(dedup=True))
    assert not (tmp_path / "y.jsonl").exists()


def test_perplexity_under_the_embedded_model_separates_fluent_from_garbage(tmp_path):
    from knowlm_local.instruct.score import perplexity
    from knowlm_local.runtime import LoadOptions, load_model

    rows = [{"id": "fluent", "instruction": "What is the capital of France?", "input": "",
             "output": "The capital of France is Paris."},
            {"id": "garbage", "instruction": "What is the capital of France?", "input": "",
             "output": "Banana purple seventeen under quickly the."}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    model = load_model("smollm2", LoadOptions(n_ctx=1024, seed=0, n_threads=1))
    try:
        prompt = model.template.render([{"role": "user", "content": "Say hello."}])
        params = model.default_params(temperature=0.0, max_tokens=12)
        before, _ = model.backend.complete(prompt, params)
        fluent = perplexity(model, rows[0]["instruction"], "", rows[0]["output"])
        garbage = perplexity(model, rows[1]["instruction"], "", rows[1]["output"])
        assert 1.0 < fluent < 20 and garbage > 1000, (fluent, garbage)
        assert perplexity(model, rows[0]["instruction"], "", rows[0]["output"]) == pytest.approx(fluent, rel=1e-4)
        assert perplexity(model, "Anything?", "", "") == math.inf
        after, _ = model.backend.complete(prompt, params)
        assert after == before  # scoring left no state behind in the KV cache
        out = tmp_path / "out.jsonl"
        report = select([data], out, Selection(ppl_max=200), loaded=model, scores=True)
        assert ids(out) == ["fluent"] and report.dropped == Counter({"perplexity": 1})
        assert read_jsonl(out)[0]["scores"]["perplexity"] == pytest.approx(fluent, rel=1e-3)
    finally:
        model.backend.close()


def test_self_rating_selector_with_a_model_that_sometimes_gives_no_score(data, tmp_path):
    answers = ['{"score": 5}', '{"score": 3}', "I think it is good.", '{"score": 4}']
    small = write_jsonl(tmp_path / "small.jsonl", RECORDS[:4])
    report = select([small], tmp_path / "rated.jsonl", Selection(min_rating=4), loaded=canned_model(answers))
    assert ids(tmp_path / "rated.jsonl") == ["r1", "r4"]
    assert report.dropped == Counter({"rating": 2})


def test_the_output_loads_as_finetune_training_data(data, tmp_path):
    from knowlm_local.prompts import alpaca_prompt, get_template
    from knowlm_local.train.sft_data import load_examples

    class WordTokenizer:  # the two things load_examples asks of a tokenizer
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1 + len(w) for w in text.split()]}

    out = tmp_path / "train.jsonl"
    select([data], out, Selection(dedup=True), scores=True)
    examples, report = load_examples([str(out)], WordTokenizer(), get_template("alpaca"), max_len=512)
    assert report.examples == report.records == 9 and not report.skipped
    first = read_jsonl(out)[5]  # r7, with an input
    tok = WordTokenizer()
    prompt_ids = tok(alpaca_prompt(first["instruction"], first["input"]))["input_ids"]
    assert examples[5].input_ids[:len(prompt_ids)] == prompt_ids  # rendered as an Alpaca record with its input
