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
    extra: dict = field(default_factory=dict)


@dataclass
class LoadedModel:
    resolved: ResolvedModel
    backend: Backend
    template: Template

    @property
    def card(self) -> ModelCard | None:
        return self.resolved.card

    def default_params(self, **overrides) -> GenerationParams:
        """The card's decoding plus ``overrides``; the template's stop strings unless ``stop`` is given."""
        if overrides.get("stop") is None and self.template.stop:
            overrides = {**overrides, "stop": self.template.stop}
        return GenerationParams.from_card(self.card, **overrides)

def choose_backend(resolved: ResolvedModel, wanted: str) -> str:
    """llama.cpp for GGUF files; transformers for HF folders (full precision, meant for CUDA)."""
    if wanted != "auto":
        if wanted == "llama.cpp" and resolved.kind != "gguf":
            raise KnowLMError(
                f"{resolved.name} is a Hugging Face checkpoint, llama.cpp needs a GGUF",
                f"convert it first: knowlm-local convert {resolved.name} --quant q4_k_m",
            )
        return wanted
    if resolved.kind == "gguf":
        return "llama.cpp"
    if resolved.kind == "lora":
        raise KnowLMError(
            f"{resolved.name} is a LoRA adapter, not a full model",
            f"merge and convert it: knowlm-local convert {resolved.name} --quant q4_k_m",
        )
    return "transformers"


def load_model(spec: str | None, options: LoadOptions | None = None) -> LoadedModel:
    """Resolve ``spec`` (None: the default model) and load it with the right backend and template."""
    options = options or LoadOptions()
    resolved = resolve(spec) if spec else default_model()
    card = resolved.card
    name = choose_backend(resolved, options.backend)
    n_ctx = options.n_ctx or (card.context_length if card else None)
    kwargs = dict(n_ctx=n_ctx, n_gpu_layers=options.n_gpu_layers, n_threads=options.n_threads, seed=options.seed)
    if name == "llama.cpp":
        kwargs["prompt_lookup"] = options.prompt_lookup
    kwargs.update(options.extra)
    backend = create_backend(name, resolved.path, **kwargs)
    template_name = options.template or (card.template if card else "gguf")
    info = backend.info
    template = get_template(template_name, info.chat_template, info.bos_token, info.eos_token, info.adds_bos)
    return LoadedModel(resolved=resolved, backend=backend, template=template)
