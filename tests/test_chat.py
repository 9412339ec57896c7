"""Chat with the embedded SmolLM2 through llama.cpp: one-shot, scripted REPL, history, Ctrl-C."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time

import pytest
from conftest import knowlm_exe

from knowlm_local.chat import ChatSession, Repl, format_stats, one_shot
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams


class _Console:
    """Collects what the REPL prints as notices (the rich Console API subset it uses)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text="", **_kw) -> None:
        self.lines.append(str(text))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _greedy(model, **kw) -> GenerationParams:
    return model.default_params(temperature=0.0, max_tokens=kw.pop("max_tokens", 24), **kw)


def test_one_shot_matches_llama_cpp_directly(embedded_model, embedded_path):
    """Our prompt rendering + backend give exactly what llama-cpp-python's own chat path gives."""
    import llama_cpp

    session = ChatSession(embedded_model, _greedy(embedded_model))
    out = io.StringIO()
    last = one_shot(session, "What is the capital of France? Answer with one word.", out)
    assert last.finish_reason in ("stop", "length")
    assert last.completion_tokens > 0 and last.decode_tps > 0

    direct = llama_cpp.Llama(str(embedded_path), n_ctx=2048, verbose=False)
    try:
        ref = direct.create_chat_completion(
            messages=[{"role": "user", "content": "What is the capital of France? Answer with one word."}],
            temperature=0.0, max_tokens=24, top_k=40, top_p=0.9, repeat_penalty=1.1,
        )["choices"][0]["message"]["content"]
    finally:
        direct.close()
    assert out.getvalue().strip() == ref.strip()
    assert "Paris" in out.getvalue()


def test_scripted_repl_session_with_set_clear_save_load(embedded_model, tmp_path):
    session = ChatSession(embedded_model, _greedy(embedded_model))
    save = tmp_path / "chat.json"
    script = iter([
        "My name is Ada. Say hello to me.",
        "/set temperature 0.5",
        "/set max_tokens 16",
        "What is my name?",
        "/stats",
        f"/save {save}",
        "/clear",
        "/set",
        f"/load {save}",
        "/nonsense",
        "/set temperature -1",
        "/bye",
        "never read",
    ])

    def read(_prompt):
        return next(script)

    out, err = io.StringIO(), _Console()
    Repl(session, out, err, read, interactive=False).run()

    assert next(script) == "never read"  # /bye stopped the loop
    assert session.params.temperature == 0.5 and session.params.max_tokens == 16
    # After /load the two turns are back, with the answers the model gave.
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[0]["content"] == "My name is Ada. Say hello to me."
    saved = json.loads(save.read_text())
    assert saved["params"]["max_tokens"] == 16 and len(saved["messages"]) == 4
    assert "temperature        0.5" in err.text  # the /set listing after /clear
    assert "conversation cleared" in err.text
    assert "unknown command /nonsense" in err.text
    assert "temperature must be >= 0" in err.text
    assert "answers            2" in err.text  # /stats
    assert out.getvalue().count("\n") >= 2


def test_history_is_sent_and_oldest_turns_dropped(embedded_model):
    session = ChatSession(embedded_model, _greedy(embedded_model, max_tokens=8))
    first = session.build_prompt("Remember the word banana.")
    assert "banana" in first
    list(session.ask("Remember the word banana."))
    second = session.build_prompt("Which word?")
    assert "banana" in second and second.count("<|im_start|>user") == 2

    # A long history in a 2048-token window: old turns must go, with a count.
    filler = "lorem ipsum dolor sit amet " * 60  # ~400 tokens per turn
    for i in range(8):
        session.messages += [{"role": "user", "content": f"{i} {filler}"}, {"role": "assistant", "content": "ok"}]
    prompt = session.build_prompt("last question")
    assert session.last_dropped > 0
    assert embedded_model.backend.count_tokens(prompt) + session.params.max_tokens <= embedded_model.backend.n_ctx
    assert "last question" in prompt and "0 lorem" not in prompt


def test_message_too_long_for_context_is_a_clear_error(embedded_model):
    session = ChatSession(embedded_model, _greedy(embedded_model))
    with pytest.raises(KnowLMError, match="context window is 2048"):
        session.build_prompt("word " * 3000)


def test_cancel_event_stops_the_answer(embedded_model):
    import threading

    session = ChatSession(embedded_model, _greedy(embedded_model, max_tokens=200))
    cancel = threading.Event()
    chunks = []
    for chunk in session.ask("Count from one to one hundred in words.", cancel=cancel):
        chunks.append(chunk)
        if len(chunks) == 3:
            cancel.set()
    assert chunks[-1].finish_reason == "cancelled"
    assert len(chunks) <= 5
    assert session.messages[-1]["role"] == "assistant"  # the partial answer is kept


def test_stats_text(embedded_model):
    session = ChatSession(embedded_model, _greedy(embedded_model, max_tokens=8))
    list(session.ask("Hi"))
    text = format_stats(session)
    assert "answers            1" in text and "tokens/s" in text


def test_cli_one_shot_and_stdin(runner):
    from knowlm_local.cli import app

    result = runner.invoke(app, ["chat", "-p", "What is the capital of France? Answer with one word.", "--temperature", "0",
                                 "--max-tokens", "16", "--ctx", "1024"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert "tiny demo model" in result.stderr

    piped = runner.invoke(app, ["chat", "-", "--temperature", "0", "--max-tokens", "16", "--ctx", "1024"],
                          input="What is the capital of France? Answer with one word.\n")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.strip() == result.stdout.strip()

    empty = runner.invoke(app, ["chat", "-"], input="")
    assert empty.exit_code == 1 and "stdin is empty" in empty.stderr


def test_cli_scripted_repl(runner):
    from knowlm_local.cli import app

    script = "Hello!\n/set temperature 0\n/system You answer in one word.\nWhat colour is the sky?\n/stats\n/bye\n"
    result = runner.invoke(app, ["chat", "--max-tokens", "12", "--ctx", "1024", "--seed", "1"], input=script)
    assert result.exit_code == 0, result.output
    assert "temperature = 0.0" in result.stderr
    assert "system prompt set" in result.stderr
    assert "answers            2" in result.stderr
    assert result.stdout.count("\n") >= 2


def test_ctrl_c_stops_the_answer_not_the_program(cli_env):
    """A real SIGINT to the real process while it is answering (seeded, so the answer is long: ~1,800
    characters). The child gets SIGINT's default disposition back: a test run started as a background job
    (`pytest &`, nohup) inherits SIGINT ignored, and the child would then never see the signal."""
    proc = subprocess.Popen(
        [knowlm_exe(), "chat", "--max-tokens", "400", "--ctx", "1024", "--temperature", "0.8", "--seed", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.stdin.write("Write a very long story about a dragon.\n")
    proc.stdin.flush()
    first = proc.stdout.read(1)  # the answer has started streaming
    assert first
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.stdin.write("/bye\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "(stopped)" in err
