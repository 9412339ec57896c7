"""The greedy grammar shortcut picks exactly the tokens llama.cpp's full grammar sampler picks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knowlm_local.backends.llamacpp import LlamaCppBackend
from knowlm_local.backends.llamacpp_fast import GreedyGrammarSampler
from knowlm_local.embedded import embedded_gguf
from knowlm_local.ie.constrain import answer_schema
from knowlm_local.params import GenerationParams

GREEDY = GenerationParams(temperature=0.0, repeat_penalty=1.0, max_tokens=64)
TEXTS = [
    "Marie Curie worked in Paris with Pierre Curie at the University of Paris.",
    "马云于1999年在杭州创办了阿里巴巴，后来担任董事局主席。",
    "Shares of Vertex Motors fell after Nadia Petrova left the company in Oslo.",
]


@pytest.fixture(scope="module")
def pair():
    fast = LlamaCppBackend(embedded_gguf(), n_ctx=1024, n_threads=1, flash_attn=True)
    stock = LlamaCppBackend(embedded_gguf(), n_ctx=1024, n_threads=1, flash_attn=True, fast_sampling=False)
    yield fast, stock
    fast.close()
    stock.close()


def _prompt(text: str) -> str:
    return (f"<|im_start|>user\nList the people, organizations and places in this text as JSON: {text}"
            "<|im_end|>\n<|im_start|>assistant\n")


def test_constrained_answers_equal_llama_cpp_python_sampler(pair):
    fast, stock = pair
    schema = answer_schema("NER", ["person", "organization", "location"])
    for text in TEXTS:
        ours, _ = fast.complete(_prompt(text), GREEDY, json_schema=schema)
        theirs, _ = stock.complete(_prompt(text), GREEDY, json_schema=schema)
        assert ours == theirs
        assert ours.startswith("{") and len(ours) > 20
    sampler = fast.llm._sampler
    assert isinstance(sampler, GreedyGrammarSampler) and sampler.samples > 0
    assert type(stock.llm._sampler).__name__ == "LlamaSampler"


def test_sampling_with_temperature_keeps_llama_cpp_python_sampler(pair):
    fast, _ = pair
    schema = answer_schema("NER", ["person"])
    params = GenerationParams(temperature=0.7, seed=1, max_tokens=8)
    fast.complete(_prompt(TEXTS[0]), params, json_schema=schema)
    assert type(fast.llm._sampler).__name__ == "LlamaSampler"


def test_choice_equals_greedy_over_the_whole_vocabulary(pair):
    """Every path: argmax allowed, argmax refused but a top token allowed, all top tokens refused, ties."""
    import llama_cpp

    fast, _ = pair
    grammar = llama_cpp.LlamaGrammar.from_json_schema(
        json.dumps({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
        verbose=False)
    s = GreedyGrammarSampler(fast.llm, grammar)
    n = fast.llm.n_vocab()
    ids = np.arange(n, dtype=np.int32)
    allowed = np.flatnonzero(np.isfinite(s._allowed(ids, np.zeros(n, dtype=np.float32))))
    refused = np.flatnonzero(~np.isin(ids, allowed))
    assert 1 < len(allowed) < 1000 < len(refused)  # an object must start with "{"
    rng = np.random.default_rng(0)

    def noise():
        return rng.normal(size=n).astype(np.float32)

    cases = []
    a = noise()
    a[allowed[0]] = 50.0  # 1. the argmax is allowed
    cases.append(a)
    b = noise()
    b[refused[:10]] = 50.0 + np.arange(10)
    b[allowed[-1]] = 40.0  # 2. refused argmax, an allowed token in the top few
    cases.append(b)
    c = noise()
    c[refused[:1000]] = 100.0  # 3. the top 1000 are all refused: the whole vocabulary decides
    cases.append(c)
    d = np.zeros(n, dtype=np.float32)
    d[refused[0]] = 5.0
    d[allowed[[1, 0]]] = 2.0  # 4. allowed tokens tie: the lowest id wins, as in llama.cpp's greedy sampler
    cases.append(d)
    for logits in cases:
        _check(s, ids, logits)
    assert s.top_checks >= 3 and s.full_checks >= 1
    # Inside a string nearly every token is allowed: 5. a tie at the edge of the top candidates must not
    # let a high-id token win over a lower-id one left outside them.
    for token in fast.llm.tokenize(b'{"name": "', add_bos=False):
        llama_cpp.llama_sampler_accept(s._smpl, token)
    refused = np.flatnonzero(~np.isfinite(s._allowed(ids, np.zeros(n, dtype=np.float32))))
    assert 0 < len(refused) < GreedyGrammarSampler.TOP - 10
    e = np.zeros(n, dtype=np.float32)
    e[refused] = 10.0  # the top candidates: every refused token, then a few arbitrary ones of the tied rest
    full = s.full_checks
    _check(s, ids, e)
    assert s.full_checks == full + 1
    s.close()


def _check(s: GreedyGrammarSampler, ids: np.ndarray, logits: np.ndarray) -> None:
    after = s._allowed(ids, logits.copy())
    expected = int(np.argmax(np.where(np.isfinite(after), logits, -np.inf)))  # first maximum among allowed
    assert s._choose(logits) == expected
