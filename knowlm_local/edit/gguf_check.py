"""Does an edit survive conversion? The same evaluation, re-run through llama.cpp on GGUFs.

The edited folder and the folder as it was before its edits (rebuilt by
undoing them in a hard-linked scratch copy, so no original needs to be kept
around) are both converted to each precision; locality is measured against
the pre-edit GGUF of the *same* precision, so quantization noise that both
share is not counted as edit damage.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knowlm_local.edit.requests import EditRequest


def pre_edit_copy(folder: Path, dest: Path) -> Path:
    """``dest``: ``folder`` with all its active edits undone (hard links; ``folder`` is not touched)."""
    from knowlm_local.edit import log as editlog

    editlog.make_output(folder, dest, force=True)  # brings the log and the saved originals along
    for entry in sorted(editlog.EditLog.load(dest).active(), key=lambda e: -e.n):
        editlog.undo(dest, entry.n, cascade=True)
    return dest


def check_gguf(folder: Path, requests: list[EditRequest], quants: str, chat: Callable[[str], str] | None,
               say: Callable[[str], Any] | None = None, threads: int | None = None,
               fluency: bool = True) -> dict[str, dict[str, Any]]:
    """``{quant: {"summary": ..., "results": [...]}}`` for the edited ``folder`` converted to each of ``quants``."""
    from knowlm_local.convert import convert
    from knowlm_local.edit import evaluate as ev

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="knowlm-edit-gguf-") as tmp:
        work = Path(tmp)
        if say:
            say(f"converting the edited and the pre-edit weights to {quants}")
        before = pre_edit_copy(Path(folder), work / "pre-edit")
        edited = convert(str(folder), quants=quants, output=work / "edited", name="edited", force=True,
                         threads=threads).outputs
        original = convert(str(before), quants=quants, output=work / "original", name="original", force=True,
                           threads=threads).outputs
        for quant, path in edited.items():
            if say:
                say(f"evaluating through llama.cpp ({quant})")
            orig = ev.LlamaCppScorer(str(original[quant]), n_threads=threads)
            try:
                bases = [ev.baseline(orig, r, fluency=fluency) for r in requests]
            finally:
                orig.close()
            scorer = ev.LlamaCppScorer(str(path), n_threads=threads)
            try:
                results = [{"id": r.id, **ev.evaluate(scorer, r, b, chat, fluency=fluency)}
                           for r, b in zip(requests, bases)]
            finally:
                scorer.close()
            out[quant] = {"summary": ev.summarize(results), "results": results}
    return out
