"""The CuPy backend's plumbing: loading the .cu files, launching kernels, moving arrays.

Every kernel source sits beside its launcher (``quantize.cu`` beside ``quantize.py``, ...) and
includes ``zeta_common.cuh``. A source is compiled once per process by :class:`cupy.RawModule`
(CuPy also keeps the binary in its on-disk kernel cache), for the templates it names. Launchers
make their inputs contiguous device arrays of the right dtype and pass sizes as typed scalars;
kernels trust their inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

import cupy as cp

HERE = Path(__file__).resolve().parent
#: Threads per block of the one-thread-per-item kernels.
THREADS = 256
#: Options for every source (C++17, and the folder holding zeta_common.cuh). Never fast math:
#: the squash's exact arithmetic and cell_of_input's error bound (expf within 2 ulp,
#: zeta_common.cuh) hold only without it. CuPy appends ``-ftz=true`` after these (and the
#: last one wins), so float operations and conversions flush subnormals to zero; where a
#: kernel's exactness needs them (the running means, the cells, the re-rank), it converts,
#: computes and compares in PTX without the flush (zeta_common.cuh).
OPTIONS = ("-std=c++17", f"-I{HERE}")


@functools.lru_cache(maxsize=None)
def module(stem: str, name_expressions: tuple[str, ...]) -> "cp.RawModule":
    """The compiled ``stem.cu`` with the template instances ``name_expressions``."""
    source = (HERE / f"{stem}.cu").read_text()
    return cp.RawModule(code=source, options=OPTIONS, name_expressions=name_expressions)


@functools.lru_cache(maxsize=None)
def kernel(stem: str, name: str, all_names: tuple[str, ...]):
    """The kernel ``name`` (a plain name or a template instance) of ``stem.cu``; looked up
    once per process (a lookup cost some 5 us of the host's time, nine of them a call)."""
    return module(stem, all_names).get_function(name)


#: The most blocks :func:`launch` gives a kernel (they loop grid-stride beyond).
MAX_GRID = 1 << 20


def launch(fn, n_items: int, args, *, threads: int = THREADS, max_blocks: int = MAX_GRID) -> None:
    """Run ``fn`` with enough blocks for ``n_items`` threads (the kernels loop grid-stride, so
    the grid is capped, at ``max_blocks``; at least one block)."""
    blocks = max(1, min(-(-int(n_items) // threads), max_blocks))
    fn((blocks,), (threads,), tuple(args))


def event_now(stream=None) -> "cp.cuda.Event":
    """An event recorded now on ``stream`` (the current stream if None), without timing."""
    event = cp.cuda.Event(disable_timing=True)
    event.record(stream)
    return event


def side_stream() -> "cp.cuda.Stream":
    """This device's second stream (made once): work beside the current stream's."""
    device = cp.cuda.Device().id
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = cp.cuda.Stream(non_blocking=True)
    return _SIDE_STREAMS[device]


_SIDE_STREAMS: dict = {}


def empty(shape, dtype) -> "cp.ndarray":
    """Every output array of the backend comes from here (the tests fill it with poison)."""
    return cp.empty(shape, dtype=dtype)


def device(x, dtype=None) -> "cp.ndarray":
    """``x`` as a C-contiguous CuPy array (copied to the device if it is a NumPy array)."""
    return cp.ascontiguousarray(cp.asarray(x, dtype=dtype))


#: The most values a position's key and value rows may hold together (d_k + d_v): the kernels
#: take widths as 32-bit ints, and some step through a row 32 columns at a time.
MAX_WIDTH = (1 << 31) - 64


def check_width(d_k: int, d_v: int) -> None:
    """Refuse rows the kernels' 32-bit widths cannot hold, naming d_v (d_k <= 63 already)."""
    if d_k + d_v > MAX_WIDTH:
        raise ValueError(f"the CuPy backend handles d_k + d_v of up to 2^31 - 64 values a "
                         f"position; got d_v = {d_v} (v's last dimension) with d_k = {d_k}")


def i64(x) -> np.int64:
    return np.int64(x)


def ctype_name(dtype) -> str:
    """'float' or 'double', for template instances."""
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


#: C types of the instances of checks.cu's zeta_max_abs<T, U> (pairs (T, U) of these).
_MAX_ABS_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                  np.dtype(np.int64): "long long", np.dtype(np.uint64): "unsigned long long",
                  np.dtype(np.int32): "int"}
_MAX_ABS_PAIRS = ("float, float", "double, double", "float, double", "double, float",
                  "long long, long long", "unsigned long long, unsigned long long", "int, int")


#: Blocks of checks.cu's zeta_max_abs at the most (one atomic each): 8 per SM of an H200.
MAX_ABS_BLOCKS = 1056


def max_abs_into(bits, slot: int, x, y=None) -> None:
    """One pass of checks.cu's ``zeta_max_abs``: max |x - y| (``y`` an array of x's shape, a
    number, or None for 0) into ``bits[slot]``, a uint64 holding the bits of a float64, by
    atomicMax: the slot must start at 0 (+0.0) or at a smaller magnitude. NaN if any NaN is
    met; nothing for an empty array. No temporary, the same result on every run."""
    if x.size == 0:
        return
    has_y = y is not None and not np.isscalar(y)  # else y is the number c (or 0)
    c = 0.0 if has_y else float(y or 0.0)
    x = cp.ascontiguousarray(x)
    y = cp.ascontiguousarray(y) if has_y else x  # not read when has_y is 0
    types = f"{_MAX_ABS_TYPES.get(x.dtype)}, {_MAX_ABS_TYPES.get(y.dtype)}"
    if types not in _MAX_ABS_PAIRS:  # any other mix: compared as doubles
        x = x.astype(np.float64)
        y = y.astype(np.float64) if has_y else x
        types = "double, double"
    fn = kernel("checks", f"zeta_max_abs<{types}>",
                tuple(f"zeta_max_abs<{t}>" for t in _MAX_ABS_PAIRS))
    blocks = max(1, min(-(-x.size // THREADS), MAX_ABS_BLOCKS))  # grid-stride beyond
    fn((blocks,), (THREADS,), (x, y, np.int32(has_y), np.float64(c), i64(x.size),
                               bits[slot:slot + 1]))


def max_abs_all(pairs) -> "cp.ndarray":
    """For each ``(x, y)`` of ``pairs`` (``x`` a device array; ``y`` one of its shape, a
    number, or None for 0): max |x - y| in float64, NaN if any NaN is met, 0 for an empty
    array; as one float64 device array, so that all of them come back in one transfer. Each
    is one pass of checks.cu's ``zeta_max_abs`` (:func:`max_abs_into`)."""
    bits = cp.zeros(len(pairs), dtype=np.uint64)  # the bits of +0.0
    for slot, (x, y) in enumerate(pairs):
        max_abs_into(bits, slot, x, y)
    return bits.view(np.float64)
