"""Stage 3: bit interleaving into Z-order (Morton) codes (paper section 3.3, Eq. 4; D3).

A point u = (u_0, ..., u_{d-1}) of B-bit integers becomes one integer whose bits, from the most
significant, are the top bits of every coordinate, then their next bits, and so on:

    Z(u) = b_0[B-1] b_1[B-1] ... b_{d-1}[B-1]  b_0[B-2] ... b_{d-1}[B-2]  ...  b_0[0] ... b_{d-1}[0]

where b_j[t] is bit t of coordinate j. Within each group of d bits dimension 0 comes first
(most significant): that is decision D3, a convention the paper does not fix. Sorting by Z
visits the grid along the Z-shaped curve, so points near on the curve are (mostly) near in space.

Codes are uint64 and need d * B <= 63 bits (one bit to spare keeps them valid as int64 too).
"""

from __future__ import annotations

import numpy as np

from .._checks import check_bits_for_dim, check_positive_int




def _as_integer_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an array of integers; got dtype {arr.dtype}")
    return arr


def check_coordinates(u, bits, xp=np):
    """``(u, bits)`` checked for :func:`morton_encode`: integers of shape (..., d), d * bits <= 63,
    every value in [0, 2^bits). Every backend's twin calls this one check (``xp``: the array
    module of ``u``), so they all refuse what the specification refuses, with its words."""
    bits = check_positive_int(bits, "bits")
    u = xp.asarray(u)
    if u.dtype.kind not in "iu":
        raise TypeError(f"u must be an array of integers; got dtype {u.dtype}")
    if u.ndim < 1 or u.shape[-1] < 1:
        raise ValueError(f"u must have shape (..., d) with d >= 1; got shape {u.shape}")
    check_bits_for_dim(bits, u.shape[-1])
    if u.size:
        lo, hi = int(u.min()), int(u.max())
        if lo < 0 or hi > (1 << bits) - 1:
            raise ValueError(f"u must hold values in [0, 2^bits) = [0, {(1 << bits) - 1}]; "
                             f"got values in [{lo}, {hi}]")
    return u, bits


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
    u = np.asarray(u).astype(np.uint64)
    d = u.shape[-1]
    one = np.uint64(1)
    z = np.zeros(u.shape[:-1], dtype=np.uint64)  # (...)
    for t in range(bits - 1, -1, -1):  # bit groups, most significant first
        for j in range(d):  # within a group, dimension 0 first (D3)
            z = (z << one) | ((u[..., j] >> np.uint64(t)) & one)
    return z


def morton_decode(z, d: int, bits: int) -> np.ndarray:
    """Undo :func:`morton_encode`: split codes back into d coordinates of B bits.

    Parameters
    ----------
    z : integer array (...)
        Codes in [0, 2^(d * bits)).
    d : int
        Number of coordinates.
    bits : int
        B, bits per coordinate; ``d * bits <= 63``.

    Returns
    -------
    uint64 array (..., d).

    Notes
    -----
    The inverse of Eq. 4's interleaving (paper section 3.3) under D3's bit order.
    """
    bits = check_positive_int(bits, "bits")
    d = check_positive_int(d, "d")
    check_bits_for_dim(bits, d)
    z = _as_integer_array(z, "z")
    if z.size and (z.min() < 0 or int(z.max()) >= 1 << (d * bits)):
        raise ValueError(
            f"z must hold codes in [0, 2^(d*bits)) = [0, {(1 << (d * bits)) - 1}]; "
            f"got values in [{z.min()}, {z.max()}]"
        )
    z = z.astype(np.uint64)
    one = np.uint64(1)
    u = np.zeros(z.shape + (d,), dtype=np.uint64)  # (..., d)
    for t in range(bits):  # bit groups, least significant first
        for j in range(d - 1, -1, -1):  # the last dimension sits lowest in each group
            shift = np.uint64(t * d + (d - 1 - j))
            u[..., j] |= ((z >> shift) & one) << np.uint64(t)
    return u
