"""Quantization through libllama (``llama_model_quantize`` in llama-cpp-python).

The `gguf` package can only produce the simple block types in numpy; the
K-quants and i-quants exist only in llama.cpp's C++ code, which libllama
exposes. Every quantized file starts from one F16/BF16/F32 GGUF written by
our converter, so several quant types cost one read of the source checkpoint.

An importance matrix (from ``llama-imatrix``) is read here, in either of its
two formats (the GGUF one with ``<tensor>.in_sum2`` / ``<tensor>.counts``
tensors, or the legacy binary ``.dat``), and normalised the way llama.cpp's
``quantize`` tool does before it is handed over as ``llama_model_imatrix_data``.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from knowlm_local.errors import KnowLMError

# name -> (llama_ftype constant in llama_cpp, approximate bits per weight for disk-space estimates)
QUANT_TYPES: dict[str, tuple[str, float]] = {
    "f32": ("LLAMA_FTYPE_ALL_F32", 32.0),
    "f16": ("LLAMA_FTYPE_MOSTLY_F16", 16.0),
    "bf16": ("LLAMA_FTYPE_MOSTLY_BF16", 16.0),
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", 8.5),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6.6),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7),
    "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.5),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", 6.0),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", 5.5),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.9),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.6),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", 5.0),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", 4.5),
    "iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", 4.5),
    "iq4_xs": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", 4.3),
    "q3_k_l": ("LLAMA_FTYPE_MOSTLY_Q3_K_L", 4.3),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.9),
    "q3_k_s": ("LLAMA_FTYPE_MOSTLY_Q3_K_S", 3.5),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", 3.0),
}
FLOAT_TYPES = ("f32", "bf16", "f16")  # intermediates, most precise first


def parse_quants(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"q4_k_m,q8_0"`` -> ``["q4_k_m", "q8_0"]``, validated, duplicates removed, order kept."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    out: list[str] = []
    for item in items:
        name = item.strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in QUANT_TYPES:
            raise KnowLMError(
                f"unknown quantization {item.strip()!r}", f"choose from: {', '.join(QUANT_TYPES)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise KnowLMError("no quantization given", "e.g. --quant q4_k_m or --quant q5_k_m,q8_0")
    return out


def bits_per_weight(quant: str) -> float:
    return QUANT_TYPES[quant][1]


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Per-tensor importance vectors (mean squared activations), normalised as llama.cpp's quantize does."""
    path = Path(path)
    if not path.is_file():
        raise KnowLMError(f"no such importance matrix: {path}", "pass the file written by llama-imatrix")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return _read_gguf_imatrix(path)
    return _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    from knowlm_local.gguf_check import scan

    scan(path)  # truncation and damage reported in one line, before gguf's reader trips over them
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, struct.error) as exc:
        raise KnowLMError(f"{path} is not a readable importance matrix ({exc})",
                          "pass the file written by llama-imatrix") from exc
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not sums or set(sums) != set(counts):
        raise KnowLMError(
            f"{path} is not an importance matrix (needs matching .in_sum2 and .counts tensors)",
            "pass the file written by llama-imatrix",
        )
    out = {}
    for name, s in sums.items():
        c = np.rint(counts[name])
        per = s.reshape(len(c), -1)
        norm = np.where(c[:, None] > 0, per / np.maximum(c[:, None], 1), 1.0)
        out[name] = norm.astype(np.float32).reshape(-1)
    return out


def _read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    try:
        (n,) = struct.unpack_from("<i", data, 0)
        pos, out = 4, {}
        if n < 1:
            raise ValueError("no entries")
        for _ in range(n):
            (length,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4 : pos + 4 + length].decode("utf-8")
            pos += 4 + length
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            out[name] = values / ncall if ncall > 0 else values
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise KnowLMError(
            f"{path} is not an importance matrix ({exc})", "pass the file written by llama-imatrix"
        ) from exc
    return out


_LOG: list[str] = []
_COLLECTOR = None


def _collecting_log():
    """A libllama log callback that keeps the lines (shown only on failure or with KNOWLM_DEBUG).

    llama-cpp-python's own callback maps ggml's log levels with an outdated
    table and prints every warning, one per tensor during quantization.
    """
    global _COLLECTOR
    import llama_cpp

    if _COLLECTOR is None:

        @llama_cpp.llama_log_callback
        def collect(level, text, user_data):
            _LOG.append(text.decode("utf-8", errors="replace"))

        _COLLECTOR = collect
    return _COLLECTOR


def quantize(
    src: Path, dst: Path, quant: str, imatrix: dict[str, np.ndarray] | None = None, threads: int | None = None
) -> None:
    """Quantize the GGUF ``src`` to ``quant`` at ``dst`` with libllama (``dst`` should be a temp path)."""
    import sys

    import llama_cpp
    from llama_cpp import _logger

    if quant not in QUANT_TYPES:
        raise KnowLMError(f"unknown quantization {quant!r}", f"choose from: {', '.join(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant][0])
    params.nthread = threads or os.cpu_count() or 1
    keep = []  # ctypes buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(buf)
            entries[i].name = name.encode("utf-8")
            entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = buf.size
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    _LOG.clear()
    llama_cpp.llama_log_set(_collecting_log(), ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(
            str(src).encode("utf-8"), str(dst).encode("utf-8"), ctypes.byref(params)
        )
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if os.environ.get("KNOWLM_DEBUG"):
        sys.stderr.write("".join(_LOG))
    if rc != 0:
        tail = "".join(_LOG).strip().splitlines()[-3:]
        hint = (
            "types below 4 bits (iq2/iq3) need --imatrix"
            if quant.startswith("iq")
            else "check free disk space; run with KNOWLM_DEBUG=1 for llama.cpp's log"
        )
        raise KnowLMError(
            f"llama.cpp failed to quantize {Path(src).name} to {quant}: {' / '.join(tail)}", hint
        )
    del keep
