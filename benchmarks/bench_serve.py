"""What does `serve` cost, and how does it scale? The HTTP API against the backend itself, in one run.

The server runs as `knowlm-local serve` in its own process, as users run it.

1. One client: decode tokens/s of streamed `/v1/chat/completions` (the official openai client, greedy, the
   embedded model) against the same prompts decoded by the backend directly, which is what `knowlm-local
   chat -p` runs. Target: API / direct >= 0.95.
2. Many clients: 1, 4 and 8 concurrent clients, each sending requests back to back, against a server with
   `--parallel 1` (one request at a time, FIFO) and `--parallel P` (requests decoded together in the batched
   engine): requests/s, aggregate generated tokens/s, latency p50 / p95 and time to first token p50 / p95.

    python benchmarks/bench_serve.py [--requests 24] [--max-tokens 48] [--parallel 4] [--threads 2] [--pin]

``--pin`` gives the decode (the server's model thread, and the direct run) all CPUs but the last, with
``--threads`` set to their number, and the server's event loop (its main thread) and the clients the last one:
on a small machine, HTTP work and the clients otherwise land on the decode's cores at the scheduler's whim, and
the ratio swings (0.76 to 0.97 on 2 cores, unpinned, same settings) with where they land.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["rivers", "the moon", "bread", "a library", "trains", "北京", "glaciers", "coffee", "bridges", "owls",
          "volcanoes", "chess"]


def prompts(n: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def loader(args, parallel: int):
    from knowlm_local.runtime import LoadOptions, load_model

    def load():
        return load_model("smollm2", LoadOptions(n_ctx=1024, n_threads=args.threads, seed=0, parallel=parallel))
    return load


def direct(args) -> float:
    """Decode tokens/s of `chat -p`'s library path (a fresh ChatSession per prompt), timed as the client is."""
    from knowlm_local.chat import ChatSession

    loaded = loader(args, 1)()
    params = loaded.default_params(temperature=0.0, max_tokens=args.max_tokens, repeat_penalty=1.0)
    tokens = seconds = 0.0
    try:
        for text in prompts(args.single):
            first = last = None
            for chunk in ChatSession(loaded, params).ask(text):
                if chunk.text and first is None:
                    first = time.perf_counter()
                last = chunk
            tokens += last.completion_tokens - 1
            seconds += time.perf_counter() - first
    finally:
        loaded.backend.close()
    return tokens / seconds


def pinned(cpus):
    """A preexec_fn that puts a child process on ``cpus`` (None: wherever the OS likes)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def direct_pinned(args) -> float:
    """``direct`` in a child process on the model's CPUs, so it runs where the server will."""
    argv = [sys.executable, __file__, "--direct-only", "--threads", str(args.threads), "--single", str(args.single),
            "--max-tokens", str(args.max_tokens)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, preexec_fn=pinned(args.model_cpus))
    return float(out.stdout.strip().splitlines()[-1])


class ServeProcess:
    """`knowlm-local serve` as users run it: its own process (the clients here must not share its cores' GIL)."""

    def __init__(self, parallel: int, args) -> None:
        import socket
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).parent / "knowlm-local"
        self.proc = subprocess.Popen([str(exe), "serve", "smollm2", "--port", str(port), "--parallel", str(parallel),
                                      "--ctx", "1024", "--threads", str(args.threads), "--queue", "64"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=pinned(args.model_cpus))
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        if args.model_cpus:  # the event loop (the main thread, TID = PID) joins the clients' CPU
                            os.sched_setaffinity(self.proc.pid, args.client_cpus)
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def one_request(client, model: str, text: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    finish = None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for event in stream:
        if event.choices and event.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if event.choices and event.choices[0].finish_reason:
            finish = event.choices[0].finish_reason
        if event.usage is not None:
            n = event.usage.completion_tokens
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": n, "decode": end - (first or end),
            "complete": finish in ("stop", "length") and n > 0}


def load_clients(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    texts = prompts(requests)
    results: list[dict] = []
    lock = threading.Lock()
    next_one = iter(range(requests))

    def worker() -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        while True:
            with lock:
                i = next(next_one, None)
            if i is None:
                return
            r = one_request(client, model, texts[i], max_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {"rps": len(results) / wall, "tok_s": sum(r["tokens"] for r in results) / wall,
            "p50": statistics.median(lat), "p95": pct(lat, 0.95), "ttft50": statistics.median(ttft),
            "ttft95": pct(ttft, 0.95), "complete": sum(r["complete"] for r in results), "n": len(results),
            "single_decode": sum(r["tokens"] - 1 for r in results) /
            max(1e-9, sum(r["decode"] for r in results))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24, help="requests per client-count row")
    ap.add_argument("--single", type=int, default=6, help="prompts in the one-client comparison")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--pin", action="store_true", help="model on all CPUs but the last, clients on the last")
    ap.add_argument("--direct-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_only:
        print(direct(args))
        return
    args.model_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        args.model_cpus, client_cpus = set(cpus[:-1]), {cpus[-1]}
        args.client_cpus = client_cpus
        args.threads = len(args.model_cpus)
        os.sched_setaffinity(0, client_cpus)
        print(f"pinned: decode on CPUs {sorted(args.model_cpus)} ({args.threads} threads), the server's event loop "
              f"and the clients on {sorted(client_cpus)}", flush=True)
        base = direct_pinned(args)
    else:
        base = direct(args)
    counts = [int(x) for x in args.clients.split(",")]
    rows = {}
    for parallel in (1, args.parallel):
        srv = ServeProcess(parallel, args)
        try:
            if parallel == 1:
                single = load_clients(srv.url, 1, args.single, args.max_tokens)
                print(f"one client: API decode {single['single_decode']:.1f} tok/s vs backend directly "
                      f"{base:.1f} tok/s", flush=True)
                print(f"RATIO API / direct decode tokens/s: {single['single_decode'] / base:.3f} (target >= 0.95)")
            for n in counts:
                r = load_clients(srv.url, n, args.requests, args.max_tokens)
                rows[(parallel, n)] = r
                print(f"--parallel {parallel:2}  {n} clients: {r['rps']:.2f} req/s  {r['tok_s']:6.1f} tok/s  "
                      f"latency p50 {r['p50']:.2f} s p95 {r['p95']:.2f} s  TTFT p50 {r['ttft50']:.2f} s "
                      f"p95 {r['ttft95']:.2f} s  complete {r['complete']}/{r['n']}", flush=True)
        finally:
            srv.stop()
    for n in counts:
        a, b = rows[(1, n)], rows[(args.parallel, n)]
        print(f"RATIO [{n} clients] aggregate tok/s --parallel {args.parallel} / --parallel 1: "
              f"{b['tok_s'] / a['tok_s']:.2f}x; vs 1 client: {b['tok_s'] / rows[(args.parallel, 1)]['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
