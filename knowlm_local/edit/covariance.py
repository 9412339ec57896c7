"""The second moment ``C = E[k k^T]`` of an MLP's keys over ordinary text.

ROME's update direction ``u = C^-1 k*`` and MEMIT's ``(lambda C + K K^T)^-1``
use it to change the weights least for the keys the model meets most: without
it (``C = I``) an edit also moves every key that merely points the same way as
the subject's, which on a small model shows up as damage to unrelated
prompts. The papers estimate ``C`` on a Wikipedia sample; here the text is a
local file (``--cov-text``) or, when none is given, text the model writes
itself (seeded, so the same model gives the same ``C``). A ridge term (a share
of the mean diagonal) keeps the inverse stable when there are fewer tokens
than key dimensions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

SELF_STARTS = ("The", "In", "A", "It", "When", "There", "This", "One")


def corpus(em, opts: Any) -> list[str]:
    """The texts whose keys are counted: lines of ``opts.cov_text``, or the model's own writing."""
    if opts.cov_text and opts.cov_text != "self":
        from knowlm_local.jsonio import decode_utf8, read_bytes

        path = Path(opts.cov_text)
        text = decode_utf8(read_bytes(path, "covariance text", "pass a UTF-8 text file"), str(path))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise KnowLMError(f"{path} has no text", "pass a UTF-8 text file of ordinary sentences")
        return lines
    return self_text(em, seed=opts.seed)


def self_text(em, seed: int = 0, length: int = 128, per_start: int = 4) -> list[str]:
    """``per_start`` seeded top-k samples of up to ``length`` tokens from each of eight common openings."""
    import torch

    torch.manual_seed(seed)
    starts = [em.ids(s) for s in SELF_STARTS for _ in range(per_start)]
    groups: dict[int, list[list[int]]] = {}
    for ids in starts:  # one batch per prompt length (they are one token each on most tokenizers): no padding
        groups.setdefault(len(ids), []).append(ids)
    out = []
    for rows in groups.values():
        with torch.no_grad():
            ids = torch.tensor(rows, device=em.device)
            gen = em.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=length, do_sample=True,
                                    top_k=20, temperature=1.0, pad_token_id=em.tok.pad_token_id)
        out += [em.tok.decode(g, skip_special_tokens=True) for g in gen]
    return out


def second_moments(em, layers: list[int], texts: list[str], max_tokens: int = 20000) -> dict[int, Any]:
    """``E[k k^T]`` of the down_proj inputs of each layer in ``layers`` over the tokens of ``texts`` (float64)."""
    import contextlib

    import torch

    sums = {n: None for n in layers}
    count = 0
    for text in texts:
        if count >= max_tokens:
            break
        ids = em.ids(text)[:512]
        got: dict[int, list] = {n: [] for n in layers}
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for n in layers:
                stack.enter_context(em.capture_inputs(n, got[n]))
            em.model(input_ids=torch.tensor([ids], device=em.device))
        for n in layers:
            k = got[n][0][0].double()
            sums[n] = k.T @ k if sums[n] is None else sums[n] + k.T @ k
        count += len(ids)
    if not count:
        raise KnowLMError("the covariance text has no tokens", "pass a longer text with --cov-text")
    return {n: s / count for n, s in sums.items()}


def regularized(c, ridge: float):
    """``C + ridge * mean(diag C) * I``."""
    import torch

    return c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)


def inverse(em, layer: int, opts: Any):
    """``(C + ridge)^-1`` of ``layer`` in float32, for ROME's ``u = C^-1 k*``.

    Kept on the model object for the next edit of the same layer: an edit of a layer's down_proj does not
    change that layer's keys (its inputs), so the statistic stays exact, and computing it is most of a small
    model's edit time.
    """
    import torch

    cache = em.__dict__.setdefault("_cov_cache", {})
    key = (layer, opts.cov_text, opts.seed, opts.cov_tokens, opts.ridge)
    if key not in cache:
        c = second_moments(em, [layer], corpus(em, opts), opts.cov_tokens)[layer]
        cache[key] = torch.linalg.inv(regularized(c, opts.ridge)).float()
    return cache[key]
