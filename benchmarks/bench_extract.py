"""How fast is `extract`, and what does each trick buy? Ratios measured in one run on the same records.

Records: benchmarks/data/extract_sentences_en.jsonl, 79 short English
paragraphs (300 sentences) generated once from hand-written templates with
invented names, places and companies. Task NER (or --task) with its default
English schema, greedy, JSON-constrained, the embedded SmolLM2 on CPU unless
--model. The configurations take turns on blocks of records so that other
work on the machine disturbs them alike; the share of CPU other processes
used during the run is printed, since the numbers mean little when it is high.

Runs, each on the same model file and settings:

1. naive: one fresh prompt per sentence and schema group, the KV cache reset
   before every call, no speculation, llama-cpp-python's own grammar sampler
   (what a simple script would do);
2. extract, stock sampler: `Extractor` as `knowlm-local extract` runs it
   (sentence-aware chunks, instruction first so the KV cache prefix is reused)
   but with llama-cpp-python's sampler, which checks the whole vocabulary
   against the grammar for every token;
3. extract: as `knowlm-local extract` runs it, with the greedy grammar
   shortcut (knowlm_local.backends.llamacpp_fast), no speculation;
4. extract + CopyDraft speculation (knowlm_local.ie.speculate), N = --draft;
5. extract + llama-cpp-python's stock LlamaPromptLookupDecoding (--stock N).

Reported: records/s (extract vs naive), decode tokens/s of each trick against
the run without it (tokens after the first / time from the first to the last
streamed piece, over all answers), whether the answers are identical,
drafted-token acceptance, the share of answers that are strict JSON and the
share that parse at all, and the share of extracted spans not found in the
text.

    python benchmarks/bench_extract.py [--limit 79] [--max-tokens 96] [--draft 6] [--stock 10] [--model PATH]
                                       [--gpu-layers -1]
Targets: records/s >= 2x naive; decode >= 1.5x with speculation, identical outputs; 100% parse.

    python benchmarks/bench_extract.py --copy strict,loose,off [--lang zh,en] [--limit 80] [--task ner] [--cold]

(a mode written ``strict+multi`` is strict with ``--multi-label``: NER spans may then stand under two labels)

compares the copy constraint's modes instead, on the hand-annotated dev split of recipes/data/tinyie (zh
and en separately): records/s, decode tokens/s, answers cut by max_tokens, hallucinated spans and micro-F1,
and for the copy modes the model evaluations spent against the tokens kept (the rest went into repeated items
and dead ends that were taken back).
Targets: 0 hallucinated spans under strict, < 2% truncated, zh records/s >= 5x off, F1 not lower than off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).parent / "data" / "extract_sentences_en.jsonl"


class Timed:
    """Wraps a backend's generate to time each answer from outside: first and last streamed piece."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.inner = backend.generate
        self.decode_tokens = 0
        self.decode_seconds = 0.0
        self.wall_tokens = 0
        self.wall_seconds = 0.0
        self.counts = {}  # summed integer stats of the answers' last chunks (copy undos, evaluations)
        backend.generate = self

    def __call__(self, prompt, params, json_schema=None, cancel=None, copy=None):
        first = last = None
        pieces = []
        for chunk in self.inner(prompt, params, json_schema=json_schema, cancel=cancel, copy=copy):
            if chunk.finish_reason is not None:  # wall-clock decode time, the same measure on every path
                self.wall_tokens += chunk.completion_tokens
                self.wall_seconds += (chunk.extra or {}).get("wall_seconds", 0.0) - chunk.prompt_seconds
                for key, value in {**(chunk.extra or {}), "evaluations": chunk.decode_tokens}.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        self.counts[key] = self.counts.get(key, 0) + value
            if chunk.text:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                pieces.append(chunk.text)
            yield chunk
        n = len(self.backend.tokenize("".join(pieces), add_bos=False))
        if first is not None and n > 1:
            self.decode_tokens += n - 1
            self.decode_seconds += last - first

    @property
    def tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def load(path, ctx, threads, draft=None, stock=0, fast=True, gpu_layers=0):
    from knowlm_local.runtime import LoadOptions, load_model

    extra = {"flash_attn": True, "n_threads_batch": threads, "fast_sampling": fast}
    if draft is not None:
        extra["draft_model"] = draft
    return load_model(path, LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, prompt_lookup=stock,
                                        extra=extra))


class Config:
    """One way of running extraction: a model, an Extractor over it, and its own clock."""

    def __init__(self, name, model, max_tokens, task, naive=False, draft=None, copy="off"):
        from knowlm_local.ie.extract import Extractor
        from knowlm_local.ie.tasks import split_groups

        self.name, self.model, self.naive, self.draft = name, model, naive, draft
        self.timed = Timed(model.backend)
        self.ex = Extractor(model, task, lang="en", draft=draft, copy=copy,
                            params=model.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens))
        self.groups = split_groups(task, self.ex.schema_for("en"))
        self.seconds = 0.0
        self.sentences = 0
        self.outputs = []

    def run(self, records):
        from knowlm_local.ie.chunk import sentence_spans

        t0 = time.perf_counter()
        for r in records:
            if not self.naive:
                self.outputs.append(self.ex.extract(dict(r))["result"])
                continue
            for s, e in sentence_spans(r["text"]):  # one fresh prompt per sentence and schema group
                self.sentences += 1
                for g in self.groups:
                    self.model.backend.reset_cache()
                    self.ex.ask("en", g, r["text"][s:e])
        self.seconds += time.perf_counter() - t0

    def rate(self, n):
        return n / self.seconds


def cpu_busy() -> tuple[int, int]:
    """Busy and total CPU jiffies of the whole machine (to spot other work disturbing the run)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[0] + fields[1] + fields[2], sum(fields)


GOLD = Path(__file__).resolve().parents[1] / "recipes" / "data" / "tinyie"


def micro_f1(task, records, results) -> float:
    """IEPile micro-F1 of ``results`` against the gold annotations of ``records`` (knowlm_local.ie.score)."""
    from knowlm_local.ie.score import Tally, gold_tuples, result_tuples

    tally = Tally()
    for rec, result in zip(records, results, strict=True):
        level = "tuple"
        tally.add(gold_tuples(task, rec)[level], result_tuples(task, result)[level])
    return tally.report()["overall"]["f1"]


def copy_main(args) -> None:
    """``--copy strict,loose,off``: the copy constraint's effect, per language, on hand-annotated records.

    Records: the hand-written dev split of recipes/data/tinyie (zh and en, gold NER and RE), never trained on.
    The modes take turns on blocks of records over one loaded model.
    """
    from knowlm_local.embedded import embedded_gguf
    from knowlm_local.ie.extract import Extractor

    modes = [m.strip() for m in args.copy.split(",") if m.strip()]
    path = args.model or str(embedded_gguf())
    model = load(path, args.ctx, args.threads, gpu_layers=args.gpu_layers)
    timed = Timed(model.backend)
    task = args.task.upper()
    max_tokens = args.max_tokens or model.default_params().max_tokens
    print(f"model {path}\n{task}, greedy + JSON grammar, max_tokens {max_tokens}, {args.threads} threads, "
          f"modes {', '.join(modes)}{', cold KV cache per record' if args.cold else ''}", flush=True)
    summary = {}
    for lang in [x.strip() for x in args.lang.split(",")]:
        records = [json.loads(line) for line in (GOLD / f"dev.{lang}.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()][:args.limit]
        runs = {}
        for mode in modes:  # "strict+multi": strict with --multi-label
            copy, _, extra = mode.partition("+")
            ex = Extractor(model, task, lang=lang, copy=copy, multi_label=extra == "multi",
                           params=model.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens))
            runs[mode] = {"ex": ex, "seconds": 0.0, "results": [], "tokens": 0, "decode": 0.0, "counts": {}}
        for i in range(0, len(records), args.block):
            block = records[i:i + args.block]
            for mode in modes if (i // args.block) % 2 == 0 else modes[::-1]:
                run = runs[mode]
                t0, tok0, dec0, counts0 = time.perf_counter(), timed.wall_tokens, timed.wall_seconds, dict(timed.counts)
                for rec in block:
                    if args.cold:
                        model.backend.reset_cache()
                    run["results"].append(run["ex"].extract({"id": rec["id"], "text": rec["text"]})["result"])
                run["seconds"] += time.perf_counter() - t0
                run["tokens"] += timed.wall_tokens - tok0
                run["decode"] += timed.wall_seconds - dec0
                for key, value in timed.counts.items():
                    run["counts"][key] = run["counts"].get(key, 0) + value - counts0.get(key, 0)
        print(f"\n[{lang}] {len(records)} records")
        for mode, run in runs.items():
            st = run["ex"].stats
            f1 = micro_f1(task, records, run["results"])
            tps = run["tokens"] / run["decode"] if run["decode"] else 0.0
            run.update(rate=len(records) / run["seconds"], f1=f1, tps=tps,
                       truncated=st.truncated / st.calls if st.calls else 0.0)
            print(f"  {mode:12} {run['rate']:5.2f} rec/s  decode {tps:6.1f} tok/s ({run['tokens']} tokens)  "
                  f"truncated {st.truncated}/{st.calls} = {run['truncated']:.1%}  hallucinated "
                  f"{st.hallucinated}/{st.spans} = {st.hallucination_rate:.1%}  micro-F1 {100 * f1:.2f}")
            c = run["counts"]
            if "copy_undos" in c:
                print(f"  {'':12} {c.get('evaluations', 0)} model evaluations for {run['tokens']} tokens kept, "
                      f"{c['copy_undos']} undos (repeated items and dead ends taken back)")
        summary[lang] = runs
    for lang, runs in summary.items():
        if "off" not in runs:
            continue
        off = runs["off"]
        for mode in (m for m in runs if m != "off"):
            run = runs[mode]
            print(f"RATIO [{lang}] records/s {mode} / off = {run['rate'] / off['rate']:.2f}x"
                  f"{' (target >= 5x)' if lang == 'zh' else ''}; decode tok/s {mode} / off = "
                  f"{run['tps'] / off['tps'] if off['tps'] else 0:.2f}x; micro-F1 {100 * run['f1']:.2f} vs "
                  f"{100 * off['f1']:.2f} (target: not lower); truncated {run['truncated']:.1%} (target < 2%)")
    model.backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copy", help="compare copy modes instead, e.g. strict,loose,off (on the tinyie dev split)")
    ap.add_argument("--lang", default="zh,en", help="with --copy: languages")
    ap.add_argument("--cold", action="store_true",
                    help="with --copy: empty the KV cache before each record, so every prompt is evaluated whole and "
                         "the modes differ only by the constraint (with prefix reuse, where evaluation restarts "
                         "depends on the record before, and llama.cpp's quantized kernels can flip a near-tie)")
    ap.add_argument("--limit", type=int, default=79, help="records to use (79 = all 300 sentences)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--draft", type=int, default=6, help="CopyDraft's longest draft")
    ap.add_argument("--stock", type=int, default=10, help="LlamaPromptLookupDecoding num_pred_tokens (0: skip)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 2))
    ap.add_argument("--block", type=int, default=4, help="records per turn; the configurations take turns")
    ap.add_argument("--task", default="NER", help="any extract task; its default English schema is used")
    ap.add_argument("--model", help="GGUF path (default: the embedded SmolLM2)")
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (-1: all; needs a GPU build)")
    args = ap.parse_args()
    if args.copy:
        if "--max-tokens" not in sys.argv:
            args.max_tokens = None  # the model card's (512 for the embedded model): long enough to loop
        return copy_main(args)

    from knowlm_local.embedded import embedded_gguf
    from knowlm_local.ie.speculate import CopyDraft

    path = args.model or str(embedded_gguf())
    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()][:args.limit]
    print(f"model {path}\n{len(records)} records, {'CPU' if args.gpu_layers == 0 else f'GPU layers {args.gpu_layers}'}, {args.threads} threads, ctx {args.ctx}, "
          f"max_tokens {args.max_tokens}, {args.task} default English schema, greedy + JSON grammar", flush=True)
    draft = CopyDraft(max_draft=args.draft)
    loader = partial(load, path, args.ctx, args.threads, gpu_layers=args.gpu_layers)
    configs = [
        Config("naive", loader(fast=False), args.max_tokens, args.task, naive=True),
        Config("extract, stock sampler", loader(fast=False), args.max_tokens, args.task),
        Config("extract", loader(), args.max_tokens, args.task),
        Config(f"extract+CopyDraft({args.draft})", loader(draft=draft), args.max_tokens, args.task, draft=draft),
    ]
    if args.stock:
        configs.append(Config(f"extract+stock lookup({args.stock})", loader(stock=args.stock),
                              args.max_tokens, args.task))
    busy0, total0 = cpu_busy()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(0, len(records), args.block):  # take turns, so that noise from other work hits all alike
        block = records[i:i + args.block]
        for cfg in configs if (i // args.block) % 2 == 0 else configs[::-1]:
            cfg.run(block)
    wall = time.perf_counter() - t0
    busy1, total1 = cpu_busy()
    n = len(records)
    naive, stock_sampler, plain, spec = configs[:4]
    for cfg in configs:
        st = cfg.ex.stats
        extra = f", {cfg.sentences} sentences" if cfg.naive else f", decode {cfg.timed.tps:.1f} tok/s"
        print(f"{cfg.name:24} {cfg.seconds:7.1f} s  {cfg.rate(n):5.2f} rec/s  {st.calls} prompts, prompt tokens "
              f"reused {st.cached_tokens}/{st.prompt_tokens}{extra}")
    same = plain.outputs == spec.outputs
    best = spec if spec.seconds < plain.seconds else plain
    st = plain.ex.stats
    calls = st.calls
    strict = calls - st.unparseable - st.truncated - st.repaired
    ours = time.process_time() - cpu0
    hz = os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0) / hz - ours) / max(1e-9, (total1 - total0) / hz)
    print(f"\nwall {wall:.0f} s; other processes used {others:.0%} of the machine's CPU during the run "
          f"(timings are only comparable when that is near 0%)")
    print(f"RATIO records/s {best.name} / naive = {naive.seconds / best.seconds:.2f}x "
          f"({best.rate(n):.2f} vs {naive.rate(n):.2f} rec/s; target >= 2x)")
    print(f"RATIO records/s extract (no speculation) / naive = {naive.seconds / plain.seconds:.2f}x")
    print(f"RATIO decode tok/s extract / extract with llama-cpp-python's grammar sampler = "
          f"{plain.timed.tps / stock_sampler.timed.tps:.2f}x ({plain.timed.tps:.1f} vs {stock_sampler.timed.tps:.1f}); "
          f"identical outputs: {plain.outputs == stock_sampler.outputs}")
    print(f"RATIO decode tok/s {spec.name} / none = {spec.timed.tps / plain.timed.tps:.2f}x "
          f"({spec.timed.tps:.1f} vs {plain.timed.tps:.1f}; target >= 1.5x); identical outputs: {same}; "
          f"drafted tokens accepted {draft.accepted}/{draft.proposed} = {draft.acceptance:.0%}")
    print(f"RATIO records/s {spec.name} / extract = {plain.seconds / spec.seconds:.2f}x")
    if args.stock:
        stock = configs[4]
        print(f"RATIO decode tok/s {stock.name} / none = {stock.timed.tps / plain.timed.tps:.2f}x "
              f"({stock.timed.tps:.1f} vs {plain.timed.tps:.1f}); identical outputs: {stock.outputs == plain.outputs}; "
              f"records/s ratio {plain.seconds / stock.seconds:.2f}x")
    print(f"answers that parse: {calls - st.unparseable}/{calls} = {(calls - st.unparseable) / calls:.1%}"
          f" (strict JSON, complete: {strict}/{calls} = {strict / calls:.1%}; cut by max_tokens: {st.truncated})")
    print(f"hallucinated spans (not in the text): {st.hallucinated}/{st.spans} = {st.hallucination_rate:.1%}")
    for cfg in configs:
        cfg.model.backend.close()


if __name__ == "__main__":
    main()
