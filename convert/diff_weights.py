"""Legacy ZhiXi weights: recover full weights from LLaMA-13B plus the published weight diff.

The first ZhiXi release (``zjunlp/zhixi-13b-diff``, fp32, and ``-diff-fp16``)
could not ship LLaMA's weights, so it shipped ``tuned - llama`` instead;
KnowLM's ``tools/weight_diff.py recover`` adds the diff back onto a LLaMA-13B
checkpoint converted to the HF format. Here the same sum happens one tensor at
a time while the result streams into the GGUF or safetensors writer.

Integrity checks, the ones KnowLM itself documents:

* the MD5 of every diff shard against the list in KnowLM's README (§2.7);
* the "naive integrity check" of ``weight_diff.py`` for the fp32 diff: the sum
  of all recovered tensors, each summed in float32 and accumulated in float32
  in the model's ``state_dict`` order, must be 94052.2891 within 1e-2. KnowLM
  skips it for the fp16 diff, and so do we.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from knowlm_local.convert.tensors import Checkpoint, to_float32

from knowlm_local.errors import KnowLMError

# KnowLM README, "2.7 MD5" (zhixi-13b-diff and zhixi-13b-diff-fp16 shards).
KNOWN_MD5 = {
    "pytorch_model-00001-of-00006.bin": "83cc5089df3eb400c99d9947b8c4f97b",
    "pytorch_model-00002-of-00006.bin": "d264f13f961a0d2a5ba97c1c7f8b58e2",
    "pytorch_model-00003-of-00006.bin": "ac6d767ac50fcc0828ac860c3be4dfad",
    "pytorch_model-00004-of-00006.bin": "55736b822e100f1f0cb35e9ddb3b4471",
    "pytorch_model-00005-of-00006.bin": "0dc1f2a6d02fe7db41a6fa72c7cff138",
    "pytorch_model-00006-of-00006.bin": "c92a59383e10e2c4c3688a82856f6cba",
    "pytorch_model-00001-of-00003.bin": "37322209a703e24bb0b06d2742901741",
    "pytorch_model-00002-of-00003.bin": "6fcc5659bf10c2b335dc846acc6a1870",
    "pytorch_model-00003-of-00003.bin": "03ed19e6106f7228f6a5c103a8684450",
}
# tools/weight_diff.py: `allsum` of the recovered fp32 state dict, atol=1e-2, rtol=0.
ZHIXI_FP32_SUM = 94052.2891
SUM_ATOL = 1e-2

_SUBMODULE_ORDER = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.rotary_emb",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)


def state_dict_order(name: str) -> tuple:
    """Sort key giving a LlamaForCausalLM ``state_dict`` order (the order KnowLM's sum was taken in)."""
    if name.startswith("model.embed_tokens"):
        return (0,)
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
    if m:
        rest = m.group(2)
        sub = next((i for i, s in enumerate(_SUBMODULE_ORDER) if rest.startswith(s)), len(_SUBMODULE_ORDER))
        return (1, int(m.group(1)), sub, rest)
    if name.startswith("model.norm"):
        return (2,)
    if name.startswith("lm_head"):
        return (3,)
    return (4, name)


class DiffRecovery:
    """``base + diff`` for every tensor of the diff, plus the running checksum KnowLM defined."""

    def __init__(
        self, diff: Checkpoint, base: Checkpoint, expected_sum: float | None = ZHIXI_FP32_SUM
    ) -> None:
        self.diff = diff
        self.base = base
        missing = [n for n in diff.names if n not in base and not n.endswith("rotary_emb.inv_freq")]
        if missing:
            raise KnowLMError(
                f"the base model in {base.folder} lacks {len(missing)} tensors of the diff "
                f"(e.g. {missing[0]})",
                "pass LLaMA-13B converted to the Hugging Face format (convert_llama_weights_to_hf.py) "
                "as --diff-base",
            )
        for name in diff.names:
            if name in base and base.meta[name].shape != diff.meta[name].shape:
                raise KnowLMError(
                    f"{name} is {base.meta[name].shape} in the base but {diff.meta[name].shape} in the diff",
                    "the diff belongs to another base model: ZhiXi's diff needs the original LLaMA-13B",
                )
        self.fp32 = any(m.dtype == "F32" for m in diff.meta.values())
        self.expected_sum = expected_sum if self.fp32 else None
        self._sums: dict[str, object] = {}

    def recover(self, name: str) -> np.ndarray:
        """The recovered float32 tensor ``name``; its float32 sum is remembered for :meth:`check`."""
        with self.diff.open(name) as d:
            out = np.array(to_float32(d, self.diff.meta[name].dtype), dtype=np.float32, copy=True)
        if name in self.base:
            with self.base.open(name) as b:
                out += to_float32(b, self.base.meta[name].dtype)
        self._sums[name] = _f32_sum(out)
        return out

    def account(self, name: str) -> None:
        """Count an unwritten tensor (rotary ``inv_freq``) in the checksum, as KnowLM's state dict did."""
        if name not in self._sums:
            self.recover(name)

    def total(self) -> float:
        """The per-tensor sums added up in float32 in state_dict order (``sum()`` over torch scalars)."""
        acc = np.float32(0.0)
        for name in sorted(self._sums, key=state_dict_order):
            acc = np.float32(acc + np.float32(self._sums[name]))
        return float(acc)

    def check(self) -> dict:
        """Raise when the fp32 checksum is off; return what was checked for provenance."""
        total = self.total()
        result = {
            "sum": round(total, 4),
            "expected": self.expected_sum,
            "checked": self.expected_sum is not None,
        }
        if self.expected_sum is not None and abs(total - self.expected_sum) > SUM_ATOL:
            raise KnowLMError(
                f"the recovered weights fail KnowLM's integrity check: their sum is {total:.4f}, "
                f"expected {self.expected_sum} (±{SUM_ATOL})",
                "a base or diff file is corrupted or the base is not the original LLaMA-13B "
                "(convert_llama_weights_to_hf.py output); nothing was written. --skip-checksum overrides",
            )
        return result


def _f32_sum(arr: np.ndarray) -> np.float32:
    """A float32 sum computed the way torch's ``Tensor.sum()`` does on CPU, when torch is at hand."""
    try:
        import torch

        return np.float32(torch.from_numpy(arr).sum().item())
    except ImportError:  # pragma: no cover - torch is needed for the .bin diff anyway
        return np.float32(arr.sum(dtype=np.float32))


def md5_check(files: list[Path], progress=None) -> dict[str, str]:
    """Compare the MD5 of each diff shard KnowLM published a checksum for; raise on a mismatch."""
    checked = {}
    for path in files:
        want = KNOWN_MD5.get(path.name)
        if want is None:
            continue
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
                if progress is not None:
                    progress(len(block))
        got = digest.hexdigest()
        if got != want:
            raise KnowLMError(
                f"{path.name} has MD5 {got}, KnowLM published {want}: the file is corrupted",
                "delete it and download it again",
            )
        checked[path.name] = got
    return checked
