"""Writing files so that an interrupted or failed write leaves nothing half-written.

Everything is written next to its destination under a temporary name and
renamed into place at the end (a rename within one filesystem is atomic).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from knowlm_local.errors import KnowLMError

DISK_MARGIN = 256 * 1024 * 1024  # keep this much free after a large write


_DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def write_error(exc: OSError, path: Path) -> KnowLMError:
    """A failed write as a user error: a full disk, a missing or read-only folder, no permission."""
    short_write = exc.errno is None and "requested and" in str(exc)  # numpy's tofile on a full disk
    if exc.errno in _DISK_ERRORS or short_write:
        return KnowLMError(
            f"the disk filled up while writing {Path(path).name}; the partial file was removed",
            "free some space, or write elsewhere with --output DIR",
        )
    return KnowLMError(
        f"cannot write {path}: {exc.strerror or exc}", "check that the folder exists and is writable, and free space"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_partials(dest: Path) -> int:
    """Remove temporary siblings of ``dest`` left by a writer that was killed (its pid no longer runs).

    Temporary names carry the writer's pid (``.NAME.<pid>-XXXX.partial``), so
    a run that is still going elsewhere keeps its file; a 26 GB leftover of a
    killed conversion does not stay on the disk forever.
    """
    dest = Path(dest)
    removed = 0
    if not dest.parent.is_dir():
        return 0
    for tmp in dest.parent.glob(f".{glob_escape(dest.name)}.*.partial"):
        pid = tmp.name[len(dest.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def temp_sibling(dest: Path, folder: bool = False) -> Path:
    """A new temporary file (or folder) beside ``dest``, named after it and this process."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_partials(dest)
        prefix = f".{dest.name}.{os.getpid()}-"
        if folder:
            return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=dest.parent))
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=dest.parent)
        os.close(fd)
        return Path(tmp)
    except OSError as exc:
        raise write_error(exc, dest) from None


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds."""
    dest = Path(dest)
    tmp_path = temp_sibling(dest)
    try:
        yield tmp_path
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp_path, 0o666 & ~mask)  # mkstemp's files are private; the result should not be
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise write_error(exc, dest) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(dest: Path, text: str) -> Path:
    with atomic_path(dest) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, dest) from None
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
