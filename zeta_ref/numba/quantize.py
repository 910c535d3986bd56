"""Numba twin of stage 2, quantisation (paper section 3.3, Eq. 4; D1, D2, D12, D13).

Same algorithm, signature and output dtype as :func:`zeta_ref.stages.quantize.quantize`: squash each
coordinate into [0, 1] in float64 whatever the input dtype (D1), keep B bits (D2), the top value
1.0 joins the last cell. One kernel for every squash, parallel over the flattened coordinates
(serial for small inputs).

Agreement with the specification is exact by construction (D13): the squash calls no math
library. ``_exp_ieee`` below repeats :func:`zeta_ref.stages.quantize.exp_ieee` operation for operation
(the same constants, the same order, no fused multiply-adds: Numba does not contract them
unless asked to with fastmath), so every coordinate lands in the specification's cell, also one
that lies on a cell edge.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._jit import parallel_from, serial_and_parallel
from ..config import SQUASHES
from .host_memory import empty_output
from ..stages.quantize import EXP_MAX_ARG, EXP_MIN_ARG, EXP_TAYLOR, INV_LN2, LN2_HI, LN2_LO

_SQUASH_IDS = {"sigmoid": 0, "tanh": 1, "clip": 2}
_TAYLOR = np.array(EXP_TAYLOR, dtype=np.float64)  # 1 / j!, j = 0 .. 13


#: From this many coordinates on the parallel kernel runs, below it the serial one: 2^15 under
#: OpenMP and TBB, 16 times that (2^19) under "workqueue" (``_jit.parallel_from``, whose
#: parallel call costs far more). Measured on the 2-core VM of docs/benchmarks.md (2026-12-02,
#: sigmoid, medians of 61 interleaved calls, ranges over runs): under OpenMP the parallel
#: kernel is faster from 2^10 coordinates on (1.4x; 2x from 2^13), so 2^15 leaves a wide margin
#: for a wake-up that waits while the other core is busy (numba/_jit.py); under "workqueue" it
#: breaks even about 2^17-2^18 and gains 1.1-2x at 2^19 (four runs), 2x at 2^21.
PARALLEL_MIN_VALUES = 1 << 15


@nb.njit(cache=True, inline="always")
def _exp_ieee(t):
    """exp(t), float64, line for line :func:`zeta_ref.stages.quantize.exp_ieee`."""
    if t > EXP_MAX_ARG:
        return np.inf
    if t < EXP_MIN_ARG:
        return 0.0
    n = np.floor(t * INV_LN2 + 0.5)  # step 1
    r = (t - n * LN2_HI) - n * LN2_LO  # step 2
    p = _TAYLOR[13]  # step 3: Horner, highest degree first
    for j in range(12, -1, -1):
        p = p * r + _TAYLOR[j]
    return math.ldexp(p, int(n))  # step 4


def _quantize_body(x, scale, top, method, lo, hi, out):
    """x: (n,) float32/float64, contiguous; scale = 2^B (float64), top = 2^B - 1 (uint64);
    writes uint64 (n,) into ``out``."""
    n = x.shape[0]
    span = hi - lo
    for e in nb.prange(n):
        xe = np.float64(x[e])  # the squash runs in float64 (D1)
        # step 1: squash into [0, 1] (D13: exp from IEEE operations; -x and -2x are exact)
        if method == 0:
            s = 1.0 / (1.0 + _exp_ieee(-xe))  # exp(-x) -> inf for x << 0: s -> 0
        elif method == 1:
            s = 1.0 / (1.0 + _exp_ieee(-2.0 * xe))  # (tanh(x) + 1) / 2
        else:
            s = (min(max(xe, lo), hi) - lo) / span
        # step 2: keep B bits; 1.0 -> 2^B - 1, not 2^B (which would wrap in the code)
        cell = np.floor(s * scale)  # a whole number in [0, 2^B], float64
        out[e] = top if cell >= scale else np.uint64(cell)


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
        coordinates on (16 times that under "workqueue": ``_jit.parallel_from``). Both give
        the same codes (for tests).

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
        parallel = flat.shape[0] >= parallel_from(PARALLEL_MIN_VALUES)
    kernel = _quantize_parallel if parallel else _quantize_serial
    codes = empty_output(flat.shape, np.uint64)  # (... * N * d,)
    kernel(flat, math.ldexp(1.0, int(bits)), np.uint64((1 << int(bits)) - 1),
           np.int64(_SQUASH_IDS[squash_method]), lo, hi, codes)
    return codes.reshape(x.shape)
