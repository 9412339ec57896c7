"""What `knowlm-local extract` does, as a function: check everything cheap, load, stream, write, summarize.

Every check that needs no model (task, schema, input file, output path)
runs before the model is loaded, so a typo costs milliseconds, not a 13B
load. llama.cpp runs with flash attention: without it, a token evaluated in a
small batch (a speculative draft being verified) gets logits up to ~0.8 away
from the same token evaluated alone, enough to flip greedy choices; with it,
small batches and single tokens agree exactly on one CPU thread (measured:
identical answers with and without drafts). llama.cpp's CPU kernels are
still not batch-invariant in general: a prompt evaluated in one 250-token
batch or as a cached prefix plus a 60-token suffix can differ slightly, so a
near-tie token may come out differently depending on what ran before. And on
several threads, once the KV cache holds 256 tokens or more, a single token
goes through ggml's split-KV attention (the cache divided among threads, the
partial sums merged), which rounds differently from the batched kernel that
verifies drafts: logits move by up to ~1, and greedy answers with and
without drafts diverge (6 of 16 EE answers on 2 threads). A Q8_0 or BF16 KV
cache avoids that path and makes them agree again, at ~8% decode speed.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import IO, Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.extract import Extractor, Stats
from knowlm_local.ie.records import Output, open_source, prepare_output, read_records
from knowlm_local.ie.schema_io import load_schema_file, parse_schema_text
from knowlm_local.ie.tasks import get_task
from knowlm_local.runtime import LoadedModel, LoadOptions

# Off by default. On the embedded model on a 2-core CPU (benchmarks/bench_extract.py) drafts of 6 speed up
# decoding 1.1-1.3x (NER, 83% of drafted tokens accepted) but only ~1.06x on EE, because verifying a batch
# of 7 tokens costs ~4 single steps when a small model is compute-bound; and on several threads the answers
# are not bit-identical to plain decoding (see the module docstring). Speculation is meant for large models,
# where decoding is memory-bound and a batch costs about one step.
DEFAULT_PROMPT_LOOKUP = 0


def resolve_schema(task: str, schema: str | None, schema_file: str | None) -> Any:
    """The user's schema (None: the task's default for each record's language)."""
    if schema and schema_file:
        raise KnowLMError("--schema and --schema-file both given", "keep one of them")
    if schema_file:
        return load_schema_file(task, schema_file)
    if schema is not None:
        if not schema.strip():
            raise KnowLMError("--schema is empty", "leave it out to use the default schema")
        return parse_schema_text(task, schema)
    return None


def load_for_extract(model: str | None, options: LoadOptions | None = None,
                     prompt_lookup: int = 0, parallel: int | None = 1, say=None) -> tuple[LoadedModel, Any]:
    """Load a model the way extraction wants it; returns it and the speculative drafter (or None).

    ``parallel``: sequences decoded together (None: chosen from the hardware, and said through ``say``).
    """
    from knowlm_local.runtime import choose_backend, load_model, resolve_for

    options = options or LoadOptions()
    if options.upstream:
        return load_model(model, options), None
    resolved = resolve_for(model, options.backend, "extract")
    draft = None
    if choose_backend(resolved, options.backend, cuda=False).name == "llama.cpp":
        if parallel is None or parallel > 1:
            if prompt_lookup > 0:
                if parallel:
                    raise KnowLMError("--prompt-lookup speculates on one sequence at a time",
                                      "use it with --parallel 1, or drop it")
                parallel = 1
            else:
                ctx = options.n_ctx or min(resolved.card.context_length if resolved.card else 2048, 2048)
                if parallel is None:
                    from knowlm_local.engine_plan import auto_parallel

                    parallel, why = auto_parallel(resolved.path, ctx, options.n_gpu_layers)
                    if say and parallel > 1:
                        say(f"--parallel {parallel}: {why} (--parallel 1 for one record at a time)")
                if parallel > 1:
                    options = replace(options, parallel=parallel, n_ctx=ctx)
        extra = {"flash_attn": True, **options.extra}
        if options.n_threads:  # --threads N means N for prompts and draft checks too, not only for decoding
            extra.setdefault("n_threads_batch", options.n_threads)
        if prompt_lookup > 0:
            from knowlm_local.ie.speculate import CopyDraft

            draft = CopyDraft(max_draft=prompt_lookup)
            extra["draft_model"] = draft
        options = replace(options, extra=extra)
    return load_model(model, options, purpose="extract"), draft


def run_extract(
    source: str,
    task: str,
    schema: str | None = None,
    schema_file: str | None = None,
    lang: str | None = None,
    output: str | None = None,
    resume: bool = False,
    force: bool = False,
    fmt: str = "jsonl",
    split: str = "doc",
    input_format: str = "auto",
    model: str | None = None,
    options: LoadOptions | None = None,
    overrides: dict[str, Any] | None = None,
    chunk_tokens: int | None = None,
    prompt_lookup: int | None = None,
    copy: str = "strict",
    max_items: int = 24,
    multi_label: bool = False,
    concurrency: int = 1,
    parallel: int | None = 1,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> Stats:
    """Extract from every record of ``source`` into ``output`` (stdout when None); returns the run's counters."""
    from rich.console import Console

    from knowlm_local.ie.report import ProgressView, record_table, summary_line
    from knowlm_local.term import stderr_console

    from knowlm_local.ie.copy import check_mode

    spec = get_task(task)
    check_mode(copy)
    if fmt not in ("jsonl", "table"):
        raise KnowLMError(f"unknown --format {fmt!r}", "choose jsonl or table")
    if lang is not None and lang not in ("zh", "en"):
        raise KnowLMError(f"unknown --lang {lang!r}", "choose zh or en, or leave it out to detect per record")
    user_schema = resolve_schema(spec.name, schema, schema_file)
    src = open_source(source, split=split, kind=input_format, stdin=stdin)
    out_path, skip = prepare_output(output, resume, force)
    err = stderr_console()
    stdout = stdout or sys.stdout
    table_out = Console(file=stdout, highlight=False) if fmt == "table" else None

    if parallel is not None and parallel < 1:
        raise KnowLMError(f"--parallel must be at least 1, got {parallel}", "--parallel 1 decodes one record at a time")
    loaded, draft = load_for_extract(model, options, DEFAULT_PROMPT_LOOKUP if prompt_lookup is None else prompt_lookup,
                                     parallel=parallel, say=lambda text: err.print(f"[dim]{text}[/dim]"))
    for line in loaded.notes():
        err.print(line, style="dim", markup=False, highlight=False)
    params = loaded.default_params(**{"temperature": 0.0, "repeat_penalty": 1.0,
                                      **{k: v for k, v in (overrides or {}).items() if v is not None}})
    if concurrency > 1 and loaded.backend.info.name != "openai":
        loaded.backend.close()
        raise KnowLMError("--concurrency keeps several requests in flight to an --upstream server",
                          "add --upstream URL, or use --parallel for a local model")
    in_flight = concurrency if loaded.backend.info.name == "openai" else getattr(loaded.backend, "parallel", 1)

    def make() -> Extractor:
        return Extractor(loaded, spec.name, user_schema, lang=lang, params=params, draft=draft,
                         chunk_tokens=chunk_tokens or 256, copy=copy, max_items=max_items,
                         multi_label=multi_label)

    workers = Workers(make, in_flight)
    # JSONL goes to the file, or to stdout unless a table was asked for.
    sink = Output(out_path, append=bool(skip), stdout=stdout) if (out_path or fmt == "jsonl") else None
    skipped = 0

    def todo():
        nonlocal skipped
        for record in read_records(src):
            if skip[record["id"]] > 0:
                skip[record["id"]] -= 1
                skipped += 1
                continue
            yield record

    failed = True
    try:
        with ProgressView(err, src.size, f"{spec.name} {src.name}") as view:
            for done in workers.map(todo()):
                if sink is not None:
                    sink.write(done)
                if table_out is not None:
                    table_out.print(record_table(done))
                view.update(src.bytes_read, workers.records)
        failed = False
    except KeyboardInterrupt:
        raise KnowLMError(f"interrupted after {workers.records} new records",
                          "run the same command with --resume to continue where it stopped" if out_path
                          else "write to a file with -o so that an interrupted run can be resumed") from None
    finally:
        if sink is not None:
            sink.close()
            if failed:  # an error before the first record leaves no empty output file behind
                sink.discard_if_empty()
        if source != "-":
            src.stream.close()
        loaded.backend.close()
    stats = workers.stats()
    err.print(f"[dim]{summary_line(stats, skipped)}[/dim]")
    if draft is not None and draft.proposed:
        err.print(f"[dim]speculation: {draft.accepted}/{draft.proposed} drafted tokens accepted "
                  f"({draft.acceptance:.0%})[/dim]")
    return stats


class Workers:
    """Records through one Extractor, or through ``n`` of them in threads with answers kept in input order.

    Several extractors share the backend: the `openai` backend keeps their
    requests in flight at once. At most ``2 n`` records are in flight, so a
    kill redoes at most those (``--resume`` skips what was written, in order).
    """

    def __init__(self, make, n: int = 1) -> None:
        import threading

        self.n = max(1, n)
        self._make = make
        self._local = threading.local()
        self._all: list[Extractor] = []
        self._lock = threading.Lock()
        self.first = self._mine()

    def _mine(self) -> Extractor:
        ex = getattr(self._local, "ex", None)
        if ex is None:
            ex = self._local.ex = self._make()
            with self._lock:
                self._all.append(ex)
        return ex

    @property
    def records(self) -> int:
        return sum(ex.stats.records for ex in self._all)

    def map(self, records):
        if self.n == 1:
            for record in records:
                yield self.first.extract(record)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.n, thread_name_prefix="extract") as pool:
            pending: deque = deque()
            for record in records:
                pending.append(pool.submit(lambda r: self._mine().extract(r), record))
                while len(pending) >= 2 * self.n:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def stats(self) -> Stats:
        total = Stats(started=min(ex.stats.started for ex in self._all))
        for ex in self._all:
            for name, value in vars(ex.stats).items():
                if name != "started":
                    setattr(total, name, getattr(total, name) + value)
        return total
