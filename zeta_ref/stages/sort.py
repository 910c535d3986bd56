"""Stage 4: sort the keys by their Z-order code (paper section 3.3; D10).

Sorting puts keys that are near on the Z-curve next to each other, so each query can find its
neighbours by one binary search. Equal codes (two keys in the same grid cell) are kept in
position order, lower position first (D10): the sort is stable, so the result is one
permutation, fully determined, that every backend must reproduce exactly.
"""

from __future__ import annotations

import numpy as np


def sort_keys(key_codes) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of the key codes along the last axis.

    Parameters
    ----------
    key_codes : uint64 array (..., N)

    Returns
    -------
    perm : int64 array (..., N)
        ``perm[..., r]`` is the position of the key with rank r: the keys in Z order.
    sorted_codes : uint64 array (..., N)
        ``key_codes`` taken in that order, non-decreasing along the last axis.

    Notes
    -----
    Paper section 3.3 (keys sorted by code); D10 (ties by position, lower first).
    """
    key_codes = np.asarray(key_codes)
    perm = np.argsort(key_codes, axis=-1, kind="stable").astype(np.int64)  # (..., N)
    sorted_codes = np.take_along_axis(key_codes, perm, axis=-1)  # (..., N)
    return perm, sorted_codes
