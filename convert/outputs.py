"""Where converted files go, and the rules that keep the store trustworthy.

Every output is written under a temporary name and renamed into place only
when complete (a failed or interrupted run, a full disk, a failed checksum
leave nothing behind); an existing output is never overwritten without
``force``; free space is checked before the first byte. ``provenance.json``
beside the outputs says, per file, where it came from.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import atomic_write_text, temp_sibling, write_error
from knowlm_local.io_utils import check_space as _check_space

PROVENANCE = "provenance.json"


def check_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start when ``needed`` bytes (plus a margin) will not fit in ``folder``'s filesystem."""
    _check_space(folder, needed, what,
                 "free some space, or write elsewhere with --output DIR (or set KNOWLM_HOME to a bigger disk)")


def refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise KnowLMError(f"{names} already exists", "pass --force to overwrite it")


def publish(path: Path) -> None:
    """Give a finished output the permissions a plain ``open()`` would have (temp files are private)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


def disk_error(exc: OSError, path: Path) -> KnowLMError:
    """A write failure as a user error: full disk and file-size limits get their own hint."""
    return write_error(exc, path)


@contextlib.contextmanager
def atomic_dir(dest: Path, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``dest`` that replaces it only when the block succeeds."""
    dest = Path(dest)
    tmp = temp_sibling(dest, folder=True)
    try:
        yield tmp
        old = None
        if dest.exists():
            if not force:
                raise KnowLMError(f"{dest} already exists", "pass --force to overwrite it")
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(tmp, dest)
        publish(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from knowlm_local import __version__

    out = {"knowlm-local": __version__}
    for dist in ("gguf", "llama-cpp-python"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_provenance(folder: Path) -> dict:
    path = Path(folder) / PROVENANCE
    if not path.exists():
        return {}
    from knowlm_local.jsonio import read_json

    return read_json(path, what="provenance file",
                     hint=f"fix or delete {path} (it only records where the files beside it came from)")


def record_provenance(folder: Path, model: str, records: dict[str, dict]) -> Path:
    """Add per-file records to ``folder/provenance.json`` (other files' records are kept)."""
    data = read_provenance(folder)
    data["model"] = model
    files = data.setdefault("files", {})
    files.update(records)
    for name in list(files):
        if not (Path(folder) / name).exists():
            del files[name]
    path = atomic_write_text(Path(folder) / PROVENANCE, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    publish(path)
    return path


def merged_adapters(folder: Path) -> list[dict]:
    """Adapters a folder's provenance says were already merged into its weights."""
    data = read_provenance(folder)
    found = [data["adapter"]] if isinstance(data.get("adapter"), dict) else []
    return found + [
        r["adapter"] for r in data.get("files", {}).values() if isinstance(r.get("adapter"), dict)
    ]
