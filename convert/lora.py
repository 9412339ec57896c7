"""PEFT LoRA adapters merged tensor by tensor while the base model streams through a writer.

A merge only ever needs the base tensor being written plus its two small
factors, so the adapter is read lazily (it is itself a checkpoint) and the
base model is never loaded whole. The arithmetic follows PEFT's
``get_delta_weight``: ``W + scale * (B @ A)``, transposed when the adapter was
trained with ``fan_in_fan_out``, ``(B @ A).T`` for embedding layers, and
``scale = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), with per-module
overrides from ``alpha_pattern``. It is done in float32 and cast to the output
type afterwards, which is at least as exact as PEFT's own merge.

What cannot be merged into plain Llama weights is refused with a reason
(DoRA, LoRA biases, token adapters), and so is an adapter whose shapes do not
fit the base: that is an adapter trained for another model.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from knowlm_local.convert.tensors import Checkpoint, TensorMeta

from knowlm_local.errors import KnowLMError

_PREFIX = "base_model.model."
_LORA = re.compile(
    r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)
_REPLACE = re.compile(r"^(?P<mod>.+?)\.(?:base_layer|modules_to_save\.[^.]+|original_module)\.weight$")


@dataclass(frozen=True)
class LoraPair:
    """The two factors that make up one module's update, and how to scale and shape it."""

    module: str
    a_key: str
    b_key: str
    embedding: bool
    scale: float


def _pattern_value(patterns: dict, module: str):
    """PEFT's rule: a pattern applies when it equals the module name or matches a dotted suffix of it."""
    for pattern, value in (patterns or {}).items():
        if pattern == module or re.search(rf"(^|\.)(?:{pattern})$", module):
            return value
    return None


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


class LoraAdapter:
    """A PEFT LoRA adapter folder: its config, factor pairs keyed by base tensor name, replacements."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / "adapter_config.json"
        if not cfg_path.is_file():
            if (self.folder / "config.json").is_file():
                raise KnowLMError(
                    f"{self.folder} is a full model, not a LoRA adapter (no adapter_config.json): "
                    "it looks like an already merged checkpoint",
                    f"convert it directly, without --lora: knowlm-local convert {self.folder}",
                )
            raise KnowLMError(
                f"{self.folder} is not a LoRA adapter: adapter_config.json is missing",
                "pass the folder that PEFT's save_pretrained wrote",
            )
        from knowlm_local.jsonio import read_json

        self.config = read_json(cfg_path, what="adapter config", hint="the adapter is damaged: download it again")
        self._refuse_unsupported()
        files = [
            p
            for p in (self.folder / "adapter_model.safetensors", self.folder / "adapter_model.bin")
            if p.is_file()
        ]
        if not files:
            raise KnowLMError(
                f"{self.folder} has adapter_config.json but no adapter_model.safetensors or .bin",
                "the adapter download is incomplete: download it again",
            )
        self.weights = Checkpoint(self.folder, files[:1])
        self.pairs: dict[str, LoraPair] = {}
        self.replacements: dict[str, str] = {}  # base tensor name -> adapter key holding its new value
        self.sha256: str | None = None  # set by the caller once the fingerprint is computed
        self._index()

    @property
    def base_model_name(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    def _refuse_unsupported(self) -> None:
        cfg = self.config
        kind = str(cfg.get("peft_type", "LORA")).upper()
        reasons = []
        if kind != "LORA":
            reasons.append(f"it is a {kind} adapter, only LoRA can be merged")
        if cfg.get("use_dora"):
            reasons.append("it is a DoRA adapter (use_dora)")
        if cfg.get("lora_bias"):
            reasons.append("it trains LoRA biases (lora_bias)")
        if cfg.get("trainable_token_indices"):
            reasons.append("it trains individual token embeddings (trainable_token_indices)")
        if cfg.get("target_parameters"):
            reasons.append("it targets raw parameters (target_parameters)")
        if cfg.get("layer_replication"):
            reasons.append("it replicates layers (layer_replication)")
        if reasons:
            raise KnowLMError(
                f"cannot merge the adapter in {self.folder}: {'; '.join(reasons)}",
                "merge it with PEFT's merge_and_unload() and convert the merged folder",
            )

    def _index(self) -> None:
        found: dict[str, dict[str, str]] = {}
        for key in self.weights.names:
            name = key.removeprefix(_PREFIX)
            if "lora_magnitude_vector" in name:
                raise KnowLMError(
                    f"cannot merge the adapter in {self.folder}: it is a DoRA adapter",
                    "merge it with PEFT's merge_and_unload() and convert the merged folder",
                )
            m = _LORA.match(name)
            if m:
                if name.endswith(".bias"):
                    raise KnowLMError(
                        f"cannot merge the adapter in {self.folder}: it has LoRA biases ({key})",
                        "merge it with PEFT's merge_and_unload() and convert the merged folder",
                    )
                found.setdefault(m["mod"], {})[m["kind"]] = key
                continue
            m = _REPLACE.match(name)
            self.replacements[f"{m['mod']}.weight" if m else name] = key
        alpha_default = float(self.config.get("lora_alpha", 8))
        rslora = bool(self.config.get("use_rslora"))
        for module, parts in found.items():
            embedding = "lora_embedding_A" in parts
            a_key = parts.get("lora_embedding_A" if embedding else "lora_A")
            b_key = parts.get("lora_embedding_B" if embedding else "lora_B")
            if not a_key or not b_key:
                raise KnowLMError(
                    f"the adapter in {self.folder} has only one of the two LoRA factors for {module}",
                    "the adapter file is damaged: download or save it again",
                )
            rank = self.weights.meta[a_key].shape[0]
            alpha = _pattern_value(self.config.get("alpha_pattern", {}), module)
            alpha = float(alpha if alpha is not None else alpha_default)
            scale = alpha / math.sqrt(rank) if rslora else alpha / rank
            self.pairs[f"{module}.weight"] = LoraPair(module, a_key, b_key, embedding, scale)
        if not self.pairs and not self.replacements:
            raise KnowLMError(
                f"the adapter in {self.folder} contains no LoRA weights", "check the adapter folder"
            )

    def touches(self, name: str) -> bool:
        return name in self.pairs or name in self.replacements

    def check_against(self, base: dict[str, TensorMeta], label: str) -> None:
        """Refuse an adapter whose targets or shapes do not fit the base model ``label``."""
        if any(".lora_A" in n or ".lora_B" in n for n in base):
            raise KnowLMError(
                f"the base model {label} itself contains LoRA tensors: it is a PEFT training "
                "checkpoint, not a base model",
                "pass the original base model as the source",
            )
        missing = [n for n in (*self.pairs, *self.replacements) if n not in base and n != "lm_head.weight"]
        if missing:
            raise KnowLMError(
                f"the adapter in {self.folder} targets {len(missing)} tensors that {label} does not have "
                f"(e.g. {missing[0]}): it was trained for a different model architecture",
                "pass the base model the adapter was trained on",
            )
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        for name, pair in self.pairs.items():
            target = _target(base, name)
            a = self.weights.meta[pair.a_key].shape
            b = self.weights.meta[pair.b_key].shape
            if pair.embedding:
                expected = (b[0], a[1])  # (B @ A).T: (num_embeddings, dim) after the transpose below
                want = (target.shape[1], target.shape[0])
            else:
                expected = (b[0], a[1])
                want = tuple(reversed(target.shape)) if fan_in_fan_out else target.shape
            if len(target.shape) != 2 or tuple(want) != expected or a[0] != b[1]:
                raise KnowLMError(
                    f"the adapter does not fit {label}: {name} is {tuple(target.shape)} in the base model, "
                    f"the adapter's factors are A{tuple(a)} and B{tuple(b)}",
                    "the adapter was trained on a different base model (e.g. another size): "
                    "pass the right base",
                )
        for name, key in self.replacements.items():
            target = _target(base, name)
            shape = self.weights.meta[key].shape
            if target is not None and tuple(target.shape) != tuple(shape):
                raise KnowLMError(
                    f"the adapter replaces {name} with shape {tuple(shape)}, "
                    f"but {label} has {tuple(target.shape)}",
                    "the adapter resized the vocabulary or was trained for another base; "
                    "merge it with PEFT and "
                    "convert the merged folder",
                )

    def apply(self, name: str, weight: np.ndarray | None) -> np.ndarray:
        """``weight`` (float32, base tensor ``name``) plus this adapter's change, as a new array."""
        if name in self.replacements:  # modules_to_save, or the saved base layer of a targeted embedding
            out = self.weights.read_f32(self.replacements[name])
        else:
            out = np.array(weight, dtype=np.float32, copy=True)
        pair = self.pairs.get(name)
        if pair is None:
            return out
        a = self.weights.read_f32(pair.a_key)
        b = self.weights.read_f32(pair.b_key)
        delta = b @ a
        if pair.embedding or self.config.get("fan_in_fan_out"):
            delta = delta.T
        out += np.float32(pair.scale) * delta
        return out

    def fingerprint(self) -> str:
        """SHA-256 of the adapter's config and weights: kept in provenance to spot a double merge."""
        digest = hashlib.sha256()
        for path in [self.folder / "adapter_config.json", *self.weights.files]:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        return digest.hexdigest()

    def describe(self) -> dict:
        return {
            "path": str(self.folder.resolve()),
            "base_model_name_or_path": self.base_model_name or None,
            "r": self.config.get("r"),
            "lora_alpha": self.config.get("lora_alpha"),
            "use_rslora": bool(self.config.get("use_rslora")),
            "target_modules": self.config.get("target_modules"),
            "merged_tensors": len(self.pairs) + len(self.replacements),
        }


def _target(base: dict[str, TensorMeta], name: str) -> TensorMeta | None:
    """The base tensor an adapter entry changes (a tied ``lm_head`` is the embedding)."""
    if name in base:
        return base[name]
    return base.get("model.embed_tokens.weight") if name == "lm_head.weight" else None
