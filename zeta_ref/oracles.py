"""Oracles: brute-force answers that ZETA's selection and output are measured against.

- :func:`dense_attention`: every visible key weighted by the chosen score, in float64. With
  k and W >= N and the mean term off, ZETA must reproduce it.
- :func:`exact_topk`: the k truly nearest visible keys of every query, by brute force, under the
  same causal pools as ZETA (same nearness, ties to the lower position).
- :func:`recall_at_k`: the fraction of the exact top-k that a selection found.

These are O(N^2) in time and memory by design: they are for checking, not for speed.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_gamma, check_positive_int, check_qkv
from .config import CAUSAL_MODES, SCORES
from .topk_softmax import INV_EUCLIDEAN_EPS
from .window import nearness, pool_lengths


def _visible(n: int, causal: str, chunk_size: int | None) -> np.ndarray:
    """Boolean (N, N): entry (i, j) says whether query i may see key j."""
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
    lengths = pool_lengths(n, causal, chunk_size or 1)  # (N,)
    return np.arange(n)[None, :] < lengths[:, None]  # (N, N)


def _pairwise_nearness(q, k, score):
    """(..., N, N) nearness of every key to every query (smaller is nearer)."""
    return nearness(q, k[..., None, :, :], score)


def dense_attention(q, k, v, score: str = "softmax", causal: str = "inclusive", *,
                    gamma: float = 0.5, chunk_size: int | None = None) -> np.ndarray:
    """Attention over every key a query may see, computed in float64.

    Parameters
    ----------
    q, k : float array (..., N, d_k)
    v : float array (..., N, d_v)
    score : {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}
        As in :mod:`zeta_ref.topk_softmax`.
    causal : {"inclusive", "strict", "none"}
        The same pools as ZETA (D4).
    gamma : float
        gamma of the Cauchy score.
    chunk_size : int, optional
        M, required for "strict" (pass ZETA's ``Intermediates.chunk_size``); ignored otherwise.

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
    seen = _visible(n, causal, chunk_size)  # (N, N)
    near = _pairwise_nearness(q, k, score)  # (..., N, N)
    if score in ("cauchy", "inv_euclidean"):
        add = gamma * gamma if score == "cauchy" else INV_EUCLIDEAN_EPS
        a = np.where(seen, 1.0 / (near + add), 0.0)
    else:
        logits = -near / np.sqrt(d_k) if score == "softmax" else -near
        logits = np.where(seen, logits, -np.inf)
        top = logits.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        a = np.where(seen, np.exp(logits - top), 0.0)
    total = a.sum(axis=-1, keepdims=True)
    w = a / np.where(total > 0, total, 1.0)  # (..., N, N)
    return w @ v  # (..., N, d_v)


def exact_topk(q, k, k_top: int, score: str = "cauchy", causal: str = "inclusive", *,
               chunk_size: int | None = None) -> np.ndarray:
    """The ``k_top`` nearest visible keys of every query, by brute force.

    Nearness is that of the window stage's re-rank (:func:`zeta_ref.window.nearness`),
    computed in float64; ties go to the lower position.

    Parameters
    ----------
    q, k : float array (..., N, d_k)
    k_top : int
        How many to return.
    score, causal, chunk_size
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
    n = q.shape[-2]
    seen = _visible(n, causal, chunk_size)  # (N, N)
    near = np.where(seen, _pairwise_nearness(q, k, score), np.inf)  # (..., N, N)
    position = np.broadcast_to(np.where(seen, np.arange(n), n), near.shape)
    order = np.lexsort((position, near), axis=-1)[..., :k_top]  # (..., N, <=k_top)
    found = np.take_along_axis(np.broadcast_to(seen, near.shape), order, axis=-1)
    idx = np.where(found, order, -1)
    if idx.shape[-1] < k_top:  # fewer keys than k_top in the whole sequence
        pad = np.full(idx.shape[:-1] + (k_top - idx.shape[-1],), -1, np.int64)
        idx = np.concatenate([idx, pad], axis=-1)
    return idx.astype(np.int64)


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
