"""Exercise: insertion_points, stage 5 step 2 (each query's place among the keys it may see)

Difficulty: medium
Time: about 25 minutes
Specification: zeta_ref.stages.window.insertion_points
Decisions: D4
Grade it: zeta-ref grade insertion_points insertion_points.py

Query i may see the keys at positions 0 .. L_i - 1, its causal pool (D4; ``pool_len[i]`` is
L_i). Its insertion point p_i is how many keys of that pool have a code smaller than the
query's: where the query's code would go in the pool's sorted codes (a binary search,
``searchsorted`` with side "left"). Stage 5 takes the query's window of keys around p_i.

Write the body of ``insertion_points``. The keys come sorted (stage 4): ``key_perm[r]`` is the
position of the key of rank r, ``sorted_key_codes[r]`` its code. Keeping only the sorted keys
whose position is below L_i keeps them sorted.

Read first: the module docstring of zeta_ref/stages/window.py (steps 1 and 2);
docs/decisions.md, D4 and Conventions, "Insertion point".
"""

from __future__ import annotations

import numpy as np

from zeta_ref.stages.window import check_pool_len


def insertion_points(q_codes, key_perm, sorted_key_codes, pool_len) -> np.ndarray:
    """Step 2, the binary search: each query's insertion point p_i in its pool.

    Parameters
    ----------
    q_codes : uint64 array (..., N)
        Z codes of the queries (stage 3).
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
        The keys in Z order and their codes (stage 4).
    pool_len : int64 array (N,), non-decreasing, values in [0, N]
        L_i from :func:`pool_lengths` (checked by :func:`check_pool_len`).

    Returns
    -------
    int64 array (..., N): p_i, the number of keys in query i's pool whose code is smaller than
    the query's (``searchsorted`` side "left"); 0 for an empty pool.

    Notes
    -----
    Paper section 3.3 (the binary search of each query's code); D4 for the pools. Side "left"
    is a convention of docs/decisions.md.
    """
    q_codes = np.asarray(q_codes)
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = check_pool_len(pool_len, n)  # (N,) int64
    # Hint: flatten the leading dims to rows: q_codes.reshape(-1, n) is (R, N).
    # Hint: the pool of query i, in Z order: the sorted keys whose position is < pool_len[i].
    raise NotImplementedError('one binary search per query, in the keys of its own pool')
