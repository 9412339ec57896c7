"""Per-edit evaluation through torch (the edited HF weights) or llama.cpp (a GGUF of them).

For each request: reliability (the edit prompt), generalization (its
rephrases), locality (unrelated prompts keep the answers the model gave before
the edit), neighbourhood (the same for prompts that share the edit's relation
with a subject of the same kind), portability (questions that follow from the edit, with their
answers), chat (the edit prompt as a chat turn), each teacher-forced (``tf``)
and generated (``gen``), plus the fluency of 100 generated tokens. Both engines
sit behind one small scorer interface (token ids in, token ids out), so the
same code measures the PyTorch weights and every GGUF precision.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from knowlm_local.edit import metrics
from knowlm_local.edit.model import join
from knowlm_local.edit.requests import EditRequest

LOCALITY_TOKENS = 8  # how much of the model's own answer an unrelated prompt must keep
CHAT_TOKENS = 16  # a chat answer is a sentence: the target must occur in its first tokens
FLUENCY_TOKENS = 100
ASPECTS = ("reliability", "generalization", "locality", "neighbourhood", "portability", "chat")


class Scorer(Protocol):
    def ids(self, text: str) -> list[int]: ...
    def argmax(self, ids: list[int]) -> list[int]: ...  # the top token after each prefix ids[:i+1]
    def greedy(self, ids: list[int], n: int) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


@dataclass
class Baseline:
    """What the model answered before the edit (locality and neighbourhood are measured against it) and how
    fluent it was."""

    locality: list[list[int]] = field(default_factory=list)
    neighbours: list[list[int]] = field(default_factory=list)
    fluency: float | None = None


def split(scorer: Scorer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, answer ids)``: the tokens of prompt + answer, cut where the prompt's own tokens end."""
    full = scorer.ids(join(prompt, answer) if not prompt.endswith("\n") else prompt + answer)
    alone = scorer.ids(prompt)
    p = 0
    while p < min(len(full), len(alone)) and full[p] == alone[p]:
        p += 1
    p = min(p, len(full) - 1)
    return full[:p], full[p:]


def teacher_forced(scorer: Scorer, prompt: str, answer: str) -> float:
    pre, ans = split(scorer, prompt, answer)
    top = scorer.argmax(pre + ans)
    return metrics.token_accuracy(top[len(pre) - 1:len(pre) - 1 + len(ans)], ans)


def generated(scorer: Scorer, prompt: str, answer: str) -> tuple[float, str]:
    pre, ans = split(scorer, prompt, answer)
    text = scorer.decode(scorer.greedy(pre, len(ans)))
    return float(metrics.exact_match(text, answer)), text


def baseline(scorer: Scorer, req: EditRequest, fluency: bool = True) -> Baseline:
    out = Baseline([scorer.greedy(scorer.ids(p), LOCALITY_TOKENS) for p in req.locality],
                   [scorer.greedy(scorer.ids(p), LOCALITY_TOKENS) for p in req.neighbours])
    if fluency:
        out.fluency = metrics.fluency(scorer.decode(scorer.greedy(scorer.ids(req.prompt), FLUENCY_TOKENS)))
    return out


def _locality(scorer: Scorer, prompt: str, before: list[int]) -> tuple[float, float]:
    pre = scorer.ids(prompt)
    top = scorer.argmax(pre + before)
    tf = metrics.token_accuracy(top[len(pre) - 1:len(pre) - 1 + len(before)], before)
    gen = float(scorer.greedy(pre, len(before)) == before)
    return tf, gen


def evaluate(scorer: Scorer, req: EditRequest, base: Baseline, chat: Callable[[str], str] | None = None,
             fluency: bool = True) -> dict[str, Any]:
    """The metrics of one request on the (edited) model behind ``scorer``; None where a probe is absent."""
    res: dict[str, Any] = {}
    tf, (gen, text) = teacher_forced(scorer, req.prompt, req.target), generated(scorer, req.prompt, req.target)
    res["reliability"] = {"tf": tf, "gen": gen}
    res["answer"] = text
    pairs = [(teacher_forced(scorer, r, req.target), generated(scorer, r, req.target)[0]) for r in req.rephrases]
    res["generalization"] = _agg(pairs)
    res["locality"] = _agg([_locality(scorer, p, b) for p, b in zip(req.locality, base.locality)])
    res["neighbourhood"] = _agg([_locality(scorer, p, b) for p, b in zip(req.neighbours, base.neighbours)])
    pairs = [(teacher_forced(scorer, q.prompt, q.answer or ""), generated(scorer, q.prompt, q.answer or "")[0])
             for q in req.portability]
    res["portability"] = _agg(pairs)
    if chat is not None:
        turn = chat(req.prompt)
        said = scorer.decode(scorer.greedy(scorer.ids(turn), CHAT_TOKENS))
        res["chat"] = {"tf": teacher_forced(scorer, turn, req.target), "gen": float(metrics.contains(said, req.target))}
        res["chat_answer"] = said
    else:
        res["chat"] = {"tf": None, "gen": None}
    if fluency:
        after = metrics.fluency(scorer.decode(scorer.greedy(scorer.ids(req.prompt), FLUENCY_TOKENS)))
        res["fluency"] = {"before": base.fluency, "after": after}
    return res


def _agg(pairs: list[tuple[float, float]]) -> dict[str, float | None]:
    return {"tf": metrics.mean([a for a, _ in pairs]), "gen": metrics.mean([b for _, b in pairs])}


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean of each aspect's tf and gen over the edits that have it."""
    out = {a: {k: metrics.mean([r[a][k] for r in results]) for k in ("tf", "gen")} for a in ASPECTS}
    flu = [r["fluency"] for r in results if "fluency" in r]
    if flu:
        out["fluency"] = {"before": metrics.mean([f["before"] for f in flu]),
                          "after": metrics.mean([f["after"] for f in flu])}
    return out


# -- the two engines ------------------------------------------------------------------------------

class TorchScorer:
    """The in-memory HF model (the edited weights as they are, before any save)."""

    def __init__(self, em) -> None:
        self.em = em

    def ids(self, text: str) -> list[int]:
        return self.em.ids(text)

    def argmax(self, ids: list[int]) -> list[int]:
        import torch

        with torch.no_grad():
            logits = self.em.model(input_ids=torch.tensor([ids], device=self.em.device)).logits[0]
        return logits.argmax(-1).tolist()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import torch

        out: list[int] = []
        eos = self.em.tok.eos_token_id
        model = self.em.model
        # transformers 5.x renamed the KV cache argument and output ``past_key_values`` -> ``cache`` (the old
        # names go in 5.40); older releases know only the old ones
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.no_grad():
            res = model(input_ids=torch.tensor([ids], device=self.em.device), use_cache=True)
            for _ in range(n):
                nxt = int(res.logits[0, -1].argmax())
                out.append(nxt)
                if nxt == eos:
                    break
                cache = res["cache"] if "cache" in res else res["past_key_values"]
                res = model(input_ids=torch.tensor([[nxt]], device=self.em.device), use_cache=True, **{name: cache})
        return out

    def decode(self, ids: list[int]) -> str:
        return self.em.tok.decode(ids, skip_special_tokens=True)


class LlamaCppScorer:
    """A GGUF through llama.cpp, greedy on its own logits (what `chat` and `extract` run)."""

    def __init__(self, path: str, n_ctx: int = 1024, n_threads: int | None = None) -> None:
        from knowlm_local.backends.llamacpp_fast import llama_class

        self.llm = llama_class(fast=False)(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=n_threads, verbose=False)
        self.eos = self.llm.token_eos()

    def ids(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def argmax(self, ids: list[int]) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[:len(ids)].argmax(-1).tolist()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            nxt = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
            out.append(nxt)
            if nxt == self.eos:
                break
            self.llm.eval([nxt])
        return out

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize([i for i in ids if i != self.eos]).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()
