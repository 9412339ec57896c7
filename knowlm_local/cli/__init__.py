"""The `knowlm-local` command line.

Each command lives in a small module of this package that only parses options
and calls a library function; heavy imports (llama_cpp, torch, transformers,
huggingface_hub) happen inside the command bodies, so ``knowlm-local --help``
stays instant. Errors of type :class:`~knowlm_local.errors.KnowLMError` become
two lines (``error:`` and ``hint:``) and exit code 1; ``KNOWLM_DEBUG=1`` shows
the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from knowlm_local import __version__
from knowlm_local.errors import KnowLMError

app = typer.Typer(
    name="knowlm-local",
    help=(
        "Run the KnowLM model family (ZhiXi, KnowLM-IE, OceanGPT, OneKE) on your own machine: "
        "download, convert to GGUF, chat, extract.\n\n"
        "Works offline with the embedded demo model: try `knowlm-local chat -p \"What is GGUF?\"`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def report(exc: KnowLMError) -> None:
    """Print a user error as ``error:`` / ``hint:`` lines on stderr."""
    from rich.markup import escape

    from knowlm_local.term import stderr_console

    err = stderr_console()
    err.print(f"[bold red]error:[/bold red] {escape(exc.message)}")
    if exc.hint:
        err.print(f"[bold]hint:[/bold] {escape(exc.hint)}")


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its :class:`KnowLMError` printed as error:/hint: lines and exit code 1 (unless KNOWLM_DEBUG)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except KnowLMError as exc:
            if os.environ.get("KNOWLM_DEBUG"):
                raise
            report(exc)
            raise typer.Exit(1) from None

    return wrapper


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose :class:`KnowLMError` is reported, not raised."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        app.command(name, **kwargs)(reported(fn))
        return fn

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"knowlm-local {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Root options."""


# Command modules register themselves on import; they import only typer and option types.
# The import order is the order of commands in --help.
# isort: off
from knowlm_local.cli import chat as _chat  # noqa: F401
from knowlm_local.cli import models as _models  # noqa: F401
from knowlm_local.cli import convert as _convert  # noqa: F401
from knowlm_local.cli import extract as _extract  # noqa: F401
from knowlm_local.cli import serve as _serve  # noqa: F401
from knowlm_local.cli import train as _train  # noqa: F401
from knowlm_local.cli import edit as _edit  # noqa: F401
from knowlm_local.cli import instruct as _instruct  # noqa: F401
from knowlm_local.cli import doctor as _doctor  # noqa: F401
# isort: on


def _usage_error(exc) -> KnowLMError:
    """A click usage error (unknown option, value out of range, missing argument) as our error/hint pair."""
    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "knowlm-local"
    return KnowLMError(message.replace("\n", " "), f"see `{path} --help` for the options and their ranges")


def _kinds(exc: BaseException) -> set[str]:
    """Class names along ``exc``'s MRO: click's exceptions are matched by name, because typer vendors its own
    copy of click in recent releases and uses the real one in older ones."""
    return {cls.__name__ for cls in type(exc).__mro__}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every failure ends as ``error:`` / ``hint:`` lines and exit code 1.

    Click's own usage errors (exit code 2, a boxed message) are reported the
    same way as ours. An exception that is neither (a bug) still gets one
    ``error:`` line instead of a traceback, unless ``KNOWLM_DEBUG`` is set.
    """
    debug = bool(os.environ.get("KNOWLM_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False)
    except KnowLMError as exc:  # raised outside a command body (e.g. in a callback)
        if debug:
            raise
        report(exc)
        code = 1
    except BrokenPipeError:  # `knowlm-local extract ... | head`: the reader left, nothing to say
        code = 1
    except Exception as exc:
        kinds = _kinds(exc)
        if "NoArgsIsHelpError" in kinds:  # bare `knowlm-local`: the help, not an error
            typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
            code = 0
        elif "UsageError" in kinds:
            report(_usage_error(exc))
            code = 1
        elif "Abort" in kinds:
            report(KnowLMError("interrupted", "run the command again; long jobs resume where they stopped"))
            code = 130
        elif "ClickException" in kinds:
            report(KnowLMError(exc.format_message(), "see `knowlm-local --help`"))  # type: ignore[attr-defined]
            code = 1
        else:  # a bug: say so in one line rather than dump a traceback on a user
            if debug:
                raise
            detail = " ".join(str(exc).split())[:300]
            report(KnowLMError(f"internal error: {type(exc).__name__}: {detail}",
                               "this is a bug in knowlm-local: run again with KNOWLM_DEBUG=1 and report the traceback"))
            code = 1
    sys.exit(code if isinstance(code, int) else 0)
