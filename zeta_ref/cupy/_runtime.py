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
#: Options for every source (C++17, and the folder holding zeta_common.cuh).
OPTIONS = ("-std=c++17", f"-I{HERE}")


@functools.lru_cache(maxsize=None)
def module(stem: str, name_expressions: tuple[str, ...]) -> "cp.RawModule":
    """The compiled ``stem.cu`` with the template instances ``name_expressions``."""
    source = (HERE / f"{stem}.cu").read_text()
    return cp.RawModule(code=source, options=OPTIONS, name_expressions=name_expressions)


def kernel(stem: str, name: str, all_names: tuple[str, ...]):
    """The kernel ``name`` (a plain name or a template instance) of ``stem.cu``."""
    return module(stem, all_names).get_function(name)


def launch(fn, n_items: int, args, *, threads: int = THREADS) -> None:
    """Run ``fn`` with enough blocks for ``n_items`` threads (the kernels loop grid-stride, so
    the grid is capped; at least one block)."""
    blocks = max(1, min(-(-int(n_items) // threads), 1 << 20))
    fn((blocks,), (threads,), tuple(args))


def empty(shape, dtype) -> "cp.ndarray":
    """Every output array of the backend comes from here (the tests fill it with poison)."""
    return cp.empty(shape, dtype=dtype)


def device(x, dtype=None) -> "cp.ndarray":
    """``x`` as a C-contiguous CuPy array (copied to the device if it is a NumPy array)."""
    return cp.ascontiguousarray(cp.asarray(x, dtype=dtype))


def i64(x) -> np.int64:
    return np.int64(x)


def ctype_name(dtype) -> str:
    """'float' or 'double', for template instances."""
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
