"""The backward pass of stage 6: gradients of Eq. 6 and of the mean term (D7, D8, D9).

The selection (stages 2 to 5) is discrete: it has no gradient, and is held fixed. Gradients flow
through the scores of the selected keys, the normalisation, the weighted sum of the values and
the mean term, into q, k, v and gamma. This module is the specification of that backward pass,
one function per forward function of :mod:`zeta_ref.stages.topk_softmax`:

====================================================  ======================================
forward                                               backward
====================================================  ======================================
:func:`~zeta_ref.stages.topk_softmax.topk_attention`  :func:`topk_attention_backward`
:func:`~zeta_ref.stages.topk_softmax.history_means`   :func:`history_means_backward`
====================================================  ======================================

The derivation, for one query q (one row i of one leading slice), with the slots s = 0 .. n-1 of
stage 6 (the k candidates, then the mean term as slot k when it is on, D8)::

    near_s = ||q - k_s||^2          ("cauchy", "neg_euclidean", "inv_euclidean")
           = -<q, k_s>              ("softmax")
    a_s    = 1 / (near_s + c)       ("cauchy": c = gamma^2; "inv_euclidean": c = 1e-6)
           = exp(-near_s / c - m)   ("softmax": c = sqrt(d_k); "neg_euclidean": c = 1;
                                     m the largest logit, which cancels)
    w_s    = a_s / sum_t a_t,       o = sum_s w_s v_s

Every form is w = softmax(t) of t_s = log a_s, so with g = dL/do (the row of ``grad_output``)::

    dv_s    = w_s g                                              (b1)
    dw_s    = <g, v_s>                                           (b2)
    dt_s    = w_s (dw_s - rho),      rho = sum_l w_l dw_l        (b3)
    dnear_s = -dt_s a_s              ("cauchy", "inv_euclidean": dt/dnear = -1/(near + c))
            = -dt_s / c              ("softmax", "neg_euclidean": dt/dnear = -1/c)  (b4)
    dq     += 2 dnear_s (q - k_s),   dk_s -= 2 dnear_s (q - k_s)       (distances)  (b5)
    dq     += -dnear_s k_s,          dk_s += -dnear_s q                ("softmax")
    dc      = sum_s dnear_s          (c enters as near + c: "cauchy" only)
    dgamma  = 2 gamma dc, summed over every query of every row

An empty slot (index -1, D9) has w_s = 0, so every one of its terms is 0: it gets nothing, and
gives nothing to key 0, which the gather reads in its place. A query with no valid slot (an
empty pool with the mean term off) has output 0 and gradient 0.

**Keys selected by several queries** receive the sum of the contributions dk_s and dv_s of every
(query, slot) that selected them. :func:`scatter_rows`, the adjoint of
:func:`~zeta_ref.stages.window.gather_rows`, adds them in float64, in the order of (query
position, slot) ascending, and rounds the sum to the input dtype once: deterministic, and
independent of how a twin schedules its queries.

**The mean term** (slot k) is the pair (kbar_i, vbar_i) of cumulative means; its gradients
dkbar_i, dvbar_i flow into every key and value the mean averages. For the causal modes
kbar_i = (1 / (i + 1)) sum_{j <= i} k_j, so dk_j += sum_{i >= j} dkbar_i / (i + 1), a reverse
cumulative sum (:func:`history_means_backward`); for "none" every position receives
(sum_i dkbar_i) / N. Values alike.

Precision, as in the forward pass: what belongs to one query (b1 to b5, dq, the mean term's
dkbar_i and dvbar_i) is computed in the input dtype, every operation rounded on its own; the
sums over positions (the scatter into dk and dv, the reverse cumulative sums, dgamma) run in
float64 and are rounded once. The gradient of the forward's own roundings is taken as 1.
"""

from __future__ import annotations

import numpy as np

from .._checks import visit_order
from .topk_softmax import EXP_SCORES, affinity, score_constant
from .window import gather_rows, nearness


def scatter_rows(x, idx, n: int) -> np.ndarray:
    """The adjoint of :func:`~zeta_ref.stages.window.gather_rows`: row ``x[..., i, s, :]`` is
    added to row ``idx[..., i, s]`` of the result; -1 entries of ``idx`` add nothing.

    Parameters
    ----------
    x : float array (..., N, S, d)
    idx : int64 array (..., N, S), values in [-1, n)
    n : int
        The number of rows of the result.

    Returns
    -------
    array (..., n, d), in x's dtype: sums taken in float64, in the order of (i, s) ascending,
    then rounded once.
    """
    lead, d = idx.shape[:-2], x.shape[-1]
    n_rows = int(np.prod(lead, dtype=np.int64))
    rows = idx.reshape(n_rows, -1)  # (R, N*S)
    flat = rows + (np.arange(n_rows, dtype=np.int64) * n)[:, None]  # row r's keys from r*n on
    keep = rows >= 0  # (R, N*S), C order: r, then i, then s
    acc = np.zeros((n_rows * n, d), dtype=np.float64)  # (R*n, d)
    # ufunc.at adds one entry after the other, in the order given: (r, i, s) ascending
    np.add.at(acc, flat[keep], x.reshape(n_rows, -1, d)[keep].astype(np.float64))
    return acc.reshape(lead + (n, d)).astype(x.dtype)


def topk_attention_backward(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v,
                            grad_output, *, order=None, key_order=None):
    """Gradients of :func:`~zeta_ref.stages.topk_softmax.topk_attention`, candidates fixed.

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    v : float array (..., N, d_v)
    candidates : int64 array (..., N, k)
        The selection of the forward pass; -1 for empty slots.
    score : str
        One of "cauchy", "softmax", "neg_euclidean", "inv_euclidean".
    gamma : float
        gamma of Eq. 6 (used by "cauchy").
    mean_k, mean_v : arrays (..., N, d_k) and (..., N, d_v), or None
        The mean term of the forward pass (D8); None when it is off.
    grad_output : float array (..., N, d_v), q's dtype
        dL/do, the gradient of the loss with respect to the output.
    order : int64 array (..., N), optional
        An order in which to visit the queries; as in the forward pass it cannot change the
        result, and the specification ignores it (checked as in every backend).
    key_order : int64 array (..., N), optional
        An order in which to visit the keys when their gradients are summed; likewise
        ignored here (a twin that sums key by key may use it: the composer passes the keys'
        Z order, ``key_perm``).

    Returns
    -------
    dq : (..., N, d_k)
        Complete: q enters only here.
    dk, dv : (..., N, d_k), (..., N, d_v)
        Through the candidate slots only; the mean term's share comes from
        :func:`history_means_backward`.
    dmean_k, dmean_v : (..., N, d_k), (..., N, d_v), or None
        The gradients of the mean term's key and value (None when it is off).
    dgamma : float
        dL/dgamma, summed over every query; 0.0 for the scores other than "cauchy".

    Arrays in q's dtype.

    Notes
    -----
    Eq. 6, ``w_i = (||q - k_i||^2 + gamma^2)^-1 / sum_j (||q - k_j||^2 + gamma^2)^-1``,
    ``o = sum_i w_i v_i``, differentiated as the module docstring derives (steps b1 to b5).
    """
    visit_order(order, q.shape[:-2], q.shape[-2])  # checked as in every backend, not needed
    visit_order(key_order, q.shape[:-2], q.shape[-2])
    n, d_k = q.shape[-2], q.shape[-1]
    dtype = q.dtype.type
    n_slots = candidates.shape[-1]
    with_mean = mean_k is not None
    # the forward pass again, up to the weights (as topk_attention computes them)
    valid = candidates >= 0  # (..., N, k)
    keys = gather_rows(k, candidates)  # (..., N, k, d_k)
    values = gather_rows(v, candidates)  # (..., N, k, d_v)
    if with_mean:  # the mean term is slot k, always valid
        keys = np.concatenate([keys, mean_k[..., None, :]], axis=-2)  # (..., N, k+1, d_k)
        values = np.concatenate([values, mean_v[..., None, :]], axis=-2)  # (..., N, k+1, d_v)
        valid = np.concatenate([valid, np.ones(valid.shape[:-1] + (1,), bool)], axis=-1)
    near = nearness(q, keys, score)  # (..., N, S), S = k or k + 1
    a = affinity(near, score, gamma, d_k, valid)  # (..., N, S)
    total = a.sum(axis=-1, keepdims=True)  # (..., N, 1)
    w = a / np.where(total > 0, total, 1)  # (..., N, S); rows with nothing valid stay 0
    g = grad_output[..., None, :]  # (..., N, 1, d_v)

    # b1: each value's gradient is its weight times g
    dvalues = w[..., None] * g  # (..., N, S, d_v)
    # b2, b3: through the normalisation w = softmax(t), t_s = log a_s
    dw = (values * g).sum(axis=-1)  # (..., N, S)  <g, v_s>
    rho = (w * dw).sum(axis=-1, keepdims=True)  # (..., N, 1)
    dt = w * (dw - rho)  # (..., N, S)
    # b4: through the score, to the nearness
    c = dtype(score_constant(score, gamma, d_k))
    if score in EXP_SCORES:
        dnear = -(dt / c)  # t_s = -near_s / c (minus a constant)
    else:
        dnear = -(dt * a)  # t_s = -log(near_s + c), and a_s = 1 / (near_s + c)
    # b5: through the nearness, to the query and the keys
    if score == "softmax":  # near_s = -<q, k_s>
        minus = -dnear[..., None]  # (..., N, S, 1)
        dq_terms = minus * keys  # (..., N, S, d_k)
        dkeys = minus * q[..., None, :]  # (..., N, S, d_k)
    else:  # near_s = ||q - k_s||^2
        diff = q[..., None, :] - keys  # (..., N, S, d_k)
        dq_terms = (dnear + dnear)[..., None] * diff  # (..., N, S, d_k)
        dkeys = -dq_terms
    dq = dq_terms.sum(axis=-2)  # (..., N, d_k), slot 0 first, the mean term last
    dkeys = np.where(valid[..., None], dkeys, dtype(0))  # empty slots give nothing
    dvalues = np.where(valid[..., None], dvalues, dtype(0))

    # keys and values selected by several queries: the sum of their contributions
    dk = scatter_rows(dkeys[..., :n_slots, :], candidates, n)  # (..., N, d_k)
    dv = scatter_rows(dvalues[..., :n_slots, :], candidates, n)  # (..., N, d_v)
    dmean_k = dkeys[..., n_slots, :] if with_mean else None  # (..., N, d_k)
    dmean_v = dvalues[..., n_slots, :] if with_mean else None  # (..., N, d_v)
    dgamma = 0.0
    if score == "cauchy":  # c = gamma^2 enters as near + c: dc = sum of dnear over valid slots
        dc = np.where(valid, dnear, dtype(0)).sum(dtype=np.float64)
        dgamma = float(2.0 * float(gamma) * dc)
    return (dq.astype(q.dtype, copy=False), dk, dv,
            None if dmean_k is None else np.ascontiguousarray(dmean_k),
            None if dmean_v is None else np.ascontiguousarray(dmean_v), dgamma)


def history_means_backward(dmean_k, dmean_v, causal: str, *,
                           add_to=None) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`~zeta_ref.stages.topk_softmax.history_means`: the mean term's
    gradients spread over the keys and values it averages.

    Parameters
    ----------
    dmean_k : float array (..., N, d_k)
    dmean_v : float array (..., N, d_v)
        dL/dkbar and dL/dvbar (from :func:`topk_attention_backward`).
    causal : str
        Causal modes averaged positions j <= i; "none" all N positions.
    add_to : (dk, dv) or None
        The other shares of dk and dv (from :func:`topk_attention_backward`): when given,
        the result is ``dk + share`` and ``dv + share``, each share first rounded to the
        dtype, then added in the dtype, as the composer adds them. A twin may write these
        sums into ``add_to``'s own arrays (the GPU's does, saving a pass over dv).

    Returns
    -------
    dk : array (..., N, d_k), dv : array (..., N, d_v), in the input dtype.

    Notes
    -----
    Paper section 3.4 (the mean of the past tokens, via a cumulative sum); D8. With
    kbar_i = (1 / (i + 1)) sum_{j <= i} k_j: ``dk_j = sum_{i >= j} dkbar_i / (i + 1)``, a
    reverse cumulative sum, in float64 from i = N - 1 down to j, of the shares
    ``dkbar_i / (i + 1)`` (each a float64 division); for "none",
    ``dk_j = (sum_i dkbar_i) / N``.
    """
    out = []
    for dm in (dmean_k, dmean_v):
        n = dm.shape[-2]
        if causal == "none":
            total = dm.astype(np.float64).sum(axis=-2, keepdims=True)  # (..., 1, d)
            grad = np.broadcast_to(total / n, dm.shape)
        else:
            count = np.arange(1, n + 1, dtype=np.float64)[:, None]  # (N, 1)
            share = dm.astype(np.float64) / count  # (..., N, d): what mean i owes each j <= i
            # sum over i >= j: a cumulative sum from the last position down
            grad = np.cumsum(share[..., ::-1, :], axis=-2)[..., ::-1, :]  # (..., N, d)
        out.append(np.ascontiguousarray(grad, dtype=dm.dtype))
    if add_to is not None:  # the shares rounded to the dtype, then added in it
        out = [other + share for other, share in zip(add_to, out)]
    return out[0], out[1]
