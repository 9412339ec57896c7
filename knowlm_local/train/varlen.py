"""Attention for packed rows that computes only the blocks packing keeps.

A packed row holds several examples that must not see each other. The usual
way (transformers' own, when rows carry restarting ``position_ids``) is one
block-diagonal mask over the whole row: correct, but the kernel still visits
every query-key pair of the ``L x L`` square, so a 512-token row of three
examples costs a full 512-token attention while the examples need a fraction of
it. On a CPU, where there is no variable-length flash kernel, that makes a
packed slot dearer than a padded one, and packing loses part of what it wins
by filling its rows.

Here the examples of a batch are cut out of their rows, grouped by length into
a few buckets, right-padded within a bucket and run through plain causal SDPA
(no mask: with right padding and a causal kernel the pad keys come after every
real query, so they are never seen), then written back in place. The cost is
``sum(count x width^2)`` over the buckets instead of ``rows x L^2``; the
buckets are chosen by a small dynamic programme over the sorted lengths that
weighs that cost against one more kernel call. The plan is computed once per
batch and shared by all layers (they receive the same ``position_ids``).

It is registered with transformers' attention interface as ``knowlm_varlen``
and falls back to transformers' SDPA path whenever the call is not a packed
training forward (a padding mask, a KV cache, a single query).
"""

from __future__ import annotations

from typing import Any

NAME = "knowlm_varlen"
MAX_BUCKETS = 4
CALL_COST = 64 * 64  # one more kernel call is worth about this many query-key pairs per example


def segments(position_ids: list[list[int]]) -> list[tuple[int, int, int]]:
    """``(row, start, length)`` of each example: a new one starts wherever the position restarts at 0."""
    out = []
    for r, pos in enumerate(position_ids):
        start = 0
        for i in range(1, len(pos) + 1):
            if i == len(pos) or pos[i] == 0:
                out.append((r, start, i - start))
                start = i
    return out


def buckets(lengths: list[int], max_buckets: int = MAX_BUCKETS, call_cost: int = CALL_COST) -> list[list[int]]:
    """Indices of ``lengths`` grouped so that ``sum(count x max^2)`` plus a cost per group is least.

    Sorted longest first, a group is a run of the sorted order (an optimal grouping always is one), so a
    dynamic programme over split points finds the best of at most ``max_buckets`` groups.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    if n == 0:
        return []
    srt = [lengths[i] for i in order]
    inf = float("inf")
    # best[k][j]: least cost of the first j lengths in k groups; the group starting at i has width srt[i]
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):
                if best[k - 1][i] == inf:
                    continue
                c = best[k - 1][i] + (j - i) * srt[i] ** 2 + call_cost * n
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][n])
    groups, j = [], n
    while k > 0:
        i = cut[k][j]
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]


class Plan:
    """For one batch: per bucket, ``[count, width]`` token indices and which of them are real; and the order that
    puts the buckets' real outputs, taken one bucket after another, back into token order."""

    def __init__(self, position_ids, device) -> None:
        import torch

        n = position_ids.shape[1]
        segs = segments(position_ids.tolist())
        self.parts = []
        flat = []
        for group in buckets([s[2] for s in segs]):
            width = max(segs[g][2] for g in group)
            idx = torch.zeros(len(group), width, dtype=torch.long)
            valid = torch.zeros(len(group), width, dtype=torch.bool)
            for row, g in enumerate(group):
                r, start, length = segs[g]
                idx[row, :length] = torch.arange(r * n + start, r * n + start + length)
                valid[row, :length] = True
            self.parts.append((idx.to(device), valid.to(device)))
            flat.append(idx[valid])
        # every token belongs to exactly one example, so the concatenation is a permutation of the tokens
        self.inverse = torch.argsort(torch.cat(flat)).to(device)


_last: list[Any] = [None, None]  # (position_ids tensor, its Plan): every layer of one forward gets the same tensor


def plan_for(position_ids) -> Plan:
    if _last[0] is not position_ids:
        _last[0], _last[1] = position_ids, Plan(position_ids, position_ids.device)
    return _last[1]


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' attention-function signature; ``query`` [B, H, L, D] -> output [B, L, H, D]."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pos = kwargs.get("position_ids")
    b, h, n, d = query.shape
    if (pos is None or attention_mask is not None or key.shape[2] != n or n == 1 or pos.shape != (b, n)
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    plan = plan_for(pos)
    hk = key.shape[1]
    q = query.transpose(1, 2).reshape(b * n, h, d)
    k = key.transpose(1, 2).reshape(b * n, hk, d)
    v = value.transpose(1, 2).reshape(b * n, hk, d)
    pieces = []
    for idx, valid in plan.parts:
        o = torch.nn.functional.scaled_dot_product_attention(
            q[idx].transpose(1, 2), k[idx].transpose(1, 2), v[idx].transpose(1, 2), dropout_p=dropout,
            scale=scaling, is_causal=True, enable_gqa=hk != h)
        pieces.append(o.transpose(1, 2)[valid])
    return torch.cat(pieces)[plan.inverse].view(b, n, h, d), None


def register() -> str:
    """Make ``attn_implementation=knowlm_varlen`` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)
    return NAME


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for unpadded rows (the examples' bounds come from position_ids); SDPA's mask for padded ones."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask.all()):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)
