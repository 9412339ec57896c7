"""Does a GGUF compute what the Hugging Face weights compute? Same token ids through both, compare the logits.

The reference is transformers on the original folder (with PEFT applying the
adapter when one was merged): an independent implementation of the same
model, so a conversion bug (a missed q/k permutation, a wrong norm epsilon, a
mis-tied output layer, a misread tokenizer) shows up as disagreement.

Reported per file: top-1 agreement (how often both pick the same next token),
mean KL divergence of the next-token distributions, the largest absolute
logit error, and whether llama.cpp tokenizes every prompt to the same ids as
transformers. Thresholds depend on the quant type: an F16 file must agree
almost everywhere, a 4-bit one is allowed to drift a little.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowlm_local.errors import KnowLMError

DEFAULT_PROMPTS = (
    "The capital of France is Paris. The capital of Germany is",
    (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nList three primary colors.\n\n### Response:\n"
    ),
    "浙江大学位于中国浙江省杭州市，是一所综合性研究型大学。它的前身是",
    "知识图谱由实体和关系组成，例如（杭州，位于，浙江）。请从下面的句子中抽取三元组：",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Knowledge extraction turns unstructured text into structured facts such as (entity, relation, entity).",
)

# quant -> (minimum top-1 agreement, maximum mean KL divergence in nats). Calibrated on the worst case we
# have, the 135M SmolLM2 (itself rebuilt from a Q4_1 file), where 4-bit types already lose a quarter of the
# top-1 choices; 7B/13B models agree far better. A conversion bug (a missed q/k permutation) gives top-1
# ~40% and KL ~1.4 there even in F16, so F16/BF16/F32 files, the ones every quant is made from, are judged
# strictly and the quantized ones loosely.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "f32": (0.98, 0.002),
    "f16": (0.97, 0.005),
    "bf16": (0.95, 0.02),
    "q8_0": (0.90, 0.05),
    "q6_k": (0.85, 0.10),
    "q5_k_m": (0.70, 0.30),
    "q5_k_s": (0.70, 0.30),
    "q5_1": (0.70, 0.30),
    "q5_0": (0.70, 0.30),
    "q4_k_m": (0.65, 0.40),
    "q4_k_s": (0.65, 0.40),
    "q4_1": (0.60, 0.50),
    "iq4_nl": (0.60, 0.50),
    "iq4_xs": (0.60, 0.50),
    "q4_0": (0.45, 0.80),
    "q3_k_l": (0.40, 1.00),
    "q3_k_m": (0.40, 1.00),
    "q3_k_s": (0.35, 1.20),
    "q2_k": (0.30, 1.50),
}
_FILE_TYPE_NAMES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
    25: "iq4_nl",
    30: "iq4_xs",
    32: "bf16",
}


@dataclass
class VerifyResult:
    """One GGUF compared with the reference."""

    gguf: str
    quant: str
    positions: int
    top1: float
    kl_mean: float
    max_abs_error: float
    tokens_match: int
    prompts: int
    min_top1: float
    max_kl: float

    @property
    def passed(self) -> bool:
        return (
            self.tokens_match == self.prompts and self.top1 >= self.min_top1 and self.kl_mean <= self.max_kl
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {Path(self.gguf).name} [{self.quant}]: "
            f"top-1 {self.top1:.1%} (min {self.min_top1:.0%}), "
            f"KL {self.kl_mean:.4f} (max {self.max_kl}), max |logit error| {self.max_abs_error:.3f}, "
            f"tokenizer {self.tokens_match}/{self.prompts} prompts identical, {self.positions} positions"
        )


def file_quant(path: Path) -> str:
    from knowlm_local.gguf_check import read_metadata

    value = read_metadata(Path(path), {"general.file_type"}).get("general.file_type")
    return _FILE_TYPE_NAMES.get(int(value), f"type{value}") if value is not None else "f16"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_logits(
    hf_dir: Path, prompts: list[str], lora: Path | None = None, dtype: str = "float32"
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Token ids and logits from transformers for each prompt (PEFT applies ``lora`` when given)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype))
        if lora is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, lora).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise KnowLMError(f"transformers cannot load {hf_dir}{' with ' + str(lora) if lora else ''}: "
                          f"{str(exc).splitlines()[0][:300]}",
                          "check that the folder has config.json, weights and tokenizer files") from exc
    model.eval()
    ids, logits = [], []
    with torch.inference_mode():
        for prompt in prompts:
            tokens = tokenizer(prompt)["input_ids"]
            ids.append(list(tokens))
            out = model(torch.tensor([tokens])).logits[0].float().numpy()
            logits.append(out)
    del model
    return ids, logits


def open_scorer(gguf: str | Path, n_ctx: int, threads: int | None = None) -> Any:
    """A CPU llama.cpp context that keeps the logits of every position (for comparisons and perplexity)."""
    from knowlm_local.backends.llamacpp_fast import llama_class

    # The same thread count for single-token and batch evaluation: llama-cpp-python's defaults differ
    # (half the CPUs vs all of them), and OpenMP resizing its team between the two can stall for seconds
    # on a busy machine.
    threads = threads or os.cpu_count() or 1
    try:
        return llama_class(fast=False)(  # plain Llama, loaded as every model here is (llamacpp_cpu's AMX guard)
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            logits_all=True,
            verbose=False,
            n_gpu_layers=0,
            n_threads=threads,
            n_threads_batch=threads,
        )
    except (ValueError, RuntimeError) as exc:
        raise KnowLMError(
            f"llama.cpp cannot load {gguf}", "the conversion produced an unusable file"
        ) from exc


def compare(
    gguf: Path,
    prompts: list[str],
    ids: list[list[int]],
    ref: list[np.ndarray],
    quant: str | None = None,
    threads: int | None = None,
) -> VerifyResult:
    """Run the same ids through llama.cpp and score the agreement with the reference logits."""
    quant = quant or file_quant(gguf)
    n_ctx = max(len(t) for t in ids) + 16
    llm = open_scorer(gguf, n_ctx, threads)
    agree = total = matches = 0
    kls, worst = [], 0.0
    try:
        for prompt, tokens, want in zip(prompts, ids, ref, strict=True):
            matches += list(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)) == tokens
            llm.reset()
            llm.eval(tokens)
            got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
            n = min(got.shape[1], want.shape[1])
            got, exp = got[:, :n], want[:, :n]
            agree += int((got.argmax(-1) == exp.argmax(-1)).sum())
            total += len(tokens)
            lp, lq = _log_softmax(exp), _log_softmax(got)
            kls.extend((np.exp(lp) * (lp - lq)).sum(-1).tolist())
            worst = max(worst, float(np.abs(got - exp).max()))
    finally:
        llm.close()
    min_top1, max_kl = THRESHOLDS.get(quant, (0.5, 1.0))
    return VerifyResult(
        str(gguf),
        quant,
        total,
        agree / max(total, 1),
        float(np.mean(kls)),
        worst,
        matches,
        len(prompts),
        min_top1,
        max_kl,
    )


def verify(
    ggufs: list[Path],
    hf_dir: Path,
    lora: Path | None = None,
    prompts: list[str] | None = None,
    threads: int | None = None,
    say=None,
) -> list[VerifyResult]:
    """Compare every GGUF in ``ggufs`` with transformers on ``hf_dir`` (+ ``lora``); results, pass or fail."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise KnowLMError(
            f"{hf_dir} is not a Hugging Face model folder (no config.json)",
            "pass the folder the GGUF was converted from",
        )
    from knowlm_local.convert.hf_to_gguf import LlamaSpec, read_config
    from knowlm_local.gguf_check import scan

    for path in ggufs:  # the cheap checks first: a damaged GGUF must not cost a transformers load
        if not Path(path).is_file():
            raise KnowLMError(f"no such GGUF file: {path}", "check the path")
        scan(Path(path))
    LlamaSpec.from_config(read_config(hf_dir), hf_dir)
    prompts = list(prompts or DEFAULT_PROMPTS)
    if say:
        say(f"running {len(prompts)} prompts through transformers ({hf_dir.name}) for reference logits")
    ids, ref = reference_logits(hf_dir, prompts, lora)
    results = []
    for path in ggufs:
        result = compare(Path(path), prompts, ids, ref, threads=threads)
        if say:
            say(result.line())
        results.append(result)
    return results


def require_pass(results: list[VerifyResult], removed: bool = False) -> None:
    """Raise when any result failed (``removed``: the caller deletes the files, say so)."""
    failed = [r for r in results if not r.passed]
    if failed:
        names = ", ".join(Path(r.gguf).name for r in failed)
        raise KnowLMError(
            f"verification failed for {names}: the GGUF does not compute what the original weights compute"
            + ("; the converted files were removed" if removed else ""),
            "see the numbers above; a tokenizer mismatch or a very low top-1 agreement "
            "means a broken conversion",
        )


def verify_spec(
    gguf: str,
    hf_dir: str | None = None,
    lora: str | None = None,
    prompts: list[str] | None = None,
    threads: int | None = None,
    say=None,
) -> list[VerifyResult]:
    """``verify`` for what a user types: a GGUF path or store name; HF folder from its provenance."""
    from knowlm_local.convert.outputs import read_provenance

    from knowlm_local.store import resolve

    path = Path(gguf).expanduser()
    if not path.is_file():
        resolved = resolve(gguf)
        if resolved.kind != "gguf":
            raise KnowLMError(f"{gguf} is not a GGUF model", "pass a .gguf file or a converted store name")
        path = resolved.path
    if hf_dir is None:
        record = read_provenance(path.parent).get("files", {}).get(path.name) or {}
        source = (record.get("source") or {}).get("path")
        if not source:
            raise KnowLMError(
                f"no provenance.json entry says where {path.name} came from",
                "pass the Hugging Face folder it was converted from as the second argument",
            )
        hf_dir = source
        if lora is None and record.get("adapter"):
            lora = record["adapter"].get("path")
    return verify(
        [path], Path(hf_dir), lora=Path(lora) if lora else None, prompts=prompts, threads=threads, say=say
    )
