"""Numba twin of stage 5, the causal neighbour window and the re-rank (section 3.3; D4-D6, D9, D11).

Same signatures, output dtypes and answers as :func:`zeta_ref.stages.window.neighbour_window` and
:func:`zeta_ref.stages.window.rerank`. The specification reads the steps literally: for every distinct
pool length L it filters the sorted keys down to the pool (O(N) per pool, O(N^2) for
"inclusive"). The twin gets the same window in about O(N sqrt(N) / 32 + N (log N + W)):

Step 1, blocked pools. Positions are cut into blocks of ``B`` positions. The queries whose pool
length L lies in ``(c B, (c + 1) B]`` share one *block pool*: the sorted keys whose position is
below ``(c + 1) B``, filtered from the global Z order (stable, so code ties stay in position
order, D10). The block pool holds the query's true pool (positions < L) plus fewer than B
future keys, which the walk of step 3 skips.

Step 2, binary search. ``ip`` = number of block-pool keys with a code below the query's
(side "left"). The visible keys before ``ip`` are exactly the pool keys with a smaller code, so
the visible key at or after ``ip`` has pool rank p, the specification's insertion point. The
queries of a block are visited in the order the caller gives (the composer: Z order), and each
search starts from the previous query's answer and gallops outward, so it reads the part of
the block pool that the previous query left in cache. The answer does not depend on the order.

Step 3, window (D6, D11, D9). Walk left from ``ip`` collecting up to W//2 visible keys (ranks
p-1, p-2, ...) and right collecting the rest (ranks p, p+1, ...), skipping positions >= L.
If the left side runs out (p < W//2) the right side takes more; if the right side runs out the
left walk goes on: that is the specification's slide ``start = clip(p - W//2, 0, n_pool - W)``
without knowing p. Fewer than W visible keys leave -1 in the last slots.

Cost: building a block pool is O(N); with about sqrt(N / 16) blocks that is O(N^1.5 / 4) of
cheap sequential work. A walk skips at most B - 1 future keys (at most B/2 on average over a
block when codes are adversarial; about W B / L for random codes), and nothing in "none" mode.
Memory: two (N,) arrays per block being processed, never N x N.

Re-rank (step 4): the nearness is accumulated coordinate by coordinate in the input dtype, in
the specification's order, so it is bit-identical. The specification sorts the whole window
(``lexsort``, O(W log W)); the twin keeps only the k best slots seen so far in a max-heap whose
root is the worst of them, so each further slot costs one comparison, or O(log k) when it
displaces the root: O(W (d_k + log k)) per query. The order is the specification's, made total:
(nearness, position, slot), so ties go to the lower position and empty slots (inf, int64 max)
rank last, the lower slot first. A second pass writes the slots that rank at or before the root
(exactly k of them) in window order.

Inputs are checked by the specification's own checks (``check_pool_len``, ``check_k_top`` in
:mod:`zeta_ref.stages.window`), so both backends reject the same arguments with the same error.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .._checks import visit_order
from ._jit import parallel_njit
from .host_memory import empty_output
from ..stages.window import check_k_top, check_pool_len


def block_size(n: int, width: int) -> int:
    """B, the positions per block pool: about 4 sqrt(N), never below W (see module docstring)."""
    return max(int(width), 4 * int(math.isqrt(max(int(n), 1))), 1)


@nb.njit(cache=True, inline="always")
def _search_left_from(codes, m, x, guess):
    """The first index of ``codes[:m]`` (sorted) whose code is >= x: NumPy's
    ``searchsorted(codes[:m], x, side="left")``. It gallops out from ``guess`` (steps 1, 2, 4,
    ... to bracket the answer), then bisects the bracket: O(log distance) reads, all near the
    guess, when successive queries have nearby codes; any guess in [0, m] gives the same answer.
    """
    if guess < m and codes[guess] < x:  # the answer is above the guess
        lo = guess + 1
        hi = lo
        step = 1
        while hi < m and codes[hi] < x:
            lo = hi + 1
            hi = lo + step
            step *= 2
        hi = min(hi, m)
    else:  # the answer is at or below the guess
        hi = guess
        lo = hi
        step = 1
        while lo > 0 and codes[lo - 1] >= x:
            hi = lo - 1
            lo = hi - step
            step *= 2
        lo = max(lo, 0)
    # now codes[lo - 1] < x (or lo = 0) and codes[hi] >= x (or hi = m): bisect [lo, hi)
    while lo < hi:
        mid = (lo + hi) >> 1
        if codes[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, inline="always")
def _group_by_block(pool_len, order, block, n_blocks, out):
    """The queries of each block pool, grouped by a counting sort on the block id: the queries
    of block c in row r are ``queries[r, first[c]:first[c + 1]]``, in visiting order. A query
    whose pool is empty gets its empty window (all -1) here. Returns (first, queries)."""
    r_count, n = order.shape
    block_of = np.empty(n, dtype=np.int64)  # (N,), -1 for an empty pool
    first = np.zeros(n_blocks + 1, dtype=np.int64)
    for i in range(n):
        L = pool_len[i]
        block_of[i] = (L - 1) // block if L > 0 else -1
        if L > 0:
            first[block_of[i] + 1] += 1
        else:  # an empty pool: an empty window
            out[:, i, :] = -1
    for c in range(n_blocks):
        first[c + 1] += first[c]
    queries = np.empty((r_count, first[n_blocks]), dtype=np.int64)  # grouped by block
    for r in range(r_count):
        fill = first[:n_blocks].copy()
        for t in range(n):  # in visiting order, which each block's list keeps
            i = order[r, t]
            c = block_of[i]
            if c >= 0:
                queries[r, fill[c]] = i
                fill[c] += 1
    return first, queries


@nb.njit(cache=True, inline="always")
def _block_pool(perm_r, codes_r, limit, pool_pos, pool_codes):
    """Step 1: the block pool of one row, in Z order: the sorted keys with position < limit,
    into ``pool_pos`` and ``pool_codes`` (each of length limit + 1: the branch-free filter
    writes one slot past the last key it keeps). Returns m, the number of keys kept."""
    m = 0
    for s in range(perm_r.shape[0]):  # branch-free: every key is written, the visible kept
        j = perm_r[s]
        pool_pos[m] = j
        pool_codes[m] = codes_r[s]
        m += j < limit
    return m


@nb.njit(cache=True, inline="always")
def _walk_left(pool_pos, a, L, stop, left, n_left):
    """Step 3, the left walk: from block-pool index ``a`` down, collect the visible keys
    (position < L) into ``left[n_left:]``, nearest first, until ``stop`` are held or the pool
    ends. Returns (n_left, a): how many are held, and where the walk would go on."""
    while n_left < stop and a >= 0:
        if pool_pos[a] < L:
            left[n_left] = pool_pos[a]
            n_left += 1
        a -= 1
    return n_left, a


@nb.njit(cache=True, inline="always")
def _walk_right(pool_pos, m, b, L, want, row, offset):
    """Step 3, the right walk: from block-pool index ``b`` up, write up to ``want`` visible keys
    into ``row[offset:]``, in Z order. Returns how many it wrote."""
    n_right = 0
    while n_right < want and b < m:
        if pool_pos[b] < L:
            row[offset + n_right] = pool_pos[b]
            n_right += 1
        b += 1
    return n_right


@nb.njit(cache=True, inline="always")
def _window_at(pool_pos, m, ip, L, width, left, row):
    """Step 3 for one query: W//2 visible keys below its insertion point ``ip``, the rest at or
    above, slid inside the pool (D6, D11); -1 in the slots left over (D9). Writes ``row``
    (W,) in Z order; ``left`` (W,) is scratch."""
    n_left, a = _walk_left(pool_pos, ip - 1, L, width // 2, left, 0)
    want_right = width - n_left  # more on the right when the left ran out (D11)
    n_right = _walk_right(pool_pos, m, ip, L, want_right, row, n_left)  # after the left part
    if n_right < want_right:  # the right ran out: the left walk goes on (D11)
        n_left, a = _walk_left(pool_pos, a, L, width - n_right, left, n_left)
        # the right part moves up behind the longer left part
        shift = n_left - (width - want_right)
        if shift > 0:
            for s in range(n_right - 1, -1, -1):
                row[width - want_right + s + shift] = row[width - want_right + s]
    # the left part, nearest first in `left`, goes in Z order into the first slots
    for s in range(n_left):
        row[s] = left[n_left - 1 - s]
    for s in range(n_left + n_right, width):
        row[s] = -1


@parallel_njit
def _window_kernel(q_codes, key_perm, sorted_codes, pool_len, order, width, block, out):
    """q_codes, key_perm, sorted_codes, order: (R, N); pool_len (N,) in [0, N]; writes every
    row of ``out``, int64 (R, N, W). The queries of a block are visited in ``order``."""
    r_count, n = q_codes.shape
    n_blocks = (n + block - 1) // block
    first, queries = _group_by_block(pool_len, order, block, n_blocks, out)
    for task in nb.prange(r_count * n_blocks):
        r = task // n_blocks
        c = n_blocks - 1 - task % n_blocks  # the larger pools first: better load balance
        if first[c + 1] == first[c]:
            continue
        # step 1: the block pool, in Z order: sorted keys with position < limit
        limit = min((c + 1) * block, n)
        pool_pos = np.empty(limit + 1, dtype=np.int64)  # (limit + 1,)
        pool_codes = np.empty(limit + 1, dtype=np.uint64)  # (limit + 1,)
        m = _block_pool(key_perm[r], sorted_codes[r], limit, pool_pos, pool_codes)
        left = np.empty(width, dtype=np.int64)  # visible keys below the insertion point
        ip = m // 2
        for t in range(first[c], first[c + 1]):
            i = queries[r, t]
            # step 2: binary search, side "left": first block-pool key with code >= the
            # query's, started from the previous query's answer (in Z order the next is near)
            ip = _search_left_from(pool_codes, m, q_codes[r, i], ip)  # ip <= m
            # step 3: the window around ip
            _window_at(pool_pos, m, ip, pool_len[i], width, left, out[r, i])


def neighbour_window(q_codes, key_perm, sorted_key_codes, pool_len, width: int, *,
                     order=None, block: int | None = None) -> np.ndarray:
    """Each query's window of W keys around its place in its pool (Numba twin, steps 1-3).

    Parameters
    ----------
    q_codes : uint64 array (..., N)
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
    pool_len : int64 array (N,), non-decreasing, values in [0, N]
        L_i from :func:`zeta_ref.stages.window.pool_lengths`; rejected as the specification rejects
        it (:func:`zeta_ref.stages.window.check_pool_len`).
    width : int
        W, the window width.
    order : int64 array (..., N), optional
        The order in which to visit the queries of a block, a permutation of 0 .. N-1 per row;
        position order when omitted. It changes the speed, never the result. In Z order (what
        the composer passes) the binary searches and walks of successive queries land in the
        same part of the block pool, which stays in cache.
    block : int, optional
        B, positions per block pool; :func:`block_size` when omitted. Any B >= 1 gives the
        same answer (the tests use tiny ones); it only moves the cost between steps 1 and 3.

    Returns
    -------
    int64 array (..., N, W): key positions, -1 for empty slots, listed in Z order.
    """
    q_codes = np.asarray(q_codes)
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    n_rows = int(np.prod(lead, dtype=np.int64))
    qz = np.ascontiguousarray(q_codes.reshape(n_rows, n), dtype=np.uint64)  # (R, N)
    perm = np.ascontiguousarray(np.asarray(key_perm).reshape(n_rows, n), dtype=np.int64)  # (R, N)
    kz = np.ascontiguousarray(np.asarray(sorted_key_codes).reshape(n_rows, n),
                              dtype=np.uint64)  # (R, N)
    lengths = check_pool_len(pool_len, n)  # (N,) int64, the specification's check
    width = int(width)
    visit = visit_order(order, lead, n)  # (R, N)
    out = empty_output((n_rows, n, width), np.int64)  # (R, N, W)
    _window_kernel(qz, perm, kz, lengths, visit, np.int64(width),
                   np.int64(block_size(n, width) if block is None else block), out)
    return out.reshape(lead + (n, width))


@nb.njit(cache=True, inline="always")
def _ranks_before(near, pos, a, b):
    """Slot ``a`` ranks before slot ``b``: nearer, or as near and a lower position, or (two empty
    slots, both (inf, int64 max)) the lower slot. A total order on the slots, and the same one
    as the specification's stable ``lexsort`` by (nearness, position)."""
    if near[a] != near[b]:
        return near[a] < near[b]
    if pos[a] != pos[b]:
        return pos[a] < pos[b]
    return a < b


@parallel_njit
def _rerank_kernel(q, k, window_idx, k_top, softmax, out):
    """q, k: (R, N, d); window_idx (R, N, W); 1 <= k_top <= W; writes int64 (R, N, k_top)
    into ``out``. One query per iteration; O(W d + W log k) time, O(W) scratch."""
    r_count, n, d = q.shape
    width = window_idx.shape[2]
    big = np.iinfo(np.int64).max
    for task in nb.prange(r_count * n):
        r = task // n
        i = task % n
        near = np.empty(width, dtype=q.dtype)  # (W,)
        pos = np.empty(width, dtype=np.int64)  # (W,)
        heap = np.empty(k_top, dtype=np.int64)  # (k,) slots; the root ranks last of them
        size = 0
        for s in range(width):
            # pass 1a: nearness, coordinate by coordinate in the input dtype (window.nearness)
            j = window_idx[r, i, s]
            if j < 0:  # an empty slot ranks after every key
                near[s] = np.inf
                pos[s] = big
            else:
                acc = q.dtype.type(0)
                for e in range(d):
                    if softmax:
                        acc -= q[r, i, e] * k[r, j, e]
                    else:
                        diff = q[r, i, e] - k[r, j, e]
                        acc += diff * diff
                near[s] = acc
                pos[s] = j
            # pass 1b: keep the k best slots seen so far in a max-heap (root = the worst kept)
            if size < k_top:  # not full yet: push s and sift it up
                t = size
                heap[t] = s
                size += 1
                while t > 0:
                    up = (t - 1) >> 1
                    if not _ranks_before(near, pos, heap[up], heap[t]):
                        break
                    heap[up], heap[t] = heap[t], heap[up]
                    t = up
            elif _ranks_before(near, pos, s, heap[0]):  # s beats the worst kept: replace it
                heap[0] = s
                t = 0
                while True:  # sift down towards the child that ranks later
                    c = 2 * t + 1
                    if c >= size:
                        break
                    if c + 1 < size and _ranks_before(near, pos, heap[c], heap[c + 1]):
                        c += 1
                    if not _ranks_before(near, pos, heap[t], heap[c]):
                        break
                    heap[t], heap[c] = heap[c], heap[t]
                    t = c
        # pass 2: the kept slots are exactly those ranking at or before the root (the k-th
        # best, since the order is total); write them out in window order
        worst = heap[0]
        m = 0
        for s in range(width):
            if not _ranks_before(near, pos, worst, s):
                out[r, i, m] = window_idx[r, i, s]
                m += 1


def rerank(q, k, window_idx, k_top: int, score: str) -> np.ndarray:
    """Keep the ``k_top`` keys of each window nearest to the query (Numba twin, step 4).

    Parameters
    ----------
    q, k : float arrays (..., N, d_k)
    window_idx : int64 array (..., N, W)
    k_top : int
        k, 1 <= k <= W (:func:`zeta_ref.stages.window.check_k_top`).
    score : str
        "softmax" ranks by -<q, k>, the other scores by ||q - k||^2.

    Returns
    -------
    int64 array (..., N, k): the kept positions in window order, then -1 for empty slots.
    """
    q = np.asarray(q)
    lead, n, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    n_rows = int(np.prod(lead, dtype=np.int64))
    width = window_idx.shape[-1]
    k_top = check_k_top(k_top, width)  # the specification's check: 1 <= k <= W
    qr = np.ascontiguousarray(q.reshape(n_rows, n, d))  # (R, N, d_k)
    kr = np.ascontiguousarray(np.asarray(k).reshape(n_rows, n, d))  # (R, N, d_k)
    wr = np.ascontiguousarray(np.asarray(window_idx).reshape(n_rows, n, width),
                              dtype=np.int64)  # (R, N, W)
    out = empty_output((n_rows, n, k_top), np.int64)  # (R, N, k)
    _rerank_kernel(qr, kr, wr, np.int64(k_top), score == "softmax", out)
    return out.reshape(lead + (n, k_top))


@parallel_njit
def _insertion_kernel(q_codes, key_perm, sorted_codes, pool_len, out):
    """q_codes, key_perm, sorted_codes: (R, N); pool_len (N,) non-decreasing; writes int64
    (R, N) into ``out``."""
    r_count, n = q_codes.shape
    for r in nb.prange(r_count):
        # rank_of[j]: where key j stands in Z order
        rank_of = np.empty(n, dtype=np.int64)  # (N,)
        for s in range(n):
            rank_of[key_perm[r, s]] = s
        # a Fenwick tree over Z ranks counts the keys of the pool inserted so far
        tree = np.zeros(n + 1, dtype=np.int64)  # (N + 1,)
        inserted = 0
        for i in range(n):  # pools only grow with i: insert keys 0 .. L_i - 1, then count
            while inserted < pool_len[i]:
                t = rank_of[inserted] + 1
                while t <= n:
                    tree[t] += 1
                    t += t & -t
                inserted += 1
            # keys with a smaller code are exactly those ranked below the query's global
            # insertion rank g (binary search in all sorted codes, side "left")
            lo = 0
            hi = n
            qz = q_codes[r, i]
            while lo < hi:
                mid = (lo + hi) >> 1
                if sorted_codes[r, mid] < qz:
                    lo = mid + 1
                else:
                    hi = mid
            # step 2: p = how many pool keys have rank < g
            count = 0
            t = lo
            while t > 0:
                count += tree[t]
                t -= t & -t
            out[r, i] = count


def insertion_points(q_codes, key_perm, sorted_key_codes, pool_len) -> np.ndarray:
    """Step 2, each query's insertion point p_i in its pool (Numba twin).

    The specification filters each pool and binary-searches it. The twin reaches the same
    count in O(N log N) per row: keys enter a Fenwick tree over their Z ranks as the pools grow
    with the query position, and p_i is the number of pool keys ranked below the query's place
    among all keys.

    Parameters
    ----------
    q_codes : uint64 array (..., N)
    key_perm, sorted_key_codes : int64 array (..., N), uint64 array (..., N)
    pool_len : int64 array (N,), non-decreasing, values in [0, N]
        Rejected as the specification rejects it (:func:`zeta_ref.stages.window.check_pool_len`).

    Returns
    -------
    int64 array (..., N): p_i; 0 for an empty pool.
    """
    q_codes = np.asarray(q_codes)
    lead, n = q_codes.shape[:-1], q_codes.shape[-1]
    n_rows = int(np.prod(lead, dtype=np.int64))
    qz = np.ascontiguousarray(q_codes.reshape(n_rows, n), dtype=np.uint64)  # (R, N)
    perm = np.ascontiguousarray(np.asarray(key_perm).reshape(n_rows, n), dtype=np.int64)
    kz = np.ascontiguousarray(np.asarray(sorted_key_codes).reshape(n_rows, n), dtype=np.uint64)
    lengths = check_pool_len(pool_len, n)  # (N,) int64, the specification's check
    out = empty_output((n_rows, n), np.int64)  # (R, N)
    _insertion_kernel(qz, perm, kz, lengths, out)
    return out.reshape(lead + (n,))
