"""The backward pass in ``compare``: each (query, slot)'s share of the gradients, in float64.

zeta_ref's own gradients come from the specification (:mod:`zeta_ref.stages.backward`, what
:func:`~zeta_ref.zeta_attention_backward` runs). This module computes the same steps b1 to b5
once more, keeping each (query, slot)'s share apart, for two things the sums hide:

- **the size in play of each gradient** (:func:`gradient_sizes`): every signed quantity
  replaced by its absolute value, so that each entry of dq, dk, dv (and dgamma) is the sum of
  the magnitudes of the terms it adds up. Where those terms cancel (a key 10^-3 from its query
  under "inv_euclidean" gives terms hundreds of times their sum), two correct float32
  implementations differ by a few units of float32 in the *terms*: a tolerance relative to
  ``max |dq|`` would call them wrong. :mod:`~zeta_ref.crosscheck.verdicts` measures the
  gradients against these sizes (docs/backward.md, "What is checked");
- **the common mistakes of a backward pass** (:mod:`~zeta_ref.crosscheck.variants`): the
  shares of keys chosen by several queries overwritten instead of added, the gradient through
  the normalisation left out, the mean term's share left out, dL/d(gamma^2) for dL/dgamma.
"""

from __future__ import annotations

import numpy as np

from ..stages.backward import history_means_backward, scatter_rows
from ..stages.topk_softmax import EXP_SCORES, affinity, score_constant
from ..stages.window import gather_rows, nearness


def slot_terms(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v, g, *,
               absolute: bool = False, normalisation: bool = True) -> dict:
    """Each (query, slot)'s share of the gradients of stage 6, in float64.

    Parameters
    ----------
    q, k, v, candidates, score, gamma, mean_k, mean_v
        As :func:`zeta_ref.stages.backward.topk_attention_backward` takes them (the mean term
        None when it is off); g the gradient of the output, (..., N, d_v).
    absolute : bool
        Every signed quantity by its absolute value: the shares' magnitudes.
    normalisation : bool
        False leaves out the gradient through the normalisation (dt = w dw, no -w rho): a
        common mistake.

    Returns
    -------
    dict of float64 arrays: ``to_q``, ``to_key`` (..., N, S, d_k), ``to_value``
    (..., N, S, d_v), ``dnear`` (..., N, S), zero at empty slots; S = k, plus the mean term
    as slot k when it is on.
    """
    q, k, v, g = (np.asarray(x, dtype=np.float64) for x in (q, k, v, g))
    d_k = q.shape[-1]
    valid = candidates >= 0
    keys, values = gather_rows(k, candidates), gather_rows(v, candidates)
    if mean_k is not None:  # the mean term is slot k, always valid
        keys = np.concatenate([keys, np.asarray(mean_k, np.float64)[..., None, :]], axis=-2)
        values = np.concatenate([values, np.asarray(mean_v, np.float64)[..., None, :]], axis=-2)
        valid = np.concatenate([valid, np.ones(valid.shape[:-1] + (1,), bool)], axis=-1)
    near = nearness(q, keys, score)  # (..., N, S)
    a = affinity(near, score, gamma, d_k, valid)
    total = a.sum(axis=-1, keepdims=True)
    w = a / np.where(total > 0, total, 1.0)  # (..., N, S)
    gs = g[..., None, :]  # (..., N, 1, d_v)
    fold = np.abs if absolute else (lambda x: x)
    dw = (fold(values) * fold(gs)).sum(axis=-1)  # (..., N, S): <g, v_s>
    rho = (w * dw).sum(axis=-1, keepdims=True) if normalisation else 0.0
    dt = w * (dw + rho) if absolute else w * (dw - rho)
    c = score_constant(score, gamma, d_k)
    dnear = dt / c if score in EXP_SCORES else dt * a
    if not absolute:
        dnear = -dnear
    if score == "softmax":  # near_s = -<q, k_s>
        to_q = -dnear[..., None] * keys if not absolute else dnear[..., None] * np.abs(keys)
        to_key = (-dnear[..., None] * q[..., None, :] if not absolute
                  else dnear[..., None] * np.abs(q)[..., None, :])
    else:  # near_s = ||q - k_s||^2
        diff = fold(q[..., None, :] - keys)
        to_q = 2.0 * dnear[..., None] * diff
        to_key = to_q if absolute else -to_q
    keep = valid[..., None]
    return {"to_q": np.where(keep, to_q, 0.0), "to_key": np.where(keep, to_key, 0.0),
            "to_value": np.where(keep, w[..., None] * fold(gs), 0.0),
            "dnear": np.where(valid, dnear, 0.0)}


#: Bytes of float64 a block of queries may hold in one array of shares (..., b, S, d).
BLOCK_BYTES = 1 << 23


def shares_and_sums(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v, g,
                    causal: str, *, absolute: bool = False, normalisation: bool = True,
                    overwrite: bool = False, mean_share: bool = True) -> tuple:
    """(dq, dk, dv, dgamma) in float64 from :func:`slot_terms`' shares, taken over blocks of
    queries so that no array of shares exceeds :data:`BLOCK_BYTES`: dq the sum over each
    query's slots; dk, dv the sums over the (query, slot) pairs that chose each key, and the
    mean term's share spread over the keys and values it averages; dgamma = 2 gamma times the
    sum of dnear ("cauchy"; 0 for the other scores).

    ``absolute`` and ``normalisation`` as :func:`slot_terms` takes them; ``overwrite``: each
    key keeps the share of the last (query, slot) that chose it instead of the sum (a scatter
    by assignment); ``mean_share=False`` leaves the mean term's share out of dk and dv.
    """
    n, n_slots = q.shape[-2], candidates.shape[-1]
    with_mean = mean_k is not None
    rows = int(np.prod(q.shape[:-2], dtype=np.int64))
    per_query = rows * (n_slots + 1) * max(q.shape[-1], v.shape[-1]) * 8
    step = max(1, BLOCK_BYTES // per_query)
    dq = np.zeros(q.shape)
    dk, dv = np.zeros(k.shape), np.zeros(v.shape)
    dmean_k = np.zeros(q.shape) if with_mean else None
    dmean_v = np.zeros(v.shape) if with_mean else None
    dnear_sum = 0.0
    for i0 in range(0, n, step):
        block = slice(i0, min(i0 + step, n))  # the block's queries
        means = ((mean_k[..., block, :], mean_v[..., block, :]) if with_mean
                 else (None, None))
        terms = slot_terms(q[..., block, :], k, v, candidates[..., block, :], score, gamma,
                           *means, g[..., block, :], absolute=absolute,
                           normalisation=normalisation)
        cand = candidates[..., block, :]
        dq[..., block, :] = terms["to_q"].sum(axis=-2)
        for name, out in (("to_key", dk), ("to_value", dv)):
            shares = terms[name][..., :n_slots, :]
            if overwrite:  # a later block's writers come later
                _assign_rows(shares, cand, out)
            else:
                out += scatter_rows(shares, cand, n)
        if with_mean:
            dmean_k[..., block, :] = terms["to_key"][..., n_slots, :]
            dmean_v[..., block, :] = terms["to_value"][..., n_slots, :]
        dnear_sum += float(terms["dnear"].sum())
    if with_mean and mean_share:
        dk, dv = history_means_backward(dmean_k, dmean_v, causal, add_to=(dk, dv))
    dgamma = 2.0 * float(gamma) * dnear_sum if score == "cauchy" else 0.0
    return dq, dk, dv, dgamma


def _assign_rows(x, idx, out) -> None:
    """Row ``x[..., i, s, :]`` written to row ``idx[..., i, s]`` of ``out`` (..., N, d), in the
    order of (i, s) ascending, so that the last writer stays."""
    d = x.shape[-1]
    flat_out = out.reshape(-1, out.shape[-2], d)
    rows, vals = idx.reshape(len(flat_out), -1), x.reshape(len(flat_out), -1, d)
    for r in range(len(flat_out)):
        order = np.flatnonzero(rows[r] >= 0)[::-1]  # (query, slot) pairs, last first
        keys, first = np.unique(rows[r][order], return_index=True)  # each key's last writer
        flat_out[r, keys] = vals[r][order[first]]


def gradient_sizes(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v, g,
                   causal: str) -> tuple:
    """The size in play of each gradient: (dq, dk, dv) arrays and dgamma, a float, each the
    sum of the magnitudes of the terms it adds up (see the module docstring)."""
    return shares_and_sums(q, k, v, candidates, score, gamma, mean_k, mean_v, g, causal,
                           absolute=True)
