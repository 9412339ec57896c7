"""`knowlm-local convert`, `merge` and `verify`: HF weights (+ LoRA, + ZhiXi diff) to GGUF, checked."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from knowlm_local.cli import command
from knowlm_local.cli.options import RevisionOpt, ThreadsOpt

ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")]
LoraOpt = Annotated[
    str | None, typer.Option("--lora", help="A PEFT LoRA adapter folder to merge in.", show_default=False)
]
DiffBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--diff-base",
        help="Legacy ZhiXi diff: the LLaMA-13B (HF format) folder the diff is added to.",
        show_default=False,
    ),
]
SkipBaseOpt = Annotated[
    bool,
    typer.Option(
        "--skip-base-check", help="Accept an adapter whose base_model_name_or_path names another model."
    ),
]
SkipChecksumOpt = Annotated[
    bool,
    typer.Option("--skip-checksum", help="Diff recovery: skip KnowLM's MD5 and weight-sum integrity checks."),
]


def _progress():
    from knowlm_local.convert.progress import Progress
    from knowlm_local.term import stderr_console

    err = stderr_console()
    return Progress(
        enabled=sys.stderr.isatty(), say=lambda text: err.print(text, markup=False, soft_wrap=True)
    )


@command(
    "convert",
    epilog=(
        "**Examples**\n\n"
        "* `knowlm-local convert oneke --quant q4_k_m` — a downloaded zoo model into the store\n"
        "* `knowlm-local convert knowlm-13b-ie-lora --quant q4_k_m` — base + LoRA card, merged on the fly\n"
        "* `knowlm-local convert ./my-finetune --lora ./adapter --quant q5_k_m,q8_0` — two types, one read\n"
        "* `knowlm-local convert oneke --quant q4_k_m --verify` — also compare with transformers\n"
        "* `knowlm-local convert ./zhixi-13b-diff --diff-base ./llama-13b-hf --name zhixi-13b -q q4_k_m`\n"
        "* `knowlm-local convert oneke -q iq4_xs --imatrix oneke.imatrix`\n"
        "* `knowlm-local convert ./runs/smollm2-ie --adapter-only -o ie-adapter.gguf` — a PEFT LoRA as a GGUF adapter\n\n"
        "Types: f32, f16, bf16, q8_0 (written directly), q6_k, q5_k_m, q5_k_s, q5_0, q5_1, q4_k_m, q4_k_s, "
        "q4_0, q4_1, iq4_nl, iq4_xs, q3_k_l, q3_k_m, q3_k_s, q2_k (through llama.cpp). "
        "Results go to the store, so `knowlm-local chat -m oneke:q4_k_m` finds them."
    ),
)
def convert(
    name: Annotated[
        str, typer.Argument(help="Zoo name, hub repo id `owner/name`, or a Hugging Face model folder.")
    ],
    quant: Annotated[str | None, typer.Option("--quant", "-q", help="Comma-separated output types (default "
                                                 "q4_k_m; f16 with --adapter-only).", show_default=False)] = None,
    adapter_only: Annotated[bool, typer.Option("--adapter-only", help="Write a LoRA adapter as a GGUF LoRA adapter "
                                               "(for llama.cpp's --lora, `chat --lora`, Ollama) instead of merging "
                                               "it.")] = False,
    lora: LoraOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Folder (or one .gguf file) instead of the store.", show_default=False
        ),
    ] = None,
    store_name: Annotated[
        str | None,
        typer.Option("--name", help="Name to file the result under in the store.", show_default=False),
    ] = None,
    force: ForceOpt = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Compare the results with transformers on the "
            "original weights; remove them and fail if they disagree.",
        ),
    ] = False,
    imatrix: Annotated[
        str | None,
        typer.Option("--imatrix", help="Importance matrix from llama-imatrix.", show_default=False),
    ] = None,
    diff_base: DiffBaseOpt = None,
    revision: RevisionOpt = None,
    tokenizer_pre: Annotated[
        str | None,
        typer.Option(
            "--tokenizer-pre",
            help="llama.cpp pre-tokenizer name for an unrecognised BPE tokenizer.",
            show_default=False,
        ),
    ] = None,
    skip_base_check: SkipBaseOpt = False,
    skip_checksum: SkipChecksumOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Convert a Hugging Face Llama model (optionally + LoRA) to GGUF and quantize it."""
    progress = _progress()
    if adapter_only:
        from knowlm_local.convert.adapter_gguf import convert_adapter

        path = convert_adapter(name, output, out_type=("f16" if quant is None else quant).lower(), lora=lora, force=force,
                               revision=revision, skip_base_check=skip_base_check, progress=progress)
        progress.say(f"{path.name}: use it with `knowlm-local chat -m BASE --lora {path}` (or llama.cpp's --lora)")
        typer.echo(str(path))
        return
    from knowlm_local.convert.pipeline import convert as run

    result = run(
        name,
        quants="q4_k_m" if quant is None else quant,  # an empty --quant "" is refused by convert
        lora=lora,
        output=output,
        name=store_name,
        force=force,
        verify=verify,
        imatrix=imatrix,
        diff_base=diff_base,
        revision=revision,
        tokenizer_pre=tokenizer_pre,
        skip_base_check=skip_base_check,
        skip_checksum=skip_checksum,
        threads=threads,
        progress=progress,
    )
    for warning in result.warnings:
        progress.say(f"warning: {warning}")
    for path in result.outputs.values():
        typer.echo(str(path))


@command(
    "merge",
    epilog=(
        "**Examples**\n\n"
        "* `knowlm-local merge knowlm-13b-ie-lora` — the LoRA card merged into its base, as safetensors\n"
        "* `knowlm-local merge ./base --lora ./adapter -o ./merged --dtype bf16`\n"
        "* `knowlm-local merge ./zhixi-13b-diff --diff-base ./llama-13b-hf -o ./zhixi-13b`"
        " — recover ZhiXi\n\n"
        "The output is an ordinary Hugging Face folder (config, tokenizer, sharded safetensors) with a "
        "provenance.json; `knowlm-local convert` refuses to merge the same adapter into it twice."
    ),
)
def merge(
    name: Annotated[str, typer.Argument(help="Base model (zoo name, repo id or folder) or a LoRA zoo name.")],
    lora: LoraOpt = None,
    diff_base: DiffBaseOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Output folder. Default: STORE/NAME/merged.", show_default=False
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (the source's), float16, bfloat16 or float32.")
    ] = "auto",
    shard_size: Annotated[str, typer.Option("--shard-size", help="Largest safetensors shard.")] = "5GB",
    force: ForceOpt = False,
    revision: RevisionOpt = None,
    skip_base_check: SkipBaseOpt = False,
    skip_checksum: SkipChecksumOpt = False,
) -> None:
    """Merge a LoRA adapter (or a ZhiXi weight diff) into full Hugging Face safetensors weights."""
    from knowlm_local.convert.merge import merge as run

    aliases = {"float16": "f16", "fp16": "f16", "bfloat16": "bf16", "float32": "f32", "fp32": "f32"}
    result = run(
        name,
        lora=lora,
        diff_base=diff_base,
        output=output,
        dtype=aliases.get(dtype.lower(), dtype),
        shard_size=shard_size,
        force=force,
        revision=revision,
        skip_base_check=skip_base_check,
        skip_checksum=skip_checksum,
        progress=_progress(),
    )
    typer.echo(str(result.folder))


@command(
    "verify",
    epilog=(
        "**Examples**\n\n"
        "* `knowlm-local verify oneke:q4_k_m` — against the folder recorded in its provenance.json\n"
        "* `knowlm-local verify ./model-f16.gguf ./hf-model`\n"
        "* `knowlm-local verify ./merged-q4_k_m.gguf ./base --lora ./adapter --json`\n\n"
        "Runs the same prompts through llama.cpp and transformers and reports top-1 agreement, KL divergence "
        "and the largest logit error; exits 1 when the quant type's thresholds are not met. "
        "transformers needs "
        "the full model in RAM in float32."
    ),
)
def verify(
    gguf: Annotated[str, typer.Argument(help="A GGUF file or a store name like `oneke:q4_k_m`.")],
    hf_dir: Annotated[
        str | None,
        typer.Argument(
            help="The Hugging Face folder it was converted from. Default: from provenance.json.",
            show_default=False,
        ),
    ] = None,
    lora: LoraOpt = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            help="A prompt to compare on (repeatable). Default: a built-in zh+en set.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Check a GGUF against the original weights: same prompts, compare next-token logits."""
    import json

    from knowlm_local.convert.verify import require_pass, verify_spec

    progress = _progress()
    results = verify_spec(
        gguf, hf_dir, lora=lora, prompts=prompt, threads=threads, say=None if as_json else progress.say
    )
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], ensure_ascii=False, indent=2))
    require_pass(results)
