"""Keep freed memory in the process while a CPU training run is on (glibc's ``mallopt``).

Every training step allocates and frees the same large activation and gradient
buffers (tens of MB each on the built-in model). glibc serves blocks that big
with ``mmap`` and hands them back with ``munmap`` on free, so each step
page-faults its working set in again: on 2 cores that showed up as matrix
multiplies whose time varied by a fifth from run to run, and as a step of
packed 512-token rows taking 25 s instead of 18 s. With ``mmap`` off for the
run and the heap's top never trimmed (a packed step's buffers come to several
GB, so any finite threshold a step crosses brings the page faults back), freed
buffers are reused as they are. The usual advice for CPU training (PyTorch's performance guide) is
to preload jemalloc or tcmalloc; this gets the reuse part of that from the C
library already loaded, with nothing to install and nothing to preload.

The settings last for :func:`kept_heap` only: afterwards mmap is allowed
again and ``malloc_trim`` returns what the run held. Anything other than
glibc on Linux (musl, macOS, Windows) is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_MMAP_MAX = 65536  # glibc's own default
NO_TRIM = -1  # turns trimming off altogether (documented in mallopt(3))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def kept_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays with the process; yields whether the setting took."""
    libc = _libc() if enabled else None
    took = False
    if libc is not None:
        no_mmap = libc.mallopt(M_MMAP_MAX, 0) == 1
        took = libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM) == 1 and no_mmap
    try:
        yield took
    finally:
        if libc is not None:  # restored even when only one of the two settings took
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)
