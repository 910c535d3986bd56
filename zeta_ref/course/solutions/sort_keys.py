"""Exercise: sort_keys, stage 4 (the keys in Z order)

Difficulty: easy
Time: about 10 minutes
Specification: zeta_ref.stages.sort.sort_keys
Decisions: D10
Grade it: zeta-ref grade sort_keys sort_keys.py

Sorting the keys by their Z-order code puts keys that are near on the curve next to each
other, so that a query finds its neighbours with one binary search (stage 5). Keys in the same
grid cell have equal codes; zeta_ref keeps them in position order, lower position first (D10),
so that the result is one permutation that every implementation reproduces exactly.

Write the body of ``sort_keys``: the permutation (which key comes at each rank) and the codes
in that order.

Read first: zeta_ref/stages/sort.py; docs/decisions.md, D10.
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
    # BEGIN SOLUTION: sort by (code, position)
    # Hint: NumPy's default sort is not stable. Either ask for a stable one, or make the tie
    #   rule explicit by sorting on (code, position) pairs.
    codes = np.asarray(key_codes)  # (..., N)
    position = np.broadcast_to(np.arange(codes.shape[-1]), codes.shape)  # (..., N)
    # np.lexsort sorts by its last key first: by code, and among equal codes by position
    perm = np.lexsort((position, codes), axis=-1).astype(np.int64)  # (..., N)
    sorted_codes = np.take_along_axis(codes, perm, axis=-1)  # (..., N)
    return perm, sorted_codes
    # END SOLUTION
