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

How "no array refers to it" is known. Each array handed out gets its memory from a small
object made for that one loan, a *lease*: the lease points NumPy at the aligned part of the
buffer (through ``__array_interface__``, which copies nothing) and holds the buffer itself.
NumPy keeps the owner of an array's memory alive for as long as the array, or any view, slice,
reshape or memoryview made from it, exists: each of them refers to the array it came from or
to the owner, so a chain of references always leads back to the lease. The pool keeps the
buffer, but only a weak reference to its lease, and takes a buffer again only once that weak
reference is dead. A weak reference dies only when its object is destroyed, and an object is
never destroyed while anything still refers to it; this holds on every Python, with or without
the GIL, so a free-threaded Python reuses buffers like any other (no reference count is read,
exact or not). Only a bare address kept without its array (``a.ctypes.data``) escapes the rule,
as it escapes NumPy's own bookkeeping. Where objects are destroyed late (a reference cycle that waits for the garbage
collector, or a Python whose collector frees objects in batches), a buffer only looks busy for
longer and the pool takes fresh memory meanwhile: the rule can err only towards "busy". The
pool's lock makes taking a buffer safe across threads; a lease that has died stays dead, so a
buffer found free under the lock is still free when it is handed out.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

#: The size of a transparent huge page on x86-64 Linux.
HUGE_PAGE = 2 << 20
#: Outputs from this size on come from the pool; smaller ones are plain ``np.empty``.
POOLED_MIN_BYTES = 2 << 20


class _Lease:
    """The owner of the memory of one loan: ``nbytes`` bytes from ``address`` on, in ``memory``.

    ``np.asarray(lease)`` is a ``(nbytes,)`` uint8 array on that memory; it and every array
    made from it keep the lease alive, and the lease keeps ``memory`` alive.
    """

    __slots__ = ("__array_interface__", "memory", "__weakref__")

    def __init__(self, memory: np.ndarray, address: int, nbytes: int):
        self.memory = memory
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1",
                                    "data": (address, False)}  # False: writable


class _Buffer:
    """One buffer of the pool: its memory, where its first 2 MiB boundary is, its latest loan."""

    __slots__ = ("memory", "address", "loan")

    def __init__(self, size: int):
        self.memory = np.empty(size, dtype=np.uint8)  # (size,) raw bytes
        start = self.memory.ctypes.data
        self.address = start + (-start % HUGE_PAGE)
        self.loan = None  # weakref.ref to the lease of the latest loan

    def is_free(self) -> bool:
        """The latest loan is over: its lease, and so every array made from it, is gone."""
        return self.loan is None or self.loan() is None

    def lend(self, nbytes: int) -> _Lease:
        """A new loan of the first ``nbytes`` bytes from the boundary on."""
        lease = _Lease(self.memory, self.address, nbytes)
        self.loan = weakref.ref(lease)
        return lease


_lock = threading.Lock()
_buffers: list[_Buffer] = []  # least recently handed out first
_limit = 256 << 20


def _take(size: int, nbytes: int) -> _Lease:
    """A lease on ``nbytes`` of a buffer of ``size`` bytes: a free one from the pool, or a new
    one (kept in the pool)."""
    with _lock:
        for index, buffer in enumerate(_buffers):
            if buffer.memory.size == size and buffer.is_free():
                del _buffers[index]
                break
        else:
            buffer = _Buffer(size)
        lease = buffer.lend(nbytes)  # in use from here on, before the lock is let go
        _buffers.append(buffer)  # most recently handed out: evicted last
        _shrink(_limit)
        return lease


def _shrink(limit: int) -> int:
    """Forget buffers (free ones first, oldest first) until the pool holds at most ``limit``
    bytes; return how many bytes of free buffers were dropped. Call with the lock held.

    A buffer forgotten while in use stays alive through its lease until its arrays are dropped.
    """
    total = sum(b.memory.size for b in _buffers)
    dropped = 0
    for want_free in (True, False):
        index = 0
        while total > limit and index < len(_buffers):
            if _buffers[index].is_free() == want_free:
                total -= _buffers[index].memory.size
                dropped += _buffers[index].memory.size if want_free else 0
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
    lease = _take(size, nbytes)
    return np.asarray(lease).view(dtype).reshape(shape)  # (nbytes,) uint8 -> shape, dtype


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
        in_use = sum(b.memory.size for b in _buffers if not b.is_free())
        return _shrink(in_use)  # drops free buffers until only the ones in use are left


def stats() -> dict:
    """``{"buffers", "bytes", "free_bytes"}``: what the pool holds now."""
    with _lock:
        free = sum(b.memory.size for b in _buffers if b.is_free())
        return {"buffers": len(_buffers), "bytes": sum(b.memory.size for b in _buffers),
                "free_bytes": free}
