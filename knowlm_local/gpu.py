"""How many layers to offload to the GPU when the user did not say.

Rule: everything when the GPU has room for the weights plus the KV cache and a
margin; otherwise as many whole layers as fit; 0 without a GPU build of
llama.cpp. Free memory comes from ``nvidia-smi`` so no CUDA library is loaded
just to ask.
"""

from __future__ import annotations

import shutil
import subprocess

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
