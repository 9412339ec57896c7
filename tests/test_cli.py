"""The command line: instant help with no heavy imports, every command documented with examples."""

from __future__ import annotations

import subprocess
import sys

from knowlm_local.cli import app

HEAVY = ("torch", "llama_cpp", "transformers", "huggingface_hub", "numpy", "gguf", "jinja2")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from knowlm_local.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_every_command_has_help_with_examples(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [c.name for c in app.registered_commands]
    assert {"chat", "models", "download", "rm"} <= set(commands)
    for name in commands:
        sub = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert sub.exit_code == 0, (name, sub.output)
        assert "Examples" in sub.stdout, name
        assert "knowlm-local" in sub.stdout, name


def test_version(runner):
    from knowlm_local import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_debug_env_shows_the_traceback(runner):
    result = runner.invoke(app, ["chat", "-m", "no-such-model", "-p", "x"], env={"KNOWLM_DEBUG": "1"})
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "KnowLMError"
