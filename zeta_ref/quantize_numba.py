"""Numba twin of stage 2, quantisation (paper section 3.3, Eq. 4; D1, D2, D12).

Same algorithm, signature and output dtype as :func:`zeta_ref.quantize.quantize`: squash each
coordinate into [0, 1] in float64 whatever the input dtype (D1), keep B bits (D2), the top value
1.0 joins the last cell. One kernel for every squash, parallel over the flattened coordinates (serial for small inputs).

Agreement with the specification: the "clip" squash is arithmetic only (clip, subtract,
divide) and is bit-identical. "sigmoid" and "tanh" call exp/tanh, which Numba takes from the
C library (via LLVM) while NumPy uses its own SIMD routines; the two can differ in the last
place, and once in a while that moves a coordinate across a cell boundary. The measured rate
is in docs/benchmarks.md; the tests therefore compare later stages on the specification's own
quantised coordinates.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._jit_numba import serial_and_parallel
from .config import SQUASHES
from .host_memory import empty_output

_SQUASH_IDS = {"sigmoid": 0, "tanh": 1, "clip": 2}


#: From this many coordinates on the parallel kernel runs, below it the serial one (_jit_numba);
#: on the 2-core machine of docs/benchmarks.md parallel was faster from about 2^12 on.
PARALLEL_MIN_VALUES = 1 << 15


def _quantize_body(x, bits, method, lo, hi, out):
    """x: (n,) float32/float64, contiguous; writes uint64 (n,) into ``out``."""
    n = x.shape[0]
    scale = float(1 << bits)  # 2^B, exact in float64
    top = np.uint64((1 << bits) - 1)
    span = hi - lo
    for e in nb.prange(n):
        xe = np.float64(x[e])  # the squash runs in float64 (D1)
        # step 1: squash into [0, 1]
        if method == 0:
            s = 1.0 / (1.0 + np.exp(-xe))  # exp(-x) -> inf for x << 0: s -> 0
        elif method == 1:
            s = (np.tanh(xe) + 1.0) * 0.5
        else:
            s = (min(max(xe, lo), hi) - lo) / span
        # step 2: keep B bits; 1.0 -> 2^B - 1, not 2^B (which would wrap in the code)
        cell = np.uint64(np.floor(s * scale))  # in [0, 2^B]
        out[e] = cell if cell < top else top


_quantize_serial, _quantize_parallel = serial_and_parallel(_quantize_body)


def quantize(x, bits: int, squash_method: str = "sigmoid", clip_range=(-4.0, 4.0), *,
             parallel: bool | None = None) -> np.ndarray:
    """Quantise each coordinate to an integer in [0, 2^bits); twin of the NumPy specification.

    Parameters
    ----------
    x : float32 or float64 array (..., N, d)
    bits : int
        B, bits per coordinate.
    squash_method : {"sigmoid", "tanh", "clip"}
    clip_range : (lo, hi)
    parallel : bool, optional
        Parallel (True) or serial (False) kernel; by default parallel from PARALLEL_MIN_VALUES
        coordinates on. Both give the same codes (for tests).

    Returns
    -------
    uint64 array (..., N, d): ``min(floor(squash(x) * 2^B), 2^B - 1)``.
    """
    if squash_method not in _SQUASH_IDS:
        raise ValueError(f"squash must be one of {SQUASHES}; got {squash_method!r}")
    x = np.asarray(x)
    flat = np.ascontiguousarray(x).reshape(-1)  # (... * N * d,)
    lo, hi = float(clip_range[0]), float(clip_range[1])
    if parallel is None:
        parallel = flat.shape[0] >= PARALLEL_MIN_VALUES
    kernel = _quantize_parallel if parallel else _quantize_serial
    codes = empty_output(flat.shape, np.uint64)  # (... * N * d,)
    kernel(flat, np.int64(bits), np.int64(_SQUASH_IDS[squash_method]), lo, hi, codes)
    return codes.reshape(x.shape)
