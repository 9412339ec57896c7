"""Converter benchmarks, each printing ratios measured in one run.

(a) Throughput and peak RSS of `knowlm-local convert -q f16` on a random Llama of
    1.1B parameters (TinyLlama's shape) written here as f16 safetensors, and as
    legacy .bin shards. Target: peak RSS / model size <= 0.25.
(b) The same safetensors checkpoint through llama.cpp's own convert_hf_to_gguf.py
    (from the llama-cpp-python sdist, with its vendored gguf-py): time ratio,
    peak-RSS ratio, and tensor-by-tensor equality of the two F16 files.
(c) Perplexity of Q4_K_M vs F16 on held-out text (Python standard-library
    docstrings, which SmolLM2 was not calibrated on) with the embedded SmolLM2
    exported to Hugging Face format and converted by us.

Every conversion runs as a separate process; its peak RSS is the kernel's
``ru_maxrss`` for that process (``os.wait4`` in a small wrapper, see
:data:`WRAPPER`), so nothing the benchmark itself holds is counted.

    python benchmarks/bench_convert.py [--parts a,b,c] [--workdir DIR] [--llama-cpp-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
)
SDIST = Path("/tmp/dl/llama_cpp_python-0.3.36.tar.gz")


# Linux copies the parent's high-water RSS into a child's ru_maxrss at exec, so a child started from this
# (large) process would report at least our own peak. A small wrapper process starts the command instead
# and reports that grandchild's ru_maxrss, which then reflects only the command itself.
WRAPPER = r"""
import os, subprocess, sys, tempfile
with tempfile.TemporaryFile() as err:
    proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    err.seek(0)
    sys.stderr.buffer.write(err.read()[-4000:])
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run ``cmd`` to completion; (wall seconds, peak RSS in bytes) of that process alone."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, rss.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')[-3000:]}")
        return seconds, int(open(rss.name).read()) * 1024


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def build_checkpoint(folder: Path) -> int:
    """A random 1.1B Llama as f16 safetensors shards + a SentencePiece tokenizer; returns the weight bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from convert_fixtures import save_llama_tokenizer, train_sentencepiece

    if (folder / "config.json").is_file():
        return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    h, ff, n_layers = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"]
    kv = SHAPE["num_key_value_heads"] * h // SHAPE["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (SHAPE["vocab_size"], h)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (ff, h),
                p + "mlp.up_proj.weight": (ff, h),
                p + "mlp.down_proj.weight": (h, ff),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (SHAPE["vocab_size"], h)})
    rng = np.random.default_rng(0)
    shard, size, files, weight_map = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, shape in shapes.items():
        if len(shape) == 1:
            arr = np.ones(shape, np.float16)
        else:
            arr = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        shard[name] = arr
        size += arr.nbytes
        if size > 800_000_000:
            flush()
    if shard:
        flush()
    total = len(files)
    for i, old in enumerate(files):  # the hub's naming: model-0000i-of-0000n.safetensors
        new = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (folder / old).rename(folder / new)
        weight_map = {k: (new if v == old else v) for k, v in weight_map.items()}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "hidden_act": "silu",
        **SHAPE,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_llama_tokenizer(train_sentencepiece(folder.parent / "sp"), folder)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def bin_copy(src: Path, dst: Path) -> int:
    """The same weights as legacy torch .bin shards (how KnowLM and OneKE ship theirs)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    if not (dst / "config.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for shard in sorted(src.glob("*.safetensors")):
            torch.save(
                load_file(shard),
                dst / shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin"),
            )
        for f in src.iterdir():
            if f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
                shutil.copyfile(f, dst / f.name)
    return sum(p.stat().st_size for p in dst.glob("*.bin"))


def knowlm_cmd(src: Path, out: Path, quant: str = "f16") -> list[str]:
    exe = Path(sys.executable).parent / "knowlm-local"
    return [str(exe), "convert", str(src), "-q", quant, "-o", str(out), "--force"]


def part_a(work: Path) -> dict:
    ckpt = work / "llama-1.1b"
    size = build_checkpoint(ckpt)
    out = work / "ours-f16.gguf"
    seconds, rss = run_child(knowlm_cmd(ckpt, out))
    print(
        f"(a) safetensors {gb(size)} -> F16 GGUF in {seconds:.1f} s ({size / seconds / 1e6:.0f} MB/s), "
        f"peak RSS {gb(rss)}, peak RSS / model size = {rss / size:.3f} (target <= 0.25)"
    )
    binary = work / "llama-1.1b-bin"
    bsize = bin_copy(ckpt, binary)
    bout = work / "ours-bin-f16.gguf"
    bsec, brss = run_child(knowlm_cmd(binary, bout))
    print(
        f"(a) legacy .bin {gb(bsize)} -> F16 GGUF in {bsec:.1f} s, peak RSS {gb(brss)}, "
        f"peak RSS / model size = {brss / bsize:.3f}"
    )
    equal, total = tensors_equal(out, bout)
    print(f"(a) .bin and safetensors conversions identical: {equal}/{total} tensors")
    return {"out": out, "seconds": seconds, "rss": rss}


def tensors_equal(a: Path, b: Path) -> tuple[int, int]:
    """(tensors equal, tensors compared); names, types, shapes and bytes must all match."""
    import numpy as np
    from gguf import GGUFReader

    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    equal = 0
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None:
            print(f"    only in one file: {name}")
            continue
        if (
            x.tensor_type == y.tensor_type
            and list(x.shape) == list(y.shape)
            and np.array_equal(x.data, y.data)
        ):
            equal += 1
        else:
            print(f"    differs: {name} ({x.tensor_type.name} vs {y.tensor_type.name})")
    return equal, len(set(ta) | set(tb))


def llama_cpp_src(work: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    root = work / "llama-cpp-python-src"
    if not root.is_dir():
        if not SDIST.is_file():
            raise SystemExit(
                f"no sdist at {SDIST}: pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36"
            )
        with tarfile.open(SDIST) as tar:
            tar.extractall(root, filter="data")
    return next(root.glob("*/vendor/llama.cpp"))


def part_b(work: Path, mine: dict | None, src_dir: str | None) -> None:
    ckpt = work / "llama-1.1b"
    size = build_checkpoint(ckpt)
    if mine is None:
        ours = work / "ours-f16.gguf"
        our_sec, our_rss = run_child(knowlm_cmd(ckpt, ours))
    else:
        ours, our_sec, our_rss = mine["out"], mine["seconds"], mine["rss"]
    vendor = llama_cpp_src(work, src_dir)
    theirs = work / "llamacpp-f16.gguf"
    env = {**os.environ, "PYTHONPATH": str(vendor / "gguf-py")}
    cmd = [
        sys.executable,
        str(vendor / "convert_hf_to_gguf.py"),
        str(ckpt),
        "--outtype",
        "f16",
        "--outfile",
        str(theirs),
    ]
    their_sec, their_rss = run_child(cmd, env)
    equal, total = tensors_equal(ours, theirs)
    print(
        f"(b) ours {our_sec:.1f} s / peak RSS {gb(our_rss)}; "
        f"llama.cpp convert_hf_to_gguf.py {their_sec:.1f} s / "
        f"peak RSS {gb(their_rss)} (model {gb(size)})"
    )
    print(
        f"(b) time ratio ours/llama.cpp = {our_sec / their_sec:.2f}, peak-RSS ratio ours/llama.cpp = "
        f"{our_rss / their_rss:.2f}, identical F16 tensors: {equal}/{total}"
    )


HELD_OUT_MODULES = (
    "argparse",
    "json",
    "logging",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "subprocess",
    "textwrap",
    "unittest",
    "csv",
    "datetime",
    "decimal",
    "heapq",
    "shutil",
)


def held_out_text() -> str:
    import importlib
    import inspect

    parts = []
    for name in HELD_OUT_MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and inspect.getdoc(obj):
                parts.append(inspect.getdoc(obj))
    return "\n\n".join(p for p in parts if p)


def perplexity(path: Path, tokens: list[int], ctx: int = 512) -> float:
    """exp(mean NLL) of each token given the ones before it in its window of ``ctx`` tokens."""
    import numpy as np
    from knowlm_local.convert.verify import open_scorer

    llm = open_scorer(path, ctx)
    nll, count = 0.0, 0
    try:
        for start in range(0, len(tokens) - 1, ctx):
            window = tokens[start : start + ctx]
            if len(window) < 2:
                break
            llm.reset()
            llm.eval(window)
            logits = np.array(llm.scores[: len(window)], dtype=np.float64)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
            count += len(window) - 1
    finally:
        llm.close()
    return float(np.exp(nll / count))


def part_c(work: Path, n_tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_local.embedded import embedded_gguf

    hf = work / "smollm2-hf"
    if not (hf / "config.json").is_file():
        path = embedded_gguf()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
    out = work / "smollm2-gguf"
    seconds, _ = run_child(knowlm_cmd(hf, out, "f16,q4_k_m"))
    f16, q4 = out / "smollm2-hf-f16.gguf", out / "smollm2-hf-q4_k_m.gguf"
    tokens = AutoTokenizer.from_pretrained(hf)(held_out_text())["input_ids"][:n_tokens]
    ppl_f16, ppl_q4 = perplexity(f16, tokens), perplexity(q4, tokens)
    print(
        f"(c) SmolLM2-135M, {len(tokens)} held-out tokens (stdlib docstrings), windows of 512: "
        f"PPL F16 {ppl_f16:.3f}, PPL Q4_K_M {ppl_q4:.3f}, ratio Q4_K_M/F16 = {ppl_q4 / ppl_f16:.4f}; "
        f"size ratio {q4.stat().st_size / f16.stat().st_size:.3f} (both from one conversion, {seconds:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--workdir", default="/tmp/knowlm-bench-convert")
    parser.add_argument("--llama-cpp-src", default=None, help="vendor/llama.cpp of an unpacked sdist")
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    mine = part_a(work) if "a" in parts else None
    if "b" in parts:
        part_b(work, mine, args.llama_cpp_src)
    if "c" in parts:
        part_c(work, args.ppl_tokens)


if __name__ == "__main__":
    main()
