"""Our Hugging Face -> GGUF writer for the Llama family, built on the `gguf` package.

The header (every metadata key and every tensor's name, shape and type) is
known before any weight is read, so the file is written in one pass: header,
then one tensor at a time straight from the :class:`WeightStream`. Nothing but
the tensor in flight is ever in memory.

Llama-specific facts the writer encodes:

* Hugging Face stores the q/k projections in the "rotate half" layout;
  llama.cpp's rope pairs neighbouring rows, so the rows of every head are
  interleaved (``(n_head, 2, d/2) -> (n_head, d/2, 2)``), with the KV head
  count for ``k_proj`` under GQA. Skip it and the model produces garbage,
  which is exactly what ``verify`` is there to catch.
* A tied output layer is simply not written: llama.cpp reuses the token
  embedding when ``output.weight`` is absent.
* 1-D tensors (norms) stay F32 in every output type, as llama.cpp expects.
* Rope scaling: linear and YaRN become metadata; Llama 3's frequency-dependent
  scaling becomes a ``rope_freqs`` tensor of per-dimension factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from knowlm_local.convert.source import WeightStream
from knowlm_local.convert.tensors import to_float32
from knowlm_local.convert.tokenizer import Vocab, read_json

from knowlm_local.errors import KnowLMError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM")
DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType
_CHUNK_ELEMENTS = 1 << 24  # convert big tensors this many elements at a time


@dataclass(frozen=True)
class LlamaSpec:
    """The model shape llama.cpp needs, read from config.json."""

    n_layers: int
    hidden: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float | None
    rope: dict
    vocab_size: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict, folder: Path) -> LlamaSpec:
        check_architecture(config, folder)
        try:
            n_heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
            theta = rope.get("rope_theta", config.get("rope_theta"))
            spec = cls(
                n_layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                ffn=int(config["intermediate_size"]),
                n_heads=n_heads,
                n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
                head_dim=int(config.get("head_dim") or hidden // n_heads),
                context=int(config.get("max_position_embeddings") or 2048),
                rms_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta) if theta is not None else None,
                rope=rope,
                vocab_size=int(config.get("vocab_size") or 0),
                tied=bool(config.get("tie_word_embeddings", False)),
            )
            bad = [k for k in ("n_layers", "hidden", "ffn", "n_heads", "n_kv_heads", "head_dim", "context")
                   if getattr(spec, k) <= 0]
            if bad or spec.n_heads % spec.n_kv_heads:
                raise ValueError(f"impossible shape: {', '.join(bad) or 'heads not a multiple of kv heads'}")
            return spec
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise KnowLMError(
                f"{folder / 'config.json'} lacks a Llama setting or has one of the wrong type ({exc})",
                "the config.json is incomplete or not a Llama config",
            ) from exc


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise KnowLMError(f"{folder} has no config.json", "point at a Hugging Face model folder")
    return read_json(path)


def check_architecture(config: dict, folder: Path) -> None:
    archs = config.get("architectures") or []
    archs = [str(a) for a in archs] if isinstance(archs, list) else [str(archs)]
    if not archs and config.get("model_type") == "llama":
        return
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise KnowLMError(
            f"{folder} is a {', '.join(archs) or config.get('model_type', 'unknown')} model; "
            f"the converter supports {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(KnowLM-13B, ZhiXi, OneKE, OceanGPT-7B, SmolLM2 and other Llama "
            "models)",
            "use llama.cpp's convert_hf_to_gguf.py for other architectures",
        )


def rope_to_interleaved(arr: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotate-half layout to llama.cpp's pairwise one."""
    rows = arr.shape[0]
    if rows % (2 * n_heads):
        raise KnowLMError(
            f"cannot split {rows} projection rows into {n_heads} rope heads",
            "config.json's head counts do not match the weights",
        )
    shaped = arr.reshape(n_heads, 2, rows // n_heads // 2, *arr.shape[1:])
    return np.ascontiguousarray(shaped.swapaxes(1, 2)).reshape(arr.shape)


def llama3_rope_factors(spec: LlamaSpec) -> np.ndarray:
    """Per-dimension divisors of the rope frequencies for Llama 3 scaling (the model card's formula)."""
    rope = spec.rope
    theta = spec.rope_theta or 10000.0
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, spec.head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / spec.head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _rope_kind(spec: LlamaSpec) -> str:
    kind = str(spec.rope.get("rope_type") or spec.rope.get("type") or "default").lower()
    if kind in ("default", "linear", "yarn", "llama3", "dynamic"):
        return kind
    raise KnowLMError(
        f"rope scaling {kind!r} is not supported for Llama models",
        "supported: none, linear, yarn, llama3 (dynamic is written as none)",
    )


def _tensor_type(out_type: str, shape: tuple[int, ...]):
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or out_type == "f32":
        return T.F32
    if out_type == "q8_0":
        return T.Q8_0 if shape[-1] % 32 == 0 else T.F16
    return T.BF16 if out_type == "bf16" else T.F16


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * size


def encode(arr: np.ndarray, dtype: str, qtype) -> np.ndarray:
    """``arr`` in the GGML type ``qtype``; big tensors are converted a slab of rows at a time."""
    import gguf

    T = gguf.GGMLQuantizationType
    if qtype == T.F16 and dtype == "F16" or qtype == T.BF16 and dtype == "BF16":
        return np.ascontiguousarray(arr)
    if qtype == T.F32:
        return np.ascontiguousarray(to_float32(arr, dtype))
    rows = arr.reshape(-1, arr.shape[-1])
    step = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[1]))
    if qtype == T.F16:
        out = np.empty(rows.shape, np.float16)
        for i in range(0, rows.shape[0], step):
            out[i : i + step] = to_float32(rows[i : i + step], dtype)
        return out.reshape(arr.shape)
    out = np.empty(gguf.quant_shape_to_byte_shape(rows.shape, qtype), np.uint8)
    for i in range(0, rows.shape[0], step):
        out[i : i + step] = gguf.quants.quantize(to_float32(rows[i : i + step], dtype), qtype)
    return out


def gguf_names(stream: WeightStream, spec: LlamaSpec) -> dict[str, str]:
    """HF tensor name -> GGUF name for every tensor that will be written (tied outputs dropped)."""
    import gguf

    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, spec.n_layers)
    names = {}
    for name in stream.names:
        if name == "lm_head.weight" and spec.tied and not (stream.lora and stream.lora.touches(name)):
            continue
        new = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KnowLMError(
                f"unexpected tensor {name} in the checkpoint: not part of a Llama model",
                "the weights do not match config.json's LlamaForCausalLM",
            )
        names[name] = new
    return names


def add_metadata(writer, spec: LlamaSpec, vocab: Vocab, out_type: str, info: dict) -> None:
    """Every general.* and llama.* key llama.cpp reads for a Llama model."""
    import gguf

    writer.add_type("model")
    writer.add_name(info.get("name") or "model")
    for key, add in (
        ("license", writer.add_license),
        ("size_label", writer.add_size_label),
        ("source_url", writer.add_source_url),
        ("repo_url", writer.add_source_repo_url),
    ):
        if info.get(key):
            add(str(info[key]))
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    if spec.head_dim != spec.hidden // spec.n_heads:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.rope_theta is not None:
        writer.add_rope_freq_base(spec.rope_theta)
    kind = _rope_kind(spec)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(spec.rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(spec.rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(spec.rope["original_max_position_embeddings"]))
        for key, add in (
            ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
            ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
        ):
            if spec.rope.get(key) is not None:
                add(float(spec.rope[key]))
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(_FILE_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(writer)


def write_gguf(
    stream: WeightStream,
    spec: LlamaSpec,
    vocab: Vocab,
    path: Path,
    out_type: str,
    info: dict | None = None,
    progress=None,
    permute: bool = True,
) -> dict:
    """Write ``stream`` as a GGUF of ``out_type`` (f32, f16, bf16, q8_0) to ``path`` (already a temp path).

    Returns what the caller records in provenance (tensor count, diff checksum).
    ``permute=False`` exists only to let tests build a deliberately broken file.
    """
    import gguf

    if out_type not in DIRECT_TYPES:
        raise KnowLMError(
            f"{out_type} cannot be written directly", f"direct types: {', '.join(DIRECT_TYPES)}"
        )
    names = gguf_names(stream, spec)
    embed = (
        stream.meta("model.embed_tokens.weight").shape
        if "model.embed_tokens.weight" in stream.names
        else None
    )
    if embed and len(vocab.tokens) != embed[0]:
        raise KnowLMError(
            f"the vocabulary has {len(vocab.tokens)} tokens, the embedding {embed[0]} rows",
            "the tokenizer files do not belong to these weights",
        )
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_metadata(writer, spec, vocab, out_type, info or {})
    extra = {}
    if _rope_kind(spec) == "llama3":
        extra[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = llama3_rope_factors(spec)
    for gname, arr in extra.items():
        writer.add_tensor_info(gname, arr.shape, np.float32, arr.nbytes)
    for name, gname in names.items():
        shape = stream.meta(name).shape
        qtype = _tensor_type(out_type, shape)
        writer.add_tensor_info(
            gname,
            shape,
            np.float32 if qtype != gguf.GGMLQuantizationType.F16 else np.float16,
            _nbytes(shape, qtype),
            raw_dtype=qtype,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for arr in extra.values():
        writer.write_tensor_data(arr)
    for name in names:
        meta = stream.meta(name)
        with stream.open(name) as (arr, dtype):
            if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
                arr = rope_to_interleaved(arr, spec.n_heads)
            elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
                arr = rope_to_interleaved(arr, spec.n_kv_heads)
            data = encode(arr, dtype, _tensor_type(out_type, meta.shape))
            writer.write_tensor_data(data)
            del data, arr
        if progress is not None:
            progress(meta.nbytes)
    writer.close()
    return {"tensors": len(names) + len(extra), "diff_checksum": stream.finish()}
