"""How many sequences to decode together (`--parallel`), and whether their KV cache fits, decided before loading.

The batched engine keeps P sequences (plus one prefix holder) in one KV
cache of ``(P + 1) x n_ctx`` tokens; its size comes from the GGUF's shape
keys (layers, embedding size, heads, KV heads) without loading the model.
A P that does not fit the memory it will live in (free VRAM when layers are
offloaded, else available RAM, keeping a margin for the weights and compute
buffers) is refused with the numbers and the largest P that fits. The
default P follows the hardware: on a CPU a batch costs nearly as much as its
tokens (compute-bound), so a few sequences already reach the gain; on a GPU
a batch of 16 costs about one step.
"""

from __future__ import annotations

import os
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import human_size

RAM_SHARE = 0.5  # of available RAM the KV cache may take (the weights and the OS need the rest)


def kv_bytes(path: Path, n_ctx: int, sequences: int) -> int:
    """f16 KV cache bytes of ``sequences`` sequences of ``n_ctx`` tokens for the GGUF at ``path``."""
    from knowlm_local.gguf_check import read_metadata
    from knowlm_local.gpu import kv_cache_bytes

    arch = str(read_metadata(path, {"general.architecture"}).get("general.architecture", "llama"))
    keys = [f"{arch}.{k}" for k in ("block_count", "embedding_length", "attention.head_count",
                                    "attention.head_count_kv")]
    meta = read_metadata(path, set(keys))
    layers, embd, heads, kv_heads = (int(meta.get(k, 0) or 0) for k in keys)
    return kv_cache_bytes(n_ctx * sequences, layers, embd, heads, kv_heads)


def available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return 8 << 30


def _budget(n_gpu_layers: int | None) -> tuple[int, str]:
    """Bytes the KV cache may use and where it lives."""
    if n_gpu_layers != 0:
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            from knowlm_local.gpu import free_vram_bytes

            free = free_vram_bytes()
            if free:
                return int(free * 0.8), "free VRAM"
    return int(available_ram() * RAM_SHARE), "half the available RAM"


def check_parallel_fits(path: Path, n_ctx: int | None, parallel: int, n_gpu_layers: int | None = None) -> None:
    """Refuse a ``parallel`` whose KV cache cannot fit, naming the numbers and the largest one that does."""
    n_ctx = n_ctx or 4096
    need = kv_bytes(Path(path), n_ctx, parallel + 1)
    budget, where = _budget(n_gpu_layers)
    if need > budget:
        per = kv_bytes(Path(path), n_ctx, 1)
        fits = max(0, budget // per - 1) if per else 0
        raise KnowLMError(
            f"--parallel {parallel} needs a KV cache of {human_size(need)} ({parallel} + 1 sequences of {n_ctx} "
            f"tokens), more than the {human_size(budget)} of {where}",
            f"use --parallel {fits} or fewer, or a smaller --ctx" if fits >= 1 else "lower --ctx")


def auto_parallel(path: Path, n_ctx: int, n_gpu_layers: int | None = None) -> tuple[int, str]:
    """A default ``--parallel`` for this machine and model, and why."""
    gpu = False
    if n_gpu_layers != 0:
        import llama_cpp

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
    if not gpu:
        # Measured (benchmarks/bench_engine.py, embedded model, 2 cores): batches cost nearly their tokens'
        # worth of single steps on a compute-bound CPU, and --parallel 2-16 gave 0.67-1.35x of --parallel 1
        # from run to run. One sequence at a time is the default there; --parallel N stays available.
        return 1, f"on the CPU ({os.cpu_count() or 2} cores) batching did not pay in this project's benchmark"
    want, why = 16, "a GPU decodes 16 sequences for about the cost of one"
    per = kv_bytes(Path(path), n_ctx, 1)
    budget, where = _budget(n_gpu_layers)
    if per and (want + 1) * per > budget:
        want = max(1, int(budget // per) - 1)
        why = f"the KV cache of more would not fit {where}"
    return want, why
