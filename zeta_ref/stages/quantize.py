"""Stage 2: quantisation of each coordinate to B bits (paper section 3.3, Eq. 4; D1, D2, D12, D13).

Eq. 4 builds the Z-order code from the binary expansion of each coordinate in [0, 1). The
paper says neither how real coordinates reach [0, 1) nor how many bits each keeps; zeta_ref
decides:

- D1: an elementwise squash, fixed and the same at every position, so it leaks nothing from
  the future into the causal selection: ``sigmoid`` (default), ``tanh`` rescaled to [0, 1],
  or ``clip``, a linear map of a fixed range [lo, hi]. A per-sequence min-max scaling is
  deliberately not offered: it would let later tokens move earlier tokens' codes.
- D2: B = ``bits`` bits per coordinate (10 by default: three coordinates make a 30-bit code).
- D12: queries go through exactly the same pipeline as keys.
- D13: the same bits on every backend. A coordinate's cell is ``floor(s * 2^B)``, and a
  difference of one unit in the last place of s moves a coordinate that lies on a cell edge
  into the next cell, and with it the query's whole window. Math libraries do not agree to the
  last place on exp or tanh (NumPy, the C library behind Numba and CUDA each round differently),
  so zeta_ref does not call them here: :func:`exp_ieee` computes exp from additions,
  multiplications and exact scalings by powers of two, operations that IEEE 754 rounds one
  way on every machine. Every backend evaluates the same operations in the same order (and a
  GPU twin must not fuse them into FMAs), so the squash, and therefore every cell, is bit for
  bit the same everywhere, at every B.

The squash is evaluated in float64 whatever the input dtype, so that float32 and float64
inputs with the same values get the same codes. A value of exactly 1.0 (the top of the
range) maps to 2^B - 1, never wraps to 0.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import SQUASHES

# ---------------------------------------------------------------- exp from IEEE operations
#
# exp(t) = 2^n * exp(r) with n = the integer nearest t / ln 2 and r = t - n ln 2, |r| <= ln2/2.
# ln 2 is split in two parts (Cody and Waite's range reduction): LN2_HI keeps only the top 32
# bits of ln 2, so n * LN2_HI is exact for every |n| < 2^21, and LN2_LO is the rest.
# exp(r) is its Taylor polynomial to degree 13: the first term left out, r^14 / 14!, is below
# 4.1e-18, a thirtieth of float64's unit in the last place at 1.
#: ln 2 rounded to its 32 leading bits (exactly representable; n * LN2_HI is exact).
LN2_HI = 0.6931471803691238
#: ln 2 - LN2_HI, rounded to float64.
LN2_LO = 1.9082149292705877e-10
#: 1 / ln 2, rounded to float64.
INV_LN2 = 1.4426950408889634
#: 1 / j! for j = 0 .. 13, each rounded once (Python's int / int division rounds correctly).
EXP_TAYLOR = tuple(1 / math.factorial(j) for j in range(14))
#: Beyond these arguments exp overflows to inf or underflows to 0 in float64.
EXP_MAX_ARG = 709.782712893384
EXP_MIN_ARG = -745.1332191019412


def exp_ieee(t) -> np.ndarray:
    """exp(t) in float64 from IEEE-exact operations only (D13).

    Within 2 units in the last place of the true exp (tested against NumPy's exp), and
    bit-identical on every backend that performs the same operations in the same order:
    the Numba and CUDA twins of stage 2 mirror these lines one for one.

    Parameters
    ----------
    t : float array (...)

    Returns
    -------
    float64 array (...): inf above ``EXP_MAX_ARG``, 0 below ``EXP_MIN_ARG``.
    """
    t = np.asarray(t, dtype=np.float64)
    tc = np.clip(t, -746.0, 710.0)  # keeps n small; the ends are fixed up below
    # step 1: n = round(t / ln 2) (floor of x + 0.5: one rounding rule for every backend)
    n = np.floor(tc * INV_LN2 + 0.5)
    # step 2: r = t - n ln 2, in two parts
    r = (tc - n * LN2_HI) - n * LN2_LO
    # step 3: exp(r) by Horner's rule on the Taylor polynomial, highest degree first
    p = np.full_like(r, EXP_TAYLOR[13])
    for c in EXP_TAYLOR[12::-1]:
        p = p * r + c
    # step 4: times 2^n (exact, or one rounding into the subnormal range)
    with np.errstate(over="ignore"):  # t near EXP_MAX_ARG may round up to inf: as exp does
        e = np.ldexp(p, n.astype(np.int64))
    return np.where(t > EXP_MAX_ARG, np.inf, np.where(t < EXP_MIN_ARG, 0.0, e))


def squash(x, method: str = "sigmoid", clip_range=(-4.0, 4.0)) -> np.ndarray:
    """Map real coordinates elementwise into [0, 1] (D1).

    Parameters
    ----------
    x : float array (...)
    method : {"sigmoid", "tanh", "clip"}
        ``sigmoid``: 1 / (1 + exp(-x)). ``tanh``: (tanh(x) + 1) / 2, computed as the equal
        1 / (1 + exp(-2x)). ``clip``: (clip(x, lo, hi) - lo) / (hi - lo). exp is
        :func:`exp_ieee` (D13).
    clip_range : (lo, hi)
        The range used by ``clip``.

    Returns
    -------
    float64 array (...), values in [0, 1].

    Notes
    -----
    Paper section 3.3, Eq. 4 expands coordinates in [0, 1) in binary; how reals get there is
    decision D1, and how it is computed D13 (docs/decisions.md).
    """
    x = np.asarray(x, dtype=np.float64)
    if method in ("sigmoid", "tanh"):
        # -x and -2x are exact; exp(-x) = inf for x << 0 gives s = 0
        with np.errstate(over="ignore"):  # -2x of |x| > 9e307 is -inf: exp 0, s 1
            t = -x if method == "sigmoid" else -2.0 * x
        return 1.0 / (1.0 + exp_ieee(t))
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
    rounding is in the squash itself, and that is the same on every backend (D13).
    """
    s = squash(x, squash_method, clip_range)  # (..., N, d) float64 in [0, 1]
    scale = math.ldexp(1.0, bits)  # 2^B, exact for every B <= 63
    top = np.uint64((1 << bits) - 1)
    cells = np.floor(s * scale)  # (..., N, d) float64, whole numbers in [0, 2^B]
    # s = 1.0 gives 2^B, which joins the last cell (it would wrap to 0 in the code)
    return np.where(cells >= scale, top, cells.astype(np.uint64))
