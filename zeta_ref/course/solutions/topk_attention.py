"""Exercise: topk_attention, stage 6 (weights over the candidates and the mean term; the output)

Difficulty: hard
Time: about 40 minutes
Specification: zeta_ref.stages.topk_softmax.topk_attention
Decisions: D7, D8, D9
Grade it: zeta-ref grade topk_attention topk_attention.py

Each query has k candidate keys from the window stage (-1 marks an empty slot, D9). Eq. 6,
the Adaptive Cauchy-Softmax, weighs candidate s by 1 / (||q - k_s||^2 + gamma^2), normalised
over the query's candidates, and the output is the weighted sum of their values. With the
mean term on (D8: ``mean_k`` and ``mean_v`` given), the query's mean key and mean value are
one more candidate, slot k, always valid, scored like any key and normalised together with
the others.

Write the body of ``topk_attention``. Three helpers of the specification are given:
``gather_rows(x, idx)`` reads the rows ``idx`` of ``x`` per query (-1 reads row 0: mask it
after), ``nearness(q, keys, score)`` the squared distance (the negated dot product for
"softmax"), and ``affinity(near, score, gamma, d_k, valid)`` a slot's weight before
normalising, for every score, 0 where ``valid`` is False. A query with no valid slot at all
(an empty pool, the mean term off) gets weights 0 and output 0 (D9).

Read first: the module docstring of zeta_ref/stages/topk_softmax.py; docs/decisions.md, D7,
D8, D9 and Conventions, "Stage 6, one operation at a time" (which you need not follow to the
last bit: the grader allows the tolerances of zeta_ref/tolerances.py).
"""

from __future__ import annotations

import numpy as np

from zeta_ref.stages.topk_softmax import affinity
from zeta_ref.stages.window import gather_rows, nearness


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
    # BEGIN SOLUTION: the slots (candidates, then the mean term), their weights, the sum
    # Hint: build the slots first: the candidates' nearness (..., N, k), then, with the mean
    #   term on, one more column for it; a mask of valid slots; the values (..., N, slots, d_v).
    # Hint: normalise over every slot together; divide by 1 where the total is 0 (D9).
    n_cand = candidates.shape[-1]
    valid = candidates >= 0  # (..., N, k)
    near = nearness(q, gather_rows(k, candidates), score)  # (..., N, k)
    values = gather_rows(v, candidates)  # (..., N, k, d_v)
    if mean_k is not None:
        # step 1: the mean term joins as slot k, always valid, scored like a key (D8)
        near_mean = nearness(q, mean_k[..., None, :], score)  # (..., N, 1)
        near = np.concatenate([near, near_mean], axis=-1)  # (..., N, k + 1)
        valid = np.concatenate([valid, np.ones_like(valid[..., :1])], axis=-1)
        values = np.concatenate([values, mean_v[..., None, :]], axis=-2)  # (..., N, k + 1, d_v)
    # step 2: each slot's weight before normalising; empty slots get 0
    a = affinity(near, score, gamma, q.shape[-1], valid)  # (..., N, S)
    # step 3: normalise over all slots at once; a query with nothing valid keeps zeros (D9)
    total = a.sum(axis=-1, keepdims=True)  # (..., N, 1)
    w = a / np.where(total > 0, total, 1)  # (..., N, S)
    # step 4: the output is the weighted sum of the slots' values
    out = (w[..., :, None] * values).sum(axis=-2).astype(q.dtype)  # (..., N, d_v)
    if mean_k is not None:
        mean_weight = w[..., n_cand]  # (..., N)
    else:
        mean_weight = np.zeros(w.shape[:-1], dtype=w.dtype)  # (..., N)
    return out, (w[..., :n_cand] if with_weights else None), mean_weight
    # END SOLUTION
