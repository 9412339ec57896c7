"""How many layers to offload to the GPU(s) when the user did not say, and how to split them.

Rule: everything when the GPUs have room for the weights plus the KV cache and a
margin (on one GPU when one alone has room, since a split only adds transfers);
otherwise as many whole layers as fit, spread over the GPUs by their room; 0
without a GPU build of llama.cpp. Free memory comes from ``nvidia-smi`` so no
CUDA library is loaded just to ask.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from knowlm_local.errors import KnowLMError

HEADROOM = 0.9  # leave 10% of free VRAM for the compute buffers and other programs


def free_vram_bytes(device: int = 0) -> int | None:
    """Free memory on GPU ``device`` in bytes, or None when it cannot be read."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits", f"--id={device}"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
        return int(out.strip().splitlines()[0]) * 1024 * 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def free_vram_all() -> list[int] | None:
    """Free memory of every visible GPU in bytes (``nvidia-smi`` order), or None when it cannot be read."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
        return [int(line.strip()) * 1024 * 1024 for line in out.splitlines() if line.strip()] or None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def auto_gpu_layers(gpu_build: bool, weights_bytes: int, kv_bytes: int, n_layers: int,
                    free_bytes: int | None) -> int:
    """Layers to offload: -1 (all), a count, or 0 (CPU)."""
    if not gpu_build or not free_bytes or n_layers <= 0:
        return 0
    budget = free_bytes * HEADROOM
    if weights_bytes + kv_bytes <= budget:
        return -1
    per_layer = (weights_bytes + kv_bytes) / n_layers
    return max(0, min(n_layers, int(budget // per_layer)))


def kv_cache_bytes(n_ctx: int, n_layers: int, n_embd: int, n_head: int, n_head_kv: int) -> int:
    """f16 K and V for every layer: 2 * layers * ctx * (embd * kv_heads / heads) * 2 bytes."""
    if not (n_ctx and n_layers and n_embd and n_head):
        return 0
    return 2 * n_layers * n_ctx * (n_embd * (n_head_kv or n_head) // n_head) * 2


GIB = 1024**3


@dataclass(frozen=True)
class Offload:
    """llama.cpp's ``n_gpu_layers`` and ``tensor_split`` (None: llama.cpp's default), and why, in one line."""

    n_gpu_layers: int  # -1 all, 0 none
    tensor_split: tuple[float, ...] | None
    reason: str


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_offload(gpu_build: bool, weights_bytes: int, kv_bytes: int, n_layers: int,
                 free_bytes: list[int] | None, ram_bytes: int | None = None) -> Offload:
    """Layers to offload over the GPUs whose free memory is ``free_bytes`` (one number per GPU).

    Each layer is counted as an equal share of weights + KV cache (the
    embeddings are small next to the layers). ``ram_bytes`` (free RAM), when
    given, refuses a model that fits neither in RAM nor in RAM + usable VRAM.
    """
    need = weights_bytes + kv_bytes
    budgets = [int(f * HEADROOM) for f in (free_bytes or [])] if gpu_build else []
    usable = sum(budgets)
    if ram_bytes is not None and need > ram_bytes + usable:
        raise KnowLMError(
            f"the model needs {_gib(need)} (weights {_gib(weights_bytes)} + KV cache {_gib(kv_bytes)}), "
            f"this machine has {_gib(ram_bytes)} of free RAM"
            + (f" and {_gib(usable)} of usable VRAM" if usable else ""),
            "use a smaller quantization (knowlm-local convert MODEL --quant q4_k_m) or a smaller --ctx",
        )
    if not gpu_build:
        return Offload(0, None, "CPU: this llama-cpp-python was built without GPU support")
    if not budgets or n_layers <= 0:
        return Offload(0, None, "CPU: no GPU with readable free memory")
    best = max(range(len(budgets)), key=lambda i: budgets[i])
    if need <= budgets[best]:
        split = None if len(budgets) == 1 else tuple(1.0 if i == best else 0.0 for i in range(len(budgets)))
        return Offload(-1, split, f"all {n_layers} layers on GPU{best}: {_gib(need)} needed, "
                                  f"{_gib(budgets[best])} usable of {_gib(free_bytes[best])} free")
    per_layer = need / n_layers
    fits = [int(b // per_layer) for b in budgets]
    total = min(n_layers, sum(fits))
    where = f"{len(budgets)} GPUs" if len(budgets) > 1 else "GPU0"
    if need <= usable and total >= n_layers:
        split = tuple(float(f) for f in fits)
        return Offload(-1, split, f"all {n_layers} layers over {where} (split {':'.join(map(str, fits))}): "
                                  f"{_gib(need)} needed, {_gib(usable)} usable")
    if total == 0:
        return Offload(0, None, f"CPU: not one layer ({_gib(per_layer)}) fits in "
                                f"{_gib(max(budgets))} usable VRAM")
    split = tuple(float(f) for f in fits) if len(budgets) > 1 else None
    return Offload(total, split, f"{total} of {n_layers} layers on {where}: {_gib(need)} needed, "
                                 f"{_gib(usable)} usable; the rest runs on the CPU")
