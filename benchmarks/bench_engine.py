"""What does the batched engine buy? `extract --parallel P` against `--parallel 1`, measured in one run.

Records: the hand-written dev split of recipes/data/tinyie (zh and en, NER with extract's default schemas),
the built-in extraction model (embedded SmolLM2 Q4_1 + the shipped LoRA adapter), greedy, JSON grammar and
`--copy strict`, exactly as `knowlm-local extract --parallel P` runs them (the same `Workers` that keep P
records in flight and write them in input order).

For each P in --parallel (default 1,2,4,8,16): records/s, aggregate generated tokens/s (every sequence's
generated tokens over the wall time), prompt tokens saved by shared prefixes, and against P = 1: the share
of identical answers and micro-F1. Then the exactness study: the same comparison of P = 1 and P = 4 with a
Q8_0 KV cache, on one thread, and on an F16 GGUF of the same base (with the same adapter), to show which
setting makes batched answers identical.

Targets on 2 CPU cores: --parallel 8 >= 1.5x the records/s of --parallel 1 (ceiling here ~1.9x: a 7-token
batch costs ~3.8 single steps); F1 within noise of P = 1.

    python benchmarks/bench_engine.py [--limit 40] [--parallel 1,2,4,8,16] [--threads 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV = ROOT / "recipes" / "data" / "tinyie"


class Count:
    """Wraps a backend's generate: generated tokens over all calls (from every thread)."""

    def __init__(self, backend) -> None:
        self.inner, self.tokens, self.lock = backend.generate, 0, threading.Lock()
        backend.generate = self

    def __call__(self, *args, **kwargs):
        for chunk in self.inner(*args, **kwargs):
            if chunk.finish_reason is not None:
                with self.lock:
                    self.tokens += chunk.completion_tokens
            yield chunk


def run(records: list[dict], parallel: int, args, kv_type: str | None = None, threads: int | None = None,
        model: str | None = None, lora: str | None = None) -> dict:
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.ie.run import Workers, load_for_extract
    from knowlm_local.runtime import LoadOptions

    extra = {"kv_type": kv_type} if kv_type else {}
    options = LoadOptions(n_ctx=args.ctx, seed=0, n_threads=threads or args.threads, extra=extra, lora=lora)
    loaded, _ = load_for_extract(model or args.model, options, parallel=parallel)
    counter = Count(loaded.backend)
    params = loaded.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=256)
    workers = Workers(lambda: Extractor(loaded, "NER", params=params, copy="strict"),
                      getattr(loaded.backend, "parallel", 1))
    try:
        t0 = time.perf_counter()
        done = list(workers.map(iter(records)))
        seconds = time.perf_counter() - t0
    finally:
        saved = getattr(loaded.backend, "saved_prompt_tokens", 0)
        loaded.backend.close()
    stats = workers.stats()
    return {"results": [d["result"] for d in done], "ids": [d["id"] for d in done], "seconds": seconds,
            "rate": len(records) / seconds, "tokens": counter.tokens / seconds, "saved": saved,
            "prompt": stats.prompt_tokens, "parsed": 1 - stats.unparseable / max(1, stats.calls)}


def f1(records: list[dict], results: list[dict]) -> float:
    from knowlm_local.ie.score import Tally, gold_tuples, result_tuples

    tally = Tally()
    for rec, result in zip(records, results, strict=True):
        tally.add(gold_tuples("NER", rec)["tuple"], result_tuples("NER", result)["tuple"])
    return tally.report()["overall"]["f1"]


def same(a: dict, b: dict) -> float:
    return sum(x == y for x, y in zip(a["results"], b["results"], strict=True)) / len(a["results"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=40, help="records per language")
    ap.add_argument("--parallel", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    ap.add_argument("--model", help="GGUF or zoo name (default: the built-in extraction model)")
    ap.add_argument("--no-exactness", action="store_true", help="skip the KV-type / one-thread study")
    args = ap.parse_args()
    records = []
    for lang in ("zh", "en"):
        lines = (DEV / f"dev.{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        records += [json.loads(x) for x in lines if x.strip()][:args.limit]
    print(f"{len(records)} records (zh + en dev), NER, --copy strict, {args.threads} threads, ctx {args.ctx} "
          "per sequence", flush=True)
    rows: dict[int, dict] = {}
    for p in [int(x) for x in args.parallel.split(",")]:
        r = rows[p] = run(records, p, args)
        assert r["ids"] == [x["id"] for x in records], "output order differs from input order"
        base = rows[min(rows)]
        print(f"  --parallel {p:2}: {r['rate']:.2f} rec/s  {r['tokens']:6.1f} generated tok/s  prompt tokens "
              f"{r['prompt']} ({r['saved']} shared from the prefix)  parse {r['parsed']:.0%}  F1 "
              f"{100 * f1(records, r['results']):.2f}  identical to P=1: {same(r, base):.0%}", flush=True)
    one = rows[min(rows)]
    for p, r in rows.items():
        if p != min(rows):
            print(f"RATIO [--parallel {p} / --parallel 1] records/s {r['rate'] / one['rate']:.2f}x "
                  f"(target >= 1.5x at 8); F1 {100 * (f1(records, r['results']) - f1(records, one['results'])):+.2f}"
                  f" points; identical {same(r, one):.0%}")
    if args.no_exactness:
        return
    from knowlm_local.convert.pipeline import convert
    from knowlm_local.zoo import adapter_path, find_card

    f16 = Path(tempfile.mkdtemp(prefix="engine-f16-")) / "smollm2-f16.gguf"
    convert("smollm2", quants="f16", output=f16)  # the same base weights, unquantized (+ the same adapter)
    studies = (("Q8_0 KV cache", {"kv_type": "q8_0"}), ("one thread", {"threads": 1}),
               ("F16 weights", {"model": str(f16), "lora": str(adapter_path(find_card("smollm2-ie")))}))
    for label, kw in studies:
        a, b = run(records, 1, args, **kw), run(records, 4, args, **kw)
        print(f"EXACT [{label}] --parallel 4 vs 1: identical {same(a, b):.0%}; records/s {b['rate'] / a['rate']:.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
