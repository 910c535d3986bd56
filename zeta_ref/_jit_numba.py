"""One kernel body, two compilations: parallel for large inputs, serial for small ones.

On a machine with few cores a parallel loop costs a wake-up of the worker threads at every
call; when the other core is busy that wake-up can wait a whole scheduler tick (4 ms, see
docs/benchmarks.md, "Noise"), far more than a small stage's work. The twins therefore compile
each parallel kernel body twice and pick by the size of the work; ``prange`` in the serial
compilation is a plain ``range``, so both run the same code and give the same results.
"""

from __future__ import annotations

import types

import numba as nb


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
