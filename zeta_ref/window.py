"""Stage 5: the causal neighbour window (paper section 3.3; D4, D5, D6, D9, D11).

The paper (as quoted by its reviewers): positions are chunked and future key chunks are
excluded; "the insertion position of a query in the key sequence can be found using a binary
search ..., allowing us to retrieve the top-k attended tokens using a window centered on the
insertion position". Chunk size and window size are named but not given.

zeta_ref's reading, step by step:

1. Pools (D4, D5). Every query i may see a *prefix* of the positions, ``[0, L_i)``:

   - ``"inclusive"``: the keys of chunks 0..m (m = the query's chunk) with the keys after the
     query masked out, which is every key j <= i, so L_i = i + 1;
   - ``"strict"``: chunks 0..m-1 only (paper-literal), L_i = m * M: the first chunk sees nothing
     and gets only the mean term (D8) or zeros (D9);
   - ``"none"``: all N keys (non-causal, encoders).

   In "inclusive" mode the chunk size M therefore organises the work but cannot change the
   answer. That is deliberate: cutting the window from the whole chunk's sorted keys and
   masking afterwards would let a later key of the same chunk push an earlier one out of the
   window, so the past would depend on the future.
2. Binary search. The pool's keys in Z order are the sorted keys (stage 4) whose position is
   below L_i; filtering keeps their order. The query's insertion point p is the number of pool
   keys with a smaller code (``searchsorted``, side "left").
3. Window (D6, D11). The W keys at ranks ``p - W//2 ... p - W//2 + W - 1`` of the pool: W//2
   below the insertion point and the rest at or above it. Near an end of the pool the window
   slides to stay inside (D11); a pool smaller than W gives all its keys and -1 for the empty
   slots (D9).
4. Re-rank (D6), only when W > k: keep the k window keys nearest to the query by the score's
   own notion of nearness (:func:`nearness`), ties to the lower position, listed in window
   order. With W = k the window is the selection, as in the paper.
"""

from __future__ import annotations

import numpy as np

from ._checks import visit_order
from .config import CAUSAL_MODES


def pool_lengths(n: int, causal: str, chunk_size: int) -> np.ndarray:
    """L_i for every query: query i may see the keys at positions ``0 .. L_i - 1`` (D4, D5).

    Parameters
    ----------
    n : int
        Sequence length N.
    causal : {"inclusive", "strict", "none"}
    chunk_size : int
        M, the chunk length (only "strict" depends on it).

    Returns
    -------
    int64 array (N,), non-decreasing.

    Notes
    -----
    Paper section 3.3 ("future key chunks are excluded"); D4 (the three modes) and D5
    (the chunk size M).
    """
    i = np.arange(n, dtype=np.int64)  # (N,)
    if causal == "inclusive":
        return i + 1
    if causal == "strict":
        return (i // chunk_size) * chunk_size  # start of the query's own chunk
    if causal == "none":
        return np.full(n, n, dtype=np.int64)
    raise ValueError(f"causal must be one of {CAUSAL_MODES}; got {causal!r}")


def _pools(q_codes, key_perm, sorted_key_codes, pool_len):
    """Step 1 for every row and every run of queries that share a pool.

    Yields ``(r, queries, pool_pos, pool_codes)``: row r, the slice of query positions whose
    pool is the first L positions, and that pool's key positions and codes in Z order.
    ``pool_len`` must be non-decreasing (as :func:`pool_lengths` returns it), so that the
    queries sharing one pool form a run of positions.
    """
    n = q_codes.shape[-1]
    perm = key_perm.reshape(-1, n)  # (R, N)
    kz = sorted_key_codes.reshape(-1, n)  # (R, N)
    lengths, first, count = np.unique(pool_len, return_index=True, return_counts=True)
    for r in range(perm.shape[0]):
        for L, q0, nq in zip(lengths, first, count):
            # the pool, in Z order: the sorted keys whose position is below L (filtering
            # keeps the order, and so the ties by position of D10)
            in_pool = perm[r] < L  # (N,)
            yield r, slice(q0, q0 + nq), perm[r][in_pool], kz[r][in_pool]


def _check_pool_len(pool_len, n):
    pool_len = np.asarray(pool_len)
    if pool_len.shape != (n,) or (n > 1 and np.any(np.diff(pool_len) < 0)):
        raise ValueError(f"pool_len must be a non-decreasing array of shape ({n},), as "
                         f"pool_lengths returns it; got shape {pool_len.shape}")
    return pool_len


def insertion_points(q_codes, key_perm, sorted_key_codes, pool_len) -> np.ndarray:
    """Step 2, the binary search: each query's insertion point p_i in its pool.

    Parameters
    ----------
    q_codes : uint64 array (..., N)
        Z codes of the queries (stage 3).
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
        The keys in Z order and their codes (stage 4).
    pool_len : int64 array (N,), non-decreasing
        L_i from :func:`pool_lengths`.

    Returns
    -------
    int64 array (..., N): p_i, the number of keys in query i's pool whose code is smaller than
    the query's (``searchsorted`` side "left"); 0 for an empty pool.

    Notes
    -----
    Paper section 3.3 (the binary search of each query's code); D4 for the pools. Side "left"
    is a convention of docs/decisions.md.
    """
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = _check_pool_len(pool_len, n)
    qz = q_codes.reshape(-1, n)  # (R, N)
    out = np.zeros(qz.shape, dtype=np.int64)  # (R, N)
    for r, queries, _, pool_codes in _pools(q_codes, key_perm, sorted_key_codes, pool_len):
        out[r, queries] = np.searchsorted(pool_codes, qz[r, queries], side="left")
    return out.reshape(lead + (n,))


def neighbour_window(q_codes, key_perm, sorted_key_codes, pool_len, width: int, *,
                     order=None) -> np.ndarray:
    """Take each query's window of W keys around its place in its pool (steps 1 to 3).

    Parameters
    ----------
    q_codes : uint64 array (..., N)
        Z codes of the queries (stage 3).
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
        The keys in Z order and their codes (stage 4).
    pool_len : int64 array (N,), non-decreasing
        L_i from :func:`pool_lengths`.
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
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = _check_pool_len(pool_len, n)
    visit_order(order, lead, n)  # checked as in every backend, not needed here
    qz = q_codes.reshape(-1, n)  # (R, N)
    out = np.full((qz.shape[0], n, width), -1, dtype=np.int64)  # (R, N, W)
    slots = np.arange(width)  # (W,)
    for r, queries, pool_pos, pool_codes in _pools(q_codes, key_perm, sorted_key_codes,
                                                   pool_len):
        n_pool = pool_pos.size
        if n_pool == 0:
            continue  # D9: nothing to see, all slots stay -1
        # step 2: binary search of each query's code in its pool
        ins = np.searchsorted(pool_codes, qz[r, queries], side="left")  # (nq,)
        # step 3: W//2 below the insertion point, slid inside the pool (D11)
        start = np.clip(ins - width // 2, 0, max(n_pool - width, 0))  # (nq,)
        rank = start[:, None] + slots  # (nq, W)
        out[r, queries] = np.where(rank < n_pool, pool_pos[np.minimum(rank, n_pool - 1)], -1)
    return out.reshape(lead + (n, width))


def nearness(q, keys, score: str) -> np.ndarray:
    """How near each key is to its query for ``score``; smaller is nearer.

    The squared Euclidean distance ``||q - k||^2`` for the distance-based scores ("cauchy",
    "neg_euclidean", "inv_euclidean"), and the negated dot product ``-<q, k>`` for "softmax".
    Accumulated coordinate by coordinate, in the input dtype, in a fixed order, so a twin
    backend can reproduce it bit for bit.

    Parameters
    ----------
    q : float array (..., d)
    keys : float array (..., m, d)
    score : str

    Returns
    -------
    float array (..., m), in the dtype of ``q``.
    """
    q = q[..., None, :]  # (..., 1, d)
    acc = np.zeros(np.broadcast_shapes(q.shape, keys.shape)[:-1], dtype=q.dtype)  # (..., m)
    for j in range(q.shape[-1]):
        if score == "softmax":
            acc -= q[..., j] * keys[..., j]
        else:
            diff = q[..., j] - keys[..., j]
            acc += diff * diff
    return acc


def gather_rows(x, idx) -> np.ndarray:
    """``x[..., idx, :]`` per leading slice; -1 entries of ``idx`` read row 0 (mask them after).

    Parameters
    ----------
    x : array (..., N, d)
    idx : int64 array (..., N, S)

    Returns
    -------
    array (..., N, S, d)
    """
    lead, n, s = idx.shape[:-2], idx.shape[-2], idx.shape[-1]
    flat = np.maximum(idx, 0).reshape(lead + (n * s, 1))  # (..., N*S, 1)
    rows = np.take_along_axis(x, flat, axis=-2)  # (..., N*S, d)
    return rows.reshape(lead + (n, s, x.shape[-1]))


def rerank(q, k, window_idx, k_top: int, score: str) -> np.ndarray:
    """Keep the ``k_top`` keys of each window nearest to the query (step 4, D6).

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    window_idx : int64 array (..., N, W)
        From :func:`neighbour_window`.
    k_top : int
        k, how many to keep (k <= W).
    score : str
        Chooses the notion of nearness (:func:`nearness`).

    Returns
    -------
    int64 array (..., N, k): the kept positions in window order, then -1 for empty slots.

    Notes
    -----
    Paper section 3.3 leaves W open; D6 adds the exact re-rank when W > k.
    """
    keys = gather_rows(k, window_idx)  # (..., N, W, d_k)
    near = nearness(q, keys, score)  # (..., N, W)
    valid = window_idx >= 0
    near = np.where(valid, near, np.inf)
    position = np.where(valid, window_idx, np.iinfo(np.int64).max)
    # rank by nearness, ties to the lower position; empty slots rank last
    order = np.lexsort((position, near), axis=-1)  # (..., N, W)
    kept_slots = np.sort(order[..., :k_top], axis=-1)  # (..., N, k) back to window order
    return np.take_along_axis(window_idx, kept_slots, axis=-1)
