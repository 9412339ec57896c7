"""The AMX guard: a multi-token prompt runs to the end in a fresh process, on any CPU this build supports.

On llama.cpp builds with AMX the first prompt batch can segfault (see
knowlm_local.backends.llamacpp_cpu); a crash there kills the process without
a word, so these tests run the model in a child process and read its exit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = r"""
import sys
from knowlm_local.runtime import LoadOptions, load_model
loaded = load_model("smollm2", LoadOptions(n_ctx=512, seed=0))
text = "".join(c.text for c in loaded.backend.generate(
    "List three rivers of Europe, separated by commas, and say one thing about each of them: " * 2,
    loaded.default_params(max_tokens=8, temperature=0.0)))
import llama_cpp.llama_cpp as lib
from knowlm_local.backends.llamacpp_cpu import amx_build
print("AMX", amx_build(), "EXTRA", lib.llama_model_default_params().use_extra_bufts, "TEXT", bool(text.strip()))
"""


def _child(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[1]))


def test_a_prompt_batch_runs_through_our_loader(cli_env):
    done = _child(RUN, cli_env)
    assert done.returncode == 0, f"the model process died (rc {done.returncode}): {done.stderr[-500:]}"
    words = done.stdout.split()
    amx, extra, text = words[words.index("AMX") + 1], words[words.index("EXTRA") + 1], words[-1]
    assert text == "True"
    # on an AMX build the weights must stay off the AMX buffer type; elsewhere nothing is changed
    assert extra == ("False" if amx == "True" else "True")


def test_the_guard_can_be_switched_off(cli_env):
    env = dict(cli_env, KNOWLM_LLAMA_AMX="1")
    code = ("from knowlm_local.backends.llamacpp_cpu import guard\n"
            "import llama_cpp.llama_cpp as lib\n"
            "print(guard(), lib.llama_model_default_params().use_extra_bufts)")
    done = _child(code, env)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["False", "True"]


def test_the_verify_scorer_runs_a_prompt_batch(cli_env, embedded_path):
    """`verify` opens its own llama.cpp context (every position's logits): guarded the same way."""
    code = ("import sys\n"
            "from convert.verify import open_scorer\n"
            "llm = open_scorer(sys.argv[1], 256, threads=2)\n"
            "llm.eval(llm.tokenize(b'The rivers of Europe are long and old and full of fish.'))\n"
            "print(llm.n_tokens)")
    done = _child(code, cli_env, str(embedded_path))
    assert done.returncode == 0, f"the scorer process died (rc {done.returncode}): {done.stderr[-500:]}"
    assert int(done.stdout.split()[-1]) > 5
