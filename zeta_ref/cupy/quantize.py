"""CuPy twin of stage 2, quantisation (paper section 3.3, Eq. 4; D1, D2, D12, D13).

Same signature and output dtype as :func:`zeta_ref.stages.quantize.quantize`; the kernel is in
``quantize.cu``. Exact: the squash is computed from IEEE operations alone, the specification's
operations in its order, never fused into FMAs (D13), so every coordinate lands in the
specification's cell, also on a cell edge.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import SQUASHES
from . import _runtime as rt

_SQUASH_IDS = {"sigmoid": 0, "tanh": 1, "clip": 2}
_NAMES = ("zeta_quantize<float>", "zeta_quantize<double>")


def _squash_args(bits: int, squash_method: str, clip_range):
    if squash_method not in _SQUASH_IDS:
        raise ValueError(f"squash must be one of {SQUASHES}; got {squash_method!r}")
    return (np.float64(math.ldexp(1.0, int(bits))), np.uint64((1 << int(bits)) - 1),
            np.int32(_SQUASH_IDS[squash_method]), np.float64(clip_range[0]),
            np.float64(clip_range[1]))


def quantize(x, bits: int, squash_method: str = "sigmoid", clip_range=(-4.0, 4.0)):
    """Quantise each coordinate to an integer in [0, 2^bits) (CuPy twin).

    Parameters
    ----------
    x : float32 or float64 array (..., N, d), NumPy or CuPy
    bits : int
    squash_method : {"sigmoid", "tanh", "clip"}
    clip_range : (lo, hi)

    Returns
    -------
    cupy uint64 array (..., N, d): ``min(floor(squash(x) * 2^B), 2^B - 1)``.
    """
    args = _squash_args(bits, squash_method, clip_range)
    x = rt.device(x)
    out = rt.empty(x.shape, np.uint64)  # (..., N, d)
    fn = rt.kernel("quantize", f"zeta_quantize<{rt.ctype_name(x.dtype)}>", _NAMES)
    rt.launch(fn, x.size, (x, rt.i64(x.size)) + args + (out,))
    return out
