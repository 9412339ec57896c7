"""`knowlm-local merge`: base + LoRA (or LLaMA + ZhiXi diff) as a plain Hugging Face safetensors checkpoint.

For users who want HF weights (fine-tuning further, vLLM, the transformers
backend). The same :class:`WeightStream` as the GGUF writer feeds a streaming
safetensors writer: a shard's header (names, dtypes, shapes, offsets) is
known before its data, so each shard is written header first and then one
tensor at a time; ``safetensors.save_file`` would need the whole shard in
memory. The folder gets the base's config and tokenizer files and a
``provenance.json`` naming the adapter's SHA-256, which is how a later merge
or convert notices that the adapter is already in the weights.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from knowlm_local.convert.hf_to_gguf import read_config
from knowlm_local.convert.outputs import atomic_dir, check_space, disk_error, now, tool_versions
from knowlm_local.convert.progress import Progress
from knowlm_local.convert.tensors import FLOAT_DTYPES, to_float32

from knowlm_local.errors import KnowLMError

COPY_FILES = (
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
_TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
_CHUNK = 1 << 24


@dataclass
class MergeResult:
    folder: Path
    shards: list[Path]
    dtype: str


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> bytes (decimal units, like the hub's shard sizes)."""
    if isinstance(text, int):
        return text
    value = text.strip().upper().removesuffix("B")
    units = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    try:
        return int(float(value[:-1]) * units[value[-1]]) if value[-1:] in units else int(value)
    except (ValueError, IndexError) as exc:
        raise KnowLMError(f"bad size {text!r}", "write sizes like 2GB or 500MB") from exc


def _to_dtype(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert in slabs of rows so the full float32 copy of a big tensor never exists."""
    if src == dst or src not in FLOAT_DTYPES:
        return np.ascontiguousarray(arr)
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[dst])
    for i in range(0, flat.size, _CHUNK):
        part = to_float32(flat[i : i + _CHUNK], src)
        if dst == "BF16":
            bits = part.view(np.uint32)
            rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16  # round to nearest even
            nan = np.isnan(part)
            out[i : i + _CHUNK] = np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)
        else:
            out[i : i + _CHUNK] = part
    return out.reshape(arr.shape)


def _plan_shards(metas, dtype: str, shard_bytes: int) -> list[list]:
    shards, size = [[]], 0
    for meta in metas:
        n = meta.n_elements * (4 if dtype == "F32" else 2) if meta.dtype in FLOAT_DTYPES else meta.nbytes
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((meta, n))
        size += n
    return shards


def write_safetensors(stream, folder: Path, dtype: str, shard_bytes: int, progress=None) -> list[Path]:
    """Write ``stream`` as ``model[-0000i-of-0000n].safetensors`` (+ index) in ``folder``."""
    plan = _plan_shards(stream.items(), dtype, shard_bytes)
    names = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    weight_map, total = {}, 0
    for fname, shard in zip(names, plan, strict=True):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for meta, n in shard:
            out_dtype = dtype if meta.dtype in FLOAT_DTYPES else meta.dtype
            header[meta.name] = {
                "dtype": out_dtype,
                "shape": list(meta.shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
            weight_map[meta.name] = fname
        total += offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for meta, n in shard:
                with stream.open(meta.name) as (arr, src):
                    data = _to_dtype(arr, src, dtype if src in FLOAT_DTYPES else src)
                    if data.nbytes != n:
                        raise KnowLMError(
                            f"internal error: {meta.name} has {data.nbytes} bytes, planned {n}",
                            "please report this bug",
                        )
                    data.tofile(fh)
                if progress is not None:
                    progress(meta.nbytes)
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )
    return [folder / n for n in names]


def merge(
    spec: str,
    lora: str | Path | None = None,
    diff_base: str | Path | None = None,
    output: str | Path | None = None,
    dtype: str = "auto",
    shard_size: str | int = "5GB",
    force: bool = False,
    revision: str | None = None,
    skip_base_check: bool = False,
    skip_checksum: bool = False,
    expected_sum: float | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge a LoRA adapter (or a ZhiXi diff) into ``spec``'s weights and save an HF safetensors folder."""
    from knowlm_local.convert.pipeline import _base_record, prepare

    from knowlm_local import store

    progress = progress or Progress()
    prep = prepare(
        spec,
        lora=lora,
        diff_base=diff_base,
        revision=revision,
        skip_base_check=skip_base_check,
        skip_checksum=skip_checksum,
        expected_sum=expected_sum,
        progress=progress,
        need_vocab=False,
    )
    if prep.adapter is None and prep.diff is None:
        raise KnowLMError(
            f"nothing to merge into {spec}: no LoRA adapter and no --diff-base",
            "pass --lora ADAPTER (or a LoRA zoo name), or --diff-base LLAMA_DIR for a ZhiXi diff",
        )
    source = prep.source
    dtype = dtype.upper()
    if dtype == "AUTO":
        dtype = (
            "F16" if prep.diff is not None or prep.stream.source_dtype == "F32" else prep.stream.source_dtype
        )
    if dtype not in _TORCH_NAMES:
        raise KnowLMError(f"unknown dtype {dtype!r}", "use float16, bfloat16 or float32 (f16, bf16, f32)")
    dest = Path(output).expanduser() if output else store.model_dir(source.label) / "merged"
    if dest.exists() and not force:
        raise KnowLMError(f"{dest} already exists", "pass --force to overwrite it")
    per = 4 if dtype == "F32" else 2
    check_space(
        dest.parent, sum(m.n_elements * per for m in prep.stream.items()), f"the merged {source.label}"
    )
    record = _base_record(prep, None)
    try:
        with atomic_dir(dest, force=force) as tmp:
            with progress.bytes(f"merging {source.label}", prep.stream.total_bytes) as advance:
                shards = write_safetensors(prep.stream, tmp, dtype, parse_size(shard_size), advance)
            checksum = prep.stream.finish()
            if checksum:
                record["diff"]["checksum"] = checksum
            config = read_config(source.folder)
            config["torch_dtype"] = config["dtype"] = _TORCH_NAMES[dtype]
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            for name in COPY_FILES:
                if (source.folder / name).is_file():
                    shutil.copyfile(source.folder / name, tmp / name)
            record.update({"dtype": _TORCH_NAMES[dtype], "created": now(), "tool": tool_versions()})
            (tmp / "provenance.json").write_text(
                json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
    except OSError as exc:
        raise disk_error(exc, dest) from exc
    progress.say(f"wrote {dest} ({len(shards)} shard{'s' if len(shards) > 1 else ''}, {_TORCH_NAMES[dtype]})")
    return MergeResult(dest, [dest / s.name for s in shards], dtype)
