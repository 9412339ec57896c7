"""Option types shared by several commands, defined once (as huggingface_hub's CLI does)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

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
                 show_default=False),
]
CtxOpt = Annotated[
    Optional[int],
    typer.Option("--ctx", "-c", help="Context window in tokens. Default: the model card's (not llama.cpp's 512).",
                 show_default=False),
]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads.", show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.", show_default=False)]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option("--template", help="Override the prompt template: alpaca, oneke, chatml, raw or gguf.", show_default=False),
]
TemperatureOpt = Annotated[
    Optional[float], typer.Option("--temperature", help="0 means greedy. Default: the card's.", show_default=False)
]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", show_default=False)]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", show_default=False)]
RepeatPenaltyOpt = Annotated[Optional[float], typer.Option("--repeat-penalty", show_default=False)]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Longest answer in tokens.",
                                                     show_default=False)]
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
