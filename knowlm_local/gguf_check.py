"""Reading GGUF headers safely, so a bad file gives one clear error instead of a crash in C++ or struct.

Every read is bounded by the file's size: a count or a length that points
past the end is reported as "truncated at byte N" (N = the file's size) with
what was being read, and an implausible count (a damaged header) is refused
before anything is allocated. :func:`scan` walks the whole header and tensor
table (~20 ms for a 150k-token vocabulary, through mmap) and checks that the
tensor data fits in the file; it runs before llama.cpp sees a file, because
llama.cpp's own errors for damaged files are C++ log lines or worse.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from knowlm_local.errors import KnowLMError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
HEADER_BYTES = 24  # magic, version, tensor count, metadata count

# GGUF value types (gguf spec): fixed-size scalars, then STRING = 8 and ARRAY = 9.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 31  # no real header has more keys, tensors or array items than this
_MAX_DIMS = 8
_REDOWNLOAD = "the file is damaged or incomplete: download or convert it again"


class _Reader:
    """Bounded little-endian reads over a memory map of the file."""

    def __init__(self, path: Path, buf, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def fail(self, what: str, need: int) -> KnowLMError:
        return KnowLMError(f"{self.path.name} is truncated at byte {self.size}: {what} needs bytes "
                           f"{self.pos}-{self.pos + need}", _REDOWNLOAD)

    def damaged(self, what: str) -> KnowLMError:
        return KnowLMError(f"{self.path.name} is damaged at byte {self.pos}: {what}", _REDOWNLOAD)

    def take(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise self.fail(what, n)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(what, max(n, 0))
        self.pos += n

    def count(self, what: str) -> int:
        (n,) = self.take("<Q", what)
        if n > _MAX_COUNT:
            raise self.damaged(f"{what} is {n}, which no GGUF file has")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}")
        if self.pos + n > self.size:
            raise self.fail(what, n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0, keep: bool = True) -> object:
        if vtype in _SCALAR:
            fmt = "<" + _SCALAR[vtype]
            if not keep:
                self.skip(struct.calcsize(fmt), what)
                return None
            return self.take(fmt, what)[0]
        if vtype == _STRING:
            if not keep:
                self.skip(self.count(f"the length of {what}"), what)
                return None
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 2:
                raise self.damaged(f"{what} nests arrays {depth + 1} deep")
            etype, = self.take("<I", f"the item type of {what}")
            n = self.count(f"the item count of {what}")
            if etype in _SCALAR:
                self.skip(struct.calcsize("<" + _SCALAR[etype]) * n, f"the {n} items of {what}")
            elif etype == _STRING:  # the vocabulary: a tight loop, bounds checked once per item
                buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
                for i in range(n):
                    if pos + 8 > size:
                        self.pos = pos
                        raise self.fail(f"the length of item {i} of {what}", 8)
                    (k,) = unpack("<Q", buf, pos)
                    if pos + 8 + k > size:
                        self.pos = pos + 8
                        raise self.fail(f"item {i} of {what}", k)
                    pos += 8 + k
                self.pos = pos
            elif etype == _ARRAY:
                for i in range(n):
                    self.value(etype, f"item {i} of {what}", depth + 1, keep=False)
            else:
                raise self.damaged(f"{what} has items of unknown type {etype}")
            return None  # arrays (the vocabulary, merges) are skipped, not returned
        raise self.damaged(f"{what} has unknown value type {vtype}")


def _open(path: Path):
    """(file, map, size) of a GGUF file whose fixed header is sane; the caller closes both."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except IsADirectoryError:
        raise KnowLMError(f"{path} is a folder, not a GGUF file", "pass the .gguf file inside it") from None
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None
    size = path.stat().st_size
    head = fh.read(8)
    if not head:
        fh.close()
        raise KnowLMError(f"{path} is empty (0 bytes), not a GGUF file", _REDOWNLOAD)
    if head[:4] != MAGIC:
        fh.close()
        if MAGIC.startswith(head):
            raise KnowLMError(f"{path.name} is truncated at byte {size}: the GGUF header needs {HEADER_BYTES} bytes",
                              _REDOWNLOAD)
        raise KnowLMError(
            f"{path} is not a GGUF file (no GGUF magic bytes)",
            "pass a .gguf file, or convert a Hugging Face model with `knowlm-local convert`",
        )
    if size < HEADER_BYTES:
        fh.close()
        raise KnowLMError(f"{path.name} is truncated at byte {size}: the GGUF header needs {HEADER_BYTES} bytes",
                          _REDOWNLOAD)
    (version,) = struct.unpack("<I", head[4:8])
    if version not in SUPPORTED_VERSIONS:
        fh.close()
        raise KnowLMError(
            f"{path} is GGUF version {version}; versions {SUPPORTED_VERSIONS} are supported",
            "re-convert it with `knowlm-local convert`, or upgrade llama-cpp-python",
        )
    return fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), size


def check_header(path: Path) -> None:
    """Raise a :class:`KnowLMError` unless ``path`` starts like a GGUF file we can read."""
    fh, buf, _ = _open(path)
    buf.close()
    fh.close()


def read_metadata(path: Path, wanted: set[str]) -> dict[str, object]:
    """The scalar/string metadata ``wanted`` from a GGUF header, stopping once all are found.

    ``gguf.GGUFReader`` parses every tensor and the whole vocabulary; the
    model-shape keys come before the tokenizer arrays, so reading them
    directly takes microseconds. Arrays are skipped, not returned.
    """
    path = Path(path)
    fh, buf, size = _open(path)
    try:
        r = _Reader(path, buf, size)
        r.pos = 8
        r.count("the tensor count")
        n_kv = r.count("the metadata count")
        found: dict[str, object] = {}
        for i in range(n_kv):
            if wanted <= found.keys():
                break
            key = r.string(f"the name of metadata key {i}")
            (vtype,) = r.take("<I", f"the type of {key!r}")
            value = r.value(vtype, repr(key), keep=key in wanted)
            if key in wanted:
                found[key] = value
        return found
    finally:
        buf.close()
        fh.close()


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class Layout:
    """What :func:`scan` found: scalar/string metadata, the tensor table, where the data starts and ends."""

    version: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    data_end: int = 0


def _tensor_bytes(shape: tuple[int, ...], ggml_type: int) -> int | None:
    """Bytes of a tensor, or None for a type this gguf package does not know."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ImportError, ValueError, KeyError):
        return None
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size if block else None


def scan(path: Path) -> Layout:
    """Walk the whole header and tensor table; an error naming the byte where the file stops making sense."""
    path = Path(path)
    fh, buf, size = _open(path)
    try:
        r = _Reader(path, buf, size)
        r.pos = 4
        (version,) = r.take("<I", "the version")
        n_tensors = r.count("the tensor count")
        n_kv = r.count("the metadata count")
        out = Layout(version=version)
        for i in range(n_kv):
            key = r.string(f"the name of metadata key {i}")
            (vtype,) = r.take("<I", f"the type of {key!r}")
            value = r.value(vtype, repr(key))
            if value is not None:
                out.metadata[key] = value
        for i in range(n_tensors):
            name = r.string(f"the name of tensor {i}")
            (n_dims,) = r.take("<I", f"the rank of tensor {name!r}")
            if not 0 < n_dims <= _MAX_DIMS:
                raise r.damaged(f"tensor {name!r} has {n_dims} dimensions")
            shape = r.take(f"<{n_dims}Q", f"the shape of tensor {name!r}")
            (ggml_type,) = r.take("<I", f"the type of tensor {name!r}")
            (offset,) = r.take("<Q", f"the offset of tensor {name!r}")
            out.tensors.append(TensorInfo(name, tuple(int(d) for d in shape), ggml_type, offset))
        align = out.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise KnowLMError(f"{path.name}: general.alignment is {align!r}, not a power of two", _REDOWNLOAD)
        out.data_start = -(-r.pos // align) * align
        end = out.data_start
        for t in out.tensors:
            nbytes = _tensor_bytes(t.shape, t.ggml_type)
            if nbytes is None:
                continue  # a newer quant type: llama.cpp will say whether it knows it
            end = max(end, out.data_start + t.offset + nbytes)
            if out.data_start + t.offset + nbytes > size:
                raise KnowLMError(
                    f"{path.name} is truncated at byte {size}: tensor {t.name!r} needs bytes "
                    f"{out.data_start + t.offset}-{out.data_start + t.offset + nbytes}", _REDOWNLOAD)
        out.data_end = end
        return out
    finally:
        buf.close()
        fh.close()


def diagnose(path: Path) -> str:
    """Why llama.cpp may have refused ``path``, in one line (the file passed :func:`scan`, or it says why not)."""
    try:
        layout = scan(Path(path))
    except KnowLMError as exc:
        return exc.message
    arch = layout.metadata.get("general.architecture", "unknown")
    return f"llama.cpp could not load it (architecture {arch!r}); it may be unsupported by this llama.cpp build"


def check_adapter(adapter: Path, model: Path) -> None:
    """Refuse a LoRA adapter GGUF that is damaged or was made for another base than ``model``, in one line.

    llama.cpp rejects a mismatched adapter only with a C++ log line; here each
    ``X.lora_a`` / ``X.lora_b`` pair must match the base tensor ``X`` (``a``:
    in x rank, ``b``: rank x out, in ggml's order) and the error names the
    base the adapter records.
    """
    adapter, model = Path(adapter), Path(model)
    layout = scan(adapter)
    if layout.metadata.get("general.type") != "adapter" or layout.metadata.get("adapter.type") != "lora":
        raise KnowLMError(f"{adapter.name} is not a LoRA adapter GGUF (general.type "
                          f"{layout.metadata.get('general.type')!r})",
                          "write one with `knowlm-local convert ADAPTER_FOLDER --adapter-only`")
    made_for = layout.metadata.get("general.base_model.0.name", "another model")
    base = {t.name: t.shape for t in scan(model).tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in layout.tensors:
        stem, dot, part = t.name.rpartition(".")
        if part in ("lora_a", "lora_b") and dot:
            pairs.setdefault(stem, {})[part] = t.shape
    if not pairs:
        raise KnowLMError(f"{adapter.name} holds no LoRA tensors", "convert the adapter again")
    for stem, parts in pairs.items():
        shape = base.get(stem)
        a, b = parts.get("lora_a"), parts.get("lora_b")
        fits = (shape is not None and a is not None and b is not None and len(shape) == 2
                and a[0] == shape[0] and b[1] == shape[1] and a[1] == b[0])
        if not fits:
            have = f"{stem} is {tuple(shape)}" if shape is not None else f"it has no tensor {stem}"
            raise KnowLMError(f"{adapter.name} was made for {made_for} and does not fit {model.name} ({have}; the "
                              f"adapter's factors are {a} and {b})",
                              f"apply it to {made_for}, or convert an adapter trained on this model")
