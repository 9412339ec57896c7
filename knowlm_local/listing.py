"""Rendering for `models` and the confirmation dialogue of `rm` (rich on the terminal, JSON for scripts)."""

from __future__ import annotations

import json
import sys

from knowlm_local.errors import KnowLMError
from knowlm_local.inventory import LocalModel, local_models, matching, remove
from knowlm_local.io_utils import human_size
from knowlm_local.zoo import load_cards


def _status(copies: list[LocalModel]) -> str:
    parts = []
    for m in copies:
        if m.where == "store":
            parts.append(f"gguf {m.name.split(':', 1)[1]}")
        elif m.where == "embedded":
            parts.append("embedded")
        else:
            parts.append(f"{m.kind} ({m.where})")
    return ", ".join(parts)


def print_models(as_json: bool = False) -> None:
    installed = local_models()
    by_card: dict[str, list[LocalModel]] = {}
    others: list[LocalModel] = []
    for m in installed:
        if m.card is not None:
            by_card.setdefault(m.card.name, []).append(m)
        else:
            others.append(m)
    cards = load_cards()
    if as_json:
        data = {
            "zoo": [
                {"name": c.name, "display_name": c.display_name, "hf_repo": c.hf_repo,
                 "modelscope_repo": c.modelscope_repo, "parameters": c.parameters, "template": c.template,
                 "license": c.license, "format": c.format, "size_gb": c.size_gb, "default_for": list(c.default_for),
                 "adapter": c.adapter_file or None, "measured": c.measured or None,
                 "installed": [{"name": m.name, "where": m.where, "kind": m.kind, "path": str(m.path),
                                "size": m.size} for m in by_card.get(c.name, [])]}
                for c in cards
            ],
            "other": [{"name": m.name, "where": m.where, "kind": m.kind, "path": str(m.path), "size": m.size}
                      for m in others],
        }
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Model zoo", title_justify="left")
    table.add_column("name", no_wrap=True, style="bold")  # never folded: users copy it
    for col in ("model", "params", "template", "license", "download", "installed"):
        table.add_column(col, overflow="fold")
    for c in cards:
        copies = by_card.get(c.name, [])
        size = f"{c.size_gb:g} GB" if c.size_gb else "?"
        model = c.display_name + (f"\n[dim]{c.measured}[/dim]" if c.measured else "")
        table.add_row(c.name, model, c.parameters, c.template, c.license,
                      "built in" if c.embedded else size,
                      f"[green]{_status(copies)}[/green]" if copies else "[dim]-[/dim]")
    console = Console()
    console.print(table)
    if others:
        extra = Table(title="Other local models", title_justify="left")
        for col in ("name", "kind", "where", "size", "path"):
            extra.add_column(col, overflow="fold")
        for m in others:
            extra.add_row(m.name, m.kind, m.where, human_size(m.size), str(m.path))
        console.print(extra)
    console.print("[dim]Use a model: knowlm-local chat -m NAME   Get one: knowlm-local download NAME[/dim]")


def remove_interactive(name: str, assume_yes: bool = False) -> int:
    """Show what ``name`` matches, ask, delete. Returns bytes freed."""
    import typer

    from knowlm_local.term import stderr_console

    hits = matching(name)
    if not hits:
        raise KnowLMError(f"nothing installed matches {name!r}", "see `knowlm-local models` for local names")
    err = stderr_console()
    for m in hits:
        err.print(f"  {m.name:40} {m.where:11} {human_size(m.size):>9}  {m.path}", markup=False)
    if any(m.where == "embedded" for m in hits):
        remove([m for m in hits if m.where == "embedded"])  # raises with the uninstall hint
    total = sum(m.size for m in hits)
    if not assume_yes:
        try:
            confirmed = typer.confirm(f"Delete {len(hits)} item(s), {human_size(total)}?", default=False, err=True)
        except typer.Abort:  # end of input: treat as "no"
            confirmed = False
        if not confirmed:
            err.print("nothing deleted (pass --yes to skip this question)")
            return 0
    freed = remove(hits)
    err.print(f"removed {len(hits)} item(s), freed {human_size(freed)}")
    return freed
