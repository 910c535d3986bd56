"""Exercise: quantize, stage 2 (squash and keep B bits per coordinate)

Difficulty: easy
Time: about 15 minutes
Specification: zeta_ref.stages.quantize.quantize
Decisions: D1, D2, D13
Grade it: zeta-ref grade quantize quantize.py

Every coordinate of a query or a key is squashed into [0, 1] (D1) and cut into 2^B cells of
equal width (D2); the cell's number, an integer in [0, 2^B), is what the Z-order code is made
of. Write the body of ``quantize``: the squash is given (``squash`` below, the specification's
own, computed the same way on every backend: D13), the cells are yours.

Read first: the module docstring of zeta_ref/stages/quantize.py; docs/decisions.md, D1, D2
and D13. Watch the two ends of the range: a value that squashes to exactly 0.0, and one that
squashes to exactly 1.0.
"""

from __future__ import annotations

import math

import numpy as np

from zeta_ref.stages.quantize import squash


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
    # Hint: squash(x, squash_method, clip_range) gives float64 values in [0, 1] (D1, D13).
    # Hint: cell u holds [u / 2^B, (u + 1) / 2^B). Which cell holds exactly 1.0?
    raise NotImplementedError('squash, scale by 2^B, take the cell, keep 1.0 in the last cell')
