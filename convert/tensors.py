"""Reading checkpoint weights one tensor at a time, without ever holding the model in RAM.

Why not ``safetensors.safe_open``: it maps the whole file once, and every page
it touches stays in the process's resident set until the handle is closed, so
a long conversion ends with the whole model counted in RSS. Why not torch:
importing it costs about 200 MB of RSS before the first byte is read. The
safetensors format is a little-endian u64 header length, a JSON header of
``{name: {dtype, shape, data_offsets}}`` and raw bytes, so we parse the header
ourselves and map *one tensor* with ``numpy.memmap``; the mapping is dropped as
soon as the caller is done with it. Peak RSS is then about the largest tensor.

Legacy ``.bin`` checkpoints (KnowLM and OneKE ship them) are pickles inside a
zip. They are opened with ``torch.load(weights_only=True, mmap=True)`` one
shard at a time; after each tensor its pages are handed back to the kernel
with ``madvise(MADV_DONTNEED)`` (safe on a read-only private mapping: the
pages are simply re-read from the file if touched again). A pickle that needs
more than tensors to load is refused: unpickling it would run its code.

Arrays are numpy: F32 and F16 as themselves, BF16 as its raw ``uint16`` bits
(numpy has no bfloat16); :func:`to_float32` widens any of them.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knowlm_local.errors import KnowLMError

# safetensors dtype names -> numpy storage dtypes (BF16 kept as raw bits)
_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives and what it looks like, known before any data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "F32", "F16", "BF16", ...
    file: Path
    offset: int = 0  # absolute byte offset (safetensors only)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.n_elements * np.dtype(_ST_DTYPES.get(self.dtype, np.float32)).itemsize


def to_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Widen an F32/F16/BF16 array to float32 (BF16 is raw uint16 bits: shift them into the high half)."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32, copy=False)


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred; an error naming what was looked for."""
    folder = Path(folder)
    for pattern in ("*.safetensors", "pytorch_model*.bin", "*.bin", "*.pth", "*.pt"):
        files = sorted(
            p for p in folder.glob(pattern) if not p.name.startswith(("adapter_", "training_args"))
        )
        if files:
            return files
    raise KnowLMError(
        f"{folder} has no weights (*.safetensors, *.bin, *.pth)",
        "point at a Hugging Face model folder; the download may be incomplete",
    )


def read_safetensors_header(path: Path) -> list[TensorMeta]:
    """Tensor metadata of one safetensors file, in file order; every field checked against the file."""
    from knowlm_local.jsonio import decode_utf8, loads

    hint = "the download may be incomplete or damaged: download it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise KnowLMError(f"{path.name} is truncated at byte {len(raw)}: a safetensors file starts with an "
                                  "8-byte header length", hint)
            (n,) = struct.unpack("<Q", raw)
            if n > min(100_000_000, size - 8):
                raise KnowLMError(f"{path.name} is not a readable safetensors file: its header length {n} is larger "
                                  f"than {'the file' if n <= 100_000_000 else 'any real header'} ({size} bytes)", hint)
            text = decode_utf8(fh.read(n), f"the header of {path.name}", hint)
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the file and its permissions") from exc
    header = loads(text, f"the header of {path.name}", hint)
    if not isinstance(header, dict):
        raise KnowLMError(f"{path.name} is not a safetensors file: its header is not a JSON object", hint)
    base = 8 + n
    metas = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        ok = (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)
              and offsets[0] <= offsets[1] and isinstance(shape, list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
              and isinstance(dtype, str))
        if not ok:
            raise KnowLMError(f"{path.name}: the header entry of tensor {name!r} is damaged "
                              "(needs dtype, shape and data_offsets)", hint)
        start, end = offsets
        meta = TensorMeta(name, tuple(shape), dtype, path, base + start)
        if base + end > size:
            raise KnowLMError(
                f"{path.name} is truncated at byte {size}: tensor {name} needs bytes {base + start}-{base + end}",
                "download the file again",
            )
        if dtype in _ST_DTYPES and end - start != meta.nbytes:
            raise KnowLMError(
                f"{path.name}: tensor {name} has {end - start} bytes for shape {meta.shape}",
                "the file is damaged: download it again",
            )
        metas.append(meta)
    return sorted(metas, key=lambda m: m.offset)


def _release_pages(arr: np.ndarray) -> None:
    """Tell the kernel we are done with the mmap'd pages under ``arr`` (Linux; a no-op elsewhere)."""
    if not hasattr(mmap, "MADV_DONTNEED") or arr.nbytes == 0:
        return
    import ctypes

    page = mmap.PAGESIZE
    start = arr.ctypes.data // page * page
    end = -(-(arr.ctypes.data + arr.nbytes) // page) * page
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)
    except (OSError, AttributeError):  # pragma: no cover - platform without madvise
        pass


def torch_load_weights(path: Path, mmap_ok: bool = True) -> dict:
    """``torch.load`` restricted to tensors; anything else is refused with an explanation."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next(
            (line for line in first if "Unsupported" in line or "global" in line.lower()),
            first[0] if first else "",
        )
        raise KnowLMError(
            f"refusing to load {path.name}: it is a pickle that needs more than tensors to load "
            f"({detail.strip()[:160]}); unpickling it would run code from the file",
            "use the model's *.safetensors files instead, or re-save this checkpoint with "
            "`save_pretrained(..., safe_serialization=True)` in an environment you trust",
        ) from exc
    except RuntimeError as exc:
        if mmap_ok and "mmap" in str(exc):  # pre-1.6 (non-zip) torch.save format cannot be memory-mapped
            return torch_load_weights(path, mmap_ok=False)
        raise KnowLMError(
            f"cannot read {path.name}: {str(exc).splitlines()[0]}",
            "the file may be truncated: download it again",
        ) from exc


_TORCH_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}


def _torch_to_numpy(t) -> tuple[np.ndarray, str]:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "BF16"
    if t.dtype == torch.float16:
        return t.numpy(), "F16"
    if t.dtype == torch.float32:
        return t.numpy(), "F32"
    return t.numpy(), str(t.dtype).replace("torch.", "").upper()


class Checkpoint:
    """The weights of one checkpoint folder: every tensor's shape and dtype up front, data on demand.

    Reading order matters for ``.bin`` files (one shard mapped at a time), so
    callers iterate :attr:`names`, which follows the files and their offsets.
    """

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder = Path(folder)
        self.files = files or weight_files(self.folder)
        self.format = "safetensors" if self.files[0].suffix == ".safetensors" else "pickle"
        self.meta: dict[str, TensorMeta] = {}
        self._shard_path: Path | None = None
        self._shard: dict | None = None
        for path in self.files:
            metas = (
                read_safetensors_header(path) if self.format == "safetensors" else self._pickle_metas(path)
            )
            for meta in metas:
                if meta.name in self.meta:
                    raise KnowLMError(
                        f"tensor {meta.name} appears in both {self.meta[meta.name].file.name} "
                        f"and {path.name}",
                        "remove the duplicate weight files from the folder",
                    )
                self.meta[meta.name] = meta

    def _pickle_metas(self, path: Path) -> list[TensorMeta]:
        state = self._load_shard(path)
        metas = []
        for name, t in state.items():
            if hasattr(t, "shape"):
                metas.append(
                    TensorMeta(name, tuple(t.shape), _TORCH_DTYPES.get(str(t.dtype), str(t.dtype)), path)
                )
        return metas

    def _load_shard(self, path: Path) -> dict:
        if self._shard_path != path:
            self._shard = None  # drop the previous mapping first
            self._shard = torch_load_weights(path)
            if (
                "state_dict" in self._shard
                and len(self._shard) <= 3
                and isinstance(self._shard["state_dict"], dict)
            ):
                self._shard = self._shard["state_dict"]
            self._shard_path = path
        return self._shard

    @property
    def names(self) -> list[str]:
        return list(self.meta)

    def __contains__(self, name: str) -> bool:
        return name in self.meta

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[np.ndarray]:
        """The tensor's data as a read-only array valid inside the block; its pages are released after."""
        meta = self.meta[name]
        if self.format == "safetensors":
            if meta.n_elements == 0:
                yield np.zeros(meta.shape, _ST_DTYPES[meta.dtype])
                return
            try:
                arr = np.memmap(
                    meta.file, dtype=_ST_DTYPES[meta.dtype], mode="r", offset=meta.offset, shape=meta.shape
                )
            except (OSError, ValueError) as exc:
                raise KnowLMError(
                    f"cannot read tensor {name} from {meta.file.name}: {exc}",
                    "the file may be truncated: download it again",
                ) from exc
            try:
                yield arr
            finally:
                mm = getattr(arr, "_mmap", None)
                del arr
                if mm is not None:
                    with contextlib.suppress(BufferError):
                        mm.close()
            return
        arr, _ = _torch_to_numpy(self._load_shard(meta.file)[name])
        try:
            yield arr
        finally:
            _release_pages(arr)

    def read_f32(self, name: str) -> np.ndarray:
        """A float32 copy of one tensor (for small tensors and LoRA factors)."""
        with self.open(name) as arr:
            return np.array(to_float32(arr, self.meta[name].dtype), dtype=np.float32, copy=True)

    def close(self) -> None:
        self._shard = None
        self._shard_path = None
