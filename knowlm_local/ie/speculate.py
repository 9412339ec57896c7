"""Draft tokens for speculative decoding of extraction answers, without a draft model.

An extraction answer is mostly copied: the JSON skeleton repeats from one
answer to the next (same labels, same punctuation habits of the model) and
the values are spans of the input text. llama-cpp-python's
``LlamaPromptLookupDecoding`` looks only at the current prompt, takes the
*earliest* match of the last one or two tokens (usually inside the
instruction, not the text) and always proposes its full length. This drafter
keeps the last few answers as a second source, wants at least
``min_match`` tokens of context to match, prefers the most recent and
longest match, and proposes nothing when nothing matches, because on a small
CPU model a rejected draft costs more than it saves.

The defaults (three tokens of context, drafts of up to six) come from
replaying recorded greedy answers of the embedded model (NER and EE over
benchmarks/data) through the drafter with the verification cost measured on
a 2-core CPU (a batch of n tokens costs about 1 + 0.55 (n - 1) single-token
steps): two-token matches inside the prompt were accepted 2% of the time and
made speculation a net loss; three-token matches from earlier answers were
accepted over 80% of the time.

llama.cpp verifies every draft with the model itself and keeps only the
tokens greedy decoding would have produced, so the answer is unchanged as long
as a token's logits do not depend on the batch it was evaluated in. With flash
attention on (as extract runs llama.cpp) that holds exactly on one CPU thread;
on several threads llama.cpp decodes single tokens with a differently rounded
kernel once the context passes 256 tokens (see :mod:`knowlm_local.ie.run`).
The object follows llama-cpp-python's draft-model protocol: it is called with
all token ids so far and returns the proposed next ids.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class CopyDraft:
    """Prompt lookup over the current context and the last ``memory`` answers."""

    def __init__(self, max_draft: int = 6, min_match: int = 3, max_ngram: int = 6, memory: int = 8) -> None:
        if max_draft < 1 or min_match < 1 or max_ngram < min_match:
            raise ValueError("need max_draft >= 1 and 1 <= min_match <= max_ngram")
        self.max_draft = max_draft
        self.min_match = min_match
        self.max_ngram = max_ngram
        self._answers: deque[np.ndarray] = deque(maxlen=memory)
        self._last: np.ndarray | None = None
        self._start = 0
        self._proposed = 0
        self.calls = 0
        self.proposed = 0
        self.accepted = 0

    @property
    def acceptance(self) -> float:
        """Share of proposed tokens that the model accepted."""
        return self.accepted / self.proposed if self.proposed else 0.0

    def reset_stats(self) -> None:
        self.calls = self.proposed = self.accepted = 0

    def _follow(self, ids: np.ndarray) -> None:
        """Track acceptance of the previous proposal, and remember finished answers."""
        last = self._last
        if last is not None and len(ids) > len(last) and np.array_equal(ids[:len(last)], last):
            self.accepted += min(self._proposed, len(ids) - len(last) - 1)
        else:  # a new answer began: the previous context's tail was the previous answer
            if last is not None and len(last) > self._start:
                self._answers.append(last[self._start:].copy())
            self._start = len(ids) - 1

    def __call__(self, input_ids: Any, /, **_: Any) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.intc)
        self.calls += 1
        self._follow(ids)
        self._last = ids.copy()
        draft = self._propose(ids)
        self._proposed = len(draft)
        self.proposed += len(draft)
        return draft

    def _propose(self, ids: np.ndarray) -> np.ndarray:
        # Search space, lowest priority first (the last match wins): prompt, answer so far, older then newer answers.
        sep = np.array([-1], dtype=np.intc)
        parts = [ids[:-1]]
        for answer in self._answers:
            parts += [sep, answer]
        space = np.concatenate(parts) if len(parts) > 1 else parts[0]
        for n in range(min(self.max_ngram, len(ids) - 1), self.min_match - 1, -1):
            key = ids[-n:]
            if len(space) < n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(space, n)
            hits = np.flatnonzero(np.all(windows == key, axis=1))
            for start in hits[::-1]:
                cont = space[start + n:start + n + self.max_draft]
                stop = np.flatnonzero(cont < 0)
                if len(stop):
                    cont = cont[:stop[0]]
                if len(cont):
                    return cont.astype(np.intc)
        return np.empty(0, dtype=np.intc)
