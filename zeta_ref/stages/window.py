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

Cost. The specification reads these steps literally and pays for it. Step 1 filters all N keys
once per distinct pool length U: O(U N) time per row, which is O(N^2) in "inclusive" mode
(U = N; about 30 s at N = 65536) but O(N) for "none" (U = 1) and for "strict" with the D5 chunk
rule (U <= 8). Step 4 gathers every window's keys and sorts the whole window. Before a call
predicted to take more than a few seconds, :func:`insertion_points` and
:func:`neighbour_window` issue one :class:`SlowSpecificationWarning` per process; the Numba twin
(:mod:`zeta_ref.numba.window`) gives the same answers in O(N sqrt N) per row.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._checks import is_integer, visit_order
from ..config import CAUSAL_MODES


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
    kz = _as_codes(sorted_key_codes).reshape(-1, n)  # (R, N)
    lengths, first, count = np.unique(pool_len, return_index=True, return_counts=True)
    for r in range(perm.shape[0]):
        for L, q0, nq in zip(lengths, first, count):
            # the pool, in Z order: the sorted keys whose position is below L (filtering
            # keeps the order, and so the ties by position of D10)
            in_pool = perm[r] < L  # (N,)
            yield r, slice(q0, q0 + nq), perm[r][in_pool], kz[r][in_pool]


def check_pool_len(pool_len, n: int) -> np.ndarray:
    """``pool_len`` as a contiguous int64 array (N,), or an error naming it.

    Every backend's :func:`insertion_points` and :func:`neighbour_window` call this one check,
    so that they reject the same inputs with the same error. A valid ``pool_len`` is what
    :func:`pool_lengths` returns:

    - integers of shape (N,), one pool length per query;
    - each in [0, N]: a pool is a prefix ``0 .. L - 1`` of the N key positions, so L < 0 or
      L > N means nothing (and silently clipping it would hide a caller's mistake);
    - non-decreasing: the queries that share a pool form a run of positions (the
      specification walks those runs; the Numba twin grows one pool with the position).

    Raises
    ------
    TypeError
        ``pool_len`` is not an integer array.
    ValueError
        Wrong shape, a value outside [0, N], or a decrease.
    """
    arr = np.asarray(pool_len)
    if arr.shape != (n,):
        raise ValueError(f"pool_len must have shape ({n},), one pool length per query, as "
                         f"pool_lengths returns it; got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise TypeError(f"pool_len must be an integer array; got dtype {arr.dtype}")
    if n and (arr.min() < 0 or arr.max() > n):
        raise ValueError(f"pool_len must hold values in [0, {n}] (a pool is a prefix of the "
                         f"positions 0 .. N-1); got values from {arr.min()} to {arr.max()}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)  # (N,), safe now: 0 <= values <= N
    drops = np.flatnonzero(np.diff(arr) < 0)
    if drops.size:
        i = int(drops[0])
        raise ValueError(f"pool_len must be non-decreasing, as pool_lengths returns it; got "
                         f"pool_len[{i}] = {arr[i]} > pool_len[{i + 1}] = {arr[i + 1]}")
    return arr


class SlowSpecificationWarning(UserWarning):
    """The NumPy specification is about to take long (seconds to minutes); a twin is faster."""


#: Predicted work (rows x distinct pool lengths x N key visits) above which the specification
#: warns. It filters all N keys once per distinct pool length, at 6-7 ns per key visited on the
#: 2-core development VM (NumPy on one core, 2026-12-02; N = 4096 to 32768, both functions):
#: 2^29 visits is about 3.5 s. One row in "inclusive" mode crosses it above N = 23,170, four
#: rows above N = 11,585.
SLOW_WORK = 1 << 29
#: Seconds per key visit, only for the estimate in the warning's message.
SECONDS_PER_VISIT = 7e-9
_slow_warned = False  # warn once per process


def _warn_if_slow(rows: int, pool_len: np.ndarray, n: int) -> None:
    """Issue one :class:`SlowSpecificationWarning` per process when :func:`_pools` would visit
    more than :data:`SLOW_WORK` keys. ``pool_len`` is already checked (non-decreasing)."""
    global _slow_warned
    if _slow_warned or n == 0:
        return
    distinct = 1 + int(np.count_nonzero(np.diff(pool_len)))  # U: non-decreasing, so runs
    work = rows * distinct * n
    if work <= SLOW_WORK:
        return
    _slow_warned = True
    warnings.warn(
        f"the NumPy specification of stage 5 filters all N keys once per distinct pool length: "
        f"{rows} row(s) x {distinct} pool lengths x N = {n} is {work:.2g} key visits, roughly "
        f"{work * SECONDS_PER_VISIT:.0f} s per call at about {SECONDS_PER_VISIT * 1e9:.0f} ns a "
        f"visit (O(N^2) per row in 'inclusive' mode). "
        f'backend="numba" gives the same result in O(N sqrt N) per row. '
        f"(This warning is shown once per process.)",
        SlowSpecificationWarning, stacklevel=3)


def _as_codes(x) -> np.ndarray:
    """Codes as uint64: NumPy compares uint64 with int64 through float64, which cannot tell
    codes apart above 2^53 (the Numba twins cast the same way)."""
    return np.asarray(x).astype(np.uint64, copy=False)


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
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = check_pool_len(pool_len, n)
    qz = q_codes.reshape(-1, n)  # (R, N)
    _warn_if_slow(qz.shape[0], pool_len, n)
    out = np.zeros(qz.shape, dtype=np.int64)  # (R, N)
    for r, queries, _, pool_codes in _pools(q_codes, key_perm, sorted_key_codes, pool_len):
        out[r, queries] = np.searchsorted(pool_codes, _as_codes(qz[r, queries]), side="left")
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
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    pool_len = check_pool_len(pool_len, n)
    visit_order(order, lead, n)  # checked as in every backend, not needed here
    qz = q_codes.reshape(-1, n)  # (R, N)
    _warn_if_slow(qz.shape[0], pool_len, n)
    out = np.full((qz.shape[0], n, width), -1, dtype=np.int64)  # (R, N, W)
    slots = np.arange(width)  # (W,)
    for r, queries, pool_pos, pool_codes in _pools(q_codes, key_perm, sorted_key_codes,
                                                   pool_len):
        n_pool = pool_pos.size
        if n_pool == 0:
            continue  # D9: nothing to see, all slots stay -1
        # step 2: binary search of each query's code in its pool
        ins = np.searchsorted(pool_codes, _as_codes(qz[r, queries]), side="left")  # (nq,)
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


def check_k_top(k_top, width: int) -> int:
    """``k_top`` as a Python int in [1, W], or a ValueError naming it (every backend's
    :func:`rerank` calls this one check). A re-rank keeps k of the W window keys: k = 0 keeps
    nothing and k > W cannot be filled."""
    if not is_integer(k_top) or not 1 <= k_top <= width:
        raise ValueError(f"k_top must be an integer in [1, W] = [1, {width}] (W: the window "
                         f"width, the last axis of window_idx); got {k_top!r}")
    return int(k_top)


def rerank(q, k, window_idx, k_top: int, score: str) -> np.ndarray:
    """Keep the ``k_top`` keys of each window nearest to the query (step 4, D6).

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    window_idx : int64 array (..., N, W)
        From :func:`neighbour_window`.
    k_top : int
        k, how many to keep, 1 <= k <= W (checked by :func:`check_k_top`).
    score : str
        Chooses the notion of nearness (:func:`nearness`).

    Returns
    -------
    int64 array (..., N, k): the kept positions in window order, then -1 for empty slots.

    Notes
    -----
    Paper section 3.3 leaves W open; D6 adds the exact re-rank when W > k.
    """
    k_top = check_k_top(k_top, window_idx.shape[-1])
    keys = gather_rows(k, window_idx)  # (..., N, W, d_k)
    near = nearness(q, keys, score)  # (..., N, W)
    valid = window_idx >= 0
    near = np.where(valid, near, np.inf)
    position = np.where(valid, window_idx, np.iinfo(np.int64).max)
    # rank by nearness, ties to the lower position; empty slots rank last
    order = np.lexsort((position, near), axis=-1)  # (..., N, W)
    kept_slots = np.sort(order[..., :k_top], axis=-1)  # (..., N, k) back to window order
    return np.take_along_axis(window_idx, kept_slots, axis=-1)
