"""What a person sees while extracting: a progress bar with records/s and an ETA, tables, a summary.

Kept apart from the pipeline so the library and the benchmark run silently,
and so the progress display can be dropped when stderr is not a terminal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


class _Rate(ProgressColumn):
    """Records done and records per second (the bar itself tracks bytes, which gives the ETA)."""

    def render(self, task: Any) -> Text:
        records = task.fields.get("records", 0)
        elapsed = task.elapsed or 0.0
        rate = records / elapsed if elapsed > 0 else 0.0
        return Text(f"{records} records, {rate:.2f} rec/s", style="cyan")


class ProgressView:
    """A rich progress bar over input bytes (or records when the size is unknown)."""

    def __init__(self, console: Console, total_bytes: int | None, label: str) -> None:
        self.enabled = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), _Rate(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False, disable=not self.enabled,
        )
        self.task = self.progress.add_task(label, total=total_bytes, records=0)

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, bytes_read: int, records: int) -> None:
        self.progress.update(self.task, completed=bytes_read, records=records)


def record_table(record: dict[str, Any]) -> Table:
    """One record's extractions as a table: label, field, text, where it is, and a flag for hallucinations."""
    table = Table(title=f"{record['task']} · id {escape(str(record.get('id')))}", title_justify="left",
                  show_lines=False)
    for col in ("label", "field", "text", "offsets", ""):
        table.add_column(col)
    for span in record["spans"]:
        role = f":{span['role']}" if span.get("role") else ""
        offsets = " ".join(f"{s}-{e}" for s, e in span["offsets"][:4]) + (" …" if len(span["offsets"]) > 4 else "")
        flag = "[red]not in text[/red]" if span["hallucinated"] else ("[yellow]loose[/yellow]"
                                                                      if span.get("match") == "loose" else "")
        table.add_row(escape(span["label"]), escape(span["field"] + role), escape(span["text"]), offsets, flag)
    if not record["spans"]:
        table.add_row("[dim](nothing found)[/dim]", "", "", "", "")
    for err in record["errors"]:
        table.add_row("[yellow]error[/yellow]", escape(err["kind"]), escape(str(err.get("message", ""))), "", "")
    return table


def summary_line(stats: Any, skipped: int) -> str:
    rate = stats.records / stats.elapsed if stats.elapsed > 0 else 0.0
    cached = f"{stats.cached_tokens / stats.prompt_tokens:.0%}" if stats.prompt_tokens else "0%"
    parts = [f"{stats.records} records ({stats.chunks} chunks, {stats.calls} prompts) in {stats.elapsed:.1f} s",
             f"{rate:.2f} records/s", f"{cached} of prompt tokens reused from the KV cache",
             f"{stats.hallucinated}/{stats.spans} spans not found in the text"]
    if skipped:
        parts.append(f"{skipped} already done (skipped)")
    problems = [f"{n} {what}" for n, what in ((stats.unparseable, "unparseable"), (stats.truncated, "truncated"),
                                              (stats.repaired, "repaired")) if n]
    if problems:
        parts.append("answers: " + ", ".join(problems))
    return "; ".join(parts)
