"""Does our layer cost anything? `knowlm-local chat -p` versus llama-cpp-python called directly.

Both sides run as subprocesses on the same GGUF (the embedded SmolLM2 unless
--model is given), the same prompt, context, threads and greedy settings, and
stream their answer to a pipe with a flush per piece. This script timestamps
the bytes as they arrive, so each side's decode rate is measured the same way,
from outside, including every bit of Python between llama.cpp and the
terminal: (tokens - 1) / (time of last piece - time of first piece). Runs
alternate (ours, direct, ours, ...) and the ratio of medians is reported.

Also measures `knowlm-local --help` latency against a bare `python -c pass`.

    python benchmarks/bench_chat.py [--rounds 7] [--tokens 200] [--model PATH]
Target: decode ratio >= 0.97; --help well under a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."

DIRECT = r"""
import sys, llama_cpp
from knowlm_local.backends.llamacpp_cpu import guard
guard()  # plain llama-cpp-python, but without the AMX kernels that crash on some machines (as knowlm-local runs)
path, prompt, n_ctx, threads, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=0, verbose=False)
messages = [{"role": "user", "content": prompt}]
for part in llm.create_chat_completion(messages, max_tokens=tokens, temperature=0.0, top_k=40, top_p=0.9,
                                       min_p=0.0, repeat_penalty=1.1, stream=True):
    text = part["choices"][0]["delta"].get("content")
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
"""


def timed_stream(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float, float]:
    """Run ``cmd``; return (stdout text, t_first_byte, t_last_byte, t_exit) relative to start."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    chunks, first, last = [], None, None
    fd = proc.stdout.fileno()
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        now = time.perf_counter() - start
        first = now if first is None else first
        last = now
        chunks.append(data)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return b"".join(chunks).decode("utf-8"), first or 0.0, last or 0.0, time.perf_counter() - start


def help_latency(rounds: int) -> tuple[float, float]:
    exe = str(Path(sys.executable).parent / "knowlm-local")
    ours, bare = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([exe, "--help"], stdout=subprocess.DEVNULL, check=True)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--model", help="GGUF path (default: the embedded SmolLM2)")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 2))
    args = ap.parse_args()

    import llama_cpp

    from knowlm_local.embedded import embedded_gguf

    path = args.model or str(embedded_gguf())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    exe = str(Path(sys.executable).parent / "knowlm-local")
    ours_cmd = [exe, "chat", "-m", path, "-p", PROMPT, "--max-tokens", str(args.tokens), "--temperature", "0",
                "--top-k", "40", "--top-p", "0.9", "--repeat-penalty", "1.1", "--ctx", str(args.ctx),
                "--threads", str(args.threads), "-ngl", "0"]
    direct_cmd = [sys.executable, "-c", DIRECT, path, PROMPT, str(args.ctx), str(args.threads), str(args.tokens)]
    counter = llama_cpp.Llama(path, vocab_only=True, verbose=False)

    def rate(text: str, first: float, last: float) -> tuple[float, int]:
        n = len(counter.tokenize(text.strip().encode("utf-8"), add_bos=False))
        return (n - 1) / (last - first), n

    ours_rates, direct_rates, ours_wall, direct_wall = [], [], [], []
    texts = set()
    for i in range(args.rounds):
        for name in ("ours", "direct") if i % 2 == 0 else ("direct", "ours"):
            text, first, last, wall = timed_stream(ours_cmd if name == "ours" else direct_cmd, env)
            r, n = rate(text, first, last)
            texts.add(text.strip())
            (ours_rates if name == "ours" else direct_rates).append(r)
            (ours_wall if name == "ours" else direct_wall).append(wall)
        print(f"round {i + 1}: ours {ours_rates[-1]:.1f} tok/s, direct {direct_rates[-1]:.1f} tok/s ({n} tokens)",
              flush=True)
    ours_med, direct_med = statistics.median(ours_rates), statistics.median(direct_rates)
    h_ours, h_bare = help_latency(args.rounds)
    print()
    print(f"model: {path}")
    print(f"settings: greedy, {args.tokens} max tokens, ctx {args.ctx}, {args.threads} threads, CPU")
    print(f"identical answers on both sides: {len(texts) == 1}")
    print(f"decode tokens/s, median of {args.rounds}: knowlm-local chat -p {ours_med:.1f}, "
          f"llama-cpp-python direct {direct_med:.1f}")
    print(f"RATIO decode ours/direct = {ours_med / direct_med:.3f}  (target >= 0.97)")
    print(f"whole command wall time, median: ours {statistics.median(ours_wall):.2f} s, "
          f"direct {statistics.median(direct_wall):.2f} s")
    print(f"--help latency: {h_ours * 1000:.0f} ms (bare python start-up {h_bare * 1000:.0f} ms, "
          f"ratio {h_ours / h_bare:.1f}x)")


if __name__ == "__main__":
    main()
