"""Option types shared by several commands, defined once (as huggingface_hub's CLI does)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# Ranges of the numeric options, checked when the command line is parsed (the bound is in the message).
MIN_CTX = 64  # below this not even an instruction fits
MAX_CTX = 1 << 20
MAX_LAYERS = 4096
MAX_THREADS = 1024
MAX_TEMPERATURE = 100.0
MAX_PENALTY = 100.0


def above_zero(bounds: str):
    """A callback that refuses exactly 0 where typer's ``min`` can only include it (an open lower bound)."""

    def check(value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{value:g} is not in the range {bounds}.")
        return value

    return check

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m",
        help="Zoo name (`oneke`, `oneke:q4_k_m`), hub repo id, or path to a GGUF / HF folder. "
        "Default: $KNOWLM_MODEL, else the newest converted model, else the embedded demo model.",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", help="`auto` (llama.cpp for GGUF, transformers for HF folders), `llama.cpp` or `transformers`."),
]
GpuLayersOpt = Annotated[
    Optional[int],
    typer.Option("--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1 all, 0 none). Default: all when they fit.",
                 show_default=False, min=-1, max=MAX_LAYERS),
]
CtxOpt = Annotated[
    Optional[int],
    typer.Option("--ctx", "-c", help=f"Context window in tokens ({MIN_CTX}-{MAX_CTX}). Default: the model card's "
                 "(not llama.cpp's 512).", show_default=False, min=MIN_CTX, max=MAX_CTX),
]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads.", show_default=False,
                                                   min=1, max=MAX_THREADS)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling (-1: random).",
                                                show_default=False, min=-1, max=2**32 - 1)]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option("--template", help="Override the prompt template: alpaca, oneke, chatml, raw or gguf.", show_default=False),
]
TemperatureOpt = Annotated[
    Optional[float], typer.Option("--temperature", help="0 means greedy. Default: the card's.", show_default=False,
                                  min=0.0, max=MAX_TEMPERATURE)
]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling, in (0, 1].", show_default=False,
                                                  min=0.0, max=1.0, callback=above_zero("0<x<=1"))]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="0 disables it.", show_default=False, min=0)]
RepeatPenaltyOpt = Annotated[Optional[float], typer.Option("--repeat-penalty", help="1.0 is none.", show_default=False,
                                                           min=0.0, max=MAX_PENALTY,
                                                           callback=above_zero(f"0<x<={MAX_PENALTY:g}"))]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Longest answer in tokens.",
                                                     show_default=False, min=1, max=MAX_CTX)]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Branch, tag or commit on the hub. Default: the card's.",
                                show_default=False)
]
TokenOpt = Annotated[
    Optional[str],
    typer.Option("--token", help="Hub token. Default: $HF_TOKEN or the one saved by `hf auth login`.",
                 show_default=False),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def load_options(backend: str, n_gpu_layers: int | None, ctx: int | None, threads: int | None,
                 seed: int | None, template: str | None, **extra):
    """The shared loading flags as a :class:`~knowlm_local.runtime.LoadOptions`."""
    from knowlm_local.runtime import LoadOptions

    return LoadOptions(backend=backend, n_gpu_layers=n_gpu_layers, n_ctx=ctx, n_threads=threads, seed=seed,
                       template=template, **extra)
