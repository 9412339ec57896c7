"""`knowlm-local doctor`: GPUs, builds, packages, disk and what each local model can run on here."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command

EPILOG = """\
**Examples**

* `knowlm-local doctor` — one screen, with a fix for each problem
* `knowlm-local doctor --json | jq .problems` — for scripts

Nothing is loaded or downloaded; a machine without a GPU gets a report too.
"""


@command("doctor", epilog=EPILOG)
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check GPUs, llama.cpp / torch builds, packages, disk space and local models."""
    import json

    from knowlm_local.doctor import print_report, run_doctor

    report = run_doctor()
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
        return
    from rich.console import Console

    print_report(report, Console(highlight=False, soft_wrap=True))
