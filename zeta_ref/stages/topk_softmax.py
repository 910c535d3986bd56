"""Stage 6: weights over the k candidates and the output (paper section 3.4, Eq. 6; D7, D8, D9).

Paper, Eq. 6 (Adaptive Cauchy-Softmax), for the candidate set I_q of a query q:

    w_i = (||q - k_i||^2 + gamma^2)^-1 / sum_{j in I_q} (||q - k_j||^2 + gamma^2)^-1,
    o   = sum_{i in I_q} w_i v_i

with gamma trainable (D7: here an input, 0.5 by default). The ablation compares it with the
usual dot-product softmax and two Euclidean scores; all four are offered:

===============  ====================================================================
score            weight of candidate i, before normalising over the candidates
===============  ====================================================================
"cauchy"         1 / (||q - k_i||^2 + gamma^2)
"softmax"        exp(<q, k_i> / sqrt(d_k))           (max-subtracted)
"neg_euclidean"  exp(-||q - k_i||^2)                 (max-subtracted)
"inv_euclidean"  1 / (||q - k_i||^2 + INV_EUCLIDEAN_EPS)   (the eps guards distance 0)
===============  ====================================================================

Mean term (D8; section 3.4 of the paper appends the mean of the past tokens so that tokens
that top-k drops still get gradient): the cumulative means of the keys and of the values over
positions j <= i join the candidate set as one more candidate, scored like any other. With
``causal="none"`` the mean is over all N positions.

Empty slots (index -1, D9) get weight 0. A query with no candidate at all gets the mean term
alone, or, with the mean term off, weights 0 and output 0.

Everything is computed in the input dtype; the running sums of the means in float64.

The table above is defined once, here: :func:`score_constant` and :func:`raw_score` turn a
slot's nearness into its score, :func:`affinity` into its weight before normalising. The
oracles call :func:`affinity`; the Numba kernel calls ``_raw_score``, a line-for-line copy of
:func:`raw_score` compiled by Numba (tests/test_numba_stages.py holds the two to the same lines
and bits), and the CuPy launcher passes its kernels :func:`score_constant`'s constant.
"""

from __future__ import annotations

import numpy as np

from .._checks import visit_order
from ..config import SCORES
from .window import gather_rows, nearness

#: The guard of "inv_euclidean" against a distance of exactly 0.
INV_EUCLIDEAN_EPS = 1e-6


def history_means(k, v, causal: str) -> tuple[np.ndarray, np.ndarray]:
    """The mean key and mean value each query may add as an extra candidate (D8).

    Parameters
    ----------
    k : float array (..., N, d_k)
    v : float array (..., N, d_v)
    causal : str
        Causal modes average positions j <= i; "none" averages all N positions.

    Returns
    -------
    mean_k : array (..., N, d_k), mean_v : array (..., N, d_v), in the input dtype.

    Notes
    -----
    Paper section 3.4 (the mean of past tokens, via a cumulative sum); D8.
    """
    n = k.shape[-2]
    out = []
    for x in (k, v):
        if causal == "none":
            total = x.astype(np.float64).sum(axis=-2, keepdims=True)  # (..., 1, d)
            mean = np.broadcast_to(total / n, x.shape)
        else:
            running = np.cumsum(x, axis=-2, dtype=np.float64)  # (..., N, d), sequential sums
            count = np.arange(1, n + 1, dtype=np.float64)[:, None]  # (N, 1)
            mean = running / count
        out.append(np.ascontiguousarray(mean, dtype=x.dtype))
    return out[0], out[1]


#: The scores weighted by a softmax of their logit (an exp, after subtracting the largest logit
#: of the row); the other scores weigh a slot by its affinity as it is.
EXP_SCORES = ("softmax", "neg_euclidean")


def score_constant(score: str, gamma: float, d_k: int) -> float:
    """The constant c of ``score`` in :func:`raw_score`, as a Python float (float64).

    =================  ===================================  ===================
    score              c                                    form
    =================  ===================================  ===================
    "cauchy"           gamma^2 (Eq. 6)                      affinity
    "inv_euclidean"    :data:`INV_EUCLIDEAN_EPS`            affinity
    "softmax"          sqrt(d_k)                            logit
    "neg_euclidean"    1                                    logit
    =================  ===================================  ===================

    gamma^2 and sqrt(d_k) are computed in float64; every backend then rounds c to the input
    dtype once (so gamma^2 is squared before it is rounded, not after).
    """
    if score == "cauchy":
        g = float(gamma)
        return g * g
    if score == "inv_euclidean":
        return INV_EUCLIDEAN_EPS
    if score == "softmax":
        return float(np.sqrt(d_k))
    if score == "neg_euclidean":
        return 1.0
    raise ValueError(f"score must be one of {SCORES}; got {score!r}")


def raw_score(near, exp_score: bool, c, one):
    """A slot's score from its nearness, before normalising: the definition of every score.

    Parameters
    ----------
    near : float array or scalar
        ``||q - k||^2``, or ``-<q, k>`` for "softmax" (:func:`zeta_ref.stages.window.nearness`).
    exp_score : bool
        ``score in EXP_SCORES``.
    c, one : scalars of ``near``'s dtype
        :func:`score_constant` rounded to that dtype, and 1 in that dtype.

    Returns
    -------
    The affinity ``one / (near + c)`` ("cauchy", "inv_euclidean"), or the logit ``-near / c``
    ("softmax": ``<q, k> / sqrt(d_k)``; "neg_euclidean": ``-||q - k||^2``), in ``near``'s dtype.

    Notes
    -----
    Elementwise and free of NumPy calls, so that the same lines serve NumPy arrays here and
    scalars in the Numba kernel (``zeta_ref.numba.topk_softmax._raw_score`` repeats them).
    """
    if exp_score:
        return -near / c  # a logit: the weight is exp(logit - the row's largest logit)
    return one / (near + c)  # an affinity: the weight as it is


def affinity(near, score: str, gamma: float, d_k: int, valid) -> np.ndarray:
    """Each slot's weight before normalising over the last axis (the table of the module).

    Parameters
    ----------
    near : float array (..., S)
        Nearness of each slot (:func:`zeta_ref.stages.window.nearness`).
    score : str
    gamma : float
        gamma of Eq. 6 (used by "cauchy").
    d_k : int
        Width of q and k (used by "softmax").
    valid : bool array broadcastable to ``near``
        Which slots hold a key; the others get 0.

    Returns
    -------
    array of ``near``'s shape and dtype, >= 0. For the exp scores the largest logit of the
    valid slots of each row is subtracted before the exp (a row with no valid slot: nothing).
    """
    dtype = near.dtype.type
    exp_score = score in EXP_SCORES
    raw = raw_score(near, exp_score, dtype(score_constant(score, gamma, d_k)), dtype(1))
    if not exp_score:
        return np.where(valid, raw, dtype(0))
    logits = np.where(valid, raw, -np.inf)
    top = logits.max(axis=-1, keepdims=True)  # (..., 1)
    top = np.where(np.isfinite(top), top, dtype(0))  # a row with nothing valid
    return np.where(valid, np.exp(logits - top), dtype(0))


def topk_attention(q, k, v, candidates, score: str = "cauchy", gamma: float = 0.5,
                   mean_k=None, mean_v=None, *, order=None, with_weights: bool = True):
    """Weights over each query's candidates and the weighted sum of their values.

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    v : float array (..., N, d_v)
    candidates : int64 array (..., N, k)
        Key positions from the window stage, -1 for empty slots.
    score : str
        One of "cauchy", "softmax", "neg_euclidean", "inv_euclidean".
    gamma : float
        gamma of Eq. 6 (used by "cauchy").
    mean_k, mean_v : arrays (..., N, d_k) and (..., N, d_v), optional
        The mean term (D8) from :func:`history_means`; None leaves it out.
    order : int64 array (..., N), optional
        An order in which to visit the queries (a permutation of 0 .. N-1 per row). It cannot
        change the result: every query's output comes from its own candidates alone. The
        specification computes all queries at once and ignores it; a twin that walks the
        queries one by one may use it to keep the value rows it reads in cache (the composer
        passes the queries' Z order).
    with_weights : bool, default True
        Return the weights of the slots; False returns None in their place (the composer
        needs them only for its intermediates, and a twin then saves writing them).

    Returns
    -------
    out : array (..., N, d_v)
    weights : array (..., N, k), or None with ``with_weights=False``
        Normalised weight of each candidate slot (0 for empty slots).
    mean_weight : array (..., N)
        Weight of the mean term (0 when it is off).

    Notes
    -----
    The normalisation runs over the k slots and the mean term together, so
    ``weights.sum(-1) + mean_weight`` is 1 for every query with at least one candidate.
    """
    visit_order(order, q.shape[:-2], q.shape[-2])  # checked as in every backend, not needed
    d_k = q.shape[-1]
    valid = candidates >= 0  # (..., N, k)
    keys = gather_rows(k, candidates)  # (..., N, k, d_k)
    values = gather_rows(v, candidates)  # (..., N, k, d_v)
    near = nearness(q, keys, score)  # (..., N, k)
    if mean_k is not None:
        # the mean term is one more candidate, always valid: slot k
        near = np.concatenate([near, nearness(q, mean_k[..., None, :], score)], axis=-1)
        valid = np.concatenate([valid, np.ones(valid.shape[:-1] + (1,), bool)], axis=-1)
        values = np.concatenate([values, mean_v[..., None, :]], axis=-2)  # (..., N, k+1, d_v)
    a = affinity(near, score, gamma, d_k, valid)  # (..., N, k[+1])
    total = a.sum(axis=-1, keepdims=True)  # (..., N, 1)
    w = a / np.where(total > 0, total, 1)  # rows with nothing valid stay all 0
    out = (w[..., None] * values).sum(axis=-2)  # (..., N, d_v)
    n_slots = candidates.shape[-1]
    mean_weight = w[..., n_slots] if mean_k is not None else np.zeros(w.shape[:-1], w.dtype)
    weights = w[..., :n_slots] if with_weights else None
    return out.astype(q.dtype, copy=False), weights, mean_weight
