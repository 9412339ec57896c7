"""How much memory a Hugging Face model needs, and whether an ``--allocate`` list holds it.

The arithmetic is kept apart from loading so that it can be checked on
synthetic numbers (no GPU needed) and so that a plan that cannot work is
refused *before* transformers spends minutes reading weights and then dies
with a CUDA out-of-memory error half way through.

A model is seen as the units accelerate places whole on one device
(``device_map="auto"`` never splits a decoder layer): the embedding, each
decoder layer, and the head (``lm_head`` plus the final norm). Sizes come from
the safetensors headers (exact parameter counts, no weights read) or, for
legacy ``.bin`` checkpoints, from ``config.json`` (the Llama shape formula).

``--allocate 10,10,10`` keeps KnowLM's meaning: GiB of *weights* per GPU,
passed to accelerate as ``max_memory``; what is left on each GPU holds the KV
cache and activations.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from knowlm_local.errors import KnowLMError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# bits per weight of a quantized linear layer: int8 + per-row scales; nf4 + one fp32 absmax per 64 weights
# (an upper bound: double quantization makes nf4 about 4.13 bits)
QUANT_BITS = {8: 8.0, 4: 4.5}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBED = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")


@dataclass(frozen=True)
class Block:
    """One placement unit: ``linear`` parameters (quantizable 2-D weights), ``other`` ones (kept in dtype)."""

    name: str
    linear: int
    other: int

    def nbytes(self, dtype: str, bits: int | None = None) -> int:
        """Bytes in memory: bitsandbytes quantizes linear layers; embeddings, norms and lm_head keep dtype."""
        per = DTYPE_BYTES[dtype]
        if bits is None:
            return int((self.linear + self.other) * per)
        return int(math.ceil(self.linear * QUANT_BITS[bits] / 8) + self.other * per)


@dataclass(frozen=True)
class Blocks:
    """A model as embedding, decoder layers and head, in the order accelerate fills the GPUs."""

    embed: Block
    layers: tuple[Block, ...]
    head: Block

    @property
    def ordered(self) -> list[Block]:
        return [self.embed, *self.layers, self.head]

    @property
    def n_params(self) -> int:
        return sum(b.linear + b.other for b in self.ordered)

    def sizes(self, dtype: str, bits: int | None = None) -> list[int]:
        return [b.nbytes(dtype, bits) for b in self.ordered]

    def nbytes(self, dtype: str, bits: int | None = None) -> int:
        return sum(self.sizes(dtype, bits))


def _header(path: Path) -> dict:
    """A safetensors file's JSON header (8-byte little-endian length, then JSON): no tensor data is read."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise KnowLMError(f"{path.name} does not look like a safetensors file", "re-download the model")
        return json.loads(f.read(length))


def group_tensors(shapes: dict[str, list[int]]) -> Blocks:
    """Tensor name -> shape, grouped into embedding / layers / head."""
    embed = [0, 0]
    head = [0, 0]
    layers: dict[int, list[int]] = {}
    for name, shape in shapes.items():
        numel = math.prod(shape) if shape else 1
        slot = 0 if len(shape) == 2 else 1
        match = _LAYER.search(name)
        if match:
            layers.setdefault(int(match.group(1)), [0, 0])[slot] += numel
        elif any(key in name for key in _EMBED):
            embed[1] += numel
        else:  # lm_head, final norm, rotary buffers: kept unquantized
            head[1] += numel
    return Blocks(Block("embed", *embed), tuple(Block(f"layer {i}", *layers[i]) for i in sorted(layers)),
                  Block("head", *head))


def blocks_from_safetensors(folder: Path) -> Blocks | None:
    """Exact parameter counts from the safetensors headers of ``folder`` (None when it has none)."""
    shapes: dict[str, list[int]] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        for name, meta in _header(path).items():
            if name != "__metadata__":
                shapes[name] = list(meta.get("shape", []))
    return group_tensors(shapes) if shapes else None


def blocks_from_config(config: dict) -> Blocks | None:
    """Parameter counts of a Llama-shaped model from its ``config.json`` (None when the keys are missing)."""
    try:
        h = int(config["hidden_size"])
        inter = int(config["intermediate_size"])
        n_layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        heads = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_dim = h // heads * int(config.get("num_key_value_heads") or heads)
    layer = Block("layer", linear=2 * h * h + 2 * h * kv_dim + 3 * h * inter, other=2 * h)
    head = Block("head", linear=0, other=(0 if config.get("tie_word_embeddings") else vocab * h) + h)
    return Blocks(Block("embed", 0, vocab * h), tuple(layer for _ in range(n_layers)), head)


def model_blocks(folder: Path) -> Blocks | None:
    """The safetensors headers when there are some, else the config formula."""
    found = blocks_from_safetensors(folder)
    if found is not None:
        return found
    config = Path(folder) / "config.json"
    if config.is_file():
        try:
            return blocks_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


def parse_allocate(text: str) -> list[float]:
    """``"10,10,10"`` or KnowLM's ``"[10,10,10]"`` -> GiB per GPU."""
    parts = [p.strip() for p in str(text).strip().strip("[]").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise KnowLMError(f"--allocate {text!r} is not a list of positive GiB per GPU",
                          "write one number per GPU, e.g. --allocate 10,10,10")
    return values


def pack(sizes: list[int], caps: list[int]) -> list[int] | None:
    """Blocks per device, filled in order with each block whole, as accelerate does (None: no fit)."""
    counts = [0] * len(caps)
    dev, used = 0, 0
    for size in sizes:
        while dev < len(caps) and used + size > caps[dev]:
            dev, used = dev + 1, 0
        if dev == len(caps):
            return None
        counts[dev] += 1
        used += size
    return counts


@dataclass(frozen=True)
class AllocationPlan:
    """What goes to accelerate (``max_memory``) and what to tell the user."""

    max_memory: dict
    blocks_per_gpu: tuple[int, ...]
    need_bytes: int
    given_bytes: int

    @property
    def reason(self) -> str:
        spread = ", ".join(f"GPU{i}: {n}" for i, n in enumerate(self.blocks_per_gpu))
        return (f"--allocate: {self.need_bytes / GIB:.1f} GiB of weights in {self.given_bytes / GIB:.1f} GiB "
                f"({spread} blocks)")


def _suggest(sizes: list[int], n_gpus: int) -> int:
    """The smallest whole GiB that, given to every GPU, packs the model."""
    gib = max(1, math.ceil(sum(sizes) / n_gpus / GIB))
    while pack(sizes, [gib * GIB] * n_gpus) is None:
        gib += 1
    return gib


def plan_allocation(sizes: list[int], allocate_gib: list[float], gpu_total_bytes: list[int] | None = None,
                    cpu_bytes: int | None = None, alternatives: str = "") -> AllocationPlan:
    """Check that the blocks (bytes, in placement order) pack into the GiB given per GPU: a plan or an error.

    ``gpu_total_bytes`` (one per visible GPU) catches lists longer than the GPUs
    present and numbers larger than a GPU; ``cpu_bytes`` becomes accelerate's
    ``"cpu"`` entry (for buffers only: a plan that needs CPU offload is refused).
    """
    n = len(allocate_gib)
    if gpu_total_bytes is not None:
        if n > len(gpu_total_bytes):
            raise KnowLMError(f"--allocate lists {n} GPUs, {len(gpu_total_bytes)} visible",
                              "give one number per GPU (CUDA_VISIBLE_DEVICES chooses which GPUs)")
        for i, (want, total) in enumerate(zip(allocate_gib, gpu_total_bytes)):
            if want * GIB > total:
                raise KnowLMError(f"--allocate gives GPU{i} {want:g} GiB, it has {total / GIB:.1f} GiB",
                                  "leave room for the KV cache: use less than the GPU's memory")
    caps = [int(g * GIB) for g in allocate_gib]
    need, given = sum(sizes), sum(caps)
    counts = pack(sizes, caps)
    if counts is None:
        largest = max(sizes) / GIB
        why = "" if need > given else f", but whole blocks (up to {largest:.2f} GiB) do not pack into it"
        asked = ",".join(f"{g:g}" for g in allocate_gib)
        suggestion = ",".join([str(_suggest(sizes, n))] * n)
        raise KnowLMError(
            f"the model needs {need / GIB:.1f} GiB of weights, --allocate {asked} "
            f"gives {given / GIB:.1f} GiB over {n} GPU{'s' if n > 1 else ''}{why}",
            f"use --allocate {suggestion}" + (f", or {alternatives}" if alternatives else ""),
        )
    max_memory: dict = {i: f"{g:g}GiB" for i, g in enumerate(allocate_gib)}
    if cpu_bytes:
        max_memory["cpu"] = f"{max(1, cpu_bytes // GIB)}GiB"
    return AllocationPlan(max_memory, tuple(counts), need, given)


def check_ram(need_bytes: int, available_bytes: int | None, what: str, hint: str) -> None:
    """Refuse a CPU load that cannot fit the available RAM (unknown RAM: let it try)."""
    if available_bytes is not None and need_bytes > available_bytes:
        raise KnowLMError(f"{what} needs {need_bytes / GIB:.1f} GiB of RAM, "
                          f"{available_bytes / GIB:.1f} GiB is free", hint)


def choose_dtype(cuda: bool, bf16: bool) -> str:
    """bf16 on GPUs that have it (Ampere and later), fp16 on older ones such as the V100, fp32 on the CPU."""
    if not cuda:
        return "float32"
    return "bfloat16" if bf16 else "float16"


def quant_problem(bits: int | None, cuda: bool, bnb_installed: bool) -> KnowLMError | None:
    """Why ``--load-4bit`` / ``--load-8bit`` cannot work here, or None when it can (or was not asked)."""
    if bits is None:
        return None
    if bits not in QUANT_BITS:
        return KnowLMError(f"cannot load weights in {bits} bits", "use --load-4bit or --load-8bit")
    if not bnb_installed:
        return KnowLMError(f"--load-{bits}bit needs bitsandbytes, which is not installed",
                           "pip install bitsandbytes")
    if not cuda:
        return KnowLMError(f"--load-{bits}bit needs a CUDA GPU and none is visible",
                           "on the CPU use a quantized GGUF: knowlm-local convert MODEL --quant q4_k_m")
    return None


def max_context(free_bytes: int, weights_bytes: int, kv_bytes_per_token: int, cap: int) -> int:
    """The longest context whose KV cache fits beside the weights in ``free_bytes`` (0: the weights don't)."""
    room = free_bytes - weights_bytes
    if room <= 0 or kv_bytes_per_token <= 0:
        return 0 if room <= 0 else cap
    return int(min(cap, room // kv_bytes_per_token))


def available_ram_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else physical memory, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
