"""Selecting instruction records: the filters of `knowlm-local instruct select`, applied in a fixed order.

The selectors run cheapest first, each on what the previous ones kept (the order matters only for the
order-dependent ones, which keep the first of a group in file order):

1. ``length``: instruction of ``min_len``..``max_len`` words, output of ``min_output``..``max_output`` words
   (tokens of :func:`~knowlm_local.instruct.metrics.words`: a CJK character is one);
2. ``dedup``: exact duplicates of (instruction, input), ignoring case, spacing and punctuation;
3. ``mtld``: output MTLD (lexical diversity) below ``mtld_min`` (a repetitive answer; an output whose words
   are all different has an infinite MTLD and passes; MTLD is unstable under ~50 words, so use it on long answers);
4. ``near-dup``: (instruction + input) whose token-3-gram Jaccard with a kept record is >= ``near_dup``
   (MinHash LSH finds the candidates, the exact Jaccard decides);
5. ``rouge``: instruction whose ROUGE-L with a kept instruction is above ``rouge`` (self-instruct's novelty);
6. ``perplexity``: output perplexity under the local model, given the record's training prompt, above
   ``ppl_max``;
7. ``rating``: the local model's 5-point self-rating of the record below ``min_rating``;
8. ``random``: ``sample`` records drawn at random (seeded) from the rest, in file order.

Nothing is loaded unless a model-based selector (6, 7) is asked for. The output is written through a temporary
file (never half-written); ``rejected`` collects the dropped records with a ``"rejected"`` reason.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.metrics import NearDuplicates, RougeIndex, mtld, words
from knowlm_local.instruct.records import Item, check_output, read_items, write_jsonl
from knowlm_local.runtime import LoadedModel, LoadOptions

STEPS = ("length", "dedup", "mtld", "near-dup", "rouge", "perplexity", "rating", "random")


@dataclass
class Selection:
    """Which selectors to run, and their thresholds (None: off)."""

    min_len: int | None = None
    max_len: int | None = None
    min_output: int | None = None
    max_output: int | None = None
    dedup: bool = False
    mtld_min: float | None = None
    near_dup: float | None = None
    rouge: float | None = None
    ppl_max: float | None = None
    min_rating: int | None = None
    sample: int | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("near_dup", "rouge"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise KnowLMError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}", "e.g. 0.7")
        if self.min_rating is not None and not 1 <= self.min_rating <= 5:
            raise KnowLMError(f"--min-rating must be 1-5, got {self.min_rating}", "4 keeps records rated 4 or 5")
        if self.ppl_max is not None and self.ppl_max <= 0:
            raise KnowLMError(f"--ppl-max must be positive, got {self.ppl_max}", "e.g. --ppl-max 200")
        for low, high in (("min_len", "max_len"), ("min_output", "max_output")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise KnowLMError(f"--{low.replace('_', '-')} {a} is above --{high.replace('_', '-')} {b}",
                                  "give a range that holds something")
        if not any(getattr(self, f) not in (None, False) for f in
                   ("min_len", "max_len", "min_output", "max_output", "dedup", "mtld_min", "near_dup", "rouge",
                    "ppl_max", "min_rating", "sample")):
            raise KnowLMError("no selector given", "e.g. --dedup --min-len 3 --rouge 0.7 (see --help)")

    @property
    def needs_model(self) -> bool:
        return self.ppl_max is not None or self.min_rating is not None


@dataclass
class SelectReport:
    output: str
    files: int = 0
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # step -> records dropped by it

    def lines(self) -> list[str]:
        out = [f"read {self.read} records from {self.files} file(s); kept {self.kept} -> {self.output}"]
        if self.dropped:
            out.append("dropped: " + ", ".join(f"{s} {self.dropped[s]}" for s in STEPS if self.dropped[s]))
        return out


def _normal(text: str) -> str:
    return " ".join(words(text))


def _length(sel: Selection, it: Item, scores: dict[str, Any]) -> str:
    n_in, n_out = len(words(it.instruction)), len(words(it.output))
    scores.update(instruction_words=n_in, output_words=n_out)
    if sel.min_len is not None and n_in < sel.min_len:
        return f"instruction of {n_in} words < {sel.min_len}"
    if sel.max_len is not None and n_in > sel.max_len:
        return f"instruction of {n_in} words > {sel.max_len}"
    if sel.min_output is not None and n_out < sel.min_output:
        return f"output of {n_out} words < {sel.min_output}"
    if sel.max_output is not None and n_out > sel.max_output:
        return f"output of {n_out} words > {sel.max_output}"
    return ""


class _Pipeline:
    """The selectors, as filters over (item, scores) pairs; :attr:`rejected` gathers what each dropped."""

    def __init__(self, sel: Selection, report: SelectReport, loaded: LoadedModel | None, console: Any) -> None:
        self.sel, self.report, self.loaded, self.console = sel, report, loaded, console
        self.rejected: list[dict[str, Any]] = []

    def drop(self, step: str, it: Item, why: str) -> None:
        self.report.dropped[step] += 1
        self.rejected.append({**it.alpaca(), "rejected": f"{step}: {why}"})

    def run(self, items: list[Item]) -> list[tuple[Item, dict[str, Any]]]:
        sel = self.sel
        rows = [(it, {}) for it in items]
        if any(v is not None for v in (sel.min_len, sel.max_len, sel.min_output, sel.max_output)):
            rows = self.filter(rows, "length", lambda it, sc: _length(sel, it, sc))
        if sel.dedup:
            seen: dict[str, str] = {}

            def exact(it: Item, sc: dict) -> str:
                key = _normal(it.instruction) + "\x00" + _normal(it.input)
                if key in seen:
                    return f"same as {seen[key]}"
                seen[key] = it.id
                return ""

            rows = self.filter(rows, "dedup", exact)
        if sel.mtld_min is not None:
            def diverse(it: Item, sc: dict) -> str:
                value = mtld(it.output)
                sc["mtld"] = round(value, 3) if value != float("inf") else None  # JSON has no infinity
                return f"MTLD {value:.1f} < {sel.mtld_min:g}" if value < sel.mtld_min else ""

            rows = self.filter(rows, "mtld", diverse)
        if sel.near_dup is not None:
            index, ids = NearDuplicates(sel.near_dup), []

            def near(it: Item, sc: dict) -> str:
                found, score, grams, keys = index.find(f"{it.instruction} {it.input}")
                if found >= 0:
                    return f"Jaccard {score:.2f} with {ids[found]}"
                index.add(grams, keys)
                ids.append(it.id)
                return ""

            rows = self.filter(rows, "near-dup", near)
        if sel.rouge is not None:
            pool, names = RougeIndex(), []

            def novel(it: Item, sc: dict) -> str:
                score, where = pool.closest(it.instruction, sel.rouge)
                if score > sel.rouge:
                    return f"ROUGE-L {score:.2f} with {names[where]}"
                pool.add(it.instruction)
                names.append(it.id)
                return ""

            rows = self.filter(rows, "rouge", novel)
        if sel.ppl_max is not None:
            rows = self.filter(rows, "perplexity", self._perplexity, label="perplexity")
        if sel.min_rating is not None:
            rows = self.filter(rows, "rating", self._rating, label="self-rating")
        if sel.sample is not None and sel.sample < len(rows):
            chosen = set(random.Random(sel.seed).sample(range(len(rows)), sel.sample))
            for i, (it, _) in enumerate(rows):
                if i not in chosen:
                    self.drop("random", it, f"not among the {sel.sample} sampled")
            rows = [r for i, r in enumerate(rows) if i in chosen]
        return rows

    def filter(self, rows: list, step: str, why, label: str | None = None) -> list:
        kept = []
        bar = None
        if label:
            from knowlm_local.instruct.ask import Progress, Tally

            bar, tally = Progress(self.console, len(rows), label), Tally()
            bar.__enter__()
        try:
            for i, (it, sc) in enumerate(rows):
                reason = why(it, sc)
                if reason:
                    self.drop(step, it, reason)
                else:
                    kept.append((it, sc))
                if bar:
                    bar.update(i + 1, tally)
        finally:
            if bar:
                bar.__exit__(None, None, None)
        return kept

    def _perplexity(self, it: Item, sc: dict) -> str:
        from knowlm_local.instruct.score import perplexity

        value = perplexity(self.loaded, it.instruction, it.input, it.output)
        sc["perplexity"] = round(value, 3) if value != float("inf") else None
        return f"perplexity {value:.1f} > {self.sel.ppl_max:g}" if value > self.sel.ppl_max else ""

    def _rating(self, it: Item, sc: dict) -> str:
        from knowlm_local.ie.extract import detect_lang
        from knowlm_local.instruct.score import rate

        score = rate(self.loaded, it.instruction, it.input, it.output, detect_lang(it.instruction + it.output))
        sc["rating"] = score
        if score is None:
            return "no usable rating"
        return f"rated {score} < {self.sel.min_rating}" if score < self.sel.min_rating else ""


def select(inputs: list[str | Path], output: str | Path, selection: Selection, *, loaded: LoadedModel | None = None,
           model: str | None = None, options: LoadOptions | None = None, rejected: str | Path | None = None,
           scores: bool = False, force: bool = False, say=None, console: Any = None) -> SelectReport:
    """Filter the records of ``inputs`` with ``selection`` into ``output`` (and the dropped ones into ``rejected``)."""
    from knowlm_local.instruct.ask import using

    selection.check()
    if not inputs:
        raise KnowLMError("no input files", "pass one or more Alpaca JSONL files")
    items: list[Item] = []
    for path in inputs:
        items += read_items(path, "input")
    out = check_output(output, force, inputs=inputs, resumable=False)
    rej = check_output(rejected, force, inputs=[*inputs, out], resumable=False) if rejected else None
    if rej is not None and rej.resolve() == out.resolve():
        raise KnowLMError("--rejected is the output file", "give the rejected records their own file")
    report = SelectReport(str(out), files=len(inputs), read=len(items))
    if selection.needs_model:
        with using(loaded, model, options, say) as lm:
            pipe = _Pipeline(selection, report, lm, console)
            rows = pipe.run(items)
    else:
        pipe = _Pipeline(selection, report, None, console)
        rows = pipe.run(items)
    report.kept = write_jsonl(out, ({**it.alpaca(), "scores": sc} if scores else it.alpaca() for it, sc in rows))
    if rej is not None:
        write_jsonl(rej, pipe.rejected)
    return report
