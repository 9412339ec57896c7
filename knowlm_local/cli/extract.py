"""`knowlm-local extract` (NER, RE, EE, EET, EEA, KG, SPO over .txt / .jsonl / stdin) and `knowlm-local score`."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command
from knowlm_local.cli.options import (
    MAX_CTX,
    MAX_PENALTY,
    MAX_TEMPERATURE,
    AdapterOpt,
    AllocateOpt,
    BackendOpt,
    CtxOpt,
    GpuLayersOpt,
    KvTypeOpt,
    Load4bitOpt,
    Load8bitOpt,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    TemplateOpt,
    ThreadsOpt,
    UpstreamOpt,
    above_zero,
    load_options,
)

EXTRACT_EPILOG = """\
**Examples**

* `knowlm-local extract news.txt --task ner` — default schema for the text's language, JSONL on stdout
* `knowlm-local extract news.txt --task re --schema "founder,place of birth"`
* `knowlm-local extract docs.jsonl --task ee --schema-file events.json -o out.jsonl --model oneke`
* `knowlm-local extract docs.jsonl --task ner -o out.jsonl --resume` — continue an interrupted run
* `cat a.txt | knowlm-local extract - --task ner --format table` — a table instead of JSONL
* `knowlm-local extract big.txt --split line --task kg --schema "person: date of birth|occupation"`
* `knowlm-local extract news.txt --task ner --copy loose` — also accept case / full-width / spacing variants

Every extracted string is copied from the text (`--copy strict`, the default): the decoder refuses any
token that would leave the text, and a list that starts repeating itself is closed. In NER a span stands
under one label (`--multi-label` lets it stand under several).

Tasks: ner, re, spo, ee, eet, eea, kg. `--schema` forms: `"a,b"` (ner/re/eet), `"type: role|role; ..."`
(ee/eea/kg), `"subject_type/predicate/object_type, ..."` (spo), or inline JSON.
"""

SCORE_EPILOG = """\
**Examples**

* `knowlm-local score out.jsonl gold.jsonl` — micro P/R/F1 overall and per type
* `knowlm-local score preds.jsonl iepile_test.json --task re --json`

Gold may be IEPile test files (`label`), IEPile source files (`entity`/`relation`/`event`) or extract output.
"""


@command("extract", epilog=EXTRACT_EPILOG)
def extract(
    source: Annotated[str, typer.Argument(help="A .txt or .jsonl file, or `-` for stdin.", show_default=False)],
    task: Annotated[str, typer.Option("--task", help="ner, re, spo, ee, eet, eea or kg.")] = "ner",
    schema: Annotated[str | None, typer.Option("--schema", "-s", help="Labels, e.g. \"person,location\" "
                                                  "(default: the task's schema for the text's language).",
                                                  show_default=False)] = None,
    schema_file: Annotated[str | None, typer.Option("--schema-file", help="A JSON or YAML schema file.",
                                                       show_default=False)] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="zh or en (default: detected per record).",
                                                show_default=False)] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="JSONL output file (default: stdout).",
                                                  show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip records already in the output file.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="`jsonl`, or `table` for people.")] = "jsonl",
    split: Annotated[str, typer.Option("--split", help="For text: `doc` (whole file), `para` (blank-line "
                                       "separated) or `line` (one record per line).")] = "doc",
    input_format: Annotated[str, typer.Option("--input-format", help="auto, txt or jsonl.")] = "auto",
    chunk_tokens: Annotated[int | None, typer.Option("--chunk-tokens", help="Most text tokens per prompt "
                                                        "(default 256, capped by the context).",
                                                        show_default=False, min=16, max=MAX_CTX)] = None,
    prompt_lookup: Annotated[int | None, typer.Option(
        "--prompt-lookup", help="Draft up to N tokens copied from the text and earlier answers (speculative "
        "decoding; 0 = off, 6 is a good start).", show_default=False, min=0, max=64)] = None,
    copy: Annotated[str, typer.Option(
        "--copy", help="`strict`: every extracted string is copied from the text, no item twice in a list; `loose`: "
        "also case / full-width / spacing variants; `off`: only the JSON shape is enforced.")] = "strict",
    max_items: Annotated[int, typer.Option("--max-items", help="Most values in one list of an answer.",
                                           min=1, max=1000)] = 24,
    multi_label: Annotated[bool, typer.Option(
        "--multi-label", help="NER: let one span stand under several labels (by default a label's list that "
        "repeats a span an earlier label holds is closed there, as a repeat inside one list is).")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight to an --upstream server.",
                                             min=1, max=1024)] = 1,
    parallel: Annotated[int | None, typer.Option("--parallel", help="Records decoded together in one llama.cpp "
                                                    "context (default: chosen for this machine; 1: one at a time).",
                                                    min=1, max=256, show_default=False)] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Default 0: greedy, as OneKE's card.",
                                                         show_default=False, min=0.0, max=MAX_TEMPERATURE)] = None,
    repeat_penalty: Annotated[float | None, typer.Option("--repeat-penalty", help="Default 1.0 (none): a "
                                                            "penalty would push the model off repeated JSON syntax.",
                                                            show_default=False, min=0.0, max=MAX_PENALTY,
                                                            callback=above_zero(f"0<x<={MAX_PENALTY:g}"))] = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    upstream: UpstreamOpt = None,
    allocate: AllocateOpt = None,
    load_4bit: Load4bitOpt = False,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Extract entities, relations, events or knowledge-graph facts into JSONL with character offsets."""
    from knowlm_local.ie.run import run_extract

    run_extract(
        source, task, schema=schema, schema_file=schema_file, lang=lang, output=output, resume=resume, force=force,
        fmt=fmt, split=split, input_format=input_format, model=model,
        options=load_options(backend, n_gpu_layers, ctx, threads, seed, template, lora, upstream, kv_type=kv_type,
                             allocate=allocate, load_4bit=load_4bit, load_8bit=load_8bit),
        overrides=dict(max_tokens=max_tokens, temperature=temperature, repeat_penalty=repeat_penalty, seed=seed),
        chunk_tokens=chunk_tokens, prompt_lookup=prompt_lookup, copy=copy, max_items=max_items, concurrency=concurrency,
        parallel=parallel, multi_label=multi_label,
    )


@command("score", epilog=SCORE_EPILOG)
def score(
    predictions: Annotated[str, typer.Argument(help="Output of `knowlm-local extract` (or IEPile-style predictions).")],
    gold: Annotated[str, typer.Argument(help="Gold JSONL in IEPile style.")],
    task: Annotated[str | None, typer.Option("--task", help="Task, when the predictions do not say.",
                                                show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Micro precision / recall / F1 against gold annotations, IEPile-compatible."""
    import json

    from rich.console import Console

    from knowlm_local.ie.score import print_scores, score_files

    scores = score_files(predictions, gold, task=task)
    if as_json:
        typer.echo(json.dumps(scores, ensure_ascii=False, indent=2))
    else:
        print_scores(scores, Console(highlight=False))
