"""Context prefixes the model writes itself, so that an edit holds in more than the one bare prompt.

ROME averages a fact's key over the prompt placed after a score of short texts
the model generated from a few common openings ("The", "Therefore", ...):
the key then describes the subject, not the exact words before it. Sampling is
seeded, so the same model and seed give the same prefixes (and the same edit).
"""

from __future__ import annotations

STARTS = ("The", "Therefore", "Because", "I", "You")


def self_contexts(em, per_start: int = 4, length: int = 10, seed: int = 0) -> list[str]:
    """``""`` (the bare prompt) followed by ``len(STARTS) * per_start`` generated prefixes ending in ``". "``."""
    import torch

    if per_start <= 0:
        return [""]
    tok, model = em.tok, em.model
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = [""]
    for start in STARTS:
        ids = torch.tensor([em.ids(start)] * per_start, device=em.device)
        for _ in range(length):
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, -1].float().cpu()
            probs = torch.softmax(logits, -1)
            top = torch.topk(probs, 5)  # top-5 sampling: varied but sensible text
            pick = torch.multinomial(top.values, 1, generator=gen)
            nxt = top.indices.gather(1, pick).to(em.device)
            ids = torch.cat([ids, nxt], 1)
        for row in ids.tolist():
            text = tok.decode(row, skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            out.append(text + ". ")
    return out
