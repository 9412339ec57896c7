"""Writing files so that an interrupted or failed write leaves nothing half-written.

Everything is written next to its destination under a temporary name and
renamed into place at the end (a rename within one filesystem is atomic).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from knowlm_local.errors import KnowLMError

DISK_MARGIN = 256 * 1024 * 1024  # keep this much free after a large write


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(dest: Path, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def human_size(n: float) -> str:
    """Bytes for people, in powers of 1000 as disk makers and the hub count them."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem that holds (or will hold) ``folder``."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_space(folder: Path, needed: int, what: str, hint: str) -> None:
    """Refuse to start when ``needed`` bytes, plus a margin, will not fit where ``folder`` is."""
    free = free_bytes(folder)
    if needed + DISK_MARGIN > free:
        raise KnowLMError(
            f"not enough disk space for {what}: about {human_size(needed)} needed, "
            f"{human_size(free)} free in {folder}",
            hint,
        )
