"""The transformers backend on the embedded SmolLM2 exported to a Hugging Face folder (CPU, float32)."""

from __future__ import annotations

import io
import threading

from knowlm_local.chat import ChatSession, one_shot
from knowlm_local.runtime import LoadOptions, load_model

QUESTION = "What is the capital of France? Answer with one word."


def test_hf_folder_loads_with_transformers_and_answers(smollm2_hf_dir, embedded_model):
    loaded = load_model(str(smollm2_hf_dir), LoadOptions(n_ctx=1024, seed=0))
    try:
        info = loaded.backend.info
        assert info.name == "transformers" and info.device.startswith("cpu")
        assert loaded.template.name == "gguf" and info.chat_template  # the tokenizer's own template
        # Same chat template text as llama.cpp reads from the GGUF: the prompts agree.
        messages = [{"role": "user", "content": QUESTION}]
        assert loaded.template.render(messages) == embedded_model.template.render(messages)

        session = ChatSession(loaded, loaded.default_params(temperature=0.0, max_tokens=8))
        out = io.StringIO()
        last = one_shot(session, QUESTION, out)
        assert "Paris" in out.getvalue()
        assert last.finish_reason in ("stop", "length") and 0 < last.completion_tokens <= 8

        # Greedy llama.cpp on the original GGUF starts the same way (same weights, other kernels).
        ref = ChatSession(embedded_model, embedded_model.default_params(temperature=0.0, max_tokens=8))
        ref_out = io.StringIO()
        one_shot(ref, QUESTION, ref_out)
        assert out.getvalue().split()[:2] == ref_out.getvalue().split()[:2]

        cancel = threading.Event()
        cancel.set()
        chunks = list(loaded.backend.generate(session.build_prompt("Count to fifty."),
                                              session.params, cancel=cancel))
        assert chunks[-1].finish_reason == "cancelled"
    finally:
        loaded.backend.close()


def test_cli_chat_on_an_hf_folder(runner, smollm2_hf_dir):
    from knowlm_local.cli import app

    result = runner.invoke(app, ["chat", "-m", str(smollm2_hf_dir), "-p", QUESTION, "--temperature", "0",
                                 "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
