"""Shared by the Numba twins: one kernel body compiled twice, and how outputs are allocated.

One kernel body, two compilations: parallel for large inputs, serial for small ones.

On a machine with few cores a parallel loop costs a wake-up of the worker threads at every
call; when the other core is busy that wake-up can wait a whole scheduler tick (4 ms, see
docs/benchmarks.md, "Noise"), far more than a small stage's work. The twins therefore compile
each parallel kernel body twice and pick by the size of the work; ``prange`` in the serial
compilation is a plain ``range``, so both run the same code and give the same results.
"""

from __future__ import annotations

import types

import numba as nb
import numpy as np


def _renamed(fn, name: str):
    """A copy of ``fn`` under another name (Numba's disk cache is keyed by the name, and the two
    compilations of one body must not share a cache entry)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


def serial_and_parallel(body):
    """``(serial, parallel)``: ``body`` compiled with ``njit(cache=True)`` without and with
    ``parallel=True``."""
    name = body.__name__.strip("_").removesuffix("_body")
    serial = nb.njit(cache=True)(_renamed(body, f"_{name}_serial"))
    parallel = nb.njit(cache=True, parallel=True)(_renamed(body, f"_{name}_parallel"))
    return serial, parallel


#: The size of a transparent huge page on x86-64 Linux.
HUGE_PAGE = 2 << 20
#: Outputs from this size on start on a huge-page boundary (see empty_output).
HUGE_MIN_BYTES = 2 << 20


def empty_output(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, started on a 2 MiB boundary when it is that large.

    Why the twins allocate their outputs here and not inside the kernels: a forward pass at
    N = 65536 writes about 60 MiB of fresh arrays, and the C library hands freed blocks that
    large back to the kernel, so every call faults its outputs in again. Numba's own allocation
    faults them in 4 KiB at a time (over 18,000 faults per call, 2 to 6 us each on a virtual
    machine: docs/benchmarks.md). NumPy asks the kernel for transparent huge pages on large
    blocks, but only the 2 MiB-aligned part of a block can get them. Allocating 4 MiB more and
    starting the array on a boundary puts all of it in huge pages: a few faults per call.
    Small arrays are plain ``np.empty``. Where huge pages are off, this is ``np.empty`` with
    4 MiB of untouched padding.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < HUGE_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + 2 * HUGE_PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)
