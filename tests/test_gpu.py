"""The default GPU offload rule (no GPU here: the rule is a pure function of the numbers)."""

from knowlm_local.gpu import auto_gpu_layers, kv_cache_bytes

GB = 1024**3


def test_everything_when_it_fits_some_layers_when_not_none_without_gpu():
    kv = kv_cache_bytes(n_ctx=4096, n_layers=40, n_embd=5120, n_head=40, n_head_kv=40)
    assert kv == 2 * 40 * 4096 * 5120 * 2  # KnowLM-13B shape, f16 K and V: 3.2 GB
    q4 = int(7.9 * GB)
    assert auto_gpu_layers(True, q4, kv, 40, free_bytes=24 * GB) == -1
    partial = auto_gpu_layers(True, q4, kv, 40, free_bytes=8 * GB)
    assert 0 < partial < 40
    assert (q4 + kv) / 40 * partial <= 8 * GB * 0.9
    assert auto_gpu_layers(False, q4, kv, 40, free_bytes=80 * GB) == 0  # CPU build of llama.cpp
    assert auto_gpu_layers(True, q4, kv, 40, free_bytes=None) == 0  # VRAM unknown: stay on the CPU
    assert kv_cache_bytes(4096, 32, 4096, 32, 8) == 2 * 32 * 4096 * 1024 * 2  # GQA shrinks the cache
