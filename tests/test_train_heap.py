"""The CPU training allocator setting (train/heap.py): inside the block a large buffer comes from the heap and its
memory stays with the process after free; outside, glibc maps and unmaps it as usual."""

from __future__ import annotations

import ctypes
import sys

import pytest

from knowlm_local.train.heap import kept_heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


SIZE = 64 * 2**20


def test_large_buffers_come_from_the_heap_and_stay_only_inside_the_block():
    libc = _libc()
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(SIZE)
    assert libc.mallinfo2().hblkhd >= before + SIZE  # glibc's default: mmap for a block this big
    libc.free(p)
    assert libc.mallinfo2().hblkhd < before + SIZE  # ... and munmap on free

    with kept_heap() as took:
        assert took
        mapped = libc.mallinfo2().hblkhd
        p = libc.malloc(SIZE)
        assert libc.mallinfo2().hblkhd == mapped  # from the heap, not a fresh mapping
        libc.free(p)
        assert libc.mallinfo2().fordblks >= SIZE  # freed, and still the process's to reuse

    p = libc.malloc(SIZE)
    assert libc.mallinfo2().hblkhd >= before + SIZE  # the default is back
    libc.free(p)


def test_disabled_changes_nothing():
    libc = _libc()
    with kept_heap(enabled=False) as took:
        assert not took
        before = libc.mallinfo2().hblkhd
        p = libc.malloc(SIZE)
        assert libc.mallinfo2().hblkhd >= before + SIZE
        libc.free(p)
