"""Option types shared by several commands, defined once (as huggingface_hub's CLI does)."""

from __future__ import annotations

from typing import Annotated

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
    str | None,
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
    int | None,
    typer.Option("--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1 all, 0 none). Default: all when they fit.",
                 show_default=False, min=-1, max=MAX_LAYERS),
]
CtxOpt = Annotated[
    int | None,
    typer.Option("--ctx", "-c", help=f"Context window in tokens ({MIN_CTX}-{MAX_CTX}). Default: the model card's "
                 "(not llama.cpp's 512).", show_default=False, min=MIN_CTX, max=MAX_CTX),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads.", show_default=False,
                                                   min=1, max=MAX_THREADS)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling (-1: random).",
                                                show_default=False, min=-1, max=2**32 - 1)]
TemplateOpt = Annotated[
    str | None,
    typer.Option("--template", help="Override the prompt template: alpaca, oneke, chatml, raw or gguf.", show_default=False),
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="0 means greedy. Default: the card's.", show_default=False,
                                  min=0.0, max=MAX_TEMPERATURE)
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling, in (0, 1].", show_default=False,
                                                  min=0.0, max=1.0, callback=above_zero("0<x<=1"))]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="0 disables it.", show_default=False, min=0)]
RepeatPenaltyOpt = Annotated[float | None, typer.Option("--repeat-penalty", help="1.0 is none.", show_default=False,
                                                           min=0.0, max=MAX_PENALTY,
                                                           callback=above_zero(f"0<x<={MAX_PENALTY:g}"))]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", "-n", help="Longest answer in tokens.",
                                                     show_default=False, min=1, max=MAX_CTX)]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Branch, tag or commit on the hub. Default: the card's.",
                                show_default=False)
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Hub token. Default: $HF_TOKEN or the one saved by `hf auth login`.",
                 show_default=False),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
UpstreamOpt = Annotated[
    str | None,
    typer.Option("--upstream", help="An OpenAI-compatible server (vLLM, another `knowlm-local serve`) that runs "
                 "the model, e.g. http://gpu-node:8000/v1; its key from $KNOWLM_API_KEY or $OPENAI_API_KEY.",
                 show_default=False),
]
AdapterOpt = Annotated[
    str | None,
    typer.Option("--lora", help="A GGUF LoRA adapter applied on top of the model at run time (llama.cpp).",
                 show_default=False),
]

KvTypeOpt = Annotated[
    str | None,
    typer.Option("--kv-type", help="KV cache type for llama.cpp: f16 (default), q8_0, bf16 or f32. q8_0 halves "
                 "the cache (and turns on flash attention, which llama.cpp needs for it).",
                 show_default=False),
]
AllocateOpt = Annotated[
    str | None,
    typer.Option("--allocate", help="GiB of weights per GPU for Hugging Face weights (transformers), "
                 "e.g. 10,10,10 over three GPUs; refused before loading when the model does not fit.",
                 show_default=False),
]
Load4bitOpt = Annotated[bool, typer.Option("--load-4bit", help="Load Hugging Face weights in 4-bit nf4 "
                                           "(bitsandbytes, CUDA).")]
Load8bitOpt = Annotated[bool, typer.Option("--load-8bit", help="Load Hugging Face weights in 8-bit "
                                           "(bitsandbytes, CUDA).")]


def load_bits(load_4bit: bool, load_8bit: bool) -> int | None:
    """``--load-4bit`` / ``--load-8bit`` as a bit count (both at once is an error)."""
    if load_4bit and load_8bit:
        from knowlm_local.errors import KnowLMError

        raise KnowLMError("--load-4bit and --load-8bit were both given", "choose one of them")
    return 4 if load_4bit else 8 if load_8bit else None


def load_options(backend: str, n_gpu_layers: int | None, ctx: int | None, threads: int | None,
                 seed: int | None, template: str | None, lora: str | None = None, upstream: str | None = None,
                 kv_type: str | None = None, allocate: str | None = None, load_4bit: bool = False,
                 load_8bit: bool = False, **extra):
    """The shared loading flags as a :class:`~knowlm_local.runtime.LoadOptions`."""
    from knowlm_local.runtime import LoadOptions

    if allocate is not None:
        from knowlm_local.memory_plan import parse_allocate

        parse_allocate(allocate)  # a malformed list fails here, before any model is looked at
    extra.update(allocate=allocate, load_bits=load_bits(load_4bit, load_8bit))

    import os

    key = (os.environ.get("KNOWLM_API_KEY") or os.environ.get("OPENAI_API_KEY")) if upstream else None
    if kv_type:
        from knowlm_local.backends.llamacpp import KV_TYPES

        if kv_type.lower() not in KV_TYPES:
            from knowlm_local.errors import KnowLMError

            raise KnowLMError(f"unknown --kv-type {kv_type!r}", f"choose one of: {', '.join(KV_TYPES)}")
        extra["extra"] = {"kv_type": kv_type.lower()}
    return LoadOptions(backend=backend, n_gpu_layers=n_gpu_layers, n_ctx=ctx, n_threads=threads, seed=seed,
                       template=template, lora=lora, upstream=upstream, api_key=key, **extra)
