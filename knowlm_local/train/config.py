"""Training configs: typed dataclasses read from YAML recipes, with command-line overrides on top.

Precedence is command line over file over defaults. Every key is checked:
an unknown key in a recipe or on the command line is an error that names
the closest valid key (a typo must not silently fall back to a default), and
every value is converted to its field's type with the range checks in
``__post_init__``. Nested sections (``lora``, ``data``, ``quant``) are
addressed on the command line as ``--lora.r 8``; top-level keys as
``--learning-rate 2e-4`` (dashes and underscores are the same).
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

MODES = ("lora", "qlora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
PACKED_ATTENTION = ("varlen", "mask")  # data.packed_attention: see train/varlen.py


@dataclass
class LoraSettings:
    """LoRA adapter shape (alpaca-lora / ZhiXi defaults)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    use_rslora: bool = False

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r must be >= 1")
        _check(self.alpha > 0, "lora.alpha must be > 0")
        _check(0 <= self.dropout < 1, "lora.dropout must be in [0, 1)")
        _check(bool(self.target_modules), "lora.target_modules must name at least one module")


@dataclass
class QuantSettings:
    """QLoRA's 4-bit base (bitsandbytes): nf4 with double quantization, as the QLoRA paper and ZhiXi's script."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True

    def __post_init__(self) -> None:
        _check(self.bits in (4, 8), "quant.bits must be 4 or 8")
        _check(self.quant_type in ("nf4", "fp4"), "quant.quant_type must be nf4 or fp4")


@dataclass
class DataSettings:
    """What to train on and how it becomes token sequences."""

    train: list[str] = field(default_factory=list)  # JSONL files: IE instructions (build-ie-data), Alpaca or chat
    dev: list[str] = field(default_factory=list)
    template: str = "auto"  # auto (the model's own, as extract and chat use it), alpaca, oneke, chatml, gguf
    max_len: int = 512  # cutoff in tokens (prompt + answer)
    packing: bool = False  # several examples per row, attention kept within each
    packed_attention: str = "varlen"  # varlen: each example's own blocks only (train/varlen.py); mask: one row mask
    response_only: bool = True  # loss on the answer only (the prompt is masked)
    shuffle: bool = True

    def __post_init__(self) -> None:
        _check(self.max_len >= 16, "data.max_len must be >= 16")
        _check(self.packed_attention in PACKED_ATTENTION,
               f"data.packed_attention must be one of {', '.join(PACKED_ATTENTION)}")


@dataclass
class FinetuneConfig:
    """One supervised fine-tuning run (LoRA, QLoRA or full)."""

    model: str = ""
    output_dir: str = ""
    mode: str = "lora"
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float = 3e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    precision: str = "auto"  # bf16 where supported, else fp16 on CUDA, fp32 on the CPU
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    eval_steps: int = 0  # 0: evaluate at the end only (when there is dev data)
    deepspeed: str = ""  # a DeepSpeed JSON config (recipes/deepspeed/*.json) or ""
    gpus: int = 0  # 0: what the machine has (or the CPU); >1 launches torchrun / deepspeed
    hostfile: str = ""  # multi-node: DeepSpeed's hostfile
    threads: int = 0  # CPU threads for torch (0: torch's default)
    revision: str = ""

    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        _check(self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {', '.join(SCHEDULERS)}")
        _check(self.micro_batch_size >= 1 and self.gradient_accumulation >= 1,
               "micro_batch_size and gradient_accumulation must be >= 1")
        _check(self.learning_rate > 0, "learning_rate must be > 0")
        _check(self.epochs > 0 or self.max_steps > 0, "epochs must be > 0 (or max_steps set)")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
        _check(self.save_steps >= 1 and self.logging_steps >= 1, "save_steps and logging_steps must be >= 1")


@dataclass
class PretrainConfig:
    """Continued pretraining on token stores written by `prepare-pretrain` (full parameters)."""

    model: str = ""
    output_dir: str = ""
    data: list[str] = field(default_factory=list)  # token store folders
    weights: dict[str, float] = field(default_factory=dict)  # source -> mixing weight
    epochs: float = 1.0
    max_steps: int = -1
    micro_batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float = 1.5e-5
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    deepspeed: str = ""
    gpus: int = 0
    hostfile: str = ""
    threads: int = 0
    revision: str = ""

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        _check(self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {', '.join(SCHEDULERS)}")
        _check(self.micro_batch_size >= 1 and self.gradient_accumulation >= 1,
               "micro_batch_size and gradient_accumulation must be >= 1")
        _check(self.learning_rate > 0, "learning_rate must be > 0")
        _check(self.epochs > 0 or self.max_steps > 0, "epochs must be > 0 (or max_steps set)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise KnowLMError(f"invalid training config: {message}", "fix the recipe or the command-line override")


def _closest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """``value`` (from YAML or a command-line string) as ``kind``; a one-line error naming ``where`` otherwise."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return "" if value is None else str(value)
        if origin is list:
            (item,) = typing.get_args(kind)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError(value)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            key_t, val_t = typing.get_args(kind)
            if isinstance(value, str):  # "a=1,b=2"
                value = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            if not isinstance(value, dict):
                raise ValueError(value)
            return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise KnowLMError(f"config key {where}: {value!r} is not a {name}", "fix the recipe or the override") from None
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data``, every key checked and converted."""
    if not isinstance(data, dict):
        raise KnowLMError(f"config section {where or 'top level'} must be a mapping, got {type(data).__name__}",
                          "write it as `key: value` lines")
    hints = _hints(cls)
    valid = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            raise KnowLMError(f"unknown config key {where + str(key)!r}", _closest(name, valid))
        kind = hints[name]
        if is_dataclass(kind):
            values[name] = from_dict(kind, value or {}, f"{where}{name}.")
        else:
            values[name] = _coerce(value, kind, where + name)
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if is_dataclass(value) else value
    return out


def apply_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """``cfg`` with ``{"lora.r": "8", "learning-rate": "2e-4"}`` applied (strings converted by type)."""
    for dotted, value in overrides.items():
        cfg = _set(cfg, dotted.replace("-", "_").split("."), value, dotted)
    return cfg


def _set(cfg: Any, path: list[str], value: str, shown: str) -> Any:
    valid = [f.name for f in fields(cfg)]
    head = path[0]
    if head not in valid:
        raise KnowLMError(f"unknown option --{shown}", _closest(head, valid).replace("'", "'--", 1))
    hints = _hints(type(cfg))
    current = getattr(cfg, head)
    if is_dataclass(current):
        if len(path) == 1:
            raise KnowLMError(f"--{shown} is a section", f"set one of its keys, e.g. --{shown}.{fields(current)[0].name}")
        return replace(cfg, **{head: _set(current, path[1:], value, shown)})
    if len(path) > 1:
        raise KnowLMError(f"unknown option --{shown}", f"{head} has no sub-keys")
    return replace(cfg, **{head: _coerce(value, hints[head], shown)})


def parse_extra_args(args: list[str]) -> dict[str, str]:
    """``["--max-steps", "20", "--lora.r=8"]`` -> ``{"max-steps": "20", "lora.r": "8"}`` (flags: ``--x`` = true)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise KnowLMError(f"unexpected argument {arg!r}", "overrides look like --key value, e.g. --max-steps 20")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        out[key] = value
        i += 1
    return out


def load_config(cls: type, path: str | None, overrides: dict[str, str] | None = None) -> Any:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; relative paths in the file are
    resolved against the file's folder, so a recipe runs from any working directory."""
    data: dict[str, Any] = {}
    base: Path | None = None
    if path:
        data = read_yaml(Path(path))
        base = Path(path).resolve().parent
    cfg = from_dict(cls, data)
    cfg = apply_overrides(cfg, overrides or {})
    return resolve_paths(cfg, base)


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    from knowlm_local.jsonio import decode_utf8, read_bytes

    text = decode_utf8(read_bytes(path, "recipe", "pass a YAML recipe file"), str(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise KnowLMError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}",
                          "fix the recipe there") from None
    except RecursionError:
        raise KnowLMError(f"{path} nests YAML too deeply", "a recipe is a flat mapping with a few sections") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KnowLMError(f"{path} must be a mapping of config keys, not {type(data).__name__}",
                          "write the recipe as `key: value` lines")
    return data


def _recipe_path(value: str, base: Path | None) -> str:
    """A path written in a recipe: ``recipes/...`` and relative paths are found where they exist."""
    if not value or base is None or Path(value).is_absolute() or Path(value).expanduser().exists():
        return value
    for root in (base, *base.parents):
        candidate = root / value
        if candidate.exists():
            return str(candidate)
    return value


def resolve_paths(cfg: Any, base: Path | None) -> Any:
    """Data files and DeepSpeed configs named in a recipe, relative to the recipe (or the repo it sits in)."""
    changes: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("train", "dev", "data") and isinstance(value, list):
            changes[f.name] = [_recipe_path(v, base) for v in value]
        elif f.name in ("deepspeed", "hostfile") and isinstance(value, str):
            changes[f.name] = _recipe_path(value, base)
        elif is_dataclass(value):
            changes[f.name] = resolve_paths(value, base)
    return replace(cfg, **changes) if changes else cfg


__all__ = ["DataSettings", "FinetuneConfig", "LoraSettings", "PretrainConfig", "QuantSettings", "apply_overrides",
           "from_dict", "load_config", "parse_extra_args", "to_dict", "MISSING"]
