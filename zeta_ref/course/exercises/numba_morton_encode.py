"""Exercise: numba_morton_encode, a Numba twin of stage 3 (the Z-order code, compiled)

Difficulty: hard
Time: about 45 minutes
Specification: zeta_ref.stages.morton.morton_encode
Decisions: D2, D3
Grade it: zeta-ref grade numba_morton_encode numba_morton_encode.py

The NumPy specification of stage 3 makes d * B passes over the whole array. A twin compiled
with Numba (zeta_ref/numba/morton.py) computes each code in one go, in a loop that Numba turns
into machine code. Write one: the kernel ``interleave_rows``, compiled by ``@nb.njit``, builds
the code of every row, and ``morton_encode`` (the specification's signature) prepares its
input, calls it and gives the codes back the shape of ``u`` without its last axis.

Numba types every variable once, from what is assigned to it: keep every value of the code in
np.uint64 (a uint64 mixed with an int64 gives a float64, whose low bits are lost), and shift
by np.uint64 amounts. The first call compiles the kernel (a second or two); the grader
compares your codes with the specification's bit for bit and checks that the kernel did run
compiled. The bit order is that of exercise morton_encode (D3: dimension 0 highest in its
group).

Going further: zeta_ref/numba/morton.py "spreads" each coordinate with masks instead of a
loop over bits, about five operations per coordinate for d = 2 and 3.

Read first: exercise morton_encode; zeta_ref/numba/morton.py; Numba's documentation on
@njit and integer typing.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from zeta_ref.stages.morton import check_coordinates


@nb.njit(cache=False)
def interleave_rows(rows, bits, codes):
    """rows: uint64 (n, d), values below 2^bits; writes the code of row e into codes[e]."""
    # Hint: a local variable must stay one type: start it as np.uint64(0).
    raise NotImplementedError('one code per row, its bit groups from the most significant')


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
    # Hint: u.reshape(-1, d) makes the rows; np.ascontiguousarray(..., dtype=np.uint64) gives
    #   the kernel one memory layout and one type to compile for.
    raise NotImplementedError("rows of uint64, one kernel call, the codes in u's shape")
