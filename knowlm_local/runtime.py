"""Load a model by name: resolve it, pick a backend, pick its prompt template.

chat, extract, serve and the benchmarks all start here, so the defaults
(context from the card, GPU offload, template from the card) are the same
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knowlm_local.backends import Backend, create_backend
from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams
from knowlm_local.prompts import Template, get_template
from knowlm_local.store import ResolvedModel, default_model, resolve
from knowlm_local.zoo import ModelCard


@dataclass
class LoadOptions:
    """How to load a model; ``None`` means "the sensible default for this model"."""

    backend: str = "auto"  # "auto", "llama.cpp" or "transformers"
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    seed: int | None = None
    template: str | None = None
    prompt_lookup: int = 0
    lora: str | None = None  # a GGUF LoRA adapter applied at run time (llama.cpp)
    upstream: str | None = None  # an OpenAI-compatible server that runs the model (the `openai` backend)
    parallel: int = 1  # sequences decoded together in one llama.cpp context (the batched engine)
    api_key: str | None = None  # for the upstream
    allocate: str | None = None  # GiB of weights per GPU, "10,10,10" (transformers: device_map + max_memory)
    load_bits: int | None = None  # 4 or 8: bitsandbytes quantization at load time (transformers, CUDA)
    extra: dict = field(default_factory=dict)


@dataclass
class LoadedModel:
    resolved: ResolvedModel
    backend: Backend
    template: Template
    choice: BackendChoice | None = None

    def notes(self) -> list[str]:
        """What to tell the user once the model is loaded: the model's note and the backend chosen, with why."""
        return [line for line in (self.resolved.note, str(self.choice) if self.choice else "") if line]

    @property
    def card(self) -> ModelCard | None:
        return self.resolved.card

    def default_params(self, **overrides) -> GenerationParams:
        """The card's decoding plus ``overrides``; the template's stop strings unless ``stop`` is given."""
        if overrides.get("stop") is None and self.template.stop:
            overrides = {**overrides, "stop": self.template.stop}
        return GenerationParams.from_card(self.card, **overrides)


BACKEND_ALIASES = {"hf": "transformers"}  # what users type (`--backend hf`) -> the registry name


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs a model, and why, in words a user can act on (printed when a model loads)."""

    name: str
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"backend: {self.name}: {self.reason}" + (f"; {self.hint}" if self.hint else "")


def cuda_available() -> bool:
    """A CUDA GPU torch can use (False without torch: the transformers backend could not run anyway)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def backend_wanted(wanted: str) -> str:
    """The registry name for what the user typed (``hf`` -> ``transformers``)."""
    return BACKEND_ALIASES.get(wanted, wanted)


def choose_backend(resolved: ResolvedModel, wanted: str, cuda: bool | None = None) -> BackendChoice:
    """GGUF -> llama.cpp; HF weights -> transformers, on CUDA when there is one; ``--backend`` forces one.

    ``cuda``: whether a CUDA GPU is usable (None: ask torch, only when the answer matters).
    """
    wanted = backend_wanted(wanted)
    if resolved.kind == "lora":
        raise KnowLMError(
            f"{resolved.name} is a LoRA adapter, not a full model",
            f"merge and convert it: knowlm-local convert {resolved.name} --quant q4_k_m",
        )
    if wanted not in ("auto", "llama.cpp", "transformers"):
        raise KnowLMError(f"unknown backend {wanted!r}", "choose auto, llama.cpp or hf")
    if wanted == "llama.cpp":
        if resolved.kind != "gguf":
            raise KnowLMError(
                f"{resolved.name} is a Hugging Face checkpoint, llama.cpp needs a GGUF",
                f"convert it first: knowlm-local convert {resolved.name} --quant q4_k_m",
            )
        return BackendChoice("llama.cpp", "asked for with --backend")
    if wanted == "transformers":
        if resolved.kind == "gguf":
            raise KnowLMError(f"{resolved.name} is a GGUF file; the transformers backend runs Hugging Face weights",
                              "pass the Hugging Face folder (or a zoo name) with --backend hf, or leave --backend out")
        return BackendChoice("transformers", "asked for with --backend")
    if resolved.kind == "gguf":
        return BackendChoice("llama.cpp", f"{resolved.name} is a GGUF")
    cuda = cuda_available() if cuda is None else cuda
    convert = f"knowlm-local convert {resolved.name} --quant q4_k_m"
    if cuda:
        return BackendChoice("transformers", "only Hugging Face weights are here and a CUDA GPU is visible: "
                                             "full precision on the GPU")
    return BackendChoice("transformers", "only Hugging Face weights are here and no CUDA GPU is visible: "
                                         "float32 on the CPU",
                         f"llama.cpp runs a GGUF of it several times faster on a CPU: {convert}")


def _load_remote(spec: str | None, options: LoadOptions) -> LoadedModel:
    """A model on an OpenAI-compatible server; prompts are rendered here, with the template the server reports
    (``serve`` does), the zoo card's, or ``--template``."""
    from pathlib import Path

    from knowlm_local.zoo import find_card

    if options.lora:
        raise KnowLMError("--lora applies to local GGUF models, not to an --upstream server",
                          "load the adapter on the server instead")
    backend = create_backend("openai", options.upstream, n_ctx=options.n_ctx, api_key=options.api_key, model=spec)
    card = find_card(backend.model.split(":")[0])
    remote = backend.remote_template
    name = options.template or remote or (card.template if card else "chatml")
    if name == "gguf" and not backend.info.chat_template:
        name = "chatml"
    template = get_template(name, backend.info.chat_template, backend.info.bos_token, backend.info.eos_token,
                            backend.info.adds_bos)
    resolved = ResolvedModel(backend.model, "remote", Path(options.upstream), card)
    return LoadedModel(resolved=resolved, backend=backend, template=template)


def resolve_for(spec: str | None, backend: str, purpose: str = "chat") -> ResolvedModel:
    """What ``spec`` names, as the backend asked for needs it (``--backend hf``: the Hugging Face weights)."""
    hf = backend_wanted(backend) == "transformers"
    if not spec and not hf:
        return default_model(purpose)
    if not spec:  # the store's newest GGUF is no use to transformers: KNOWLM_MODEL, else the built-in model
        import os

        from knowlm_local.zoo import embedded_card

        spec = os.environ.get("KNOWLM_MODEL") or embedded_card().name
    return resolve(spec, want="hf" if hf else "any")


def _adapter_file(spec: str) -> str:
    from pathlib import Path

    path = Path(spec).expanduser()
    if path.is_dir():
        raise KnowLMError(f"{spec} is a folder; --lora takes a GGUF LoRA adapter file",
                          f"convert the PEFT adapter first: knowlm-local convert {spec} --adapter-only -o adapter.gguf")
    if not path.is_file():
        raise KnowLMError(f"no such adapter file: {spec}", "check the path given to --lora")
    return str(path)


def load_model(spec: str | None, options: LoadOptions | None = None, purpose: str = "chat") -> LoadedModel:
    """Resolve ``spec`` (None: the default model for ``purpose``) and load it with the right backend and template."""
    options = options or LoadOptions()
    if options.upstream:
        return _load_remote(spec, options)
    resolved = resolve_for(spec, options.backend, purpose)
    card = resolved.card
    choice = choose_backend(resolved, options.backend)
    name = choice.name
    n_ctx = options.n_ctx or (card.context_length if card else None)
    kwargs = dict(n_ctx=n_ctx, n_gpu_layers=options.n_gpu_layers, n_threads=options.n_threads, seed=options.seed)
    adapter = options.lora or (str(resolved.adapter) if resolved.adapter else None)
    if name == "llama.cpp":
        kwargs["prompt_lookup"] = options.prompt_lookup
        if adapter:
            kwargs["lora_path"] = _adapter_file(adapter)
        if options.parallel > 1:
            from knowlm_local.engine_plan import check_parallel_fits

            check_parallel_fits(resolved.path, n_ctx, options.parallel, options.n_gpu_layers)
            kwargs["parallel"] = options.parallel
            kwargs.pop("prompt_lookup")
            name = "llama.cpp-batch"
    elif adapter:
        raise KnowLMError("a GGUF LoRA adapter (--lora) runs on the llama.cpp backend only",
                          "merge the adapter into the Hugging Face weights with `knowlm-local merge` instead")
    if name == "transformers":
        kwargs.update(allocate=options.allocate, load_bits=options.load_bits)
    elif options.allocate or options.load_bits:
        flag = "--allocate" if options.allocate else f"--load-{options.load_bits}bit"
        raise KnowLMError(f"{flag} applies to Hugging Face weights on the transformers backend, not a GGUF",
                          "pass a Hugging Face folder with --backend hf, or leave the flag out "
                          "(llama.cpp spreads a GGUF over the GPUs by itself)")
    if options.extra.get("kv_type") and not name.startswith("llama.cpp"):
        raise KnowLMError("--kv-type sets llama.cpp's KV cache; the transformers backend keeps its own",
                          "leave --kv-type out with --backend hf")
    kwargs.update(options.extra)
    backend = create_backend(name, resolved.path, **kwargs)
    template_name = options.template or (card.template if card else "gguf")
    info = backend.info
    template = get_template(template_name, info.chat_template, info.bos_token, info.eos_token, info.adds_bos)
    if name == "llama.cpp-batch":
        choice = BackendChoice(name, f"{choice.reason}; {options.parallel} sequences decoded together")
    return LoadedModel(resolved=resolved, backend=backend, template=template, choice=choice)
