"""CuPy twin of stage 5: causal pools, binary search, window and re-rank (section 3.3; D4-D6,
D9, D11).

Same signatures, output dtypes and answers, bit for bit, as :mod:`zeta_ref.stages.window`. The kernels
and the idea of the prefix pools are in ``window.cu``; this file builds the pools and launches.

Cost per row: building the pools is O(N) work for each of the log2(N / MIN_LEVEL) levels
(a flat cumulative sum and a scatter), O(N) memory in all (the levels add up to less than 2N).
A window costs a binary search and a walk over at least half-visible keys: O(log N + W) per
query for codes in general position (at worst the walk skips up to L_i invisible keys). The
re-rank is O(W (d_k + log k)) per query with O(k) scratch per query. The insertion points (an
intermediate for the reader) cost one stable sort of the keys per bit of N: O(N log^2 N).
"""

from __future__ import annotations

import numpy as np

import cupy as cp

from ..stages.window import check_pool_len
from . import _runtime as rt

#: S_0, the size of the smallest prefix pool; each level doubles it, the last is N.
MIN_LEVEL = 256
#: The most positions a row may have (the re-rank packs a position into 32 bits).
MAX_N = (1 << 31) - 1

_NAMES = ("zeta_window<long long>", "zeta_rerank<float>",
          "zeta_rerank<double>", "zeta_insertion_level", "zeta_pool_level")


def _fn(name):
    return rt.kernel("window", name, _NAMES)


def _check_n(n: int) -> None:
    if n > MAX_N:
        raise ValueError(f"the CuPy backend handles sequences of up to 2^31 - 1 positions; "
                         f"got N = {n}")


def level_sizes(n: int) -> list[int]:
    """S_0 < S_1 < ... < S_T = N: the prefix pools' sizes (MIN_LEVEL doubled, then N)."""
    sizes, s = [], MIN_LEVEL
    while s < n:
        sizes.append(s)
        s *= 2
    return sizes + [n]


def prefix_pools(key_perm, sorted_key_codes):
    """The prefix pools of every row: ``(pool_pos, pool_codes, level_offset, level_size)``.

    ``pool_pos`` / ``pool_codes`` (flat, int64 / uint64) hold, level after level, a (R, S_t)
    block: row r's keys with position below S_t in Z order. ``level_offset[t]`` is where level
    t's block starts, ``level_size[t]`` is S_t (both int64 device arrays).
    """
    perm = rt.device(key_perm, np.int64)
    codes = rt.device(sorted_key_codes, np.uint64)
    n = perm.shape[-1]
    rows = perm.size // n
    sizes = level_sizes(n)
    offsets = np.concatenate([[0], np.cumsum([rows * s for s in sizes])]).astype(np.int64)
    pool_pos = rt.empty(int(offsets[-1]), np.int64)
    pool_codes = rt.empty(int(offsets[-1]), np.uint64)
    for size, start in zip(sizes, offsets[:-1]):
        if size == n:  # the top level is the global order itself
            pool_pos[start:start + rows * n] = perm.ravel()
            pool_codes[start:start + rows * n] = codes.ravel()
            continue
        cums = cp.cumsum(perm.ravel() < size, dtype=np.int64)  # (R * N,)
        rt.launch(_fn("zeta_pool_level"), rows * n,
                  (perm, codes, cums, rt.i64(rows), rt.i64(n), rt.i64(size),
                   pool_pos[start:], pool_codes[start:]))
    return pool_pos, pool_codes, cp.asarray(offsets[:-1]), cp.asarray(np.array(sizes, np.int64))


def visit_order(order, rows: int, n: int):
    """The visiting order as a (R, N) int64 device array; position order when None. Checked
    as the specification checks it (every query once per row)."""
    if order is None:
        return cp.tile(cp.arange(n, dtype=np.int64), (rows, 1))
    arr = rt.device(order)
    if arr.size != rows * n or arr.shape[-1] != n:
        raise ValueError(f"order must have the leading dims of the queries and N = {n} "
                         f"positions; got shape {arr.shape}")
    if not (arr.dtype.kind in "iu"):
        raise TypeError(f"order must be an integer array; got dtype {arr.dtype}")
    arr = cp.ascontiguousarray(arr.reshape(rows, n).astype(np.int64, copy=False))
    # every index once per row: in range, and marking each index seen leaves none unseen (a
    # scatter, not a sort: cupy.sort along an axis is a comparison sort, slow at long N); the
    # three answers come back in one transfer
    if arr.size == 0:
        return arr
    seen = cp.zeros((rows, n), dtype=cp.bool_)
    seen[cp.arange(rows)[:, None], cp.clip(arr, 0, n - 1)] = True
    lo, hi, full = (int(x) for x in cp.stack([arr.min(), arr.max(),
                                               seen.all().astype(np.int64)]).get())
    if not (lo >= 0 and hi < n and full):
        raise ValueError("order must hold every query index 0 .. N-1 once in every row")
    return arr


def _pool_len(pool_len, n: int) -> np.ndarray:
    """pool_len checked as every backend checks it (a host array: it is N numbers)."""
    host = cp.asnumpy(pool_len) if isinstance(pool_len, cp.ndarray) else pool_len
    return check_pool_len(host, n)


def neighbour_window(q_codes, key_perm, sorted_key_codes, pool_len, width: int, *, order=None):
    """Each query's window of W keys around its place in its pool (CuPy twin, steps 1-3).

    Parameters and result as :func:`zeta_ref.stages.window.neighbour_window`; arrays may be NumPy or
    CuPy, the result is a CuPy int64 array (..., N, W).
    """
    qz = rt.device(q_codes, np.uint64)
    lead, n = qz.shape[:-1], qz.shape[-1]
    _check_n(n)
    rows = qz.size // n
    lengths = cp.asarray(_pool_len(pool_len, n))
    visit = visit_order(order, rows, n)
    width = int(width)
    out = rt.empty(lead + (n, width), np.int64)
    pool_pos, pool_codes, offsets, sizes = prefix_pools(key_perm, sorted_key_codes)
    rt.launch(_fn("zeta_window<long long>"), rows * n,
              (qz, lengths, visit, pool_pos, pool_codes, offsets, sizes, np.int32(sizes.size),
               rt.i64(rows), rt.i64(n), rt.i64(width), out))
    return out


def rerank(q, k, window_idx, k_top: int, score: str):
    """Keep the ``k_top`` keys of each window nearest to the query (CuPy twin, step 4).

    Parameters and result as :func:`zeta_ref.stages.window.rerank`; the result is a CuPy int64 array
    (..., N, k).
    """
    q = rt.device(q)
    k = rt.device(k, q.dtype)
    w = rt.device(window_idx, np.int64)
    lead, n, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    _check_n(n)
    rows = q.size // (n * d) if q.size else 0
    k_top = int(k_top)
    out = rt.empty(lead + (n, k_top), np.int64)
    heap = (rt.empty(rows * n * k_top, q.dtype), rt.empty(rows * n * k_top, np.int64),
            rt.empty(rows * n * k_top, np.int64))
    rt.launch(_fn(f"zeta_rerank<{rt.ctype_name(q.dtype)}>"), rows * n,
              (q, k, w, rt.i64(rows), rt.i64(n), np.int32(d), rt.i64(w.shape[-1]),
               rt.i64(k_top), np.int32(score == "softmax")) + heap + (out,))
    return out


def insertion_points(q_codes, key_perm, sorted_key_codes, pool_len):
    """Step 2, each query's insertion point p_i in its pool (CuPy twin).

    p_i counts the keys of positions [0, L_i) with a smaller code. [0, L_i) is a union of
    aligned blocks, one for each bit of L_i; for every bit l the keys of each block of 2^l
    positions are sorted by code (one stable sort of the global Z order by block), and each
    query adds a binary search in its block of that size (``window.cu``).

    Returns a CuPy int64 array (..., N).
    """
    qz = rt.device(q_codes, np.uint64)
    lead, n = qz.shape[:-1], qz.shape[-1]
    rows = qz.size // n
    lengths_host = _pool_len(pool_len, n)
    lengths = cp.asarray(lengths_host)
    perm = rt.device(key_perm, np.int64).reshape(rows, n)
    codes = rt.device(sorted_key_codes, np.uint64).reshape(rows, n)
    p = cp.zeros((rows, n), dtype=np.int64)
    row = cp.arange(rows, dtype=np.int64)[:, None]
    for level in range(max(int(n).bit_length(), 1)):
        if not np.any((lengths_host >> level) & 1):
            continue  # no pool has a block of this size
        if level == 0:  # blocks of one position: the codes in position order
            blocks = cp.empty_like(codes)
            blocks[row, perm] = codes
        else:  # the global Z order, stably re-sorted by (row, block): each block by code
            by_block = cp.argsort((row * n + (perm >> level)).ravel())
            blocks = codes.ravel()[by_block].reshape(rows, n)
        rt.launch(_fn("zeta_insertion_level"), rows * n,
                  (qz, lengths, cp.ascontiguousarray(blocks), rt.i64(rows), rt.i64(n),
                   np.int32(level), p))
    return p.reshape(lead + (n,))
