"""ROME: one fact, one rank-one update of one MLP matrix (Meng et al., 2022).

A fact "subject -> target" is read by the MLP at the subject's last token:
the down_proj input there is the key ``k``, its output the value. ROME

1. averages the key ``k*`` over the prompt placed after self-written context
   prefixes (and inside the chat template, so the edit also holds in `chat`);
2. finds the change ``delta`` of the value that makes the target likely: Adam on
   ``delta`` added to the MLP output at the subject's last token, with the
   target's negative log-likelihood, a KL term on "{subject} is a" that keeps
   what the model knew of the subject, weight decay, and a norm clamp;
3. writes ``W' = W + delta u^T / (u^T k*)`` with ``u = k*`` (no covariance,
   EasyEdit's current default) or ``u = (C + ridge I)^-1 k*`` with the keys'
   second moment ``C`` from a local text (:mod:`knowlm_local.edit.covariance`).

So ``W' k* = W k* + delta``: the new value exactly where the fact is read,
and a change elsewhere in proportion to how much a key looks like ``k*``.

By default ``u`` is also made blind to the keys of the edit's own prompts at
every other position (the relation words "was painted by", the chat
template): ``W' k = W k`` for each of them, to within the 1e-4 ridge of
:func:`rank_one`. Without that, a fact about
one subject leaks into every prompt that shares its relation (on the embedded
model, editing who painted the Mona Lisa changed who painted The Starry Night,
through a 0.13 share of the update at " painted"). It is the equality
constraint of MEMIT's successors on preserved keys, applied to the keys the
edit itself can name; ``EditOptions(preserve_prompt=False)`` turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knowlm_local.edit.model import EditableModel, join
from knowlm_local.edit.requests import EditRequest


@dataclass(frozen=True)
class ValueParams:
    """How the new value is optimised (EasyEdit's LLaMA defaults)."""

    v_lr: float = 0.5
    v_steps: int = 25
    v_loss_stop: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_norm: float = 4.0  # |delta| <= clamp_norm * |original value|


def default_layer(n_layers: int) -> int:
    """ROME's layer scaled from EasyEdit's choice on LLaMA-2-7B (layer 5 of 32)."""
    return max(0, min(n_layers - 1, round(n_layers * 5 / 32)))


def _subject_end(prompt: str, subject: str) -> int:
    return prompt.index(subject) + len(subject)


def key_texts(em: EditableModel, req: EditRequest, contexts: list[str], chat: bool = True) -> list[tuple[str, int]]:
    """``(text, subject end)`` pairs whose keys are averaged into ``k*``."""
    end = _subject_end(req.prompt, req.subject)
    out = [(c + req.prompt, len(c) + end) for c in contexts]
    if chat:
        text = em.chat(req.prompt)
        if req.prompt in text:
            out.append((text, text.index(req.prompt) + end))
    return out


def rewrite_texts(em: EditableModel, req: EditRequest, contexts: list[str],
                  chat: bool = True) -> list[tuple[str, int, int]]:
    """``(text, subject end, target start)``: the prompt (in every context) followed by the target."""
    out = []
    for text, end in key_texts(em, req, contexts, chat):
        full = join(text, req.target) if not text.endswith("\n") else text + req.target
        out.append((full, end, len(full) - len(req.target)))
    return out


def compute_key(em: EditableModel, layer: int, texts: list[tuple[str, int]]):
    """The mean down_proj input of ``layer`` at the subject's last token over ``texts`` (float32)."""
    return compute_keys(em, layer, texts)[0]


def compute_keys(em: EditableModel, layer: int, texts: list[tuple[str, int]]):
    """``(k*, others)``: :func:`compute_key`, and the keys at every other real position of ``texts`` [m, d]."""
    import torch

    enc = em.encode([t for t, _ in texts], [e for _, e in texts], [None] * len(texts))
    got: list = []
    with torch.no_grad(), em.capture_inputs(layer, got):
        em.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    keys = got[0].float()
    rows = torch.arange(len(texts), device=em.device)
    other = enc.attention_mask.bool().clone()
    other[rows, torch.tensor(enc.lookup, device=em.device)] = False
    return keys[rows, enc.lookup].mean(0), keys[other]


def _logits_at(em: EditableModel, enc, positions: list[tuple[int, int]]):
    """The model's logits at ``(row, position)`` pairs only: the LM head over a 49k-token vocabulary on every
    position of every row is most of the cost of an optimisation step, and the loss reads a few of them."""
    import torch

    hidden = em.model.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    rows = torch.tensor([r for r, _ in positions], device=hidden.device)
    cols = torch.tensor([c for _, c in positions], device=hidden.device)
    return em.model.lm_head(hidden[rows, cols]).float()


def loss_positions(enc, n_rows: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Where each target token is predicted (the position before it), and the tokens predicted there."""
    where, ids = [], []
    for i in range(n_rows):
        s, e = enc.target_spans[i]
        where += [(i, j - 1) for j in range(s, e)]
        ids += enc.input_ids[i, s:e].tolist()
    return where, ids


def target_nll(logits, ids, n_rows: int, owners: list[int]):
    """Mean over rows of each row's mean target-token negative log-likelihood (``owners``: a token's row)."""
    import torch

    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids, device=logits.device)[:, None])[:, 0]
    own = torch.tensor(owners, device=logits.device)
    per_row = torch.zeros(n_rows, device=logits.device).index_add(0, own, -logp)
    counts = torch.zeros(n_rows, device=logits.device).index_add(0, own, torch.ones_like(logp))
    return (per_row / counts).mean()


def compute_delta(em: EditableModel, layer: int, req: EditRequest, contexts: list[str],
                  vp: ValueParams = ValueParams(), chat: bool = True) -> tuple[Any, dict[str, float]]:
    """The change of the MLP output at the subject that makes ``req.target`` likely, and how it went."""
    import torch

    rewrites = rewrite_texts(em, req, contexts, chat)
    kl_prompt = f"{req.subject} is a"
    texts = [t for t, _, _ in rewrites] + [kl_prompt]
    ends = [e for _, e, _ in rewrites] + [len(req.subject)]
    starts = [s for _, _, s in rewrites] + [None]
    enc = em.encode(texts, ends, starts)
    n_rw = len(rewrites)
    kl_row, kl_pos = n_rw, int(enc.attention_mask[n_rw].sum()) - 1
    rows = list(range(len(texts)))

    where, ids = loss_positions(enc, n_rw)
    owners = [r for r, _ in where]
    where = where + [(kl_row, kl_pos)]
    got: list = []
    handle = em.mlp(layer).register_forward_hook(lambda m, a, out: got.append(out.detach()))
    try:
        with torch.no_grad():
            base = _logits_at(em, enc, where)
    finally:
        handle.remove()
    value = got[0][0, enc.lookup[0]].float()  # the bare prompt's value
    kl_base = torch.log_softmax(base[-1], -1)
    nll0 = float(target_nll(base[:-1], ids, n_rw, owners))

    delta = torch.zeros_like(value, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=vp.v_lr)
    limit = vp.clamp_norm * value.norm()
    nll = torch.tensor(nll0)
    steps = 0
    for steps in range(1, vp.v_steps + 1):
        opt.zero_grad()
        with em.add_to_output(layer, delta.to(got[0].dtype), rows, enc.lookup):
            logits = _logits_at(em, enc, where)
        nll = target_nll(logits[:-1], ids, n_rw, owners)
        kl = torch.nn.functional.kl_div(kl_base, torch.log_softmax(logits[-1], -1), log_target=True,
                                        reduction="sum")
        loss = nll + vp.kl_factor * kl + vp.weight_decay * delta.norm() ** 2 / value.norm() ** 2
        if loss.item() < vp.v_loss_stop:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            if delta.norm() > limit:
                delta.mul_(limit / delta.norm())
    return delta.detach(), {"nll_before": nll0, "nll_after": nll.item(), "steps": steps,
                            "delta_norm": delta.detach().norm().item(), "value_norm": value.norm().item()}


def rank_one(k_star, delta, inv_cov=None, keep=None):
    """The factors ``(left, right)`` of ``dW = left right^T`` with ``dW k* = delta``.

    ``keep`` ([m, d]): keys the update must leave alone, ``dW k = 0`` for each row. ``u`` is then the
    ``C^-1``-weighted projection of ``C^-1 k*`` away from their span (a tiny ridge on their Gram matrix keeps
    nearly parallel keys solvable); it stays exact at ``k*`` as long as ``k*`` is not itself in that span.
    """
    import torch

    u = k_star if inv_cov is None else inv_cov @ k_star
    if keep is not None and len(keep):
        b = keep.T if inv_cov is None else inv_cov @ keep.T  # [d, m]
        gram = keep @ b
        gram = gram + 1e-4 * gram.diagonal().mean() * torch.eye(len(keep), dtype=gram.dtype, device=gram.device)
        u = u - b @ torch.linalg.solve(gram, keep @ u)
    return delta, u / (u @ k_star)
