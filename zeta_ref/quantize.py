"""Stage 2: quantisation of each coordinate to B bits (paper section 3.3, Eq. 4; D1, D2, D12).

Eq. 4 builds the Z-order code from the binary expansion of each coordinate in [0, 1). The
paper says neither how real coordinates reach [0, 1) nor how many bits each keeps; zeta_ref
decides:

- D1: an elementwise squash, fixed and the same at every position, so it leaks nothing from
  the future into the causal selection: ``sigmoid`` (default), ``tanh`` rescaled to [0, 1],
  or ``clip``, a linear map of a fixed range [lo, hi]. A per-sequence min-max scaling is
  deliberately not offered: it would let later tokens move earlier tokens' codes.
- D2: B = ``bits`` bits per coordinate (10 by default: three coordinates make a 30-bit code).
- D12: queries go through exactly the same pipeline as keys.

The squash is evaluated in float64 whatever the input dtype, so that float32 and float64
inputs with the same values get the same codes, and a twin backend has one formula to match.
A value of exactly 1.0 (the top of the range) maps to 2^B - 1, never wraps to 0.
"""

from __future__ import annotations

import numpy as np

from .config import SQUASHES


def squash(x, method: str = "sigmoid", clip_range=(-4.0, 4.0)) -> np.ndarray:
    """Map real coordinates elementwise into [0, 1] (D1).

    Parameters
    ----------
    x : float array (...)
    method : {"sigmoid", "tanh", "clip"}
        ``sigmoid``: 1 / (1 + exp(-x)). ``tanh``: (tanh(x) + 1) / 2.
        ``clip``: (clip(x, lo, hi) - lo) / (hi - lo).
    clip_range : (lo, hi)
        The range used by ``clip``.

    Returns
    -------
    float64 array (...), values in [0, 1].

    Notes
    -----
    Paper section 3.3, Eq. 4 expands coordinates in [0, 1) in binary; how reals get there is
    decision D1 (docs/decisions.md).
    """
    x = np.asarray(x, dtype=np.float64)
    if method == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: sigmoid -> 0
            return 1.0 / (1.0 + np.exp(-x))
    if method == "tanh":
        return (np.tanh(x) + 1.0) * 0.5
    if method == "clip":
        lo, hi = float(clip_range[0]), float(clip_range[1])
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    raise ValueError(f"squash must be one of {SQUASHES}; got {method!r}")


def quantize(x, bits: int, squash_method: str = "sigmoid", clip_range=(-4.0, 4.0)) -> np.ndarray:
    """Quantise each coordinate to an integer in [0, 2^bits) (Eq. 4 with D1, D2).

    Parameters
    ----------
    x : float array (..., N, d)
        Queries or keys after projection.
    bits : int
        B, bits per coordinate.
    squash_method, clip_range
        See :func:`squash`.

    Returns
    -------
    uint64 array (..., N, d): ``min(floor(squash(x) * 2^B), 2^B - 1)``.

    Notes
    -----
    The cell of value ``u`` is [u / 2^B, (u + 1) / 2^B); the closed top end 1.0 joins the last
    cell. The float64 product ``s * 2^B`` is exact (a power-of-two scaling), so the only
    rounding is in the squash itself.
    """
    s = squash(x, squash_method, clip_range)  # (..., N, d) float64 in [0, 1]
    top = np.uint64((1 << bits) - 1)
    cells = np.floor(s * float(1 << bits)).astype(np.uint64)  # in [0, 2^B]
    return np.minimum(cells, top)  # 1.0 -> 2^B - 1, not 2^B (which would wrap in the code)
