"""Where the Numba backend's large outputs live: huge-page-aligned buffers, kept for reuse.

Why it matters. A forward pass at N = 65536 (one head, d_v = 64) writes about 60 MiB of stage
outputs: candidates, mean values, output, weights. Fresh memory is not free: the operating
system hands it out zero-filled, a page fault at a time, and on a virtual machine a fault costs
microseconds. The C library gives blocks this large back to the system as soon as they are
freed, so a loop of forward passes paid for all of it again on every call (docs/benchmarks.md
has the measurements: 18,000 faults and a third of the time of a call before this module).

What it does, for every output of at least :data:`POOLED_MIN_BYTES`:

1. Alignment. The array starts on a 2 MiB boundary inside a slightly larger buffer, so that the
   kernel can back all of it with transparent huge pages (NumPy asks for them on large blocks,
   but only the aligned part of a block can get them): a few faults per array instead of one
   per 4 KiB.
2. Reuse. The buffer stays in a pool. Once no array refers to it any more (the arrays a call
   returned have all been dropped), the next output of the same size class takes it instead
   of fresh memory. A buffer that is still referred to is never handed out again.

The pool holds at most :func:`limit` bytes (256 MiB unless changed); beyond that it forgets
its oldest buffers, which then go back to the system when their arrays are dropped.
:func:`release` empties it now. Smaller arrays are plain ``np.empty``.

Like ``np.empty``, the arrays hold old contents: every kernel that writes into one writes all
of its elements (the tests of each twin check the whole output).

How "no array refers to it" is known: every array made here is a view whose base is the
pool's buffer, so the buffer's reference count (CPython's ``sys.getrefcount``) counts the
arrays that still use it. The pool's lock makes taking a buffer safe across threads. On a
free-threaded Python (no GIL) the counts are not exact, and the pool only aligns, never reuses.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: The size of a transparent huge page on x86-64 Linux.
HUGE_PAGE = 2 << 20
#: Outputs from this size on come from the pool; smaller ones are plain ``np.empty``.
POOLED_MIN_BYTES = 2 << 20

_lock = threading.Lock()
_buffers: list[np.ndarray] = []  # uint8 buffers, least recently handed out first
_limit = 256 << 20


#: Reference counts are exact only with the GIL; a free-threaded Python never reuses a buffer.
_COUNTS_ARE_EXACT = getattr(sys, "_is_gil_enabled", lambda: True)()


def _is_free(index: int) -> bool:
    """No array outside the pool refers to ``_buffers[index]``."""
    buffer = _buffers[index]
    # the references: the list, the local name, and getrefcount's own argument
    return sys.getrefcount(buffer) == 3


def _take(size: int) -> np.ndarray:
    """A buffer of ``size`` bytes: a free one from the pool, or a new one (kept in the pool)."""
    if not _COUNTS_ARE_EXACT:
        return np.empty(size, dtype=np.uint8)  # aligned, but neither kept nor reused
    with _lock:
        for index in range(len(_buffers)):
            if _buffers[index].size == size and _is_free(index):
                buffer = _buffers.pop(index)
                _buffers.append(buffer)  # most recently handed out: evicted last
                return buffer
        buffer = np.empty(size, dtype=np.uint8)
        _buffers.append(buffer)
        _shrink(_limit)
        return buffer


def _shrink(limit: int) -> int:
    """Forget buffers (free ones first, oldest first) until the pool holds at most ``limit``
    bytes; return how many bytes of free buffers were dropped. Call with the lock held."""
    total = sum(b.size for b in _buffers)
    dropped = 0
    for want_free in (True, False):
        index = 0
        while total > limit and index < len(_buffers):
            if _is_free(index) == want_free:
                total -= _buffers[index].size
                dropped += _buffers[index].size if want_free else 0
                del _buffers[index]
            else:
                index += 1
    return dropped


def empty_output(shape, dtype) -> np.ndarray:
    """An uninitialised array like ``np.empty(shape, dtype)``; from the pool when it is large.

    A pooled array starts on a 2 MiB boundary and is C-contiguous. Its contents are whatever
    the buffer held before: the caller must write every element.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < POOLED_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    # size class: whole huge pages, plus one for moving the start to a boundary
    size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE
    buffer = _take(size)
    start = -buffer.ctypes.data % HUGE_PAGE
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def limit(nbytes: int | None = None) -> int:
    """The most bytes the pool keeps; with ``nbytes``, set it first (0 turns reuse off)."""
    global _limit
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise ValueError(f"nbytes must be an integer >= 0; got {nbytes!r}")
        with _lock:
            _limit = int(nbytes)
            _shrink(_limit)
    return _limit


def release() -> int:
    """Drop every free buffer now; return how many bytes that gives back."""
    with _lock:
        in_use = sum(_buffers[i].size for i in range(len(_buffers)) if not _is_free(i))
        return _shrink(in_use)  # drops free buffers until only the ones in use are left


def stats() -> dict:
    """``{"buffers", "bytes", "free_bytes"}``: what the pool holds now."""
    with _lock:
        free = sum(_buffers[i].size for i in range(len(_buffers)) if _is_free(i))
        return {"buffers": len(_buffers), "bytes": sum(b.size for b in _buffers),
                "free_bytes": free}
