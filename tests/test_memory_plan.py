"""The memory arithmetic of `--allocate`, 4/8-bit loading and llama.cpp's multi-GPU offload, made-up figures.

Every expected figure is worked out by hand in the comments; nothing here needs a GPU.
"""

from __future__ import annotations

import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.gpu import auto_gpu_layers, plan_offload
from knowlm_local.memory_plan import (
    GIB,
    Block,
    blocks_from_config,
    blocks_from_safetensors,
    choose_dtype,
    max_context,
    pack,
    parse_allocate,
    plan_allocation,
    quant_problem,
)

# LLaMA-13B (KnowLM-13B / ZhiXi's base): hidden 5120, MLP 13824, 40 layers, 40 heads, vocab 32000
LLAMA_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "vocab_size": 32000,
             "num_attention_heads": 40, "tie_word_embeddings": False}


def test_llama_13b_parameter_count_from_its_config():
    blocks = blocks_from_config(LLAMA_13B)
    # one layer: q,k,v,o 4 x 5120^2 = 104,857,600 + gate,up,down 3 x 5120 x 13824 = 212,336,640;
    # two norms 2 x 5120
    assert blocks.layers[0] == Block("layer", 317_194_240, 10_240)
    assert len(blocks.layers) == 40
    assert blocks.embed.other == 32000 * 5120 == 163_840_000
    assert blocks.head.other == 163_840_000 + 5120  # lm_head + final norm
    assert blocks.n_params == 13_015_864_320  # the published LLaMA-13B count
    # fp16: 2 bytes each; 4-bit: ceil(317,194,240 x 4.5 / 8) = 178,421,760 for the linear weights + 2 x 10,240
    assert blocks.layers[0].nbytes("float16") == 634_408_960
    assert blocks.layers[0].nbytes("float16", 4) == 178_421_760 + 20_480
    assert blocks.layers[0].nbytes("float16", 8) == 317_194_240 + 20_480
    assert blocks.embed.nbytes("float16", 4) == 327_680_000  # embeddings are not quantized by bitsandbytes
    assert blocks.nbytes("float32") == 4 * 13_015_864_320


def test_grouped_query_attention_and_tied_embeddings():
    cfg = {**LLAMA_13B, "num_key_value_heads": 8, "tie_word_embeddings": True}
    blocks = blocks_from_config(cfg)
    # k and v shrink to 5120 x 1024 each: 2 x 5120^2 + 2 x 5120 x 1024 + 3 x 5120 x 13824
    assert blocks.layers[0].linear == 52_428_800 + 10_485_760 + 212_336_640
    assert blocks.head.other == 5120  # the head shares the embedding: only the final norm is left
    assert blocks_from_config({"hidden_size": 8}) is None


def test_safetensors_headers_give_exact_counts_by_block(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({
        "model.embed_tokens.weight": np.zeros((10, 4), np.float16),
        "model.layers.0.self_attn.q_proj.weight": np.zeros((4, 4), np.float16),
        "model.layers.0.input_layernorm.weight": np.zeros((4,), np.float16),
        "model.layers.1.mlp.up_proj.weight": np.zeros((8, 4), np.float16),
        "model.norm.weight": np.zeros((4,), np.float16),
        "lm_head.weight": np.zeros((10, 4), np.float16),
    }, str(tmp_path / "model.safetensors"))
    blocks = blocks_from_safetensors(tmp_path)
    assert blocks.embed == Block("embed", 0, 40)
    assert blocks.layers == (Block("layer 0", 16, 4), Block("layer 1", 32, 0))
    assert blocks.head == Block("head", 0, 44)
    assert blocks.sizes("float32") == [160, 80, 128, 176]
    assert blocks_from_safetensors(tmp_path / "missing") is None


def test_parse_allocate_accepts_knowlm_forms_and_refuses_junk():
    assert parse_allocate("10,10,10") == [10.0, 10.0, 10.0]
    assert parse_allocate("[10, 12.5]") == [10.0, 12.5]  # KnowLM's --allocate [10,12.5]
    for bad in ("ten", "10,-1", "", "10,,10", "0", "nan"):
        with pytest.raises(KnowLMError) as info:
            parse_allocate(bad)
        assert "--allocate" in info.value.message and "10,10,10" in info.value.hint


def test_pack_fills_gpus_in_order_with_whole_blocks():
    sizes = [1, 4, 4, 4, 4, 1]  # embed, 4 layers, head (18 in all)
    assert pack(sizes, [10, 10]) == [3, 3]  # 1+4+4 = 9 (another 4 would be 13), then 4+4+1
    assert pack(sizes, [18]) == [6]
    assert pack(sizes, [9, 8]) is None  # 17 < 18
    assert pack(sizes, [7, 7, 7]) is None  # 21 >= 18, but each GPU takes one 4 and no second one
    assert pack(sizes, [8, 8, 8]) == [2, 2, 2]


def test_allocation_plan_and_its_errors():
    sizes = [s * GIB for s in (1, 4, 4, 4, 4, 1)]
    plan = plan_allocation(sizes, [10, 10], gpu_total_bytes=[24 * GIB, 24 * GIB], cpu_bytes=32 * GIB)
    assert plan.max_memory == {0: "10GiB", 1: "10GiB", "cpu": "32GiB"}
    assert plan.blocks_per_gpu == (3, 3)
    assert "18.0 GiB of weights in 20.0 GiB" in plan.reason

    with pytest.raises(KnowLMError) as info:
        plan_allocation(sizes, [7, 7, 7])
    # enough in total (21 >= 18) but whole blocks do not pack; 8 each is the smallest that does
    assert "needs 18.0 GiB" in info.value.message and "gives 21.0 GiB over 3 GPUs" in info.value.message
    assert "do not pack" in info.value.message
    assert info.value.hint.startswith("use --allocate 8,8,8")

    with pytest.raises(KnowLMError) as info:
        plan_allocation(sizes, [10, 10, 10], gpu_total_bytes=[24 * GIB, 24 * GIB])
    assert "lists 3 GPUs, 2 visible" in info.value.message
    with pytest.raises(KnowLMError) as info:
        plan_allocation(sizes, [30, 10], gpu_total_bytes=[24 * GIB, 24 * GIB])
    assert "GPU0 30 GiB" in info.value.message and "24.0 GiB" in info.value.message


def test_knowlm_13b_in_fp16_does_not_fit_two_times_ten_gib():
    blocks = blocks_from_config(LLAMA_13B)
    sizes = blocks.sizes("float16")  # 26,031,728,640 bytes = 24.24 GiB
    with pytest.raises(KnowLMError) as info:
        plan_allocation(sizes, [10, 10], alternatives="--load-8bit (about 12.4 GiB)")
    assert "needs 24.2 GiB of weights, --allocate 10,10 gives 20.0 GiB over 2 GPUs" in info.value.message
    # 13 GiB each: GPU0 takes the 0.31 GiB embedding and 21 layers of 0.59 GiB, GPU1 the other 19 and the head
    assert info.value.hint == "use --allocate 13,13, or --load-8bit (about 12.4 GiB)"
    plan = plan_allocation(sizes, [13, 13])
    assert plan.blocks_per_gpu == (22, 20)
    assert plan_allocation(blocks.sizes("float16", 4), [4, 4]).blocks_per_gpu == (23, 19)  # 7.3 GiB in 4 bits


def test_dtype_and_quantization_rules():
    assert choose_dtype(cuda=True, bf16=True) == "bfloat16"
    assert choose_dtype(cuda=True, bf16=False) == "float16"  # V100
    assert choose_dtype(cuda=False, bf16=False) == "float32"
    assert quant_problem(None, cuda=False, bnb_installed=False) is None
    assert quant_problem(4, cuda=True, bnb_installed=True) is None
    missing = quant_problem(4, cuda=True, bnb_installed=False)
    assert "bitsandbytes" in missing.message and missing.hint == "pip install bitsandbytes"
    cpu = quant_problem(8, cuda=False, bnb_installed=True)
    assert "--load-8bit needs a CUDA GPU" in cpu.message and "GGUF" in cpu.hint
    assert quant_problem(3, cuda=True, bnb_installed=True) is not None


def test_max_context_from_free_memory():
    # 10 GiB free, 4 GiB of weights, 0.5 MiB of KV per token: 6 GiB / 0.5 MiB = 12,288 tokens
    assert max_context(10 * GIB, 4 * GIB, 512 * 1024, cap=32768) == 12288
    assert max_context(10 * GIB, 4 * GIB, 512 * 1024, cap=8192) == 8192
    assert max_context(3 * GIB, 4 * GIB, 512 * 1024, cap=8192) == 0


# -- llama.cpp offload over several GPUs -----------------------------------------------------------------
# 36 GiB of weights + 4 GiB of KV cache over 40 layers: 1 GiB per layer; 90% of free VRAM is usable.
W, KV, LAYERS = 36 * GIB, 4 * GIB, 40


def test_offload_everything_on_one_gpu_when_one_has_room():
    one = plan_offload(True, W, KV, LAYERS, [48 * GIB])  # 43.2 usable >= 40
    assert (one.n_gpu_layers, one.tensor_split) == (-1, None)
    assert one.reason.startswith("all 40 layers on GPU0")
    two = plan_offload(True, W, KV, LAYERS, [24 * GIB, 48 * GIB])  # GPU1 alone has room: no split
    assert (two.n_gpu_layers, two.tensor_split) == (-1, (0.0, 1.0))
    assert "GPU1" in two.reason


def test_offload_split_and_partial():
    both = plan_offload(True, W, KV, LAYERS, [24 * GIB, 24 * GIB])  # 21.6 each: 21 + 21 layers >= 40
    assert (both.n_gpu_layers, both.tensor_split) == (-1, (21.0, 21.0))
    assert "split 21:21" in both.reason
    part = plan_offload(True, W, KV, LAYERS, [16 * GIB, 16 * GIB])  # 14.4 each: 14 + 14 layers
    assert (part.n_gpu_layers, part.tensor_split) == (28, (14.0, 14.0))
    assert part.reason.startswith("28 of 40 layers on 2 GPUs")
    single = plan_offload(True, W, KV, LAYERS, [16 * GIB])
    assert (single.n_gpu_layers, single.tensor_split) == (14, None)
    assert plan_offload(True, W, KV, LAYERS, [GIB // 2]).n_gpu_layers == 0  # 0.45 GiB < one 1 GiB layer
    cpu = plan_offload(False, W, KV, LAYERS, [80 * GIB])
    assert cpu.n_gpu_layers == 0 and "without GPU support" in cpu.reason
    assert plan_offload(True, W, KV, LAYERS, None).n_gpu_layers == 0
    # the old single-GPU rule gives the same counts
    assert auto_gpu_layers(True, W, KV, LAYERS, 16 * GIB) == 14
    assert auto_gpu_layers(True, W, KV, LAYERS, 48 * GIB) == -1


def test_offload_refuses_a_model_larger_than_ram_plus_vram():
    with pytest.raises(KnowLMError) as info:  # 8 + 28.8 usable = 36.8 < 40
        plan_offload(True, W, KV, LAYERS, [16 * GIB, 16 * GIB], ram_bytes=8 * GIB)
    msg = info.value.message
    assert "needs 40.0 GiB (weights 36.0 GiB + KV cache 4.0 GiB)" in msg and "8.0 GiB of free RAM" in msg
    assert "28.8 GiB of usable VRAM" in msg and "q4_k_m" in info.value.hint
    assert plan_offload(True, W, KV, LAYERS, [16 * GIB, 16 * GIB], ram_bytes=16 * GIB).n_gpu_layers == 28
    with pytest.raises(KnowLMError):
        plan_offload(False, W, KV, LAYERS, None, ram_bytes=32 * GIB)  # CPU only: 40 > 32
