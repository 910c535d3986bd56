"""Oracles: brute-force answers that ZETA's selection and output are measured against.

- :func:`dense_attention`: every visible key weighted by the chosen score, in float64. With
  k and W >= N and the mean term off, ZETA must reproduce it.
- :func:`exact_topk`: the k truly nearest visible keys of every query, by brute force, under the
  same causal pools as ZETA (the same nearness, ties to the lower position).
- :func:`recall_at_k`: the fraction of the exact top-k that a selection found.

What they share with the code they check, and what not. The pools (which keys a query may
see, :func:`zeta_ref.stages.window.pool_lengths`) and the scores
(:func:`zeta_ref.stages.topk_softmax.affinity`, the one definition of the table of Eq. 6 and
its variants) are definitions, taken as they are. The nearness is computed here, in float64
and written apart from the window stage's (:func:`_pairwise_nearness`): the differences of
every pair at once, squared and summed by ``einsum``, where the window stage sums coordinate
by coordinate. The two orders of summation can differ in the last bit of a distance (the
tolerances allow for it); on coarse grids, where the tests put their ties, every sum is
exact in any order, so ties stay ties and go to the lower position. tests/test_oracles.py
checks the oracles against loops written from the definitions.

These are O(N^2) in time by design: they are for checking, not for speed. Their memory is
O(N * block): they take the queries a block at a time and hold the nearness of one block of
queries to all N keys, never all N x N. By default the block is as many queries as keep the
largest temporary within :data:`BLOCK_BYTES` (4 MiB, counted across the leading dims), and
at least one query: the (..., block, N, d_k) float64 differences for the distance scores, a
(..., block, N) float64 array for "softmax". With it about six (..., block, N) arrays are
alive at once, some 25 MiB at any N (until one query's row alone outgrows the budget: for one
head, past N = 524288 with "softmax" and N = 524288 / d_k with the distance scores). Every
query's result comes from its own row alone, so the blocking changes no selection and no
weight; only the final product ``w @ v`` of :func:`dense_attention` may differ in the last
bits between block sizes, as BLAS picks its kernel, and so its order of summation, by the
number of rows (one block, as at small N, gives the bits of the computation all at once).
"""

from __future__ import annotations

import numpy as np

from ._checks import check_gamma, check_positive_int, check_qkv
from .config import CAUSAL_MODES, SCORES
from .stages.topk_softmax import affinity
from .stages.window import pool_lengths

#: Bytes one (..., block, N) float64 array of a block may take, across the leading dims.
BLOCK_BYTES = 4 * 2**20


def _pool_lengths(n: int, causal: str, chunk_size: int | None) -> np.ndarray:
    """L_i for every query (it may see keys 0 .. L_i - 1), after checking causal and M."""
    if causal not in CAUSAL_MODES:
        raise ValueError(f"causal must be one of {CAUSAL_MODES}; got {causal!r}")
    if causal == "strict":
        # strict pools depend on M, and ZETA's M depends on its k (D5): no silent default here
        if chunk_size is None:
            raise ValueError(
                "chunk_size must be given for causal='strict' (the pools depend on it); pass "
                "the M that ZETA used, e.g. Intermediates.chunk_size or "
                "ZetaConfig.chunk_size_for(N)"
            )
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    return pool_lengths(n, causal, chunk_size or 1)  # (N,)


def _query_block(block: int | None, n: int, lead: tuple, width: int = 1) -> int:
    """Queries per block: ``block`` if given, else as many as keep one (..., block, N, width)
    float64 temporary within :data:`BLOCK_BYTES` (at least one)."""
    if block is not None:
        return check_positive_int(block, "block")
    # one query's (..., 1, N, width) float64
    row_bytes = 8 * n * width * int(np.prod(lead, dtype=np.int64))
    return max(1, BLOCK_BYTES // row_bytes)


def _temporary_width(score: str, d_k: int) -> int:
    """Numbers per (query, key) pair in the largest temporary of :func:`_pairwise_nearness`."""
    return 1 if score == "softmax" else d_k


def _pairwise_nearness(q, k, score):
    """(..., b, N) nearness of every key to each of b queries, in float64 (smaller is nearer).

    ``||q_i - k_j||^2`` from the explicit differences of every pair, or ``-<q_i, k_j>`` for
    "softmax": the nearness of :func:`zeta_ref.stages.window.nearness`, computed without it.

    Parameters
    ----------
    q : float64 array (..., b, d_k)
    k : float64 array (..., N, d_k)
    score : str
    """
    if score == "softmax":
        return -np.einsum("...id,...jd->...ij", q, k)  # (..., b, N)
    diff = q[..., :, None, :] - k[..., None, :, :]  # (..., b, N, d_k)
    return np.einsum("...ijd,...ijd->...ij", diff, diff)  # (..., b, N)


def dense_attention(q, k, v, score: str = "softmax", causal: str = "inclusive", *,
                    gamma: float = 0.5, chunk_size: int | None = None,
                    block: int | None = None) -> np.ndarray:
    """Attention over every key a query may see, computed in float64.

    Parameters
    ----------
    q, k : float array (..., N, d_k)
    v : float array (..., N, d_v)
    score : {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}
        As in :mod:`zeta_ref.stages.topk_softmax`.
    causal : {"inclusive", "strict", "none"}
        The same pools as ZETA (D4).
    gamma : float
        gamma of the Cauchy score.
    chunk_size : int, optional
        M, required for "strict" (pass ZETA's ``Intermediates.chunk_size``); ignored otherwise.
    block : int, optional
        Queries computed at once (memory O(N * block)); by default as many as keep the
        largest temporary within :data:`BLOCK_BYTES` (see the module docstring), at least one.

    Returns
    -------
    float64 array (..., N, d_v). Queries that see no key get 0.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    q, k, v = (x.astype(np.float64) for x in check_qkv(q, k, v))
    n, d_k = q.shape[-2], q.shape[-1]
    if score == "cauchy":
        check_gamma(gamma, np.float64, n)
    lengths = _pool_lengths(n, causal, chunk_size)  # (N,)
    step = _query_block(block, n, q.shape[:-2], _temporary_width(score, d_k))
    out = np.empty(v.shape)  # (..., N, d_v)
    # a block of queries at a time; each query's weights come from its own row alone
    for start in range(0, n, step):
        rows = slice(start, start + step)  # the block's queries (the last block may be short)
        seen = np.arange(n) < lengths[rows, None]  # (b, N)
        near = _pairwise_nearness(q[..., rows, :], k, score)  # (..., b, N)
        a = affinity(near, score, gamma, d_k, seen)  # (..., b, N), 0 where not seen
        total = a.sum(axis=-1, keepdims=True)  # (..., b, 1)
        w = a / np.where(total > 0, total, 1.0)  # (..., b, N)
        out[..., rows, :] = w @ v  # (..., b, d_v)
    return out


def exact_topk(q, k, k_top: int, score: str = "cauchy", causal: str = "inclusive", *,
               chunk_size: int | None = None, block: int | None = None) -> np.ndarray:
    """The ``k_top`` nearest visible keys of every query, by brute force.

    Nearness is that of the window stage's re-rank (:func:`zeta_ref.stages.window.nearness`),
    computed here in float64 (:func:`_pairwise_nearness`); ties go to the lower position.

    Parameters
    ----------
    q, k : float array (..., N, d_k)
    k_top : int
        How many to return.
    score, causal, chunk_size, block
        As in :func:`dense_attention`.

    Returns
    -------
    int64 array (..., N, k_top): positions, nearest first, -1 where fewer keys are visible.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    k_top = check_positive_int(k_top, "k_top")
    q, k, _ = check_qkv(q, k, k)
    q, k = q.astype(np.float64), k.astype(np.float64)
    n, d_k = q.shape[-2], q.shape[-1]
    lengths = _pool_lengths(n, causal, chunk_size)  # (N,)
    step = _query_block(block, n, q.shape[:-2], _temporary_width(score, d_k))
    idx = np.full(q.shape[:-1] + (k_top,), -1, dtype=np.int64)  # (..., N, k_top)
    for start in range(0, n, step):
        rows = slice(start, start + step)  # the block's queries (the last block may be short)
        seen = np.arange(n) < lengths[rows, None]  # (b, N)
        near = np.where(seen, _pairwise_nearness(q[..., rows, :], k, score), np.inf)  # (..., b, N)
        position = np.broadcast_to(np.where(seen, np.arange(n), n), near.shape)
        order = np.lexsort((position, near), axis=-1)[..., :k_top]  # (..., b, <=k_top)
        found = np.take_along_axis(np.broadcast_to(seen, near.shape), order, axis=-1)
        # fewer than k_top keys in the whole sequence: the slots past N stay -1
        idx[..., rows, :order.shape[-1]] = np.where(found, order, -1)
    return idx


def recall_at_k(found, exact, *, per_query: bool = False):
    """Fraction of the exact top-k positions that ``found`` contains.

    Parameters
    ----------
    found : int array (..., N, s)
        A selection (ZETA's candidates), -1 for empty slots.
    exact : int array (..., N, k)
        The oracle's answer from :func:`exact_topk`, -1 for empty slots.
    per_query : bool
        Return the recall of every query instead of the mean.

    Returns
    -------
    float (mean over queries that have at least one exact neighbour), or a float64 array
    (..., N) with NaN for queries that have none.
    """
    found, exact = np.asarray(found), np.asarray(exact)
    if found.shape[:-1] != exact.shape[:-1]:
        raise ValueError(
            f"found and exact must agree on all but the last axis; got {found.shape} and {exact.shape}"
        )
    hit = (exact[..., :, None] == found[..., None, :]).any(axis=-1) & (exact >= 0)  # (..., N, k)
    n_exact = (exact >= 0).sum(axis=-1)  # (..., N)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(n_exact > 0, hit.sum(axis=-1) / np.maximum(n_exact, 1), np.nan)
    if per_query:
        return per
    return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
