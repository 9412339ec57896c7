"""Decode speed of the transformers backend: eager ``model.generate`` versus our path, on one loaded model.

"Ours" is :class:`knowlm_local.backends.hf.TransformersBackend.generate`: on a
single CUDA device it asks for a static KV cache, which lets transformers
compile the decode step (``torch.compile``); elsewhere it is eager generate
plus the streamer. "Eager" is ``model.generate`` with the default dynamic
cache. Both decode greedily, EOS ignored, the same number of tokens; decode
tokens/s = (tokens - 1) / (total time - time to the first token), medians over
alternating rounds after one warm-up each (the warm-up pays for compilation).

The model has random weights (speed does not depend on them): a tiny Llama by
default (runs anywhere, prints ratios near 1 on a CPU), or ``--shape 13b``, the
KnowLM-13B shape (5120 hidden, 40 layers), meant for a GPU. With
``--bandwidth`` (GB/s, e.g. 3350 for an H100 SXM) the share of the memory-
bandwidth bound (bandwidth / bytes of weights per token) is printed too.

    python benchmarks/bench_hf.py [--shape tiny|13b] [--tokens 64] [--rounds 3] [--fast] [--bandwidth 3350]
Target on a GPU: ours >= 2x eager.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
            "num_attention_heads": 40, "num_key_value_heads": 40},
}
PROMPT = "Below is an instruction that describes a task. Write a response that completes the request."


def build(folder: Path, shape: str, dtype: str) -> None:
    """A random Llama of ``shape`` with the embedded SmolLM2 tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from knowlm_local.embedded import embedded_gguf

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and shape != "tiny" else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _time(run, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return time.perf_counter() - t0


def decode_rates(runs: dict, tokens: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s of each ``run(n)`` (n tokens), from its n=1 and n=tokens timings.

    Rounds alternate between the runs so that a busy machine slows them alike.
    """
    for run in runs.values():
        run(2)  # warm-up: allocation, compilation
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            first = _time(run, 1)
            total = _time(run, tokens)
            rates[name].append((tokens - 1) / max(total - first, 1e-9))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny")
    ap.add_argument("--model", help="An existing Hugging Face folder instead of a random model.")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="Use the static cache even off CUDA.")
    ap.add_argument("--bandwidth", type=float, help="Memory bandwidth in GB/s, for the share of the bound.")
    args = ap.parse_args()

    import torch

    from knowlm_local.backends.hf import TransformersBackend
    from knowlm_local.params import GenerationParams

    dtype = "float32"
    if torch.cuda.is_available():
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else Path(tmp) / f"llama-{args.shape}"
        if not args.model:
            build(folder, args.shape, dtype)
        backend = TransformersBackend(folder, n_ctx=2048, fast=True if args.fast else None)
        model = backend.model
        model.generation_config.eos_token_id = None  # random weights: never stop early
        ids = backend.tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(backend.device)
        pad = backend.tokenizer.eos_token_id

        def eager(n: int) -> None:
            # in a worker thread, as the backend runs generate: PyTorch's CPU thread pool is per thread, and
            # the main thread's can be several times slower on a busy machine
            def work() -> None:
                with torch.inference_mode():
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                   do_sample=False, pad_token_id=pad)

            worker = threading.Thread(target=work)
            worker.start()
            worker.join()

        def ours(n: int) -> None:
            last = None
            params = GenerationParams(temperature=0.0, repeat_penalty=1.0, max_tokens=n)
            for last in backend.generate(PROMPT, params):
                pass
            assert last is not None and last.completion_tokens >= n - 1, last  # n - 1: it ended on EOS

        rates = decode_rates({"eager": eager, "ours": ours}, args.tokens, args.rounds)
        base, fast = rates["eager"], rates["ours"]
        n_params = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f"model: {args.model or args.shape} ({n_params / 1e6:.1f} M parameters, "
              f"{weight_bytes / 1e9:.2f} GB in {dtype}) on {backend.info.device}; "
              f"static cache: {backend.fast}")
        print(f"decode tok/s: eager {base:.1f}, ours {fast:.1f}, ratio {fast / base:.2f}x")
        if args.bandwidth:
            bound = args.bandwidth * 1e9 / weight_bytes
            print(f"bandwidth bound {bound:.1f} tok/s: eager {base / bound:.0%}, ours {fast / bound:.0%}")


if __name__ == "__main__":
    main()
