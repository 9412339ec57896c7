"""llama.cpp backend details: token counts with and without speculative drafts, cache reset."""

from __future__ import annotations

import pytest

from knowlm_local.runtime import LoadOptions, load_model


@pytest.mark.parametrize("prompt_lookup", [0, 8])
def test_completion_tokens_count_what_was_generated(prompt_lookup):
    loaded = load_model(None, LoadOptions(n_ctx=1024, prompt_lookup=prompt_lookup))
    try:
        prompt = loaded.template.render([{"role": "user", "content":
                                          "Repeat exactly: the cat sat on the mat, the cat sat on the mat."}])
        text, last = loaded.backend.complete(prompt, loaded.default_params(temperature=0, max_tokens=30))
        assert last.completion_tokens == len(loaded.backend.tokenize(text, add_bos=False)) > 0
        assert last.prompt_tokens == loaded.backend.count_tokens(prompt)
        # Same prompt again: all but the last prompt token come from the KV cache; after a reset none do.
        _, again = loaded.backend.complete(prompt, loaded.default_params(temperature=0, max_tokens=4))
        assert again.cached_tokens >= last.prompt_tokens - 1
        loaded.backend.reset_cache()
        _, cold = loaded.backend.complete(prompt, loaded.default_params(temperature=0, max_tokens=4))
        assert cold.cached_tokens == 0
    finally:
        loaded.backend.close()
