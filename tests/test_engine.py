"""The batched engine: many sequences in one llama.cpp context, the same answers as one at a time.

Exactness: llama.cpp's quantized CPU matmuls take a different kernel for one
token than for a batch, so on the embedded Q4_1 GGUF near-ties can flip; on
an F16 GGUF the per-row dot products do not depend on the batch, and batched
greedy answers are the single-sequence answers token for token (found by
trying Q4_1, Q8_0 / F32 KV caches and one thread: only F16 weights make them
identical). The exactness tests use an F16 conversion of the embedded model.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import kill_after_records, knowlm_exe

PROMPTS = [
    "Write one sentence about rivers.",
    "Name three colours.",
    "What is the capital of France? Answer in a full sentence, please, and say why it matters.",
    "用一句话介绍北京。",
    "Count from one to five.",
]


SYSTEM = "You are a helpful assistant. Answer briefly, in plain words, and stop when the question is answered."


def chat(text: str) -> str:
    """SmolLM2's chat format with a shared system head, as every extraction prompt has one."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory) -> Path:
    from knowlm_local.convert.pipeline import convert

    out = tmp_path_factory.mktemp("engine") / "smollm2-f16.gguf"
    convert("smollm2", quants="f16", output=out)
    return out


def _params(max_tokens: int):
    from knowlm_local.params import GenerationParams

    return GenerationParams(temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)


def _single_answers(path: Path, lengths: list[int]) -> list[str]:
    from knowlm_local.backends.llamacpp import LlamaCppBackend

    single = LlamaCppBackend(path, n_ctx=512, n_threads=1, seed=0)
    try:
        out = []
        for text, n in zip(PROMPTS, lengths):
            single.reset_cache()
            out.append("".join(c.text for c in single.generate(chat(text), _params(n))))
        return out
    finally:
        single.close()


def _in_threads(backend, jobs) -> list:
    """Run each ``(prompt, params, cancel_after)`` job in its own thread; the chunks each one got."""
    results: list = [None] * len(jobs)

    def go(i: int) -> None:
        prompt, params, cancel_after = jobs[i]
        cancel = threading.Event()
        chunks = []
        for chunk in backend.generate(prompt, params, cancel=cancel):
            chunks.append(chunk)
            if cancel_after is not None and chunk.completion_tokens >= cancel_after:
                cancel.set()
        results[i] = chunks

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_batched_greedy_equals_one_at_a_time_and_slots_are_reused(f16_gguf):
    from knowlm_local.backends.llamacpp_batch import BatchedLlamaCppBackend

    lengths = [40, 12, 30, 24, 6]  # sequences end at different steps, so waiting ones enter freed slots
    expected = _single_answers(f16_gguf, lengths)
    engine = BatchedLlamaCppBackend(f16_gguf, n_ctx=512, parallel=2, n_threads=1, seed=0)
    try:
        got = _in_threads(engine, [(chat(t), _params(n), None) for t, n in zip(PROMPTS, lengths)])
        texts = ["".join(c.text for c in chunks) for chunks in got]
        assert texts == expected
        assert all(t for t in texts)
        finals = [chunks[-1] for chunks in got]
        for final, n in zip(finals, lengths):  # each sequence stopped by its own limit, or its own end
            assert (final.finish_reason, final.completion_tokens == n) in (("length", True), ("stop", False))
        assert [c.completion_tokens for c in finals] == [len(c.extra["tokens"]) for c in finals]
        assert sorted(engine._free) == [0, 1]  # every slot came back: 5 sequences went through 2 slots
        # Decoding together: fewer llama_decode calls than tokens evaluated.
        assert engine.batched_tokens > engine.steps
        # The chat template head is shared: later prompts copy it instead of reading it again.
        assert engine.saved_prompt_tokens >= 8 * (len(PROMPTS) - 1)
    finally:
        engine.close()


def test_a_cancelled_sequence_stops_without_disturbing_the_others(f16_gguf):
    from knowlm_local.backends.llamacpp_batch import BatchedLlamaCppBackend

    expected = _single_answers(f16_gguf, [30, 30, 30])
    engine = BatchedLlamaCppBackend(f16_gguf, n_ctx=512, parallel=3, n_threads=1, seed=0)
    try:
        got = _in_threads(engine, [(chat(PROMPTS[0]), _params(30), None), (chat(PROMPTS[1]), _params(30), 3),
                                   (chat(PROMPTS[2]), _params(30), None)])
        texts = ["".join(c.text for c in chunks) for chunks in got]
        assert texts[0] == expected[0] and texts[2] == expected[2]
        cancelled = got[1][-1]
        assert cancelled.finish_reason == "cancelled"
        assert cancelled.completion_tokens < 30
        assert expected[1].startswith(texts[1])
        assert sorted(engine._free) == [0, 1, 2]
    finally:
        engine.close()


def test_grammar_answers_parse_for_every_sequence(embedded_path):
    """The embedded Q4_1 model, 4 sequences at once, the NER grammar and the copy rule on each."""
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.ie.run import Workers, load_for_extract
    from knowlm_local.runtime import LoadOptions

    root = Path(__file__).resolve().parents[1] / "recipes" / "data" / "tinyie"
    records = [json.loads(x) for x in (root / "dev.en.jsonl").read_text(encoding="utf-8").splitlines()[:4]]
    records += [json.loads(x) for x in (root / "dev.zh.jsonl").read_text(encoding="utf-8").splitlines()[:4]]
    loaded, _ = load_for_extract("smollm2-ie", LoadOptions(n_ctx=1024, seed=0, n_threads=2), parallel=4)
    try:
        assert loaded.backend.parallel == 4
        params = loaded.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=128)
        workers = Workers(lambda: Extractor(loaded, "NER", params=params, copy="strict"), 4)
        out = list(workers.map({"id": r["id"], "text": r["text"]} for r in records))
    finally:
        loaded.backend.close()
    assert [o["id"] for o in out] == [r["id"] for r in records]  # input order
    assert all(not o["errors"] for o in out), [o["errors"] for o in out]
    spans = [s for o in out for s in o["spans"]]
    assert spans and not any(s["hallucinated"] for s in spans)
    for o, r in zip(out, records):
        for s in o["spans"]:
            assert s["text"] in r["text"]


def test_extract_parallel_keeps_input_order_and_resumes_after_a_kill(tmp_path, cli_env):
    names = ["Alice Moreau", "Daniel Okafor", "Mei Lin", "Tomas Novak", "Priya Raman", "Jonas Berg"]
    cities = ["Lisbon", "Nairobi", "Osaka", "Prague"]
    ids = [f"r{i:02d}" for i in range(20)]
    src = tmp_path / "in.jsonl"
    # Records of different lengths finish out of order inside the engine; the file must still be in order.
    src.write_text("".join(json.dumps({"id": rid, "text": f"{names[i % 6]} moved to {cities[i % 4]} in {1990 + i}."
                                       + (" She works there as a nurse." * (i % 3))}) + "\n"
                           for i, rid in enumerate(ids)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    cmd = [knowlm_exe(), "extract", str(src), "--task", "ner", "-o", str(out), "--parallel", "4",
           "--ctx", "1024", "-n", "48", "--threads", "2"]
    written = kill_after_records(cmd, cli_env, out)
    assert 3 <= len(written) < len(ids) and written == ids[:len(written)]

    resumed = subprocess.run(cmd + ["--resume"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(written)} already done" in resumed.stderr.replace("\n", " ")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids  # every record once, in order


@pytest.mark.parametrize("args, error, hint", [
    (["--parallel", "0"], "'--parallel': Input should be greater than or equal to 1", "--help"),
    (["--parallel", "-3"], "'--parallel': Input should be greater than or equal to 1", "--help"),
    (["--parallel", "200", "--ctx", "131072"], "needs a KV cache of", "--parallel"),
    (["--parallel", "2", "--ctx", "64"], "context window (64 tokens) leaves no room", "--ctx"),
])
def test_bad_parallel_settings_are_refused_in_one_line(tmp_path, cli_env, args, error, hint):
    src = tmp_path / "in.txt"
    src.write_text("Marta Oliveira founded Tidewater Analytics in Porto in 2016.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run = subprocess.run([knowlm_exe(), "extract", str(src), "-o", str(out), "--threads", "1", *args], env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert lines and error in lines[0] and any(hint in line for line in lines[1:]), run.stderr
    assert not out.exists()  # nothing half-written


def test_a_prompt_longer_than_its_share_of_the_context_is_refused(embedded_path):
    from knowlm_local.backends.llamacpp_batch import BatchedLlamaCppBackend
    from knowlm_local.errors import KnowLMError

    engine = BatchedLlamaCppBackend(embedded_path, n_ctx=64, parallel=2, n_threads=1)
    try:
        with pytest.raises(KnowLMError) as info:
            list(engine.generate(chat("Tell me everything about rivers. " * 10), _params(8)))
        assert "share of the context is 64" in info.value.message and "--parallel 2" in info.value.message
        assert "--ctx" in info.value.hint
        # The engine is still usable afterwards.
        assert "".join(c.text for c in engine.generate("<|im_start|>user\nHi<|im_end|>\n", _params(4)))
    finally:
        engine.close()


def test_check_parallel_fits_names_the_largest_parallel_that_fits(embedded_path, monkeypatch):
    from knowlm_local import engine_plan
    from knowlm_local.errors import KnowLMError

    per = engine_plan.kv_bytes(embedded_path, 4096, 1)
    assert per == 30 * 4096 * 2 * 192 * 2  # 30 layers, K and V, 3 KV heads x 64, f16
    monkeypatch.setattr(engine_plan, "_budget", lambda _ngl: (per * 5 + per // 2, "test budget"))
    engine_plan.check_parallel_fits(embedded_path, 4096, 4, 0)  # 4 + 1 sequences fit
    with pytest.raises(KnowLMError) as info:
        engine_plan.check_parallel_fits(embedded_path, 4096, 8, 0)
    assert "--parallel 4 or fewer" in info.value.hint
    assert engine_plan.auto_parallel(embedded_path, 4096, 0)[0] == 1  # on the CPU: one at a time (see bench_engine)
