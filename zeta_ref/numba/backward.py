"""Numba twin of the backward pass of stage 6 (Eq. 6 and the mean term, D7, D8, D9).

Same signatures and output dtypes as :func:`zeta_ref.stages.backward.topk_attention_backward`
and :func:`zeta_ref.stages.backward.history_means_backward`; the derivation (steps b1 to b5) is
in :mod:`zeta_ref.stages.backward`. Three passes, each free of races, so that the result is the
same bits run to run and whatever the number of threads:

    pass 1, per query (parallel over blocks of queries, in the visiting order):
             recompute a_s, w_s (as the forward kernel, normalised in NumPy's pairwise order),
             then dw_s = <g, v_s>, rho, dt_s, dnear_s; write dq_i, the mean term's dkbar_i and
             weight, the query's share of dc (float64), and each slot's w_s and dnear_s: all
             of it the query's own rows
    pass 2, the inverse of the selection (parallel over rows, or over chunks of one row's
             queries): a stable counting sort of the (query, slot) pairs by the key they
             selected, so that each key's list is in (query, slot) order; a CSR: ``starts``
             (N + 1,) and, per pair, its query and its (w_s, dnear_s)
    pass 3, per key (parallel over blocks of keys, visited in Z order): dk_j and dv_j, the
             float64 sums of the contributions of the key's list in that order, rounded once

A thread writes only rows it owns, and every sum runs in an order fixed by the data alone (the
slots, the CSR, the positions), never by the scheduling: no scatter-add, no atomic. Pass 3
computes each contribution with the same operations as the specification and adds them in the
specification's order (:func:`zeta_ref.stages.backward.scatter_rows`), so dk and dv differ from
it only where w_s or dnear_s do. w_s is the specification's, bit for bit, for the scores without
an exp (NumPy's exp is not the C library's); dnear_s differs by a few units in the last place,
as <g, v_s> is summed in vector lanes (``_dot``) rather than in NumPy's order.
dvbar_i = w_mean g_i is written after pass 1, in position order. The reverse cumulative sums of
the mean term run down each column in float64, as the forward's running sums run up, with the
specification's operations in its order (the same bits).

The small functions of the forward kernel (``_raw_score``, ``_nearness``, ``_score_slots``,
``_affinities``, ``_normalise``) are repeated here line for line: a kernel cached on disk is
compiled again only when its own file changes (see :mod:`zeta_ref.numba.topk_softmax`), so it
calls no compiled code of another file; tests/test_backward.py holds the copies to the
originals.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._checks import visit_order
from ..config import SCORES
from ..stages.topk_softmax import EXP_SCORES, score_constant
from ._jit import parallel_njit, serial_and_parallel
from .host_memory import empty_output

#: Queries (pass 1) or keys (pass 3) per task; scratch rows are allocated once per block.
BLOCK = 128
#: Below this many queries (all rows together) the serial kernels run, as in the forward
#: kernel (:data:`zeta_ref.numba.topk_softmax.PARALLEL_MIN_QUERIES`).
PARALLEL_MIN_QUERIES = 8192


# ---------------------------------------------------------------- the forward's steps, again
# line for line those of zeta_ref/numba/topk_softmax.py (tests/test_backward.py checks it)


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


# ---------------------------------------------------------------- pass 1: per query


@nb.njit(cache=True, inline="always")
def _pairwise_block(x, y, lo, n):
    """``sum_{i < n} x[lo + i] * y[lo + i]`` for n <= 128, in NumPy's pairwise order: below 8
    terms left to right; else eight running sums r_j = x_j y_j + x_{j+8} y_{j+8} + ... over the
    first n - n % 8 terms, combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then
    the rest added left to right. Each product is rounded to x's dtype first."""
    if n < 8:
        res = x.dtype.type(0)
        for i in range(lo, lo + n):
            res += x[i] * y[i]
        return res
    r0 = x[lo] * y[lo]  # eight independent sums: the compiler keeps them in one vector
    r1 = x[lo + 1] * y[lo + 1]
    r2 = x[lo + 2] * y[lo + 2]
    r3 = x[lo + 3] * y[lo + 3]
    r4 = x[lo + 4] * y[lo + 4]
    r5 = x[lo + 5] * y[lo + 5]
    r6 = x[lo + 6] * y[lo + 6]
    r7 = x[lo + 7] * y[lo + 7]
    top = lo + n - n % 8
    for i in range(lo + 8, top, 8):
        r0 += x[i] * y[i]
        r1 += x[i + 1] * y[i + 1]
        r2 += x[i + 2] * y[i + 2]
        r3 += x[i + 3] * y[i + 3]
        r4 += x[i + 4] * y[i + 4]
        r5 += x[i + 5] * y[i + 5]
        r6 += x[i + 6] * y[i + 6]
        r7 += x[i + 7] * y[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(top, lo + n):
        res += x[i] * y[i]
    return res


@nb.njit(cache=True, inline="always")
def _pairwise_dot(x, y, n):
    """``sum_{i < n} x[i] * y[i]`` in x's dtype, each product rounded, added in NumPy's pairwise
    order: the order of the specification's ``(x * y).sum(axis=-1)`` (docs/decisions.md, stage
    6 step 5), so both get the same bits. Up to 128 terms: :func:`_pairwise_block`; beyond,
    NumPy splits at h = n // 2 rounded down to a multiple of 8 and adds the sums of the two
    parts, recursively: walked here with an explicit stack (Numba compiles no recursion
    into a cached, inlined kernel)."""
    if n <= 128:
        return _pairwise_block(x, y, 0, n)
    frames = np.empty((64, 3), dtype=np.int64)  # (lo, n, parts done) of each open call
    sums = np.empty(64, dtype=x.dtype)  # the sums of finished parts, innermost last
    depth = 0
    n_sums = 0
    frames[0, 0], frames[0, 1], frames[0, 2] = 0, n, 0
    while depth >= 0:
        lo, m, done = frames[depth, 0], frames[depth, 1], frames[depth, 2]
        if m <= 128 or done == 2:  # a leaf, or both halves summed: finish this call
            if m <= 128:
                sums[n_sums] = _pairwise_block(x, y, lo, m)
                n_sums += 1
            else:
                n_sums -= 1
                sums[n_sums - 1] = sums[n_sums - 1] + sums[n_sums]
            depth -= 1
            continue
        half = m // 2
        half -= half % 8
        frames[depth, 2] = done + 1
        depth += 1
        if done == 0:  # the first part, then (when it is done) the second
            frames[depth, 0], frames[depth, 1] = lo, half
        else:
            frames[depth, 0], frames[depth, 1] = lo + half, m - half
        frames[depth, 2] = 0
    return sums[0]


@nb.njit(cache=True, fastmath={"reassoc"})
def _dot(x, y):
    """``<x, y>`` in x's dtype, each product rounded (no fused multiply-add), the products
    added in an order the compiler chooses once, when it compiles this function: vector lanes
    of partial sums, then a tree. Fixed once compiled, so the same bits on every call and in
    every thread; not NumPy's order (the specification's sum), from which it differs by a few
    units in the last place. Left as a function of its own (not inlined by Numba) so that its
    permission to reorder the sum applies to this loop alone: with the order kept (NumPy's
    pairwise order, :func:`_pairwise_dot`) the compiler vectorises nothing (Numba does not run
    LLVM's SLP vectoriser): the dot products took 3.5 times as long, pass 1 twice as long."""
    acc = x.dtype.type(0)
    for e in range(x.shape[0]):
        acc += x[e] * y[e]
    return acc


@nb.njit(cache=True, inline="always")
def _slot_gradients(gi, v_r, cand_i, mean_vi, ok, w, dw):
    """Steps b2 and b3 for one query: ``dw[s] = <g, v_s>`` (0 for an empty slot), then
    ``dw[s] = w_s (dw_s - rho)``, rho = sum_l w_l dw_l: dL/dt_s, in place."""
    n_slots = cand_i.shape[0]
    for s in range(n_slots + 1):
        if not ok[s]:
            dw[s] = 0
        elif s == n_slots:
            dw[s] = _dot(gi, mean_vi)
        else:
            dw[s] = _dot(gi, v_r[cand_i[s]])
    rho = _pairwise_dot(w, dw, n_slots + 1)
    for s in range(n_slots + 1):
        dw[s] = w[s] * (dw[s] - rho)


def _queries_body(q, k, v, cand, grad, dot, exp_score, c, mean_k, mean_v, with_mean, order,
                  block, w_out, dnear_out, dq, dmean_k, mean_weight, dc):
    """Pass 1. q, k (R, N, d_k); v, grad (R, N, d_v); cand (R, N, k); means (R, N, *) or
    (1, 1, *) dummies; order (R, N): the visiting order.

    Writes, for every query i of row r: w_out[r, i] and dnear_out[r, i] (k,) for pass 3;
    dq[r, i] (d_k,); dmean_k[r, i] (d_k,) and mean_weight[r, i] when ``with_mean``;
    dc[r, i], the float64 sum of the query's dnear over its valid slots. All in q's dtype but
    dc. Every write goes to the query's own rows: the blocks share nothing.
    """
    r_count, n, d_k = q.shape
    d_v = v.shape[2]
    n_slots = cand.shape[2]
    n_blocks = (n + block - 1) // block
    for task in nb.prange(r_count * n_blocks):
        r = task // n_blocks
        t0 = (task % n_blocks) * block
        a = np.empty(n_slots + 1, dtype=q.dtype)  # (k + 1,) scores, slot k = mean term
        ok = np.empty(n_slots + 1, dtype=np.bool_)  # (k + 1,) the slot holds a key
        w = np.empty(n_slots + 1, dtype=q.dtype)  # (k + 1,) normalised weights
        dn = np.empty(n_slots + 1, dtype=q.dtype)  # (k + 1,) dL/dt_s, then dL/dnear_s
        ones = np.ones(n_slots + 1, dtype=q.dtype)  # (k + 1,) for sums in NumPy's order
        acc = np.empty(d_k, dtype=q.dtype)  # (d_k,) dq of this query
        for t in range(t0, min(t0 + block, n)):
            i = order[r, t]
            qi = q[r, i]  # (d_k,)
            cand_i = cand[r, i]  # (k,)
            mean_ki = mean_k[r, i] if with_mean else mean_k[0, 0]  # (d_k,)
            mean_vi = mean_v[r, i] if with_mean else mean_v[0, 0]  # (d_v,)
            # the forward's steps 1 to 3: the weights, normalised by the specification's sum
            # (NumPy's pairwise order; the forward kernel's own sum runs left to right)
            _score_slots(qi, k[r], cand_i, mean_ki, with_mean, dot, exp_score, c, a, ok)
            _affinities(a, ok, exp_score)
            _normalise(a, _pairwise_dot(a, ones, n_slots + 1), w)
            # b2, b3: dL/dt_s
            _slot_gradients(grad[r, i], v[r], cand_i, mean_vi, ok, w, dn)
            # b4: through the score, to the nearness
            for s in range(n_slots + 1):
                dn[s] = -(dn[s] / c) if exp_score else -(dn[s] * a[s])
            # b5: dq, slot 0 first, the mean term last; dc for gamma
            for e in range(d_k):
                acc[e] = 0
            dc_i = 0.0
            for s in range(n_slots + 1):
                if not ok[s]:
                    continue
                key = mean_ki if s == n_slots else k[r, cand_i[s]]  # (d_k,)
                dc_i += np.float64(dn[s])
                if dot:
                    minus = -dn[s]
                    for e in range(d_k):
                        acc[e] += minus * key[e]
                else:
                    two = dn[s] + dn[s]
                    for e in range(d_k):
                        acc[e] += two * (qi[e] - key[e])
            for e in range(d_k):
                dq[r, i, e] = acc[e]
            dc[r, i] = dc_i
            # what pass 3 needs of each slot
            for s in range(n_slots):
                w_out[r, i, s] = w[s]
                dnear_out[r, i, s] = dn[s]
            # the mean term's key and value (b5 and b1 for slot k)
            if with_mean:
                for e in range(d_k):
                    if dot:
                        dmean_k[r, i, e] = -dn[n_slots] * qi[e]
                    else:
                        dmean_k[r, i, e] = -((dn[n_slots] + dn[n_slots]) * (qi[e] - mean_ki[e]))
                mean_weight[r, i] = w[n_slots]  # dvbar_i = w_mean g_i: after the kernel


_queries_serial, _queries_parallel = serial_and_parallel(_queries_body)


# ---------------------------------------------------------------- pass 2: keys to their slots


def _inverse_body(cand, w_in, dnear_in, n_chunks, counts, starts, entry_query, entry_wd):
    """Pass 2: a stable counting sort of the (query, slot) pairs by the key they selected.
    cand, w_in, dnear_in (R, N, k), the last two from pass 1.

    Writes starts (R, N + 1), entry_query (R, N k) and entry_wd (R, N k, 2): key j of row r was
    selected by the pairs at places ``starts[r, j] .. starts[r, j + 1] - 1``, listed in
    (query, slot) order, each with its query i and its (w, dnear) side by side (so that pass 3
    reads them in order rather than scattered, and this pass writes each pair's in one go).
    Each row's queries are cut into ``n_chunks`` chunks, counted and placed in parallel;
    counts (R, n_chunks, N) is scratch. The result is the one stable order, whatever the
    number of chunks (only the speed depends on it).
    """
    r_count, n, n_slots = cand.shape
    per = (n + n_chunks - 1) // n_chunks  # queries per chunk
    # step 1: how many slots of each chunk selected each key
    for task in nb.prange(r_count * n_chunks):
        r = task // n_chunks
        c = task % n_chunks
        cnt = counts[r, c]  # (N,)
        for j in range(n):
            cnt[j] = 0
        for i in range(c * per, min(n, (c + 1) * per)):
            for s in range(n_slots):
                j = cand[r, i, s]
                if j >= 0:
                    cnt[j] += 1
    # step 2: where each (key, chunk) part of the lists starts: keys in order, and within a
    # key the chunks in order (so each list stays in query order)
    for r in nb.prange(r_count):
        running = 0
        for j in range(n):
            starts[r, j] = running
            for c in range(n_chunks):
                here = counts[r, c, j]
                counts[r, c, j] = running  # from now on: the next free place
                running += here
        starts[r, n] = running
    # step 3: every chunk places its slots, in (query, slot) order
    for task in nb.prange(r_count * n_chunks):
        r = task // n_chunks
        c = task % n_chunks
        fill = counts[r, c]  # (N,)
        for i in range(c * per, min(n, (c + 1) * per)):
            for s in range(n_slots):
                j = cand[r, i, s]
                if j >= 0:
                    place = fill[j]
                    entry_query[r, place] = i
                    entry_wd[r, place, 0] = w_in[r, i, s]
                    entry_wd[r, place, 1] = dnear_in[r, i, s]
                    fill[j] = place + 1


_inverse_serial, _inverse_parallel = serial_and_parallel(_inverse_body)


def position_dtype(n: int):
    """The dtype of pass 2's query positions: int32, which halves that array's traffic, where
    every position 0 .. N - 1 fits it (N <= 2^31); int64 past that (int32 would wrap to
    negative positions, which index from the end of a row)."""
    return np.int32 if n <= 2**31 else np.int64


# ---------------------------------------------------------------- pass 3: per key


def _keys_body(q, k, grad, dot, starts, entry_query, entry_wd, key_order, block, dk, dv):
    """Pass 3. q, k (R, N, d_k); grad (R, N, d_v); starts, entry_* from pass 2; key_order
    (R, N): the order in which to visit the keys (it changes no sum).
    Writes dk (R, N, d_k), dv (R, N, d_v): for each key, the float64 sum of its slots'
    contributions in (query, slot) order, rounded to q's dtype."""
    r_count, n, d_k = q.shape
    d_v = grad.shape[2]
    n_blocks = (n + block - 1) // block
    for task in nb.prange(r_count * n_blocks):
        r = task // n_blocks
        j0 = (task % n_blocks) * block
        acc_k = np.empty(d_k, dtype=np.float64)  # (d_k,)
        acc_v = np.empty(d_v, dtype=np.float64)  # (d_v,)
        for t in range(j0, min(j0 + block, n)):
            j = key_order[r, t]
            for e in range(d_k):
                acc_k[e] = 0.0
            for e in range(d_v):
                acc_v[e] = 0.0
            kj = k[r, j]  # (d_k,)
            for p in range(starts[r, j], starts[r, j + 1]):
                i = entry_query[r, p]
                ws = entry_wd[r, p, 0]
                dn = entry_wd[r, p, 1]
                gi = grad[r, i]  # (d_v,)
                qi = q[r, i]  # (d_k,)
                for e in range(d_v):  # b1: w_s g
                    acc_v[e] += np.float64(ws * gi[e])
                if dot:  # b5, "softmax": -dnear q
                    minus = -dn
                    for e in range(d_k):
                        acc_k[e] += np.float64(minus * qi[e])
                else:  # b5, distances: -(2 dnear (q - k))
                    two = dn + dn
                    for e in range(d_k):
                        acc_k[e] += np.float64(-(two * (qi[e] - kj[e])))
            for e in range(d_k):
                dk[r, j, e] = acc_k[e]
            for e in range(d_v):
                dv[r, j, e] = acc_v[e]


_keys_serial, _keys_parallel = serial_and_parallel(_keys_body)


def topk_attention_backward(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v,
                            grad_output, *, order=None, key_order=None,
                            parallel: bool | None = None):
    """Gradients of the top-k softmax with the candidates fixed (Numba twin).

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    v : float array (..., N, d_v)
    candidates : int64 array (..., N, k), -1 for empty slots
    score : {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}
    gamma : float
    mean_k, mean_v : arrays (..., N, d_k), (..., N, d_v), or None
        The mean term (D8); None when it is off.
    grad_output : float array (..., N, d_v), q's dtype
    order : int64 array (..., N), optional
        The order in which pass 1 visits the queries (the composer passes their Z order, so
        that queries with nearly the same candidates follow each other); position order when
        omitted. It changes the speed, never the result.
    key_order : int64 array (..., N), optional
        The order in which pass 3 visits the keys (the composer passes their Z order, the
        ``key_perm`` of stage 4: neighbouring keys were selected by nearly the same queries,
        whose rows of ``grad_output`` then stay in cache); position order when omitted. It
        changes the speed, never the result.
    parallel : bool, optional
        The parallel kernels (True) or the serial ones (False); by default the parallel ones
        from PARALLEL_MIN_QUERIES queries on. Both give the same bits.

    Returns
    -------
    dq, dk, dv, dmean_k, dmean_v, dgamma
        As :func:`zeta_ref.stages.backward.topk_attention_backward`.
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
    gr = np.ascontiguousarray(np.asarray(grad_output).reshape(n_rows, n, d_v))  # (R, N, d_v)
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
    visit_keys = visit_order(key_order, lead, n)  # (R, N)
    c = qr.dtype.type(score_constant(score, gamma, d_k))  # the score's constant, rounded once
    if parallel is None:
        parallel = n_rows * n >= PARALLEL_MIN_QUERIES
    dtype = qr.dtype
    # pass 1: per query
    w = empty_output((n_rows, n, n_slots), dtype)  # (R, N, k)
    dnear = empty_output((n_rows, n, n_slots), dtype)  # (R, N, k)
    dq = empty_output((n_rows, n, d_k), dtype)  # (R, N, d_k)
    dmk = empty_output((n_rows, n, d_k) if with_mean else (1, 1, d_k), dtype)
    w_mean = empty_output((n_rows, n) if with_mean else (1, 1), dtype)  # (R, N)
    dc = empty_output((n_rows, n), np.float64)  # (R, N)
    (_queries_parallel if parallel else _queries_serial)(
        qr, kr, vr, cr, gr, score == "softmax", score in EXP_SCORES, c, mk, mv, with_mean,
        visit, np.int64(BLOCK), w, dnear, dq, dmk, w_mean, dc)
    dmv = None
    if with_mean:  # b1 for slot k, dvbar_i = w_mean g_i, written in position order
        dmv = empty_output((n_rows, n, d_v), dtype)  # (R, N, d_v)
        np.multiply(w_mean[..., None], gr, out=dmv)
    # pass 2: which (query, slot) pairs selected each key
    starts = empty_output((n_rows, n + 1), np.int64)  # (R, N + 1)
    entry_query = empty_output((n_rows, n * n_slots), position_dtype(n))  # (R, N k)
    entry_wd = empty_output((n_rows, n * n_slots, 2), dtype)  # (R, N k, 2)
    # rows in parallel, and each row in chunks when there are fewer rows than threads
    n_chunks = max(1, min(nb.get_num_threads() // n_rows, n)) if parallel else 1
    counts = empty_output((n_rows, n_chunks, n), np.int64)  # (R, chunks, N) scratch
    (_inverse_parallel if parallel else _inverse_serial)(
        cr, w, dnear, np.int64(n_chunks), counts, starts, entry_query, entry_wd)
    # pass 3: per key, the sums of its slots' contributions
    dk = empty_output((n_rows, n, d_k), dtype)  # (R, N, d_k)
    dv = empty_output((n_rows, n, d_v), dtype)  # (R, N, d_v)
    (_keys_parallel if parallel else _keys_serial)(
        qr, kr, gr, score == "softmax", starts, entry_query, entry_wd, visit_keys,
        np.int64(BLOCK), dk, dv)
    dgamma = 0.0
    if score == "cauchy":  # dc summed in position order: the visiting order cannot change it
        dgamma = float(2.0 * float(gamma) * dc.sum())
    return (dq.reshape(lead + (n, d_k)), dk.reshape(lead + (n, d_k)),
            dv.reshape(lead + (n, d_v)),
            dmk.reshape(lead + (n, d_k)) if with_mean else None,
            dmv.reshape(lead + (n, d_v)) if with_mean else None, dgamma)


# ---------------------------------------------------------------- the mean term


@parallel_njit
def _means_backward_kernel(dm, whole, threads, out):
    """dm: (R, N, d). Writes ``out[r, j] = sum_{i >= j} dm[r, i] / (i + 1)`` (causal), or
    ``sum_i dm[r, i] / N`` for every j (``whole``), float64 sums rounded to dm's dtype. One
    task per (row, block of columns): each column is summed by one thread, in a fixed order."""
    r_count, n, d = dm.shape
    n_col_blocks = max(1, min(threads // r_count, d))
    width = (d + n_col_blocks - 1) // n_col_blocks
    n_col_blocks = (d + width - 1) // width
    for task in nb.prange(r_count * n_col_blocks):
        r = task // n_col_blocks
        e0 = (task % n_col_blocks) * width
        e1 = min(e0 + width, d)
        running = np.zeros(e1 - e0, dtype=np.float64)  # float64 sums over i >= j
        if whole:  # "none": every position gets the mean's whole gradient over N
            for i in range(n):
                for e in range(e1 - e0):
                    running[e] += np.float64(dm[r, i, e0 + e])
            for i in range(n):
                for e in range(e1 - e0):
                    out[r, i, e0 + e] = running[e] / n
        else:  # from the last position down: share of mean i = dm_i / (i + 1)
            for i in range(n - 1, -1, -1):
                count = np.float64(i + 1)
                for e in range(e1 - e0):
                    running[e] += np.float64(dm[r, i, e0 + e]) / count
                    out[r, i, e0 + e] = running[e]


def history_means_backward(dmean_k, dmean_v, causal: str, *,
                           add_to=None) -> tuple[np.ndarray, np.ndarray]:
    """The mean term's gradients spread over the keys and values it averages (Numba twin).

    Parameters
    ----------
    dmean_k : float array (..., N, d_k)
    dmean_v : float array (..., N, d_v)
    causal : str
        Causal modes averaged positions j <= i; "none" all N positions.
    add_to : (dk, dv) or None
        Added to the shares, as in the specification (new arrays).

    Returns
    -------
    dk : array (..., N, d_k), dv : array (..., N, d_v), in the input dtype.
    """
    out = []
    for dm in (dmean_k, dmean_v):
        dm = np.asarray(dm)
        n, d = dm.shape[-2], dm.shape[-1]
        rows = np.ascontiguousarray(dm.reshape(-1, n, d))  # (R, N, d)
        grad = empty_output(rows.shape, rows.dtype)  # (R, N, d)
        _means_backward_kernel(rows, causal == "none", np.int64(nb.get_num_threads()), grad)
        out.append(grad.reshape(dm.shape))
    if add_to is not None:
        out = [other + share for other, share in zip(add_to, out)]
    return out[0], out[1]
