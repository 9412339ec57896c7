"""`knowlm-local finetune`, `pretrain`, `prepare-pretrain` and `build-ie-data`: the training recipes."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}

FINETUNE_EPILOG = """\
**Examples**

* `knowlm-local finetune --config smollm2-ie-cpu` — a shipped recipe by name (see recipes/finetune/)
* `knowlm-local finetune --config recipes/finetune/smollm2-cpu.yaml --max-steps 20` — any key can be overridden
* `knowlm-local finetune --config my.yaml --output-dir ./runs/x --learning-rate 2e-4 --lora.r 8`
* `knowlm-local finetune --config recipes/finetune/knowlm-13b-ie-lora.yaml --gpus 8` — torchrun / DeepSpeed
* `knowlm-local finetune --config my.yaml --hostfile hosts --print-command` — the launch line for a scheduler
* `knowlm-local finetune --config my.yaml --resume` — continue from the last checkpoint (optimizer and data position)

Overrides take the recipe's keys: `--max-steps 20`, `--data.max-len 256`, `--lora.r 8` (command line over file
over defaults). Modes: lora, qlora (CUDA + bitsandbytes), full.
"""

PRETRAIN_EPILOG = """\
**Examples**

* `knowlm-local prepare-pretrain corpus/*.txt --tokenizer smollm2 --max-len 1024 -o data/pt`
* `knowlm-local pretrain --config smollm2-pretrain-cpu --max-steps 10`
* `knowlm-local pretrain --config recipes/pretrain/knowlm-13b.yaml --hostfile hosts` — multi-node via DeepSpeed
"""


def _run(kind: str, ctx: typer.Context, config: str | None, resume: bool, force: bool, print_command: bool) -> None:
    from knowlm_local.term import stderr_console
    from knowlm_local.train.config import parse_extra_args
    from knowlm_local.train.run import run

    err = stderr_console()
    run(kind, config, parse_extra_args(list(ctx.args)), resume=resume, force=force, print_command=print_command,
        say=lambda text: err.print(text, markup=False), passthrough=list(ctx.args))


ConfigOpt = Annotated[str | None, typer.Option("--config", help="A recipe: a YAML file or a shipped recipe's name.",
                                                  show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in output_dir from its last checkpoint.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Start over, deleting the run already in output_dir.")]
PrintOpt = Annotated[bool, typer.Option("--print-command", help="Print the (launcher) command instead of running it.")]


@command("finetune", epilog=FINETUNE_EPILOG, context_settings=OVERRIDES)
def finetune(ctx: typer.Context, config: ConfigOpt = None, resume: ResumeOpt = False, force: ForceOpt = False,
             print_command: PrintOpt = False) -> None:
    """Supervised fine-tuning from a recipe: LoRA, QLoRA or full; one device, several GPUs or nodes."""
    _run("finetune", ctx, config, resume, force, print_command)


@command("pretrain", epilog=PRETRAIN_EPILOG, context_settings=OVERRIDES)
def pretrain(ctx: typer.Context, config: ConfigOpt = None, resume: ResumeOpt = False, force: ForceOpt = False,
             print_command: PrintOpt = False) -> None:
    """Continued pretraining on token stores from `prepare-pretrain` (full parameters)."""
    _run("pretrain", ctx, config, resume, force, print_command)


@command("prepare-pretrain", epilog=PRETRAIN_EPILOG)
def prepare_pretrain(
    inputs: Annotated[list[str], typer.Argument(help=".txt (blank-line separated documents) and .jsonl files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the token store.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Zoo name, hub repo id or HF folder.")],
    max_len: Annotated[int, typer.Option("--max-len", help="Most tokens per sample.", min=16, max=1 << 20)] = 1024,
    min_len: Annotated[int, typer.Option("--min-len", help="Samples of this many tokens or fewer are dropped.",
                                         min=0)] = 20,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens of whole earlier sentences repeated at the start "
                                         "of each sample (KnowLM's way; 0 = off).", min=0)] = 0,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Keep exact duplicate documents.")] = False,
    text_field: Annotated[str, typer.Option("--text-field", help="The text key of .jsonl records.")] = "text",
    weight: Annotated[list[str] | None, typer.Option("--weight", help="SOURCE=W mixing weight of an input file "
                                                        "(its name without extension; repeatable).",
                                                        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing store.")] = False,
) -> None:
    """Sentence-aware packing of a corpus into a memory-mapped token store for `pretrain`."""
    from knowlm_local.errors import KnowLMError
    from knowlm_local.term import stderr_console
    from knowlm_local.train.pretrain_data import prepare_pretrain as run

    weights = {}
    for item in weight or []:
        name, eq, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            eq = ""
        if not eq or not name:
            raise KnowLMError(f"--weight {item!r} is not SOURCE=NUMBER", "example: --weight wiki=2")
    err = stderr_console()
    report = run(inputs, output, tokenizer, max_len=max_len, min_len=min_len, overlap=overlap, dedup=not no_dedup,
                 text_field=text_field, weights=weights or None, force=force,
                 say=lambda text: err.print(text, markup=False))
    for line in report.lines():
        err.print(line, markup=False)
    typer.echo(output)


@command("build-ie-data", epilog="""\
**Examples**

* `knowlm-local build-ie-data annotated.jsonl --task ner,re,ee -o data/ie.jsonl` — IEPile-style instructions
* `knowlm-local build-ie-data msra.bio --format bio --lang zh --task ner -o data/msra.jsonl`
* `knowlm-local build-ie-data oneke-out.jsonl --from-extract -o data/distill.jsonl` — a big model teaches a small one
* `knowlm-local build-ie-data raw.jsonl -o train.jsonl --dev-share 0.1 --dev-output dev.jsonl --neg-share 0.5`

Inputs: IEPile raw JSONL (text + entity/relation/event), CoNLL/BIO (2 or 4 columns, BIO or BIOES), DuIE spo_list
JSON, extract output, Alpaca JSON (passed through). The instructions are exactly what `extract` sends.
""")
def build_ie_data(
    inputs: Annotated[list[str], typer.Argument(help="Annotated files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL of instruction records.")],
    task: Annotated[str | None, typer.Option("--task", help="Comma-separated tasks (default: what the data has).",
                                                show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, iepile, bio, duie, extract or alpaca.")] = "auto",
    from_extract: Annotated[bool, typer.Option("--from-extract", help="Same as --format extract.")] = False,
    lang: Annotated[str | None, typer.Option("--lang", help="zh or en (default: detected per record).",
                                                show_default=False)] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="JSON file {task: [labels]}: the label sets "
                                                  "negatives are drawn from.", show_default=False)] = None,
    neg_share: Annotated[float, typer.Option("--neg-share", help="Share of absent labels asked as negatives.",
                                             min=0.0, max=1.0)] = 1.0,
    hard_negatives: Annotated[str | None, typer.Option("--hard-negatives", help="JSON file {label: [similar]}.",
                                                          show_default=False)] = None,
    dev_share: Annotated[float, typer.Option("--dev-share", help="Share of records for the dev file.", min=0.0,
                                             max=0.9)] = 0.0,
    dev_output: Annotated[str | None, typer.Option("--dev-output", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Label shuffling and negative sampling.")] = 0,
    keep_order: Annotated[bool, typer.Option("--keep-order", help="Ask labels in the label set's order (as extract "
                                             "asks a fixed schema) instead of shuffling them per record.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
) -> None:
    """IEPile/OneKE-style instruction data from annotated files (negative labels, schema groups, train/dev)."""
    from knowlm_local.term import stderr_console
    from knowlm_local.train.iedata import build_ie_data as run

    label_sets = None
    if labels:
        from pathlib import Path

        from knowlm_local.jsonio import read_json

        label_sets = read_json(Path(labels), what="label file", hint='write {"NER": ["person", ...], ...}')
    err = stderr_console()
    report = run(inputs, output, tasks=[t.strip() for t in task.split(",") if t.strip()] if task else None,
                 fmt="extract" if from_extract else fmt, lang=lang, labels=label_sets, neg_share=neg_share,
                 hard_negatives=hard_negatives, dev_share=dev_share, dev_output=dev_output, seed=seed, force=force,
                 shuffle=not keep_order,
                 say=lambda text: err.print(text, markup=False))
    for line in report.lines():
        err.print(line, markup=False)
    typer.echo(output)
