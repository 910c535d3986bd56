"""Exercise: neighbour_window, stage 5 (the window of W keys around each query's place)

Difficulty: medium
Time: about 35 minutes
Specification: zeta_ref.stages.window.neighbour_window
Decisions: D4, D6, D9, D11
Grade it: zeta-ref grade neighbour_window neighbour_window.py

This is where ZETA selects: each query takes the W keys of its causal pool that sit around
its insertion point p in Z order (the paper's "window centred on the insertion position").
zeta_ref's rules, in order:

- the pool of query i is the keys at positions 0 .. pool_len[i] - 1, in Z order (D4). Take
  the window among those keys only: a window cut from more keys, with the invisible ones
  masked afterwards, lets the future push visible keys out;
- the window is the pool ranks p - W//2 .. p - W//2 + W - 1 (W//2 keys below p);
- near an end of the pool it slides to stay inside, so that a pool of at least W keys always
  gives W keys (D11);
- a pool of fewer than W keys gives all of them, and -1 in the slots left over (D9).

Write the body of ``neighbour_window``. ``order`` only says in which order a fast version
may visit the queries: ignore it.

Read first: the module docstring of zeta_ref/stages/window.py (steps 1 to 3);
docs/decisions.md, D4, D6, D9, D11 and Conventions, "Window placement"; notebook 3, stage 5.
"""

from __future__ import annotations

import numpy as np

from zeta_ref.stages.window import check_pool_len


def neighbour_window(q_codes, key_perm, sorted_key_codes, pool_len, width: int, *,
                     order=None) -> np.ndarray:
    """Take each query's window of W keys around its place in its pool (steps 1 to 3).

    Parameters
    ----------
    q_codes : uint64 array (..., N)
        Z codes of the queries (stage 3).
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
        The keys in Z order and their codes (stage 4).
    pool_len : int64 array (N,), non-decreasing, values in [0, N]
        L_i from :func:`pool_lengths` (checked by :func:`check_pool_len`).
    width : int
        W, the window width.
    order : int64 array (..., N), optional
        An order in which to visit the queries. It cannot change the result (each query's
        window depends on its own code and pool alone); the specification handles a pool's
        queries all at once and ignores it. Twins use it for speed (see the composer).

    Returns
    -------
    int64 array (..., N, W): key positions, -1 for empty slots, listed in Z order.

    Notes
    -----
    Paper section 3.3 (a window centred on the insertion position); D4 (pools), D6 (W),
    D9 (-1 for empty slots), D11 (sliding at the pool ends).
    """
    q_codes = np.asarray(q_codes)
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = check_pool_len(pool_len, n)  # (N,) int64
    width = int(width)
    # Hint: start from an output full of -1 (empty slots, D9) of shape (R, N, W).
    # Hint: the window's first rank is p - W//2, then moved into [0, pool size - W].
    raise NotImplementedError('each query: its pool, insertion point and window, slid inside')
