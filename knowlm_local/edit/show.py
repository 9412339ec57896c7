"""What ``knowlm-local edit`` prints: progress lines, the per-edit table, the summary, the log."""

from __future__ import annotations

from typing import Any

from knowlm_local.edit.evaluate import ASPECTS


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def results_table(results: list[dict[str, Any]], summary: dict[str, Any], before: dict[str, Any],
                  title: str = "PyTorch"):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"edit evaluation, {title} (% · teacher-forced / generated)", title_justify="left")
    table.add_column("edit")
    for a in ASPECTS:
        table.add_column(a, justify="right")
    table.add_column("fluency", justify="right")
    table.add_column("answer")
    for r in results:
        flu = r.get("fluency") or {}
        table.add_row(escape(str(r["id"])), *[f"{_pct(r[a]['tf'])} / {_pct(r[a]['gen'])}" for a in ASPECTS],
                      "-" if flu.get("after") is None else f"{flu['before']:.2f}→{flu['after']:.2f}",
                      escape(repr(r.get("answer", ""))))
    if len(results) > 1 or before:
        table.add_section()
        table.add_row("mean", *[f"{_pct(summary[a]['tf'])} / {_pct(summary[a]['gen'])}" for a in ASPECTS],
                      "", "")
        if before:
            table.add_row("before", *[f"{_pct(before[a]['tf'])} / {_pct(before[a]['gen'])}" for a in ASPECTS],
                          "", "")
    return table


def run_and_show(model: str, reqs: list, output: str | None, opts: Any, force: bool) -> None:
    from rich.console import Console

    from knowlm_local.edit.run import apply_edits
    from knowlm_local.term import stderr_console

    err = stderr_console()
    report = apply_edits(model, reqs, output, opts, force=force, say=lambda t: err.print(t, markup=False))
    out = Console()
    if report.results:
        out.print(results_table(report.results, report.summary, report.before))
    for quant, got in report.gguf.items():
        out.print(results_table(got["results"], got["summary"], {}, title=f"through llama.cpp, {quant}"))
    what = "memory" if opts.method == "ike" else "edited model"
    out.print(f"{what}: {report.folder}" + (f"  (edits {', '.join(map(str, report.edits))})" if report.edits else ""),
              markup=False, soft_wrap=True)
    if report.report_path:
        out.print(f"report: {report.report_path}", markup=False, soft_wrap=True)
    out.print(f"{report.seconds:.1f} s ({report.seconds_per_edit:.1f} s per edit)", markup=False)


def undo_or_log(folder: str, undo: int | None, cascade: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from knowlm_local.edit.run import list_edits, undo_edit

    out = Console()
    if undo is not None:
        done = undo_edit(folder, undo, cascade)
        out.print(f"undone: edit {', '.join(map(str, done))} in {folder} (weights restored bit for bit)", markup=False)
        return
    table = Table(title=f"edits in {escape(folder)}", title_justify="left")
    for col in ("n", "method", "layers", "request", "when", "state"):
        table.add_column(col)
    for e in list_edits(folder):
        req = "; ".join(f"{r['subject']} → {r['target']}" for r in e.requests)
        layers = f"{e.layers[0]}" if len(e.layers) == 1 else f"{e.layers[0]}-{e.layers[-1]}"
        state = f"undone {e.undone}" if e.undone else "active"
        table.add_row(str(e.n), e.method, layers, escape(req), e.created, state)
    out.print(table)
