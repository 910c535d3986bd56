"""Numba twin of stage 6, the top-k softmax and the mean term (section 3.4, Eq. 6; D7, D8, D9).

Same signatures and output dtypes as :func:`zeta_ref.stages.topk_softmax.history_means` and
:func:`zeta_ref.stages.topk_softmax.topk_attention`. Per query, in the input dtype::

    step 1   near_s  = ||q - k_s||^2 (or -<q, k_s> for "softmax"), coordinate by coordinate
    step 2   a_s     = the score's affinity of near_s (0 for an empty slot, D9):
                       1 / (near_s + c), or exp(-near_s / c - the query's largest such logit)
    step 3   w_s     = a_s / sum_t a_t             over the k slots and the mean term (D8)
    step 4   out     = sum_s w_s v_s + w_mean vbar

The score's form and its constant c come from the specification's one definition of the
scores (:func:`zeta_ref.stages.topk_softmax.score_constant`); the kernel's ``_raw_score``
repeats the lines of :func:`zeta_ref.stages.topk_softmax.raw_score`.

The running sums of the mean term are float64, as in the specification. Float results agree
with the specification within :mod:`zeta_ref.tolerances` (the sums run in a different order).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._checks import visit_order
from ._jit import parallel_njit, serial_and_parallel
from ..config import SCORES
from .host_memory import empty_output
from ..stages.topk_softmax import EXP_SCORES, score_constant


@parallel_njit
def _means_kernel(x, whole, threads, out):
    """x: (R, N, d); writes the cumulative (or whole-sequence) means, (R, N, d), x's dtype,
    into ``out``."""
    r_count, n, d = x.shape
    # rows are walked in order (the sums are sequential); the columns are split into one
    # block per thread, so each thread reads its share of every row once
    n_col_blocks = max(1, min(threads // r_count, d))
    width = (d + n_col_blocks - 1) // n_col_blocks
    n_col_blocks = (d + width - 1) // width
    for task in nb.prange(r_count * n_col_blocks):
        r = task // n_col_blocks
        e0 = (task % n_col_blocks) * width
        e1 = min(e0 + width, d)
        running = np.zeros(e1 - e0, dtype=np.float64)  # float64 running sums over j <= i
        for i in range(n):
            xi = x[r, i, e0:e1]  # this row's share of the columns
            oi = out[r, i, e0:e1]
            count = np.float64(i + 1)
            for e in range(e1 - e0):  # one pass per row: add, divide, store (vectorised)
                total = running[e] + np.float64(xi[e])
                running[e] = total
                if not whole:
                    oi[e] = total / count
        if whole:  # "none": every query gets the mean of all N positions
            for i in range(n):
                for e in range(e0, e1):
                    out[r, i, e] = running[e - e0] / n


def history_means(k, v, causal: str) -> tuple[np.ndarray, np.ndarray]:
    """The mean key and mean value each query may add as an extra candidate (Numba twin, D8).

    Parameters
    ----------
    k : float array (..., N, d_k)
    v : float array (..., N, d_v)
    causal : str
        Causal modes average positions j <= i; "none" averages all N positions.

    Returns
    -------
    mean_k : array (..., N, d_k), mean_v : array (..., N, d_v), in the input dtype.
    """
    out = []
    for x in (k, v):
        x = np.asarray(x)
        n, d = x.shape[-2], x.shape[-1]
        rows = np.ascontiguousarray(x.reshape(-1, n, d))  # (R, N, d)
        means = empty_output(rows.shape, rows.dtype)  # (R, N, d)
        _means_kernel(rows, causal == "none", np.int64(nb.get_num_threads()), means)
        out.append(means.reshape(x.shape))
    return out[0], out[1]


#: Queries per task of the top-k kernel (scratch buffers are allocated once per block).
QUERY_BLOCK = 128
#: Below this many queries (all rows together) the serial kernel runs (see numba/_jit.py).
PARALLEL_MIN_QUERIES = 8192


# ---------------------------------------------------------------- the steps of one query
# Small functions inlined into the kernel (no call remains in the compiled loop). They live in
# this file: a kernel cached on disk is compiled again only when its own file changes, not when
# a function it calls from another file does (Numba's caching limits), so the kernel calls no
# compiled code of another file.


@nb.njit(cache=True, inline="always")
def _raw_score(near, exp_score, c, one):
    """A slot's score from its nearness: line for line
    :func:`zeta_ref.stages.topk_softmax.raw_score`, the one definition of every score
    (tests/test_numba_stages.py holds the two to the same bits and the same lines)."""
    if exp_score:
        return -near / c  # a logit: the weight is exp(logit - the row's largest logit)
    return one / (near + c)  # an affinity: the weight as it is


@nb.njit(cache=True, inline="always")
def _nearness(qi, key, dot):
    """Step 1 for one slot: ``||qi - key||^2``, or ``-<qi, key>`` when ``dot`` ("softmax"),
    coordinate by coordinate in the input dtype, as :func:`zeta_ref.stages.window.nearness`."""
    near = qi.dtype.type(0)
    for e in range(qi.shape[0]):
        if dot:
            near -= qi[e] * key[e]
        else:
            diff = qi[e] - key[e]
            near += diff * diff
    return near


@nb.njit(cache=True, inline="always")
def _score_slots(qi, k_r, cand_i, mean_ki, with_mean, dot, exp_score, c, a, ok):
    """Steps 1 and 2a for one query: ``ok[s]``, whether slot s holds a key (slot k: the mean
    term, D8), and ``a[s]``, its raw score (0 for an empty slot, D9)."""
    n_slots = cand_i.shape[0]
    zero = qi.dtype.type(0)
    one = qi.dtype.type(1)
    for s in range(n_slots):
        j = cand_i[s]
        ok[s] = j >= 0
        a[s] = _raw_score(_nearness(qi, k_r[j], dot), exp_score, c, one) if j >= 0 else zero
    ok[n_slots] = with_mean
    a[n_slots] = _raw_score(_nearness(qi, mean_ki, dot), exp_score, c, one) if with_mean else zero


@nb.njit(cache=True, inline="always")
def _affinities(a, ok, exp_score):
    """Step 2b: the logits of the exp scores become ``exp(logit - the largest logit)`` (a row
    with no key: minus 0); returns the sum of the affinities, in slot order (empty slots add
    0)."""
    total = a.dtype.type(0)
    if exp_score:
        top = -np.inf
        for s in range(a.shape[0]):
            if ok[s] and a[s] > top:
                top = a[s]
        if not np.isfinite(top):
            top = 0.0
        top_x = a.dtype.type(top)
        for s in range(a.shape[0]):
            if ok[s]:
                a[s] = np.exp(a[s] - top_x)
    for s in range(a.shape[0]):
        total += a[s]
    return total


@nb.njit(cache=True, inline="always")
def _normalise(a, total, w):
    """Step 3: ``w = a / total`` over the k slots and the mean term together; a total of 0
    (nothing valid) leaves every weight 0."""
    if total <= a.dtype.type(0):
        total = a.dtype.type(1)
    for s in range(a.shape[0]):
        w[s] = a[s] / total


@nb.njit(cache=True, inline="always")
def _weighted_values(v_r, cand_i, w, mean_vi, with_mean, acc):
    """Step 4: ``acc = sum_s w_s v_s + w_mean vbar``, one tight loop over d_v per candidate."""
    n_slots = cand_i.shape[0]
    for e in range(acc.shape[0]):
        acc[e] = 0
    for s in range(n_slots):
        j = cand_i[s]
        if j < 0:
            continue
        ws = w[s]
        vj = v_r[j]  # (d_v,)
        for e in range(acc.shape[0]):
            acc[e] += ws * vj[e]
    if with_mean:
        ws = w[n_slots]
        for e in range(acc.shape[0]):
            acc[e] += ws * mean_vi[e]


def _topk_body(q, k, v, cand, dot, exp_score, c, mean_k, mean_v, with_mean, order, block,
               out, weights, with_weights, mean_weight):
    """q, k (R, N, d_k); v (R, N, d_v); cand (R, N, k); means (R, N, *) or (1, 1, *) dummies;
    order (R, N): the queries in the order they are visited; ``dot``: "softmax" nearness;
    ``exp_score``, ``c``: the score's form and constant in q's dtype
    (:func:`zeta_ref.stages.topk_softmax.score_constant`).

    One task per block of ``block`` queries in ``order``, so that the scratch rows are
    allocated once per block; each query's arithmetic is its own and depends neither on the
    blocking nor on the order.
    Writes out (R, N, d_v), weights (R, N, k) if ``with_weights``, mean_weight (R, N), all in
    q's dtype.
    """
    r_count, n, _ = q.shape
    d_v = v.shape[2]
    n_slots = cand.shape[2]
    n_blocks = (n + block - 1) // block
    for task in nb.prange(r_count * n_blocks):
        r = task // n_blocks
        t0 = (task % n_blocks) * block
        a = np.empty(n_slots + 1, dtype=q.dtype)  # (k + 1,) scores, slot k = mean term
        ok = np.empty(n_slots + 1, dtype=np.bool_)  # (k + 1,) the slot holds a key
        w = np.empty(n_slots + 1, dtype=q.dtype)  # (k + 1,) normalised weights
        acc = np.empty(d_v, dtype=q.dtype)  # (d_v,) the output row being summed
        for t in range(t0, min(t0 + block, n)):
            i = order[r, t]
            cand_i = cand[r, i]  # (k,)
            mean_ki = mean_k[r, i] if with_mean else mean_k[0, 0]  # (d_k,)
            mean_vi = mean_v[r, i] if with_mean else mean_v[0, 0]  # (d_v,)
            # steps 1 and 2: nearness, raw score, affinity of every slot
            _score_slots(q[r, i], k[r], cand_i, mean_ki, with_mean, dot, exp_score, c, a, ok)
            total = _affinities(a, ok, exp_score)
            # step 3: normalise over the k slots and the mean term together
            _normalise(a, total, w)
            if with_weights:
                for s in range(n_slots):
                    weights[r, i, s] = w[s]
            mean_weight[r, i] = w[n_slots]  # 0 when the mean term is off (a[k] = 0)
            # step 4: the weighted sum of the values
            _weighted_values(v[r], cand_i, w, mean_vi, with_mean, acc)
            row = out[r, i]  # (d_v,)
            for e in range(d_v):
                row[e] = acc[e]


_topk_serial, _topk_parallel = serial_and_parallel(_topk_body)


def topk_attention(q, k, v, candidates, score: str = "cauchy", gamma: float = 0.5,
                   mean_k=None, mean_v=None, *, order=None, with_weights: bool = True,
                   parallel: bool | None = None):
    """Weights over each query's candidates and the weighted sum of their values (Numba twin).

    The queries are computed one at a time, in ``order``. Each reads the value rows of its k
    candidates, scattered over ``v``; visited in position order, nearly every one of those
    reads misses the cache at long N. Visited in Z order (what the composer passes), queries
    that follow each other have nearly the same candidates, and their value rows are still in
    cache (docs/benchmarks.md has the measurements).

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    v : float array (..., N, d_v)
    candidates : int64 array (..., N, k), -1 for empty slots
    score : {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}
    gamma : float
    mean_k, mean_v : arrays (..., N, d_k), (..., N, d_v), optional
        The mean term (D8); None leaves it out.
    order : int64 array (..., N), optional
        The order in which to visit the queries, a permutation of 0 .. N-1 per row; position
        order when omitted. It changes the speed, never the result.
    with_weights : bool, default True
        Write and return the weights of the slots; False returns None in their place and
        saves writing an (N, k) array in random order (about a tenth of the stage's time).
    parallel : bool, optional
        Run the parallel kernel (True) or the serial one (False); by default the parallel one
        from PARALLEL_MIN_QUERIES queries on. Both give the same results (for tests).

    Returns
    -------
    out : (..., N, d_v), weights : (..., N, k), mean_weight : (..., N), in the input dtype.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    q = np.asarray(q)
    lead, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    v = np.asarray(v)
    d_v = v.shape[-1]
    n_slots = candidates.shape[-1]
    n_rows = int(np.prod(lead, dtype=np.int64))
    qr = np.ascontiguousarray(q.reshape(n_rows, n, d_k))  # (R, N, d_k)
    kr = np.ascontiguousarray(np.asarray(k).reshape(n_rows, n, d_k))  # (R, N, d_k)
    vr = np.ascontiguousarray(v.reshape(n_rows, n, d_v))  # (R, N, d_v)
    cr = np.ascontiguousarray(np.asarray(candidates).reshape(n_rows, n, n_slots),
                              dtype=np.int64)  # (R, N, k)
    with_mean = mean_k is not None
    if with_mean:
        mk = np.ascontiguousarray(np.asarray(mean_k).reshape(n_rows, n, d_k))  # (R, N, d_k)
        mv = np.ascontiguousarray(np.asarray(mean_v).reshape(n_rows, n, d_v))  # (R, N, d_v)
    else:  # typed placeholders so that one compiled kernel serves both cases
        mk = np.zeros((1, 1, d_k), dtype=qr.dtype)
        mv = np.zeros((1, 1, d_v), dtype=qr.dtype)
    visit = visit_order(order, lead, n)  # (R, N)
    c = qr.dtype.type(score_constant(score, gamma, d_k))  # the score's constant, rounded once
    if parallel is None:
        parallel = n_rows * n >= PARALLEL_MIN_QUERIES
    kernel = _topk_parallel if parallel else _topk_serial
    out = empty_output((n_rows, n, d_v), qr.dtype)  # (R, N, d_v)
    w = empty_output((n_rows, n, n_slots) if with_weights else (1, 1, n_slots),
                     qr.dtype)  # (R, N, k), or a placeholder
    w_mean = empty_output((n_rows, n), qr.dtype)  # (R, N)
    kernel(qr, kr, vr, cr, score == "softmax", score in EXP_SCORES, c, mk, mv, with_mean, visit,
           np.int64(QUERY_BLOCK), out, w, bool(with_weights), w_mean)
    return (out.reshape(lead + (n, d_v)),
            w.reshape(lead + (n, n_slots)) if with_weights else None,
            w_mean.reshape(lead + (n,)))
