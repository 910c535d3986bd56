"""CuPy twin of the backward pass of stage 6 (:mod:`zeta_ref.stages.backward`; D7, D8, D9).

Same signatures and results as the specification (CuPy arrays out; ``dgamma`` a Python float),
float results within :mod:`zeta_ref.tolerances` of it. The kernels are in ``backward.cu``:

1. ``zeta_bwd_query_fast`` (float32: 16 lanes per query, rows read 16 bytes at a time),
   ``zeta_bwd_query_half`` (16 lanes per query) or ``zeta_bwd_query`` (a warp per query), in
   the visiting order given (position order from the composer on the GPU): the weights
   again, dq, the mean term's gradients, and two coefficients per candidate slot from which
   the key pass rebuilds that slot's share of dk and dv;
2. the (query, slot) pairs sorted by the key they selected: one stable ``cupy.argsort`` of
   the keys (32-bit where they fit), so each key's pairs come in (query, slot) order, and
   where each key's begin (``zeta_bwd_key_counts`` counts them, a running sum places them);
3. ``zeta_bwd_keys``, a thread per (key, column) of dk (and of dv, where ``zeta_bwd_values``,
   a thread per (key, four columns), cannot take it): the sum of the key's shares in double,
   rounded once, in that order. No float atomics (step 2 counts integers): the same result
   on every run.

The mean term's share (:func:`history_means_backward`) is a blocked scan from the end of the
sequence, as the forward's mean is a blocked scan from its start (``zeta_scan_blocks`` of
``topk_softmax.cu`` scans the block sums).
"""

from __future__ import annotations

import numpy as np

import cupy as cp

from ..config import SCORES
from ..stages.topk_softmax import score_constant
from . import _runtime as rt
from .topk_softmax import _SCORE_IDS, narrow_candidates, scan_block
from .topk_softmax import _fn as _topk_fn
from .window import visit_order

_NAMES = ("zeta_bwd_query<float, long long>", "zeta_bwd_query<double, long long>",
          "zeta_bwd_query<float, int>", "zeta_bwd_query<double, int>",
          *(f"zeta_bwd_query_half<{t}, {i}, {cols}>" for cols in (4, 16)
            for i in ("long long", "int") for t in ("float", "double")),
          "zeta_bwd_pair_keys<int, unsigned int>", "zeta_bwd_pair_keys<long long, unsigned int>",
          "zeta_bwd_pair_keys<int, unsigned long long>",
          "zeta_bwd_pair_keys<long long, unsigned long long>",
          "zeta_bwd_key_counts<unsigned int>", "zeta_bwd_key_counts<unsigned long long>",
          "zeta_bwd_keys<float>", "zeta_bwd_keys<double>",
          "zeta_bwd_values<float>", "zeta_bwd_values<double>",
          "zeta_bwd_mean_sums<float>", "zeta_bwd_mean_sums<double>",
          "zeta_bwd_mean_write<float>", "zeta_bwd_mean_write<double>",
          *(f"zeta_bwd_query_fast<{u}, {x}>" for u in (1, 2, 3, 4, 8) for x in (1, 2, 4)))
#: zeta_bwd_query keeps each lane's slots in registers: at most this many slots (k + 1).
MAX_SLOTS = 256
#: zeta_bwd_query_half (16 lanes per query) takes up to this many slots, d_v and d_k; its
#: lanes hold 4 columns of g_i each up to d_v = 64, 16 above.
HALF_MAX_SLOTS, HALF_MAX_DV, HALF_MAX_DK = 128, 256, 8
#: Threads per block of zeta_bwd_query_fast (ZETA_BWD_FAST_THREADS of the source).
FAST_THREADS = 256


def _fn(name):
    return rt.kernel("backward", name, _NAMES)


def topk_attention_backward(q, k, v, candidates, score: str, gamma: float, mean_k, mean_v,
                            grad_output, *, order=None, key_order=None):
    """Gradients of stage 6 with the candidates fixed (CuPy twin).

    Parameters and results as :func:`zeta_ref.stages.backward.topk_attention_backward`;
    arrays may be NumPy or CuPy, results are CuPy arrays, ``dgamma`` too (0-d, float64: read
    it when needed, as the composer does with its checks, in one transfer). ``order`` and
    ``key_order`` are the orders in which the query pass visits the queries and the key pass
    the keys (checked: every position once a row); they change no result, only which rows
    the cache holds; position order where not given (the composer on the GPU gives none).
    """
    if score not in _SCORE_IDS:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    rt.check_width(q.shape[-1], v.shape[-1])  # before any copy to the device
    q = rt.device(q)
    dtype = q.dtype
    k, v, grad = rt.device(k, dtype), rt.device(v, dtype), rt.device(grad_output, dtype)
    cand = rt.device(candidates)
    if cand.dtype not in (np.int32, np.int64):
        cand = cand.astype(np.int64)
    if q.shape[-2] < 2**31:  # int32 for both passes (anything outside 0 .. N - 1 made -1)
        cand = narrow_candidates(cand, q.shape[-2])
    n, d_k = q.shape[-2], q.shape[-1]
    d_v, n_slots = v.shape[-1], cand.shape[-1]
    rows = q.size // (n * d_k)
    with_mean = mean_k is not None
    if n_slots + with_mean > MAX_SLOTS:
        raise ValueError(f"the CuPy backward takes at most {MAX_SLOTS} slots (k + the mean "
                         f"term); got {n_slots + with_mean}")
    # the visiting orders: position order unless the caller gives one. In Z order, the
    # query pass ran 8 % faster at N = 65536 (H200, 2026-12-03), less than the sort that
    # finds the order costs, and the key pass 45 % slower
    visit = visit_order(order, rows, n)  # (R, N) int64: the queries' order
    key_visit = visit_order(key_order, rows, n)  # the keys'
    mk = rt.device(mean_k, dtype) if with_mean else rt.empty((1, d_k), dtype)
    mv = rt.device(mean_v, dtype) if with_mean else rt.empty((1, d_v), dtype)
    c = (np.float32 if dtype == np.float32 else np.float64)(score_constant(score, gamma, d_k))

    dq, dmean_k, dmean_v, coef_w, coef_k, dc = query_pass(
        q, k, v, cand, mk, mv, with_mean, grad, visit, score, c)
    pairs, starts = pair_lists(cand, rows, n)
    dk, dv = key_pass(q, k, grad, coef_w, coef_k, pairs, starts, key_visit, score)
    dgamma = cp.zeros((), dtype=np.float64)
    if score == "cauchy":  # c = gamma^2 enters as near + c
        dgamma = 2.0 * float(gamma) * dc.sum()  # left on the device: reading it waits
    return (dq, dk, dv, dmean_k if with_mean else None, dmean_v if with_mean else None,
            dgamma)


def query_pass(q, k, v, cand, mk, mv, with_mean, grad, visit, score, c, kernel="auto"):
    """Step 1: ``zeta_bwd_query_fast`` (16 lanes per query, rows read 16 bytes at a time) for
    float32 and d_v a multiple of 4, else ``zeta_bwd_query_half`` (16 lanes per query) where
    the sizes allow, else ``zeta_bwd_query`` (a warp per query); ``kernel`` ("auto", "fast",
    "half", "warp") picks one for the tests. Returns dq, dmean_k, dmean_v (dummies of one row
    without the mean term), the two coefficients per slot, and dc per query."""
    dtype = q.dtype
    lead, n, d_k, d_v = q.shape[:-2], q.shape[-2], q.shape[-1], v.shape[-1]
    rows, n_slots = q.size // (n * d_k), cand.shape[-1]
    index = "int" if cand.dtype == np.int32 else "long long"
    dq = rt.empty(q.shape, dtype)
    dmean_k = rt.empty(q.shape if with_mean else (1, d_k), dtype)
    dmean_v = rt.empty(v.shape if with_mean else (1, d_v), dtype)
    coef_w = rt.empty(cand.shape, dtype)  # (..., N, k)
    coef_k = rt.empty(cand.shape, dtype)
    dc = rt.empty(lead + (n,), np.float64)
    half_ok = (n_slots + with_mean <= HALF_MAX_SLOTS and d_v <= HALF_MAX_DV
               and d_k <= HALF_MAX_DK and n < 2**31)  # it keeps key positions as int
    fast_ok = (half_ok and dtype == np.float32 and d_v % 4 == 0  # float4 rows of v, grad,
               and all(a.data.ptr % 16 == 0 for a in (v, mv, grad, dmean_v)))  # dmean_v
    if kernel == "half" and not half_ok:
        raise ValueError(f"the 16-lane kernel takes up to {HALF_MAX_SLOTS} slots, d_v <= "
                         f"{HALF_MAX_DV} and d_k <= {HALF_MAX_DK}")
    if kernel == "fast" and not fast_ok:
        raise ValueError(f"the fast kernel takes float32, d_v a multiple of 4 up to "
                         f"{HALF_MAX_DV}, up to {HALF_MAX_SLOTS} slots and d_k <= {HALF_MAX_DK}")
    chosen = kernel if kernel != "auto" else "fast" if fast_ok else "half" if half_ok else "warp"
    sizes = (rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(d_v), np.int32(n_slots),
             np.int32(_SCORE_IDS[score]), c, dq, dmean_k, dmean_v, coef_w, coef_k, dc)
    if chosen == "fast":
        per_lane = next(u for u in (1, 2, 3, 4, 8) if 16 * u >= n_slots + with_mean)
        stripes = next(x for x in (1, 2, 4) if 64 * x >= d_v)
        cand32 = narrow_candidates(cand, n)  # n < 2**31
        rt.launch(_fn(f"zeta_bwd_query_fast<{per_lane}, {stripes}>"), 16 * rows * n,
                  (q, k, v, cand32, mk, mv, np.int32(with_mean), grad, visit) + sizes,
                  threads=FAST_THREADS)
        return dq, dmean_k, dmean_v, coef_w, coef_k, dc
    name = (f"zeta_bwd_query_half<{rt.ctype_name(dtype)}, {index}, {4 if d_v <= 64 else 16}>"
            if chosen == "half" else f"zeta_bwd_query<{rt.ctype_name(dtype)}, {index}>")
    rt.launch(_fn(name), (16 if chosen == "half" else 32) * rows * n,
              (q, k, v, cand, mk, mv, np.int32(with_mean), grad, visit) + sizes)
    return dq, dmean_k, dmean_v, coef_w, coef_k, dc


def pair_lists(cand, rows: int, n: int):
    """Step 2: every (query, slot) pair p = (r * n + i) * k + s, sorted by the key it selected
    (one stable ``cupy.argsort`` of the keys, so that each key's pairs stay in (query, slot)
    order); ``starts[key]`` is where key ``r * n + j``'s begin (``starts[rows * n]``: the
    empty slots, and candidates outside 0 .. n - 1, which the composer refuses). Returns
    (pairs, starts), int64."""
    n_slots = cand.shape[-1]
    index = "int" if cand.dtype == np.int32 else "long long"
    narrow = rows * n + 1 < 2**32  # the keys as 32-bit integers: a radix sort of half the bits
    key_type = "unsigned int" if narrow else "unsigned long long"
    keys = rt.empty((cand.size,), np.uint32 if narrow else np.uint64)
    rt.launch(_fn(f"zeta_bwd_pair_keys<{index}, {key_type}>"), cand.size,
              (cand, rt.i64(rows), rt.i64(n), np.int32(n_slots), keys))
    pairs = cp.argsort(keys)  # stable: ties (one key's pairs) keep their order, p's
    # starts: the running sum of each key's count of pairs (the last bucket, the empty slots,
    # needs no start of its own)
    counts = cp.zeros(rows * n + 1, dtype=np.int64)  # written as unsigned 64-bit counts
    rt.launch(_fn(f"zeta_bwd_key_counts<{key_type}>"), keys.size,
              (keys, rt.i64(keys.size), counts))
    starts = rt.empty((rows * n + 1,), np.int64)
    starts[0] = 0
    cp.cumsum(counts[:-1], out=starts[1:])
    return pairs, starts


def key_pass(q, k, grad, coef_w, coef_k, pairs, starts, key_order, score, kernel="auto"):
    """Step 3: ``zeta_bwd_keys``, a thread per (key, column) of [dk | dv], keys visited in
    ``key_order``; where d_v is a multiple of 4 and grad 16-byte aligned, it takes dk only and
    ``zeta_bwd_values`` dv, a thread per (key, four columns) (the same sums in the same order:
    the same bits). ``kernel`` ("auto", "values", "plain") picks for the tests. Returns dk, dv.
    """
    dtype = q.dtype
    n, d_k, d_v = q.shape[-2], q.shape[-1], grad.shape[-1]
    rows, n_slots = q.size // (n * d_k), coef_w.shape[-1]
    quads_ok = d_v % 4 == 0 and grad.data.ptr % 16 == 0
    if kernel == "values" and not quads_ok:
        raise ValueError("zeta_bwd_values needs d_v a multiple of 4 and grad 16-byte aligned")
    quads = quads_ok if kernel == "auto" else kernel == "values"
    dk = rt.empty(k.shape, dtype)
    dv = rt.empty(grad.shape, dtype)
    t = rt.ctype_name(dtype)
    columns = d_k if quads else d_k + d_v
    rt.launch(_fn(f"zeta_bwd_keys<{t}>"), rows * n * columns,
              (q, k, grad, coef_w, coef_k, pairs, starts, key_order, rt.i64(rows), rt.i64(n),
               np.int32(d_k), np.int32(d_v), np.int32(n_slots), np.int32(_SCORE_IDS[score]),
               np.int32(columns), dk, dv))
    if quads:
        rt.launch(_fn(f"zeta_bwd_values<{t}>"), rows * n * (d_v // 4),
                  (grad, coef_w, pairs, starts, key_order, rt.i64(rows), rt.i64(n),
                   np.int32(d_v), np.int32(n_slots), dv))
    return dk, dv


def history_means_backward(dmean_k, dmean_v, causal: str, *, add_to=None):
    """The mean term's gradients spread over the keys and values it averages (CuPy twin).

    Parameters and results as :func:`zeta_ref.stages.backward.history_means_backward` (CuPy
    arrays out): a blocked scan in double from the end of the sequence. With ``add_to``
    (dk, dv), the shares are added into those arrays where they are contiguous device arrays
    of the dtype (into copies otherwise), in the scan's last kernel, and they are returned.
    """
    rt.check_width(dmean_k.shape[-1], dmean_v.shape[-1])  # before any copy to the device
    x1 = rt.device(dmean_k)
    x2 = rt.device(dmean_v, x1.dtype)
    n, d1, d2 = x1.shape[-2], x1.shape[-1], x2.shape[-1]
    rows = x1.size // (n * d1)
    d = d1 + d2
    block = scan_block(n)
    n_blocks = -(-n // block)
    t = rt.ctype_name(x1.dtype)
    whole = np.int32(causal == "none")
    if add_to is None:
        out1, out2 = rt.empty(x1.shape, x1.dtype), rt.empty(x2.shape, x2.dtype)
    else:
        out1, out2 = (rt.device(a, x1.dtype) for a in add_to)
        if out1.shape != x1.shape or out2.shape != x2.shape:
            raise ValueError(f"add_to must hold arrays of the shapes of dmean_k and dmean_v, "
                             f"{x1.shape} and {x2.shape}; got {out1.shape} and {out2.shape}")
    sums = rt.empty((rows, n_blocks, d), np.float64)
    totals = rt.empty((rows, d), np.float64)
    rt.launch(_fn(f"zeta_bwd_mean_sums<{t}>"), sums.size,
              (x1, x2, whole, rt.i64(rows), rt.i64(n), np.int32(d1), np.int32(d2),
               rt.i64(block), sums))
    rt.launch(_topk_fn("zeta_scan_blocks"), 32 * rows * d,
              (sums, rt.i64(rows), rt.i64(n_blocks), np.int32(d), totals))
    rt.launch(_fn(f"zeta_bwd_mean_write<{t}>"), sums.size,
              (x1, x2, sums, totals, whole, rt.i64(rows), rt.i64(n), np.int32(d1),
               np.int32(d2), rt.i64(block), np.int32(add_to is not None), out1, out2))
    return out1, out2
