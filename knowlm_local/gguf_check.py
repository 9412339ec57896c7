"""Cheap sanity checks on GGUF files, so a bad file gives a clear error instead of a C++ log.

The header check (4 magic bytes, version) runs before every load. The full
diagnosis parses the file with the `gguf` package, which takes about a second
for a large vocabulary, so it only runs after llama.cpp has refused a file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from knowlm_local.errors import KnowLMError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


def check_header(path: Path) -> None:
    """Raise a :class:`KnowLMError` unless ``path`` starts like a GGUF file we can read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from exc
    if len(head) < 8 or head[:4] != MAGIC:
        raise KnowLMError(
            f"{path} is not a GGUF file (no GGUF magic bytes)",
            "pass a .gguf file, or convert a Hugging Face model with `knowlm-local convert`",
        )
    (version,) = struct.unpack("<I", head[4:8])
    if version not in SUPPORTED_VERSIONS:
        raise KnowLMError(
            f"{path} is GGUF version {version}; versions {SUPPORTED_VERSIONS} are supported",
            "re-convert it with `knowlm-local convert`, or upgrade llama-cpp-python",
        )


def diagnose(path: Path) -> str:
    """Why llama.cpp may have refused ``path``: truncation or a damaged header, in one line."""
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # any parse failure means the header or tensor table is damaged
        return f"the file is damaged or truncated ({type(exc).__name__}: {exc}; {size} bytes on disk)"
    if reader.tensors:
        end = max(t.data_offset + t.n_bytes for t in reader.tensors)
        if end > size:
            return f"the file is truncated: its tensors need {end} bytes, the file has {size}"
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else "unknown"
    return f"llama.cpp could not load it (architecture {arch!r}); it may be unsupported by this llama.cpp build"


# GGUF value types (gguf spec): fixed-size scalars, then STRING = 8 and ARRAY = 9.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path, wanted: set[str]) -> dict[str, object]:
    """The scalar/string metadata ``wanted`` from a GGUF header, stopping once all are found.

    ``gguf.GGUFReader`` parses every tensor and the whole vocabulary (about a
    second); the model-shape keys come before the tokenizer arrays, so reading
    them directly takes microseconds. Arrays are skipped, not returned.
    """
    check_header(path)
    found: dict[str, object] = {}
    with open(path, "rb") as fh:
        fh.seek(8)
        _n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))
        for _ in range(n_kv):
            if wanted <= found.keys():
                break
            key = _read_str(fh)
            (vtype,) = struct.unpack("<I", fh.read(4))
            value = _read_value(fh, vtype)
            if key in wanted:
                found[key] = value
    return found


def _read_str(fh) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    return fh.read(n).decode("utf-8", errors="replace")


def _read_value(fh, vtype: int) -> object:
    if vtype in _SCALAR:
        fmt = "<" + _SCALAR[vtype]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_str(fh)
    if vtype == _ARRAY:
        etype, count = struct.unpack("<IQ", fh.read(12))
        if etype in _SCALAR:
            fh.seek(struct.calcsize("<" + _SCALAR[etype]) * count, 1)
        else:
            for _ in range(count):
                _read_value(fh, etype)
        return None
    raise KnowLMError(f"{getattr(fh, 'name', 'file')}: unknown GGUF value type {vtype}", "the file is damaged")
