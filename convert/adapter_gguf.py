"""`convert --adapter-only`: a PEFT LoRA adapter as a GGUF LoRA adapter, for llama.cpp, Ollama and LM Studio.

The file has the layout llama.cpp's own ``convert_lora_to_gguf.py`` writes:
``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``,
and for every adapted weight ``blk.N.<tensor>.weight.lora_a`` (PEFT's A,
``rank x in``) and ``.lora_b`` (B, ``out x rank``), named like the base
model's tensors. The rows of B for ``attn_q`` and ``attn_k`` get the same
rotary re-ordering as the base's q/k weights (B's rows are the weight's
rows), so ``W + B A`` stays right in llama.cpp's layout.

llama.cpp scales each pair by ``alpha / rank``. When every pair of the
adapter has PEFT's plain scale (one alpha, no per-module patterns, no
rsLoRA), the real alpha is written and B as trained; otherwise each pair's
PEFT scale is folded into its B and alpha is written as 0, which llama.cpp
reads as scale 1, so the result is exact either way. The base model the
adapter was trained on is recorded (``general.base_model.0.*``) and, at load
time, its shapes are checked against the model it is applied to
(:func:`knowlm_local.gguf_check.check_adapter`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from knowlm_local.convert.hf_to_gguf import rope_to_interleaved
from knowlm_local.convert.outputs import now, publish, record_provenance, refuse_existing, tool_versions
from knowlm_local.convert.progress import Progress

from knowlm_local.errors import KnowLMError

ADAPTER_TYPES = ("f32", "f16")


def convert_adapter(spec: str, output: str | Path | None = None, out_type: str = "f16", lora: str | None = None,
                    force: bool = False, revision: str | None = None, skip_base_check: bool = False,
                    progress: Progress | None = None) -> Path:
    """Write the adapter named by ``spec`` (an adapter folder or LoRA card; or a base with ``lora``) as GGUF."""
    import gguf

    from knowlm_local.convert.pipeline import prepare
    from knowlm_local.io_utils import atomic_path

    progress = progress or Progress()
    if out_type not in ADAPTER_TYPES:
        raise KnowLMError(f"an adapter GGUF is written as f32 or f16, not {out_type}", "pass -q f16 (the default) or f32")
    prep = prepare(spec, lora=lora, revision=revision, skip_base_check=skip_base_check, progress=progress,
                   need_vocab=False)
    adapter = prep.adapter
    if adapter is None:
        raise KnowLMError(f"{spec} is not a LoRA adapter", "pass an adapter folder (adapter_config.json), or --lora")
    if adapter.replacements:
        example = next(iter(adapter.replacements))
        raise KnowLMError(f"the adapter replaces whole tensors (e.g. {example}, PEFT's modules_to_save), which a "
                          "GGUF LoRA adapter cannot hold", f"merge it instead: knowlm-local convert {spec} -q q4_k_m")
    if adapter.config.get("fan_in_fan_out") or any(p.embedding for p in adapter.pairs.values()):
        raise KnowLMError("the adapter has fan-in-fan-out or embedding LoRA factors, which this writer does not map",
                          f"merge it instead: knowlm-local convert {spec} -q q4_k_m")
    spec_ = prep.spec
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, spec_.n_layers)
    pairs = sorted(adapter.pairs.items())
    ranks = {name: adapter.weights.meta[p.a_key].shape[0] for name, p in pairs}
    alpha = float(adapter.config.get("lora_alpha", 8))
    plain = all(abs(p.scale - alpha / ranks[name]) < 1e-9 for name, p in pairs)
    label = prep.source.label
    dest = Path(output).expanduser() if output else prep.source.lora / f"{prep.source.lora.name}-lora-{out_type}.gguf"
    if dest.suffix != ".gguf":
        raise KnowLMError(f"--output {dest} must name a .gguf file", "for example: -o ie-adapter.gguf")
    refuse_existing([dest], force)
    dtype = np.float16 if out_type == "f16" else np.float32
    with atomic_path(dest) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha if plain else 0.0)
        writer.add_name(f"{label} LoRA")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, prep.source.card.name if prep.source.card else prep.source.folder.name)
        if prep.source.repo:
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{prep.source.repo}")
        with progress.bytes("writing the adapter", sum(
                adapter.weights.meta[p.a_key].nbytes + adapter.weights.meta[p.b_key].nbytes for _, p in pairs)) as advance:
            for name, pair in pairs:
                gname = table.get_name(name, try_suffixes=(".weight", ".bias"))
                if gname is None:
                    raise KnowLMError(f"the adapter targets {name}, which is not a Llama weight",
                                      "this writer handles LlamaForCausalLM adapters")
                a = adapter.weights.read_f32(pair.a_key)
                b = adapter.weights.read_f32(pair.b_key)
                if not plain:
                    b = b * np.float32(pair.scale)
                if name.endswith("q_proj.weight"):
                    b = rope_to_interleaved(b, spec_.n_heads)
                elif name.endswith("k_proj.weight"):
                    b = rope_to_interleaved(b, spec_.n_kv_heads)
                writer.add_tensor(f"{gname}.lora_a", np.ascontiguousarray(a, dtype=dtype))
                writer.add_tensor(f"{gname}.lora_b", np.ascontiguousarray(b, dtype=dtype))
                advance(adapter.weights.meta[pair.a_key].nbytes + adapter.weights.meta[pair.b_key].nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    publish(dest)
    record_provenance(dest.parent, label, {dest.name: {
        "kind": "lora-adapter", "quant": out_type, "created": now(), "tools": tool_versions(),
        "adapter": {**adapter.describe(), "sha256": adapter.sha256}, "base": prep.source.record(),
        "alpha": alpha if plain else 0.0, "scales_folded": not plain, "tensors": 2 * len(pairs)}})
    return dest
