"""The converter: Hugging Face Llama weights (+ LoRA, + ZhiXi diff) -> GGUF -> quantized GGUF, verified.

Installed as ``knowlm_local.convert``. Modules, one job each:

* ``tensors``: read checkpoints one tensor at a time (safetensors, legacy ``.bin``);
* ``lora`` / ``diff_weights`` / ``source``: what is merged into each tensor on its way out;
* ``tokenizer`` / ``hf_to_gguf``: our GGUF writer (metadata, vocabulary, tensors);
* ``quantize``: K-quants and friends through libllama; ``verify``: logits against transformers;
* ``merge``: merged HF safetensors; ``pipeline`` / ``resolve`` / ``outputs``: names, plans, the store.

Importing this package imports nothing heavy; the functions below load their modules on first call.
"""

from __future__ import annotations

__all__ = ["convert", "merge", "verify"]


def convert(*args, **kwargs):
    """See :func:`knowlm_local.convert.pipeline.convert`."""
    from knowlm_local.convert.pipeline import convert as run

    return run(*args, **kwargs)


def merge(*args, **kwargs):
    """See :func:`knowlm_local.convert.merge.merge`."""
    from knowlm_local.convert.merge import merge as run

    return run(*args, **kwargs)


def verify(*args, **kwargs):
    """See :func:`knowlm_local.convert.verify.verify`."""
    from knowlm_local.convert.verify import verify as run

    return run(*args, **kwargs)
