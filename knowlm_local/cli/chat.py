"""`knowlm-local chat`: a REPL, a one-shot answer (`-p`), or one prompt from stdin (`-`)."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command
from knowlm_local.cli.options import (
    AdapterOpt,
    AllocateOpt,
    BackendOpt,
    CtxOpt,
    GpuLayersOpt,
    Load4bitOpt,
    Load8bitOpt,
    MaxTokensOpt,
    ModelOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    TemperatureOpt,
    TemplateOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    UpstreamOpt,
    load_options,
)

EPILOG = """\
**Examples**

* `knowlm-local chat` — talk to the default model (the embedded demo model offline)
* `knowlm-local chat -p "What is GGUF?"` — one answer, streamed, then exit
* `echo "question" | knowlm-local chat -` — one prompt from stdin
* `knowlm-local chat -m zhixi --temperature 0.2 --ctx 2048`
* `printf 'Hi\\n/set temperature 0\\nAgain\\n' | knowlm-local chat` — a scripted multi-turn session

In the REPL type `/help` for `/set`, `/system`, `/clear`, `/save`, `/load`, `/stats`, `/bye`.
"""


@command("chat", epilog=EPILOG)
def chat(
    source: Annotated[str | None, typer.Argument(help="`-` reads one prompt from stdin.", show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer this and exit.",
                                                  show_default=False)] = None,
    model: ModelOpt = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.", show_default=False)] = None,
    edit_memory: Annotated[str | None, typer.Option(
        "--edit-memory", help="An IKE edit memory (from `edit --method ike`): its facts go into the system prompt.",
        show_default=False)] = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    template: TemplateOpt = None,
    backend: BackendOpt = "auto",
    lora: AdapterOpt = None,
    upstream: UpstreamOpt = None,
    allocate: AllocateOpt = None,
    load_4bit: Load4bitOpt = False,
    load_8bit: Load8bitOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print speed after each answer.")] = False,
) -> None:
    """Chat with a model: interactive, one-shot (`-p`), or from stdin (`-`)."""
    from knowlm_local.chat import run_chat

    if edit_memory:
        from knowlm_local.edit.ike import chat_system, read_memory

        system = chat_system(read_memory(edit_memory), system)
    if source not in (None, "-"):
        from knowlm_local.errors import KnowLMError

        raise KnowLMError(f"unexpected argument {source!r}", 'use -p "your question", or - to read stdin')
    run_chat(
        model=model,
        options=load_options(backend, n_gpu_layers, ctx, threads, seed, template, lora, upstream,
                             allocate=allocate, load_4bit=load_4bit, load_8bit=load_8bit),
        prompt=prompt,
        read_stdin=source == "-",
        system=system,
        overrides=dict(temperature=temperature, top_p=top_p, top_k=top_k, repeat_penalty=repeat_penalty,
                       max_tokens=max_tokens, seed=seed),
        verbose=verbose,
    )
