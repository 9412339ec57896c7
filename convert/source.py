"""The weights a writer consumes: a checkpoint (+ a ZhiXi diff, + a LoRA delta), one tensor at a time.

Both writers (GGUF and merged safetensors) iterate the same stream, so a LoRA
merge or a diff recovery behaves identically whatever the output format, and
neither writer knows where its tensors came from.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
from knowlm_local.convert.diff_weights import DiffRecovery
from knowlm_local.convert.lora import LoraAdapter
from knowlm_local.convert.tensors import FLOAT_DTYPES, Checkpoint, TensorMeta, to_float32

# Tensors a Llama checkpoint may carry that no runtime needs (recomputed at load time).
SKIP_SUFFIXES = ("rotary_emb.inv_freq", "attn.masked_bias", "attn.bias")
TIED = ("lm_head.weight", "model.embed_tokens.weight")


class WeightStream:
    """Ordered tensor metadata up front, then each tensor's final value on demand."""

    def __init__(
        self,
        ckpt: Checkpoint,
        lora: LoraAdapter | None = None,
        diff: DiffRecovery | None = None,
        tie_word_embeddings: bool = False,
    ) -> None:
        self.ckpt = diff.diff if diff is not None else ckpt
        self.lora = lora
        self.diff = diff
        self._meta: dict[str, TensorMeta] = {}
        self.skipped: list[str] = []
        for name, meta in self.ckpt.meta.items():
            if name.endswith(SKIP_SUFFIXES):
                self.skipped.append(name)
                continue
            if diff is not None or lora is not None and lora.touches(name) and meta.dtype in FLOAT_DTYPES:
                meta = replace(meta, dtype="F32")
            self._meta[name] = meta
        # A tied output layer that the adapter changes must be written as its own tensor.
        if lora is not None and TIED[0] not in self._meta and lora.touches(TIED[0]) and TIED[1] in self._meta:
            self._meta[TIED[0]] = replace(self._meta[TIED[1]], name=TIED[0], dtype="F32")
        self.tied_alias = TIED[0] in self._meta and TIED[0] not in self.ckpt.meta

    @property
    def names(self) -> list[str]:
        return list(self._meta)

    def meta(self, name: str) -> TensorMeta:
        return self._meta[name]

    def items(self) -> list[TensorMeta]:
        return list(self._meta.values())

    @property
    def source_dtype(self) -> str:
        """The float type of most 2-D tensors in the source (picks an F16 or BF16 intermediate)."""
        counts = Counter(
            m.dtype for m in self.ckpt.meta.values() if len(m.shape) == 2 and m.dtype in FLOAT_DTYPES
        )
        if self.diff is not None:
            counts = Counter(m.dtype for m in self.diff.base.meta.values() if len(m.shape) == 2)
        return counts.most_common(1)[0][0] if counts else "F16"

    @property
    def total_bytes(self) -> int:
        return sum(self.ckpt.meta[n].nbytes for n in self._meta if n in self.ckpt.meta)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[np.ndarray, str]]:
        """``(array, dtype)`` for ``name`` with the diff and adapter applied; valid inside the block."""
        source = TIED[1] if (name == TIED[0] and self.tied_alias) else name
        if self.diff is not None:
            arr = self.diff.recover(source)
            if self.lora is not None and self.lora.touches(name):
                arr = self.lora.apply(name, arr)
            yield arr, "F32"
            return
        if self.lora is not None and self.lora.touches(name):
            meta = self.ckpt.meta[source]
            if name in self.lora.replacements:
                yield self.lora.apply(name, None), "F32"
                return
            with self.ckpt.open(source) as arr:
                merged = self.lora.apply(name, to_float32(arr, meta.dtype))
            yield merged, "F32"
            return
        with self.ckpt.open(source) as arr:
            yield arr, self.ckpt.meta[source].dtype

    def finish(self) -> dict | None:
        """After the last tensor: account for skipped tensors in the diff checksum and check it."""
        if self.diff is None:
            return None
        for name in self.skipped:
            self.diff.account(name)
        return (
            self.diff.check()
            if self.diff.expected_sum is not None
            else {"sum": round(self.diff.total(), 4), "checked": False}
        )
