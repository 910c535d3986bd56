"""Exercise: morton_encode, stage 3 (interleave the bits into a Z-order code)

Difficulty: easy
Time: about 20 minutes
Specification: zeta_ref.stages.morton.morton_encode
Decisions: D2, D3
Grade it: zeta-ref grade morton_encode morton_encode.py

A point of d coordinates, each B bits, becomes one integer of d * B bits: the top bit of every
coordinate, then their next bits, and so on down to the lowest bits (paper, Eq. 4). Inside
each group of d bits, dimension 0 comes first, that is highest (D3, a convention the paper
leaves open). Sorting by this code walks the grid along the Z-shaped curve.

Write the body of ``morton_encode``. The range check is given. Example: d = 2, B = 2,
(x, y) = (3, 0) = (11b, 00b) gives x1 y1 x0 y0 = 1010b = 10.

Read first: the module docstring of zeta_ref/stages/morton.py; docs/decisions.md, D3.
Notebook 1 draws the curve.
"""

from __future__ import annotations

import numpy as np

from zeta_ref.stages.morton import check_coordinates


def morton_encode(u, bits: int, *, check: bool = True) -> np.ndarray:
    """Interleave the bits of d integer coordinates into one Z-order code.

    Parameters
    ----------
    u : integer array (..., d)
        Quantised coordinates, each in [0, 2^bits).
    bits : int
        B, bits per coordinate; ``d * bits <= 63``.
    check : bool, default True
        Check ``u`` with :func:`check_coordinates`. The composer passes False: its coordinates
        come from :func:`~zeta_ref.stages.quantize.quantize`, in range by construction, and the
        check is a pass over them as long as the encoding itself.

    Returns
    -------
    uint64 array (...): the codes.

    Notes
    -----
    Paper section 3.3, Eq. 4 (the Z-order code); D2 (bits per coordinate) and D3 (dimension 0
    most significant within each bit group).

    Examples
    --------
    >>> int(morton_encode([3, 0], bits=2))   # x = 11b, y = 00b  ->  1 0 1 0
    10
    """
    if check:
        u, bits = check_coordinates(u, bits)
    # BEGIN SOLUTION: interleave the bits of the d coordinates
    # Hint: work in np.uint64 throughout (shift counts too): mixing uint64 and int64 gives
    #   float64 in NumPy, and the low bits of a float64 are lost.
    # Hint: bit t of coordinate j lands at bit t * d + (d - 1 - j) of the code.
    u = np.asarray(u).astype(np.uint64)  # (..., d)
    d = u.shape[-1]
    one = np.uint64(1)
    code = np.zeros(u.shape[:-1], dtype=np.uint64)  # (...)
    for j in range(d):  # every coordinate ...
        for t in range(int(bits)):  # ... and every one of its bits, low to high
            bit = (u[..., j] >> np.uint64(t)) & one  # (...) 0 or 1
            # group t holds bit t of every coordinate; dimension 0 highest in it (D3)
            code |= bit << np.uint64(t * d + (d - 1 - j))
    return code
    # END SOLUTION
