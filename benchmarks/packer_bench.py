"""Pretraining-data packer throughput, and proof that its memory stays flat as the corpus grows.

A synthetic zh+en corpus of about ``--size-mb`` MB is generated on disk
(streamed: random sentences from English and Chinese word lists with number
patterns, documents of a few sentences, about 1% exact duplicates, a few
sentences longer than ``--max-len``), half as blank-line-separated ``.txt``,
half as ``.jsonl``. It is packed by ``prepare_pretrain`` in a fresh child
process, and again a corpus of a quarter the size. Reported: corpus tokens/s
and MB/s of the packing, and the child's peak RSS (``VmHWM``, which exec
resets, so nothing of this process is counted) with its RSS right after the
tokenizer was loaded: flat means the full corpus peaks where the quarter does.

The tokenizer is ``--tokenizer`` (a zoo name, repo id or HF folder), else the
embedded SmolLM2's HF export when the store has it, else the same tokenizer
taken from the embedded GGUF alone (no weights exported).

    python benchmarks/packer_bench.py [--size-mb 300] [--tokenizer DIR] [--max-len 1024] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_EN = ("the of and to in knowledge graph model language large data entity relation event extraction "
            "university city river system network training corpus token sentence document research team "
            "released parameter open source Chinese English bilingual answer question schema instruction "
            "learning neural deep method result table figure experiment baseline improve accuracy recall "
            "precision score dataset benchmark report public company founded located province capital "
            "people history science medicine law finance music sport weather travel food quickly slowly "
            "is was are were has have had will can may should very more most new old small big")
_ZH = ("知识 图谱 模型 语言 数据 实体 关系 事件 抽取 大学 城市 系统 网络 训练 语料 句子 文档 研究 团队 "
            "发布 参数 开源 中文 英文 双语 回答 问题 指令 学习 神经 方法 结果 实验 基线 提升 准确率 召回率 "
            "数据集 报告 公司 成立 位于 省份 首都 人们 历史 科学 医学 法律 金融 音乐 体育 天气 旅行 美食 "
            "杭州 浙江 西湖 我们 他们 这个 那些 非常 已经 可以 应该 进行 通过 以及 但是 因为 所以 的 了 在 是")
EN_WORDS, ZH_WORDS = _EN.split(), _ZH.split()
EN_END = (".", ".", ".", "!", "?", ";")
ZH_END = ("。", "。", "。", "！", "？", "；")

CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
from knowlm_local.train.base import load_tokenizer
from knowlm_local.train.pretrain_data import prepare_pretrain
tok = load_tokenizer(args["tokenizer"])
tok(["warm up"], add_special_tokens=False)
base = status("VmRSS")
t = time.perf_counter()
r = prepare_pretrain(args["inputs"], args["output"], tok, max_len=args["max_len"], force=True)
sec = time.perf_counter() - t
print(json.dumps({"seconds": sec, "rss_base": base, "rss_peak": status("VmHWM"), "samples": r.samples,
                  "tokens": r.tokens, "corpus_tokens": r.corpus_tokens, "documents": r.documents,
                  "duplicates": r.duplicates, "cut_sentences": r.cut_sentences, "bytes": r.bytes,
                  "dtype": r.dtype}))
"""


def _number(rng: random.Random, zh: bool) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.randint(1900, 2030)}年" if zh else f"in {rng.randint(1900, 2030)}"
    if kind == 1:
        return f"{rng.uniform(0, 100):.1f}%"
    if kind == 2:
        return f"第{rng.randint(1, 300)}章" if zh else f"No. {rng.randint(1, 9999)}"
    return f"{rng.randint(1, 12)}月{rng.randint(1, 28)}日" if zh else f"{rng.randint(1, 10**6):,}"


def _sentence(rng: random.Random, zh: bool, long: bool = False) -> str:
    words = rng.choices(ZH_WORDS if zh else EN_WORDS, k=rng.randint(600, 900) if long else rng.randint(4, 28))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), _number(rng, zh))
    if zh:
        return "".join(words) + rng.choice(ZH_END)
    return (" ".join(words) + rng.choice(EN_END)).capitalize()


def _document(rng: random.Random) -> str:
    zh = rng.random() < 0.5
    sentences = [_sentence(rng, zh, long=rng.random() < 0.002) for _ in range(rng.randint(2, 14))]
    if rng.random() < 0.2:  # a paragraph break inside the document
        cut = rng.randrange(1, len(sentences) + 1)
        sentences.insert(cut, "\n")
    return ("" if zh else " ").join(sentences).replace(" \n ", "\n").replace("\n ", "\n")


def make_corpus(folder: Path, size_mb: float, seed: int = 0) -> list[Path]:
    """``books.txt`` + ``web.jsonl`` of about ``size_mb`` MB in all, written as they are generated."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    txt, jsonl = folder / "books.txt", folder / "web.jsonl"
    budget = int(size_mb * 1_000_000) // 2
    recent: list[str] = []
    with open(txt, "w", encoding="utf-8") as ft, open(jsonl, "w", encoding="utf-8") as fj:
        for fh, as_json in ((ft, False), (fj, True)):
            written = 0
            while written < budget:
                doc = rng.choice(recent) if recent and rng.random() < 0.01 else _document(rng)
                recent = (recent + [doc])[-50:]
                line = json.dumps({"text": doc}, ensure_ascii=False) + "\n" if as_json else doc + "\n\n"
                fh.write(line)
                written += len(line.encode("utf-8"))
    return [txt, jsonl]


def default_tokenizer(workdir: Path) -> str:
    """The embedded SmolLM2's HF tokenizer: the store's export if made, else taken from its GGUF."""
    from knowlm_local.store import model_dir
    from knowlm_local.zoo import embedded_card

    card = embedded_card()
    export = model_dir(card.name) / "hf"
    if (export / "tokenizer.json").is_file():
        return str(export)
    from transformers import AutoTokenizer

    from knowlm_local.embedded import embedded_gguf
    from knowlm_local.train.base import fix_digit_split

    gguf = embedded_gguf(card)
    out = workdir / "tokenizer"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    fix_digit_split(out)  # as export_embedded does, so tokens match llama.cpp's
    return str(out)


def _pack(inputs: list[Path], output: Path, tokenizer: str, max_len: int) -> dict:
    args = {"inputs": [str(p) for p in inputs], "output": str(output), "tokenizer": tokenizer, "max_len": max_len}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
    if proc.returncode:
        raise RuntimeError(f"the packing child failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = res["bytes"] / 1e6
    res.update(mb=round(mb, 2), tokens_per_s=round(res["corpus_tokens"] / res["seconds"]),
               mb_per_s=round(mb / res["seconds"], 2), peak_rss_mb=round(res["rss_peak"] / 2**20, 1),
               base_rss_mb=round(res["rss_base"] / 2**20, 1))
    res["rss_growth_mb"] = round(res["peak_rss_mb"] - res["base_rss_mb"], 1)
    return res


def run(size_mb: int = 300, tokenizer=None, max_len: int = 1024, workdir: str | None = None) -> dict:
    """Pack a ``size_mb`` corpus and a quarter-size one in child processes; speed and peak RSS of each."""
    with tempfile.TemporaryDirectory(prefix="packer-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        if tokenizer is None:
            spec = default_tokenizer(root)
        elif isinstance(tokenizer, (str, Path)):
            spec = str(tokenizer)
        else:  # a tokenizer object: the child loads a saved copy
            tokenizer.save_pretrained(root / "tokenizer")
            spec = str(root / "tokenizer")
        t = time.perf_counter()
        full = make_corpus(root / "full", size_mb, seed=1)
        quarter = make_corpus(root / "quarter", size_mb / 4, seed=2)
        generated = time.perf_counter() - t
        big = _pack(full, root / "pt-full", spec, max_len)
        small = _pack(quarter, root / "pt-quarter", spec, max_len)
    keys = ("mb", "seconds", "tokens_per_s", "mb_per_s", "peak_rss_mb", "base_rss_mb", "rss_growth_mb",
            "corpus_tokens", "samples", "documents", "duplicates", "cut_sentences", "dtype")
    return {"size_mb": size_mb, "tokenizer": spec, "max_len": max_len, "generate_seconds": round(generated, 1),
            **{k: big[k] for k in keys}, "quarter": {k: small[k] for k in keys},
            "peak_rss_ratio_full_vs_quarter": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--tokenizer", default=None, help="zoo name, repo id or HF folder (default: embedded SmolLM2)")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--workdir", default=None, help="where the temporary corpus goes (default: the temp dir)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    res = run(args.size_mb, args.tokenizer, args.max_len, args.workdir)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
        return
    q = res["quarter"]
    print(f"tokenizer {res['tokenizer']}, max_len {res['max_len']}")
    for label, r in (("corpus", res), ("1/4 corpus", q)):
        print(f"{label}: {r['mb']} MB, {r['corpus_tokens']:,} tokens -> {r['samples']:,} samples in {r['seconds']:.1f} s: "
              f"{r['tokens_per_s']:,} tokens/s, {r['mb_per_s']} MB/s; peak RSS {r['peak_rss_mb']} MB "
              f"({r['rss_growth_mb']} MB above the {r['base_rss_mb']} MB after loading the tokenizer)")
    print(f"peak RSS full / quarter: {res['peak_rss_ratio_full_vs_quarter']} (flat: close to 1)")


if __name__ == "__main__":
    main()
