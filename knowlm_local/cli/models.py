"""`knowlm-local models`, `download` and `rm`: the zoo and what is installed."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command
from knowlm_local.cli.options import RevisionOpt, TokenOpt, YesOpt


@command("models", epilog="**Examples**\n\n* `knowlm-local models`\n* `knowlm-local models --json`")
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the model zoo and what is installed locally."""
    from knowlm_local.listing import print_models

    print_models(as_json=as_json)


@command(
    "download",
    epilog=(
        "**Examples**\n\n"
        "* `knowlm-local download oneke`\n"
        "* `knowlm-local download zjunlp/OneKE --include '*.json' --include '*.model'`\n"
        "* `HF_ENDPOINT=https://hf-mirror.com knowlm-local download zhixi` — through a mirror\n"
        "* `knowlm-local download oneke --source modelscope` — from ModelScope\n\n"
        "Interrupted downloads resume where they stopped when run again."
    ),
)
def download(
    name: Annotated[str, typer.Argument(help="Zoo name (see `knowlm-local models`) or hub repo id `owner/name`.")],
    revision: RevisionOpt = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).",
                                                         show_default=False)] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching this glob (repeatable).",
                                                         show_default=False)] = None,
    source: Annotated[str, typer.Option("--source", help="`hf` (the hub or $HF_ENDPOINT) or `modelscope`.")] = "hf",
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Hub URL or mirror. Default: $HF_ENDPOINT.",
                                                    show_default=False)] = None,
    token: TokenOpt = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="For a LoRA adapter, do not fetch its base model.")] = False,
) -> None:
    """Download a model into the Hugging Face cache (shared with other HF tools)."""
    from knowlm_local.download import download as run
    from knowlm_local.term import stderr_console

    err = stderr_console()
    run(name, revision=revision, include=include, exclude=exclude, endpoint=endpoint, token=token,
        source=source, with_base=not no_base, say=lambda text: err.print(text, markup=False))


@command("rm", epilog="**Examples**\n\n* `knowlm-local rm oneke` — every local copy\n* `knowlm-local rm oneke:q8_0 -y`")
def rm(
    name: Annotated[str, typer.Argument(help="A name from `knowlm-local models` (add `:quant` for one file).")],
    yes: YesOpt = False,
) -> None:
    """Remove a local model (asks first)."""
    from knowlm_local.listing import remove_interactive

    remove_interactive(name, assume_yes=yes)
