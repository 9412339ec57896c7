"""MEMIT: many facts at once, the update spread over a range of layers (Meng et al., 2023).

1. For each request, the change ``delta_i`` of the hidden state after the last
   layer of the range that makes its target likely (the same optimisation as
   ROME's value, applied at that layer: adding to the MLP output adds to the
   residual stream);
2. then, layer by layer from the first: the keys ``K`` of all requests there,
   the part of the remaining change this layer should carry
   ``R = (z - h) / (layers left)`` with ``h`` measured *after* the updates already
   made below, and ``dW = R K^T (lambda C + K K^T)^-1``, a rank-``n`` update.

``C`` is the keys' second moment over a text (:mod:`~knowlm_local.edit.covariance`),
``lambda`` = ``mom2_weight`` (15000 as in EasyEdit's configs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from knowlm_local.edit import covariance, rome
from knowlm_local.edit.model import EditableModel, module_name


def default_layers(n_layers: int) -> list[int]:
    """Layers 4-8 of LLaMA-2-7B's 32 (EasyEdit), scaled to ``n_layers``."""
    lo = max(0, round(n_layers * 4 / 32))
    hi = max(lo, min(n_layers - 1, round(n_layers * 8 / 32)))
    return list(range(lo, hi + 1))


def _hidden(em: EditableModel, layer: int, texts: list[tuple[str, int]]):
    """The residual stream after ``layer`` at the subject's last token, averaged over ``texts``."""
    import torch

    enc = em.encode([t for t, _ in texts], [e for _, e in texts], [None] * len(texts))
    with torch.no_grad():
        out = em.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    rows = torch.arange(len(texts), device=em.device)
    return out.hidden_states[layer + 1][rows, enc.lookup].float().mean(0)


def apply(em: EditableModel, requests: list, contexts: list[str], layers: list[int], opts: Any,
          say: Callable[[str], Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Edit ``em`` in place; the factors ``(left [H, n], right [I, n])`` of each layer's update."""
    import torch

    last = layers[-1]
    vp = opts.value or rome.ValueParams()
    texts = [rome.key_texts(em, r, contexts, opts.chat) for r in requests]
    targets = []
    for i, req in enumerate(requests, 1):
        if say:
            say(f"target {i}/{len(requests)}: {req.subject!r} -> {req.target!r}")
        delta, _ = rome.compute_delta(em, last, req, contexts, vp, opts.chat)
        targets.append(_hidden(em, last, texts[i - 1]) + delta)
    z = torch.stack(targets, 1)  # [H, n]
    if say:
        say("covariance of the keys")
    moments = covariance.second_moments(em, layers, covariance.corpus(em, opts), opts.cov_tokens)
    factors = {}
    for j, layer in enumerate(layers):
        keys = torch.stack([rome.compute_key(em, layer, t) for t in texts], 1).double()  # [I, n]
        cur = torch.stack([_hidden(em, last, t) for t in texts], 1)
        resid = ((z - cur) / (len(layers) - j)).double()
        c = covariance.regularized(moments[layer], opts.ridge)
        adj = torch.linalg.solve(opts.mom2_weight * c + keys @ keys.T, keys)  # [I, n]
        with torch.no_grad():
            w = em.weight(layer)
            w += (resid @ adj.T).to(w.dtype)
        factors[module_name(layer)] = (resid.float(), adj.float())
    return factors
