"""`knowlm-local instruct ...`: instruction generation and selection with a local model (no API key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from knowlm_local.cli import app, reported
from knowlm_local.cli.options import (
    MAX_CTX,
    MAX_TEMPERATURE,
    AdapterOpt,
    BackendOpt,
    CtxOpt,
    GpuLayersOpt,
    KvTypeOpt,
    ModelOpt,
    TemplateOpt,
    ThreadsOpt,
    UpstreamOpt,
    load_options,
)

instruct_app = typer.Typer(
    name="instruct",
    help="Instruction data with a local model: self-instruct, Evol-Instruct, back-translation, selection, and IE "
         "instructions from knowledge-graph triples; Alpaca JSONL out, ready for `finetune`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(instruct_app, name="instruct")


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an `instruct` subcommand whose KnowLMError is reported as error:/hint: lines (exit 1)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        instruct_app.command(name, **kwargs)(reported(fn))
        return fn

    return decorate


OutputOpt = Annotated[str, typer.Option("--output", "-o", help="The JSONL file to write.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (OUTPUT.partial) or extend "
                                         "a finished output.")]
RandomSeedOpt = Annotated[int, typer.Option("--random-seed", help="Seed of every random choice and sample.",
                                            min=0, max=2**31 - 1)]
LangOpt = Annotated[str | None, typer.Option("--lang", help="en or zh requests (default: detected from the text).",
                                                show_default=False)]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Only the first N input records.", min=1,
                                                 show_default=False)]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).", min=0.0,
                                               max=MAX_TEMPERATURE)]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling.", min=0.01, max=1.0)]


MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Longest model answer in tokens (a longer one is "
                                           "skipped as cut off).", min=8, max=MAX_CTX)]


def _options(backend, n_gpu_layers, ctx, threads, seed, template, lora, upstream, kv_type):
    return load_options(backend, n_gpu_layers, ctx, threads, seed, template, lora, upstream, kv_type=kv_type)


def _say() -> tuple[Any, Callable[[str], Any]]:
    from knowlm_local.term import stderr_console

    err = stderr_console()
    return err, lambda text: err.print(text, markup=False, style="dim")


def _finish(err: Any, lines: list[str], output: str) -> None:
    for line in lines:
        err.print(line, markup=False)
    typer.echo(output)


GENERATE_EPILOG = """\
**Examples**

* `knowlm-local instruct generate --seed seeds.jsonl -n 500 -m oneke -o gen.jsonl` — self-instruct with OneKE
* `knowlm-local instruct generate --seed seeds.jsonl -n 5 -o gen.jsonl` — the embedded demo model, offline
* `knowlm-local instruct generate --seed seeds.jsonl -n 500 -o gen.jsonl --resume` — continue after a stop

Seeds: JSON Lines of Alpaca records (`instruction`, `input`, `output`) or self-instruct seed tasks (`instruction`,
`instances`). Each call shows --shots example tasks and asks for one new task as a JSON object (llama.cpp
enforces the shape). Skipped and counted: cut off, empty, too short/long, starts with punctuation, blacklisted
(images, files, drawing, music, ...), ROUGE-L above --rouge with a seed or kept task. The output grows as
OUTPUT.partial and is renamed when the run ends; --resume continues it, asking what the uninterrupted run would.
"""


@command("generate", epilog=GENERATE_EPILOG)
def generate(
    seed_file: Annotated[str, typer.Option("--seed", "-s", help="Seed tasks (JSON Lines).", show_default=False)],
    output: OutputOpt,
    n: Annotated[int, typer.Option("-n", "--count", help="Tasks to generate.", min=1)] = 100,
    shots: Annotated[int, typer.Option("--shots", help="Example tasks shown per call (one of them generated, once "
                                       "there are some and shots >= 3).", min=1, max=16)] = 3,
    rouge: Annotated[float, typer.Option("--rouge", help="Skip a task whose ROUGE-L with a seed or kept task is "
                                         "above this.", min=0.01, max=1.0)] = 0.7,
    max_tries: Annotated[int | None, typer.Option("--max-tries", help="Stop after this many calls (default 5 x -n).",
                                                     min=1, show_default=False)] = None,
    max_tokens: MaxTokensOpt = 384,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
    lang: LangOpt = None,
    random_seed: RandomSeedOpt = 0,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    upstream: UpstreamOpt = None,
) -> None:
    """Self-instruct: new tasks from seed tasks, one JSON-constrained call each, with a local model."""
    from knowlm_local.instruct.generate import generate as run

    err, say = _say()
    tally = run(seed_file, output, n, model=model, shots=shots, rouge=rouge, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, seed=random_seed, lang=lang, max_tries=max_tries,
                resume=resume, force=force, say=say, console=err,
                options=_options(backend, n_gpu_layers, ctx, threads, random_seed, template, lora, upstream, kv_type))
    _finish(err, tally.lines("tasks"), output)


EVOLVE_EPILOG = """\
**Examples**

* `knowlm-local instruct evolve gen.jsonl -o evolved.jsonl` — one random operation per task
* `knowlm-local instruct evolve gen.jsonl -o hard.jsonl --ops constraints,reasoning --rounds 2`

Operations: constraints, deepen, concretize, reasoning (in depth), broaden (in breadth). The model rewrites the
task (JSON-constrained) and answers it, prompted as `finetune` trains. Eliminated and counted: unchanged
(ROUGE-L >= 0.9 with the original), copied the request, refused (a short apology), empty or cut-off answers.
"""


@command("evolve", epilog=EVOLVE_EPILOG)
def evolve(
    source: Annotated[str, typer.Argument(help="Alpaca JSONL tasks to evolve.", show_default=False)],
    output: OutputOpt,
    ops: Annotated[str | None, typer.Option("--ops", help="Comma-separated operations (default: all five).",
                                               show_default=False)] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Evolve each result again this many times in all.",
                                        min=1, max=8)] = 1,
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 384,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
    lang: LangOpt = None,
    random_seed: RandomSeedOpt = 0,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    upstream: UpstreamOpt = None,
) -> None:
    """Evol-Instruct: rewrite each task into a harder or a new one, and answer it."""
    from knowlm_local.instruct.evolve import evolve as run

    err, say = _say()
    tally = run(source, output, model=model, ops=ops, rounds=rounds, limit=limit, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, seed=random_seed, lang=lang, resume=resume, force=force,
                say=say, console=err,
                options=_options(backend, n_gpu_layers, ctx, threads, random_seed, template, lora, upstream, kv_type))
    _finish(err, tally.lines("evolved tasks"), output)


BACKTRANSLATE_EPILOG = """\
**Examples**

* `knowlm-local instruct backtranslate docs.txt -o bt.jsonl` — one document per paragraph (blank-line separated)
* `knowlm-local instruct backtranslate faq.txt --split line -o bt.jsonl --min-rating 5`
* `knowlm-local instruct backtranslate pages.jsonl --text-field body -o bt.jsonl --min-rating 0` — no rating

The model writes the instruction each document answers (JSON-constrained), then rates the pair 1-5; pairs rated
below --min-rating are skipped and counted. Records: instruction, empty input, the document as output, rating.
"""


@command("backtranslate", epilog=BACKTRANSLATE_EPILOG)
def backtranslate(
    source: Annotated[str, typer.Argument(help="Documents: .txt or .jsonl.", show_default=False)],
    output: OutputOpt,
    split: Annotated[str, typer.Option("--split", help="For .txt: para (blank-line separated) or line.")] = "para",
    text_field: Annotated[str, typer.Option("--text-field", help="The text key of .jsonl records.")] = "text",
    min_rating: Annotated[int, typer.Option("--min-rating", help="Keep pairs the model rates at least this "
                                            "(1-5; 0: keep all, unrated).", min=0, max=5)] = 4,
    min_words: Annotated[int, typer.Option("--min-words", help="Skip documents with fewer words.", min=1)] = 5,
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
    lang: LangOpt = None,
    random_seed: RandomSeedOpt = 0,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    upstream: UpstreamOpt = None,
) -> None:
    """Instruction back-translation: the instruction each document answers, kept on the model's self-rating."""
    from knowlm_local.instruct.backtranslate import backtranslate as run

    err, say = _say()
    tally = run(source, output, model=model, split=split, text_field=text_field, min_rating=min_rating,
                min_words=min_words, limit=limit, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                seed=random_seed, lang=lang, resume=resume, force=force, say=say, console=err,
                options=_options(backend, n_gpu_layers, ctx, threads, random_seed, template, lora, upstream, kv_type))
    _finish(err, tally.lines("instructions"), output)


SELECT_EPILOG = """\
**Examples**

* `knowlm-local instruct select gen.jsonl --dedup --min-len 3 --rouge 0.7 --ppl-max 200 -o train.jsonl`
* `knowlm-local instruct select a.jsonl b.jsonl --near-dup 0.8 --mtld-min 20 -o train.jsonl --rejected rej.jsonl`
* `knowlm-local instruct select gen.jsonl --min-rating 4 -m oneke --sample 1000 -o train.jsonl --scores`

Order: length, dedup (exact, ignoring case/spacing/punctuation), MTLD, near-dup (MinHash, token-3-gram
Jaccard), ROUGE-L, perplexity, self-rating, random sample. The order-dependent ones keep the first record of a
group. A model is loaded only for --ppl-max and --min-rating. Then: `knowlm-local finetune` with the output as
data.train.
"""


@command("select", epilog=SELECT_EPILOG)
def select(
    inputs: Annotated[list[str], typer.Argument(help="Alpaca JSONL files.", show_default=False)],
    output: OutputOpt,
    dedup: Annotated[bool, typer.Option("--dedup", help="Drop exact duplicates of (instruction, input).")] = False,
    near_dup: Annotated[float | None, typer.Option("--near-dup", help="Drop a record whose token-3-gram Jaccard "
                                                      "with a kept one is at least this (MinHash).", min=0.01,
                                                      max=1.0, show_default=False)] = None,
    min_len: Annotated[int | None, typer.Option("--min-len", help="Fewest words in the instruction.", min=0,
                                                   show_default=False)] = None,
    max_len: Annotated[int | None, typer.Option("--max-len", help="Most words in the instruction.", min=1,
                                                   show_default=False)] = None,
    min_output: Annotated[int | None, typer.Option("--min-output", help="Fewest words in the output.", min=0,
                                                      show_default=False)] = None,
    max_output: Annotated[int | None, typer.Option("--max-output", help="Most words in the output.", min=1,
                                                      show_default=False)] = None,
    mtld_min: Annotated[float | None, typer.Option("--mtld-min", help="Lowest MTLD lexical diversity of the "
                                                      "output.", min=0.0, show_default=False)] = None,
    rouge: Annotated[float | None, typer.Option("--rouge", help="Drop an instruction whose ROUGE-L with a kept "
                                                   "one is above this.", min=0.01, max=1.0,
                                                   show_default=False)] = None,
    ppl_max: Annotated[float | None, typer.Option("--ppl-max", help="Highest perplexity of the output under the "
                                                     "model.", min=1.0, show_default=False)] = None,
    min_rating: Annotated[int | None, typer.Option("--min-rating", help="Lowest 1-5 self-rating by the model.",
                                                      min=1, max=5, show_default=False)] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="Keep this many at random, after the rest.",
                                                  min=1, show_default=False)] = None,
    rejected: Annotated[str | None, typer.Option("--rejected", help="Also write the dropped records, with why.",
                                                    show_default=False)] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Add each kept record's measured values (`scores`).")
                      ] = False,
    random_seed: RandomSeedOpt = 0,
    force: ForceOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    kv_type: KvTypeOpt = None,
    upstream: UpstreamOpt = None,
) -> None:
    """Filter instruction records: duplicates, length, MTLD, ROUGE-L novelty, perplexity, self-rating, random."""
    from knowlm_local.instruct.select import Selection
    from knowlm_local.instruct.select import select as run

    err, say = _say()
    sel = Selection(min_len=min_len, max_len=max_len, min_output=min_output, max_output=max_output, dedup=dedup,
                    mtld_min=mtld_min, near_dup=near_dup, rouge=rouge, ppl_max=ppl_max, min_rating=min_rating,
                    sample=sample, seed=random_seed)
    result = run(inputs, output, sel, model=model, rejected=rejected, scores=scores, force=force, say=say,
                 console=err,
                 options=_options(backend, n_gpu_layers, ctx, threads, random_seed, template, lora, upstream, kv_type))
    _finish(err, result.lines(), output)


TRIPLES_EPILOG = """\
**Examples**

* `knowlm-local instruct from-triples triples.jsonl texts.jsonl -o ie.jsonl`
* `knowlm-local instruct from-triples triples.jsonl wiki.txt --task re,ner -o ie.jsonl --dev-share 0.05`
* `knowlm-local instruct from-triples kg.jsonl texts.jsonl -o ie.jsonl --duie matched.jsonl` — keep the matches

Triples: JSON Lines `{"head", "relation", "tail"}` (optional `head_type`, `tail_type`). Texts: JSON Lines
`{"id", "text"}` or .txt, one text a line. A triple matches a text when head and tail both occur in it; each
matched text becomes a DuIE record and the instructions are exactly what `build-ie-data --format duie` writes
for it (RE; SPO when every triple of the text is typed; NER with --task).
"""


@command("from-triples", epilog=TRIPLES_EPILOG)
def from_triples(
    triples: Annotated[str, typer.Argument(help="Triples (JSON Lines).", show_default=False)],
    texts: Annotated[str, typer.Argument(help="Texts: .jsonl {id, text} or .txt (one per line).",
                                         show_default=False)],
    output: OutputOpt,
    task: Annotated[str | None, typer.Option("--task", help="Comma-separated: re, spo, ner (default: re, and spo "
                                                "when typed).", show_default=False)] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="zh or en (default: detected per text).",
                                                show_default=False)] = None,
    neg_share: Annotated[float, typer.Option("--neg-share", help="Share of absent relations asked as negatives.",
                                             min=0.0, max=1.0)] = 1.0,
    dev_share: Annotated[float, typer.Option("--dev-share", help="Share of texts for the dev file.", min=0.0,
                                             max=0.9)] = 0.0,
    dev_output: Annotated[str | None, typer.Option("--dev-output", show_default=False)] = None,
    keep_order: Annotated[bool, typer.Option("--keep-order", help="Ask labels in the label set's order instead of "
                                             "shuffling them per record.")] = False,
    source: Annotated[str | None, typer.Option("--source", help="The records' source name (default: the texts "
                                                  "file's name).", show_default=False)] = None,
    duie: Annotated[str | None, typer.Option("--duie", help="Also write the matched texts as a DuIE file.",
                                                show_default=False)] = None,
    random_seed: RandomSeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """KG2Instruct-style IE instructions from knowledge-graph triples matched in texts (via build-ie-data)."""
    from knowlm_local.instruct.triples import from_triples as run

    err, say = _say()
    tasks = [t.strip() for t in task.split(",") if t.strip()] if task else None
    result = run(triples, texts, output, source=source, duie_output=duie, force=force, say=say, tasks=tasks,
                 lang=lang, neg_share=neg_share, dev_share=dev_share, dev_output=dev_output, seed=random_seed,
                 shuffle=not keep_order)
    _finish(err, result.lines(), output)
