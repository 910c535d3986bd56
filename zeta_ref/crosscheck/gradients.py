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


def gradients(terms: dict, candidates, n: int, score: str, gamma: float, causal: str,
              with_mean: bool, *, overwrite: bool = False, mean_share: bool = True) -> tuple:
    """(dq, dk, dv, dgamma) in float64 from :func:`slot_terms`' shares: dq the sum over each
    query's slots; dk, dv the sums over the (query, slot) pairs that chose each key, and the
    mean term's share spread over the keys and values it averages; dgamma = 2 gamma times the
    sum of dnear ("cauchy"; 0 for the other scores). ``overwrite``: each key keeps the share
    of the last (query, slot) that chose it instead of the sum (a scatter by assignment);
    ``mean_share=False`` leaves the mean term's share out of dk and dv."""
    n_slots = candidates.shape[-1]
    dq = terms["to_q"].sum(axis=-2)
    if overwrite:
        dk, dv = (_assign_rows(terms[name][..., :n_slots, :], candidates, n)
                  for name in ("to_key", "to_value"))
    else:
        dk, dv = (scatter_rows(terms[name][..., :n_slots, :], candidates, n)
                  for name in ("to_key", "to_value"))
    if with_mean and mean_share:
        dk, dv = history_means_backward(terms["to_key"][..., n_slots, :],
                                        terms["to_value"][..., n_slots, :], causal,
                                        add_to=(dk, dv))
    dgamma = 2.0 * float(gamma) * float(terms["dnear"].sum()) if score == "cauchy" else 0.0
    return dq, dk, dv, dgamma


def _assign_rows(x, idx, n: int) -> np.ndarray:
    """Row ``x[..., i, s, :]`` written to row ``idx[..., i, s]`` of the result, in the order of
    (i, s) ascending, so that the last writer stays (rows nobody chose: 0)."""
    lead, d = idx.shape[:-2], x.shape[-1]
    out = np.zeros(lead + (n, d))
    flat_out = out.reshape(-1, n, d)
    rows, vals = idx.reshape(len(flat_out), -1), x.reshape(len(flat_out), -1, d)
    for r in range(len(flat_out)):
        order = np.flatnonzero(rows[r] >= 0)[::-1]  # (query, slot) pairs, last first
        keys, first = np.unique(rows[r][order], return_index=True)  # each key's last writer
        flat_out[r, keys] = vals[r][order[first]]
    return out


def gradient_sizes(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v, g,
                   causal: str) -> tuple:
    """The size in play of each gradient: (dq, dk, dv) arrays and dgamma, a float, each the
    sum of the magnitudes of the terms it adds up (see the module docstring)."""
    terms = slot_terms(q, k, v, candidates, score, gamma, mean_k, mean_v, g, absolute=True)
    return gradients(terms, candidates, q.shape[-2], score, gamma, causal, mean_k is not None)
