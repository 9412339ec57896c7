"""instruct generate / evolve / backtranslate: parseable records from the embedded model, every bad answer of a
model counted and skipped (never a crash), resuming, and seed files that are not JSON Lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from knowlm_local.backends.base import Backend, BackendInfo, Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.backtranslate import backtranslate
from knowlm_local.instruct.evolve import evolve
from knowlm_local.instruct.generate import blacklisted, generate
from knowlm_local.prompts import get_template
from knowlm_local.runtime import LoadedModel, LoadOptions, load_model
from knowlm_local.store import ResolvedModel

SEEDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well."},
    {"instruction": "Translate the sentence into French.", "input": "I love books.", "output": "J'aime les livres."},
    {"instruction": "Classify the sentiment of the review as positive or negative.",
     "input": "The film was dull and far too long.", "output": "negative"},
    {"id": "seed_task_4", "name": "antonym", "instruction": "Write the antonym of the given word.",
     "instances": [{"input": "hot", "output": "cold"}], "is_classification": False},  # self-instruct's seed format
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class CannedBackend(Backend):
    """A model that answers from a list (a tuple is (text, finish_reason)) and enforces no JSON schema."""

    supports_schema = False

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.info = BackendInfo(name="canned", model_path="canned", n_ctx=4096, n_gpu_layers=0, n_layers=1,
                                device="cpu")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [0] * (len(text) // 4 + add_bos)

    def generate(self, prompt, params, json_schema=None, cancel=None, copy=None):
        self.prompts.append(prompt)
        answer = self.answers.pop(0) if self.answers else "no more answers"
        text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
        yield Chunk(text=text)
        yield Chunk(text="", finish_reason=finish)


def canned_model(answers: list) -> LoadedModel:
    return LoadedModel(ResolvedModel("canned", "gguf", Path("canned.gguf")), CannedBackend(answers),
                       get_template("chatml"))


@pytest.fixture(scope="module")
def smollm(embedded_path):
    """The embedded model on one thread: on a shared 2-core machine a second llama.cpp thread waiting on a busy
    core makes sampling under a grammar 10-300x slower; one thread keeps these tests at a few seconds."""
    loaded = load_model(str(embedded_path), LoadOptions(n_ctx=2048, seed=0, n_threads=1, template="gguf"))
    yield loaded
    loaded.backend.close()


def test_generate_with_the_embedded_model_writes_parseable_alpaca_records(smollm, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "gen.jsonl"
    # 128 tokens, not 64: what is sampled depends on the CPU's llama.cpp kernels, and on an AVX2-only build
    # 4 of 6 seeded tries ran past 64 tokens (none kept); 128 keeps 2 of 2 on seeds 1-3 there
    tally = generate(seeds, out, n=2, loaded=smollm, max_tokens=128, seed=1, max_tries=8)
    rows = read_jsonl(out)
    assert len(rows) == tally.kept >= 1
    assert tally.tried == tally.kept + sum(tally.skipped.values())
    assert set(tally.skipped) <= {"too similar", "cut off at --max-tokens", "empty", "too short", "too long",
                                  "starts with punctuation", "blacklisted"}  # JSON itself always parses
    for i, r in enumerate(rows):
        assert r["id"] == f"self-instruct-{i}" and r["origin"] == "self-instruct"
        assert r["instruction"].strip() and r["output"].strip() and isinstance(r["input"], str)
        assert blacklisted(r["instruction"]) is None
    assert not (tmp_path / "gen.jsonl.partial").exists()
    assert "tried" in tally.lines("tasks")[0]


def test_a_model_that_cannot_give_the_json_shape_is_counted_never_fatal(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)

    def task(instruction: str, output: str = "An answer.") -> str:
        return json.dumps({"instruction": instruction, "input": "", "output": output})

    answers = [
        "Sure! Here is a task for you.",  # not JSON
        '{"instruction": 3, "input": "", "output": "x"}',  # wrong shape
        ('{"instruction": "Name a colour", "input": "", "output": "bl', "length"),  # cut off
        task("Give three tips for staying healthy!"),  # a seed again
        task("Draw a picture of a cat in the rain."),  # blacklisted
        task("Say hi."),  # 2 words
        task("- List two rivers in Europe."),  # punctuation first
        task("Name two rivers that flow through Germany.", ""),  # no output
        task("Name two rivers that flow through Germany.", "The Rhine and the Danube."),  # kept
        task("Name two rivers that flow through Germany please.", "The Elbe."),  # ROUGE-L 0.93 with the kept one
        task("Explain what a prime number is.", "A number with exactly two divisors."),  # kept
    ]
    model = canned_model(answers)
    out = tmp_path / "gen.jsonl"
    tally = generate(seeds, out, n=5, loaded=model, max_tries=len(answers), seed=0)
    assert [r["instruction"] for r in read_jsonl(out)] == ["Name two rivers that flow through Germany.",
                                                           "Explain what a prime number is."]
    assert tally.skipped == Counter({"not JSON": 1, "wrong JSON shape": 1, "cut off at --max-tokens": 1,
                                     "too similar": 2, "blacklisted": 1, "too short": 1,
                                     "starts with punctuation": 1, "empty": 1})
    assert tally.tried == len(answers) and tally.kept == 2
    assert any("stopped after 11 tries" in line for line in tally.lines())
    # the examples come from the seeds (3 shots; one generated task joins once there is one)
    assert "Name two rivers that flow through Germany." in model.backend.prompts[-1]


def test_generate_resumes_from_a_partial_output_and_extends_a_finished_one(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "gen.jsonl"
    tasks = [json.dumps({"instruction": i, "input": "", "output": "An answer."})
             for i in ("Name two famous painters from Spain.", "Explain how rainbows form.", "Suggest a bakery name.")]
    partial = tmp_path / "gen.jsonl.partial"  # a killed run: one record and half a line
    partial.write_text(json.dumps({"id": "self-instruct-0", "instruction": "Explain what a prime number is.",
                                   "input": "", "output": "A number.", "origin": "self-instruct"}) + '\n{"id": "se',
                       encoding="utf-8")
    with pytest.raises(KnowLMError, match="interrupted run left"):
        generate(seeds, out, n=2, loaded=canned_model(tasks))
    tally = generate(seeds, out, n=2, loaded=canned_model(tasks), resume=True)
    assert tally.resumed == 1 and tally.kept == 1
    assert [r["id"] for r in read_jsonl(out)] == ["self-instruct-0", "self-instruct-1"]
    assert not partial.exists()
    with pytest.raises(KnowLMError, match="already exists"):
        generate(seeds, out, n=3, loaded=canned_model(tasks))
    generate(seeds, out, n=3, loaded=canned_model(tasks[1:]), resume=True)
    assert [r["instruction"] for r in read_jsonl(out)][1:] == ["Name two famous painters from Spain.",
                                                               "Explain how rainbows form."]


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "a b c d", "output": "x"}\nnot json at all\n', "line 2 of .*seeds.jsonl is not valid JSON"),
    ('{"input": "x", "output": "y"}\n', r"seeds.jsonl:1: \"instruction\" is missing"),
    ('{"instruction": "a b c d", "output": "x"}\n"a string"\n', "line 2 of .*seeds.jsonl holds a string, not a JSON"),
    ('[{"instruction": "a b c d", "output": "x"}]\n', "seeds.jsonl holds one JSON array, not JSON Lines"),
    ("", "holds no records"),
])
def test_a_seed_file_that_is_not_jsonl_is_refused_with_file_and_line(tmp_path, content, message):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(content, encoding="utf-8")
    with pytest.raises(KnowLMError, match=message) as err:
        generate(seeds, tmp_path / "gen.jsonl", n=1, loaded=canned_model([]))
    assert err.value.hint and not (tmp_path / "gen.jsonl").exists()


def test_evolve_eliminates_failed_evolutions_and_answers_the_rest(smollm, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", SEEDS[:3])
    answers = [
        json.dumps({"instruction": "Give three tips for staying healthy in winter, each under ten words.",
                    "input": ""}),
        "Wear a coat. Drink warm tea. Sleep eight hours.",
        json.dumps({"instruction": "Translate the sentence into French.", "input": "I love books."}),  # unchanged
        json.dumps({"instruction": "Classify the sentiment of the review.", "input": "Fine."}),
        "Sorry, I cannot do that.",  # a short refusal
    ]
    out = tmp_path / "ev.jsonl"
    tally = evolve(src, out, loaded=canned_model(answers), ops="constraints,deepen")
    rows = read_jsonl(out)
    assert [r["parent"] for r in rows] == ["in-1"]
    assert rows[0]["output"] == "Wear a coat. Drink warm tea. Sleep eight hours."
    assert rows[0]["origin"] in ("evol-instruct:constraints", "evol-instruct:deepen")
    assert tally.skipped == Counter({"unchanged": 1, "refused": 1})
    # and the embedded model evolves and answers one for real
    real = evolve(src, tmp_path / "ev2.jsonl", loaded=smollm, limit=1, max_tokens=64, ops="concretize")
    assert real.tried == 1 and real.kept + sum(real.skipped.values()) == 1
    with pytest.raises(KnowLMError, match="unknown evolution operation"):
        evolve(src, tmp_path / "ev3.jsonl", loaded=smollm, ops="harder")


def test_backtranslate_keeps_pairs_rated_four_or_more(tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("Paris is the capital of France and lies on the Seine.\n\nToo short.\n\n"
                    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.\n", encoding="utf-8")
    answers = ['{"instruction": "What is the capital of France?"}', '{"score": 5}',
               '{"instruction": "Tell me about plants."}', '{"score": 2}']
    out = tmp_path / "bt.jsonl"
    tally = backtranslate(docs, out, loaded=canned_model(answers))
    rows = read_jsonl(out)
    assert rows == [{"id": "bt-docs-1", "instruction": "What is the capital of France?", "input": "",
                     "output": "Paris is the capital of France and lies on the Seine.", "origin": "backtranslation",
                     "doc": "docs-1", "rating": 5}]
    assert tally.skipped == Counter({"too short": 1, "rated below 4": 1})
