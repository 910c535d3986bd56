"""Exercise: history_means, stage 6a (the mean term's key and value)

Difficulty: easy
Time: about 15 minutes
Specification: zeta_ref.stages.topk_softmax.history_means
Decisions: D8
Grade it: zeta-ref grade history_means history_means.py

Top-k attention gives no gradient to the keys it leaves out. The paper (section 3.4) adds the
mean of the past tokens as one more candidate, computed with a cumulative sum. In zeta_ref
(D8) query i's mean key and mean value average the positions j <= i, the query's own
included, in both causal modes; with ``causal="none"`` every query gets the mean of all N
positions. The sums are taken in float64, and the means returned in the input's dtype.

Write the body of ``history_means``.

Read first: the module docstring of zeta_ref/stages/topk_softmax.py; docs/decisions.md, D8,
and Conventions, stage 6, step 2.
"""

from __future__ import annotations

import numpy as np


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
    # BEGIN SOLUTION: running sums in float64, divided by how many positions they hold
    # Hint: np.cumsum(x, axis=-2, dtype=np.float64) sums positions 0 .. i for every i.
    # Hint: how many positions does query i average? (Not i.)
    n = k.shape[-2]
    means = []
    for x in (k, v):  # the same rule for the keys and the values
        if causal == "none":
            # every query sees every position: one mean, the same for all N queries
            total = np.sum(x, axis=-2, keepdims=True, dtype=np.float64)  # (..., 1, d)
            mean = np.repeat(total / n, n, axis=-2)  # (..., N, d)
        else:
            # query i averages positions 0 .. i: i + 1 of them, its own included (D8)
            running = np.cumsum(x, axis=-2, dtype=np.float64)  # (..., N, d)
            count = np.arange(1, n + 1, dtype=np.float64)  # (N,)
            mean = running / count[:, None]  # (..., N, d)
        means.append(mean.astype(x.dtype))
    return means[0], means[1]
    # END SOLUTION
