"""What the training recipes cost on a CPU, and what packing and our Trainer wrapper change: ratios in one run.

On the embedded SmolLM2-135M's HF export (LoRA r 8 on all seven projections, float32, micro batch 8):

1. the CPU recipe (recipes/finetune/smollm2-cpu.yaml) for a few steps: steps/s, tokens/s, peak RSS, wall time;
2. packing versus padding on mixed-length data (short general instructions + long IE instructions built by
   build-ie-data from the tinyie train split): real tokens/s (target >= 1.5x), beside the bound the rows'
   fill puts on it (real tokens per position, packed rows over random padded batches), and packing with
   length-bucketed attention (train/varlen.py, the default) against one block-diagonal mask per row;
3. our trainer versus a plain transformers Trainer on the same model, rows, batch and steps, with the stock
   causal-LM loss over all logits and the stock seq2seq collator (target >= 0.95x);
4. the pretraining packer: tokens/s on a generated corpus, and its peak RSS against a corpus a quarter the
   size (flat, not growing with the corpus).

Each measurement runs in its own child process (so peak RSS is its own); the training runs alternate
(padding, packing, packing with the mask, plain, ours, and again) and the best of two is kept.

    python benchmarks/bench_recipes.py [--steps 12] [--corpus-mb 200] [--threads 2] [--max-len 512]
                                       [--skip-packer] [--skip-trainer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last (we add its peak RSS)."""
    wrapper = code + (
        "\nimport resource, json as _j\n"
        "print(_j.dumps({**RESULT, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env={**os.environ, **(env or {})},
                         cwd=str(ROOT))
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def mixed_data(folder: Path) -> Path:
    """Short general instructions and long IE instructions, interleaved: a typical SFT mix of lengths."""
    from knowlm_local.train.iedata import build_ie_data

    ie = folder / "ie.jsonl"
    build_ie_data([str(ROOT / "recipes/data/tinyie/train.en.jsonl"), str(ROOT / "recipes/data/tinyie/train.zh.jsonl")],
                  str(ie), tasks=["NER"], force=True)
    general = (ROOT / "recipes/data/general-sample.jsonl").read_text(encoding="utf-8").splitlines()
    ie_lines = ie.read_text(encoding="utf-8").splitlines()
    en, zh = ie_lines[:350], ie_lines[350:]  # English IE prompts ~160 tokens, Chinese ~290, general ~60
    rows = []
    for i in range(80):
        rows += [en[i], zh[i], general[i % len(general)]]
    out = folder / "mixed.jsonl"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


TRAIN = """
import json, time, torch
torch.set_num_threads({threads})
from knowlm_local.train.base import export_embedded, load_tokenizer
from knowlm_local.train.config import DataSettings, FinetuneConfig, LoraSettings
from knowlm_local.train.sft import finetune, load_model, training_arguments, _Dataset
from knowlm_local.train.sft_data import load_examples, template_for, unpacked, choose_pad
folder = export_embedded()
cfg = FinetuneConfig(model="smollm2", output_dir={out!r}, mode="lora",
                     data=DataSettings(train=[{data!r}], max_len={max_len}, packing={packing},
                                       packed_attention={attention!r}),
                     lora=LoraSettings(r=8, alpha=16, dropout=0.0), max_steps={steps}, micro_batch_size=8,
                     learning_rate=2e-4, lr_scheduler="constant", logging_steps=1, save_steps=100000, precision="fp32",
                     seed=0)
if {plain}:
    from transformers import Trainer, DataCollatorForSeq2Seq
    tok = load_tokenizer(folder)
    tmpl = template_for("auto", tok)
    examples, _ = load_examples(cfg.data.train, tok, tmpl, cfg.data.max_len, True)
    rows = unpacked(examples)
    tok.pad_token_id = choose_pad(tok)
    torch.manual_seed(0)
    model = load_model(folder, cfg, "fp32")
    args = training_arguments(cfg, "fp32", False)
    tr = Trainer(model=model, args=args, train_dataset=_Dataset(rows),
                 data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    from knowlm_local.train.heap import kept_heap
    t0 = time.perf_counter()
    with kept_heap():  # the allocator setting ours uses on a CPU, so the comparison is of the wrapper alone
        tr.train()
    sec = time.perf_counter() - t0
    tokens = sum(len(r["input_ids"]) for r in rows) / len(rows) * {steps} * 8  # rows are drawn at random
    RESULT = dict(seconds=sec, steps={steps}, tokens=tokens)
else:
    r = finetune(cfg, force=True, say=lambda *_: None, callbacks=[])
    RESULT = dict(seconds=r.seconds, steps=r.steps, tokens=r.tokens)
"""

RECIPE = """
import time, torch
torch.set_num_threads({threads})
from knowlm_local.train.run import run
t0 = time.perf_counter()
r = run("finetune", "smollm2-cpu", {{"max-steps": "{steps}", "output-dir": {out!r}, "save-steps": "100000"}}, force=True,
        say=lambda *_: None)
RESULT = dict(seconds=r.seconds, wall=time.perf_counter() - t0, steps=r.steps, tokens=r.tokens)
"""

def fill_bound(data: Path, max_len: int = 384, batch: int = 8, draws: int = 2000) -> dict:
    """How full the rows are: random padded batches (as the Trainer draws them) and packed rows.

    Their quotient bounds what packing can buy when a padded slot costs what a packed one does: on data
    whose lengths are already alike, no packer reaches a high ratio, and this tells that apart from
    overhead in the packed path.
    """
    import random

    from knowlm_local.train.base import export_embedded, load_tokenizer
    from knowlm_local.train.sft_data import load_examples, pack, template_for

    tok = load_tokenizer(export_embedded())
    examples, _ = load_examples([str(data)], tok, template_for("auto", tok), max_len, True)
    lens = [len(e.input_ids) for e in examples]
    rng = random.Random(0)
    padded = sum(sum(b) / (batch * max(b)) for b in (rng.sample(lens, batch) for _ in range(draws))) / draws
    rows = [len(r["input_ids"]) for r in pack(examples, max_len)]
    packed = sum(rows) / (max_len * len(rows))
    return {"padded": padded, "packed": packed, "bound": packed / padded, "mean": sum(lens) / len(lens),
            "max": max(lens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--corpus-mb", type=int, default=200)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 2))
    ap.add_argument("--max-len", type=int, default=512,
                    help="row length for padding and packing (recipes/finetune/smollm2-ie-cpu.yaml packs 512)")
    ap.add_argument("--skip-packer", action="store_true")
    ap.add_argument("--skip-trainer", action="store_true", help="only padding against packing (no Trainer check)")
    args = ap.parse_args()
    from knowlm_local.train.base import export_embedded

    export_embedded()  # once, outside the measurements
    tmp = Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    data = mixed_data(tmp)
    print(f"embedded SmolLM2-135M HF export, LoRA r 8, fp32, {args.threads} threads, {args.steps} steps, "
          f"micro batch 8, max_len {args.max_len}, mixed data {data}", flush=True)

    recipe = child(RECIPE.format(threads=args.threads, steps=args.steps, out=str(tmp / "recipe")))
    print(f"CPU recipe smollm2-cpu: {recipe['steps']} steps in {recipe['seconds']:.1f} s "
          f"({recipe['steps'] / recipe['seconds']:.2f} steps/s, {recipe['tokens'] / recipe['seconds']:.0f} tokens/s), "
          f"wall {recipe['wall']:.1f} s with loading, peak RSS {recipe['peak_rss_mb']:.0f} MB", flush=True)

    plan = [("padding", False, False, "varlen"), ("packing", True, False, "varlen"),
            ("packing (mask)", True, False, "mask"), ("plain Trainer", False, True, "varlen"),
            ("ours", False, False, "varlen")]
    if args.skip_trainer:
        plan = plan[:3]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in plan}
    for _ in range(2):
        for name, packing, plain, attention in plan:
            res = child(TRAIN.format(threads=args.threads, steps=args.steps,
                                     out=str(tmp / name.replace(" ", "-").replace("(", "").replace(")", "")),
                                     data=str(data), packing=packing, plain=plain, attention=attention,
                                     max_len=args.max_len))
            res["tps"] = res["tokens"] / res["seconds"]
            runs[name].append(res)
            print(f"  {name:14} {res['seconds']:6.1f} s  {res['tps']:7.0f} tokens/s  peak RSS {res['peak_rss_mb']:.0f} MB",
                  flush=True)
    best = {k: max(v, key=lambda r: r["tps"]) for k, v in runs.items()}
    fill = fill_bound(data, max_len=args.max_len)
    print(f"rows: {fill['mean']:.0f} tokens per example on average (longest {fill['max']}); padded batches of 8 are "
          f"{fill['padded']:.1%} real tokens, packed {args.max_len}-token rows {fill['packed']:.1%}: packing can buy at most "
          f"{fill['bound']:.2f}x on this data at equal cost per position")
    ratio = best['packing']['tps'] / best['padding']['tps']
    print(f"RATIO tokens/s packing / padding = {ratio:.2f}x "
          f"({best['packing']['tps']:.0f} vs {best['padding']['tps']:.0f}; target >= 1.5x; "
          f"{ratio / fill['bound']:.0%} of the fill bound)")
    print(f"RATIO tokens/s packing by length buckets / packing with one block-diagonal row mask = "
          f"{best['packing']['tps'] / best['packing (mask)']['tps']:.2f}x "
          f"({best['packing']['tps']:.0f} vs {best['packing (mask)']['tps']:.0f})")
    if args.skip_trainer:
        return
    print(f"RATIO tokens/s ours / plain transformers Trainer = {best['ours']['tps'] / best['plain Trainer']['tps']:.2f}x "
          f"({best['ours']['tps']:.0f} vs {best['plain Trainer']['tps']:.0f}; target >= 0.95x)")

    if not args.skip_packer:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from packer_bench import run as packer_run

        res = packer_run(size_mb=args.corpus_mb)
        q = res["quarter"]
        print(f"packer: {res['mb']:.0f} MB corpus, {res['corpus_tokens']:,} tokens in {res['seconds']:.0f} s = "
              f"{res['tokens_per_s']:,.0f} tokens/s ({res['mb_per_s']:.2f} MB/s), peak RSS {res['peak_rss_mb']:.0f} MB "
              f"(grew {res['rss_growth_mb']:.0f} MB over the loaded tokenizer)")
        print(f"packer: {q['mb']:.0f} MB corpus, peak RSS {q['peak_rss_mb']:.0f} MB (grew {q['rss_growth_mb']:.0f} MB)")
        print(f"RATIO packer peak RSS full / quarter corpus = {res['peak_rss_ratio_full_vs_quarter']:.3f} "
              "(flat: ~1.0)")

if __name__ == "__main__":
    main()
