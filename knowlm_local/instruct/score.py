"""Scoring instruction records with a local model: a 5-point self-rating and the perplexity of an answer.

* :func:`rate`: the model grades how well ``output`` answers ``instruction`` (+ ``input``) on a 5-point scale
  (1 unrelated ... 5 perfect), greedy and JSON-constrained to ``{"score": 1..5}``; instruction back-translation
  keeps pairs rated 4 or more. None when the model gives no usable score.
* :func:`perplexity`: ``exp`` of the mean negative log-likelihood of the answer's tokens, given the prompt
  ``finetune`` would build for the record (:func:`knowlm_local.train.sft_data.render`); low means the answer is
  fluent, expected text for this model, a very high value flags garbage.

Perplexity needs every position's logits, which the backend contract does not stream; :func:`token_logprobs` is
the one place that reaches under it: on llama.cpp it decodes prompt + answer in batches of ``n_batch`` tokens
through the loaded ``Llama`` object's own context, asking logits for the answer's rows only, then forgets the KV
cache (``n_tokens = 0``) so the next generation evaluates its prompt afresh; on transformers it runs one forward
pass.
"""

from __future__ import annotations

import math
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.ask import ask_json
from knowlm_local.instruct.prompts import INPUT_LINE, RATE, SCORE_SCHEMA
from knowlm_local.runtime import LoadedModel


def rate(loaded: LoadedModel, instruction: str, input_text: str, output: str, lang: str = "en") -> int | None:
    """The model's 1-5 rating of an (instruction, input, output) record, or None when it gave none."""
    content = RATE[lang].format(instruction=instruction, output=output,
                                input=INPUT_LINE[lang].format(input=input_text) if input_text else "")
    params = loaded.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=16, seed=0)
    value, _, _ = ask_json(loaded, content, SCORE_SCHEMA, params)
    score = value.get("score") if value else None
    return score if isinstance(score, int) and 1 <= score <= 5 else None


def _log_softmax_rows(logits: Any) -> Any:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _llamacpp_logits(backend: Any, ids: list[int], first: int) -> Any:
    """Logits of positions ``first``.. of ``ids`` from a llama.cpp backend (the KV cache is forgotten afterwards).

    Only those rows are asked of llama.cpp (a batch's per-token output flags), so the prompt's rows cost no
    output-layer work and no copying.
    """
    import numpy as np

    llm = backend.llm
    n_vocab = llm.n_vocab()
    rows = []
    try:
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0
        for start in range(0, len(ids), llm.n_batch):
            chunk = ids[start:start + llm.n_batch]
            llm._batch.set_batch(chunk, n_past=start, logits_all=False)
            flags = llm._batch.batch.logits
            for i in range(len(chunk)):
                flags[i] = start + i >= first
            llm._ctx.decode(llm._batch)
            n_out = max(0, start + len(chunk) - max(first, start))
            if n_out:
                rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_out, n_vocab)).copy())
    finally:
        llm.n_tokens = 0  # the next completion re-evaluates its whole prompt
    return np.concatenate(rows)


def _transformers_logits(backend: Any, ids: list[int], first: int) -> Any:
    import torch

    with torch.no_grad():
        out = backend.model(torch.tensor([ids], device=backend.device))
    return out.logits[0, first:].float().cpu().numpy()


def token_logprobs(loaded: LoadedModel, prompt: str, text: str) -> list[float]:
    """Log-probability of each token of ``text`` after ``prompt`` under the loaded model."""
    backend = loaded.backend
    name = backend.info.name
    if name not in ("llama.cpp", "transformers"):
        raise KnowLMError(f"perplexity needs the logits of a local model; the {name} backend does not give them",
                          "run select with a local GGUF (llama.cpp) or Hugging Face model, or leave --ppl-max out")
    head = backend.tokenize(prompt)
    tail = backend.tokenize(text, add_bos=False)
    if not tail:
        return []
    ids = head + tail
    if len(ids) > backend.n_ctx:
        raise KnowLMError(f"a record of {len(ids)} tokens does not fit the {backend.n_ctx}-token context",
                          "raise --ctx")
    logits = (_llamacpp_logits if name == "llama.cpp" else _transformers_logits)(backend, ids, len(head) - 1)
    logp = _log_softmax_rows(logits[:len(tail)])  # row i predicts tail[i]; the last row predicts nothing
    return [float(logp[i, tok]) for i, tok in enumerate(tail)]


def perplexity(loaded: LoadedModel, instruction: str, input_text: str, output: str) -> float:
    """Perplexity of ``output`` as the answer to the record's prompt (inf for an empty or oversized answer)."""
    from knowlm_local.train.sft_data import render

    prompt, _ = render({"instruction": instruction, "input": input_text, "output": output}, loaded.template)
    try:
        lps = token_logprobs(loaded, prompt, output)
    except KnowLMError as exc:
        if "does not fit" in exc.message:
            return math.inf
        raise
    return math.exp(-sum(lps) / len(lps)) if lps else math.inf
