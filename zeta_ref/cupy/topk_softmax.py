"""CuPy twin of stage 6: the mean term and the top-k softmax (section 3.4, Eq. 6; D7, D8, D9).

Same signatures and output dtypes as :mod:`zeta_ref.stages.topk_softmax`; float results agree with
the specification within :mod:`zeta_ref.tolerances` (the sums run in another order). The
kernels are in ``topk_softmax.cu``.

The mean term is a blocked scan in double precision: block sums, a scan of the block sums,
then the running sum through each block (never ``cupy.cumsum`` over (R, N, d), which alone
would cost more than the attention). ``topk_attention`` takes the fast kernel (16 threads per
query, float4 loads, int32 candidates) for float32 values whose width is a multiple of 4 up to
256, and the plain one-thread-per-query kernel otherwise; both read the candidates, keys and
values in the visiting order given (Z order from the composer), which changes no result.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from ..config import SCORES
from ..stages.topk_softmax import EXP_SCORES, score_constant
from . import _runtime as rt
from .window import visit_order

#: The score ids that topk_softmax.cu's ``raw_score`` branches on.
_SCORE_IDS = {"cauchy": 0, "softmax": 1, "neg_euclidean": 2, "inv_euclidean": 3}
_NAMES = ("zeta_block_sums<float, 1>", "zeta_block_sums<float, 4>",
          "zeta_block_sums<double, 1>", "zeta_block_sums<double, 2>", "zeta_scan_blocks",
          "zeta_narrow_candidates",
          "zeta_means_write<float, 1>", "zeta_means_write<float, 4>",
          "zeta_means_write<double, 1>", "zeta_means_write<double, 2>",
          "zeta_topk_plain<float, long long>", "zeta_topk_plain<double, long long>",
          "zeta_topk_plain<float, int>", "zeta_topk_plain<double, int>",
          "zeta_topk_narrow<8, 3, 1, 8, 0>", "zeta_topk_narrow<8, 3, 1, 8, 3>",
          "zeta_topk_fast<1, 1>", "zeta_topk_fast<1, 2>", "zeta_topk_fast<1, 4>",
          "zeta_topk_fast<2, 1>", "zeta_topk_fast<2, 2>", "zeta_topk_fast<2, 4>",
          "zeta_topk_fast<3, 1>", "zeta_topk_fast<3, 2>", "zeta_topk_fast<3, 4>",
          "zeta_topk_fast<4, 1>", "zeta_topk_fast<4, 2>", "zeta_topk_fast<4, 4>",
          "zeta_topk_fast<8, 1>", "zeta_topk_fast<8, 2>", "zeta_topk_fast<8, 4>")
#: Threads per block of the fast kernel (ZETA_FAST_THREADS of the source): 16 queries a block.
FAST_THREADS = 256
#: Runs of 16 neighbouring queries (in the visiting order) a block of the fast kernel takes one
#: after the other, at least.
FAST_ROUNDS = 4
#: Blocks of a launch at most (the grid's limit is 2^31 - 1; this keeps a launch's bookkeeping
#: small); a block takes more runs where the queries need it.
MAX_BLOCKS = 1 << 20
#: The mean term's kernels carry 16 bytes of a value row a thread (False: one column).
MEANS_WIDE = True
#: The default instance (k + 1 in 33 .. 48 slots, d_v <= 64) at 8 threads a query
#: (zeta_topk_narrow); False: at 16 (zeta_topk_fast), the same bits (for the tests and the A/B).
NARROW = True
#: The query width d_k for which the narrow attention kernel has an instance compiled for it
#: (its step 1 loads every slot's coordinates before scoring any; the same bits); other widths
#: take its general instance. 0: the general instance for every width (for the A/B).
NARROW_DK = 3
#: The fast kernel keeps a row of up to this many floats per 16 threads in registers ...
FAST_MAX_DV = 256
#: ... and the scores of up to this many slots (k + the mean term).
FAST_MAX_SLOTS = 128


def _fn(name):
    return rt.kernel("topk_softmax", name, _NAMES)


def scan_block(n: int) -> int:
    """Positions per block of the means' scan: about sqrt(N) / 4, at least 64.

    Each thread of the first and last kernels walks one block of one column, a chain of
    dependent additions; the scan in between walks the block sums, 32 at a time. Short blocks
    keep both chains short.
    """
    root_bits = (max(int(n), 1).bit_length() + 1) // 2  # about log2 sqrt(N)
    return max(64, 1 << max(root_bits - 2, 0))


def history_means(k, v, causal: str, *, largest=None, stream=None):
    """The mean key and mean value each query may add as an extra candidate (CuPy twin, D8).

    Keys and values go through the same three kernels together (``topk_softmax.cu``).
    Returns CuPy arrays (..., N, d_k) and (..., N, d_v) in the input dtype. ``largest``, a
    one-element uint64 device array (the bits of a float64, no larger than ``max |v|``),
    also receives ``max |v|``, found by the first kernel as it reads v (the fused call's check).

    With ``stream`` (a ``cupy.cuda.Stream``) the call queues nothing yet and returns
    ``(mean_k, mean_v, start, join)``: ``start()`` queues the kernels on that stream, after
    everything queued on the current one before this call (not what was queued between the
    two, so the caller can queue its own work first); ``join()`` makes the current stream
    wait for everything queued on ``stream`` so far. Every array, the scratch ones included,
    is allocated here, on the current stream, and kept until ``join``: memory the current
    stream frees later (a sort's scratch space) can never be one of them, and none of them
    goes back to the pool while the kernels may still use it.
    """
    rt.check_width(k.shape[-1], v.shape[-1])  # before any copy to the device
    k = rt.device(k)
    v = rt.device(v, k.dtype)
    n, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    rows = k.size // (n * d_k)
    d = d_k + d_v
    block = scan_block(n)
    n_blocks = -(-n // block)
    t = rt.ctype_name(k.dtype)
    sums = rt.empty((rows, n_blocks, d), np.float64)
    totals = rt.empty((rows, d), np.float64)
    mean_k, mean_v = rt.empty(k.shape, k.dtype), rt.empty(v.shape, v.dtype)
    # a thread carries 16 bytes of a value row (4 floats, 2 doubles) where the rows allow it:
    # the same sums, column by column, with more bytes in flight a thread
    wide = 16 // v.itemsize if MEANS_WIDE else 1
    if d_v % wide or v.data.ptr % 16 or mean_v.data.ptr % 16:
        wide = 1
    tasks = rows * n_blocks * (d_k + d_v // wide)
    track = largest is not None  # else the kernel writes nothing there: any pointer will do

    def queue():  # the three kernels, on the current stream
        rt.launch(_fn(f"zeta_block_sums<{t}, {wide}>"), tasks,
                  (k, v, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(d_v), rt.i64(block),
                   sums, np.int32(track), largest if track else totals))
        rt.launch(_fn("zeta_scan_blocks"), 32 * rows * d,
                  (sums, rt.i64(rows), rt.i64(n_blocks), np.int32(d), totals))
        rt.launch(_fn(f"zeta_means_write<{t}, {wide}>"), tasks,
                  (k, v, sums, totals, np.int32(causal == "none"), rt.i64(rows), rt.i64(n),
                   np.int32(d_k), np.int32(d_v), rt.i64(block), mean_k, mean_v))

    if stream is None:
        queue()
        return mean_k, mean_v
    fork = rt.event_now()  # the inputs as queued so far (and any copy above)
    kept = [k, v, sums, totals, mean_k, mean_v, largest]

    def start():
        stream.wait_event(fork)
        with stream:
            queue()

    def join():
        cp.cuda.get_current_stream().wait_event(rt.event_now(stream))
        kept.clear()  # freed from here on, after the wait: in the current stream's order

    return mean_k, mean_v, start, join


def topk_attention(q, k, v, candidates, score: str = "cauchy", gamma: float = 0.5,
                   mean_k=None, mean_v=None, *, order=None, with_weights: bool = True,
                   kernel: str = "auto"):
    """Weights over each query's candidates and the weighted sum of their values (CuPy twin).

    Parameters and results as :func:`zeta_ref.stages.topk_softmax.topk_attention` (CuPy arrays out);
    ``kernel`` ("auto", "fast" or "plain") picks the kernel, for the tests.
    """
    if score not in _SCORE_IDS:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    rt.check_width(q.shape[-1], v.shape[-1])  # before any copy to the device
    q = rt.device(q)
    dtype = q.dtype
    k, v = rt.device(k, dtype), rt.device(v, dtype)
    cand = rt.device(candidates)
    if cand.dtype not in (np.int32, np.int64):
        cand = cand.astype(np.int64)
    n, d_k = q.shape[-2], q.shape[-1]
    rows = q.size // (n * d_k)
    with_mean = mean_k is not None
    mk = rt.device(mean_k, dtype) if with_mean else None
    mv = rt.device(mean_v, dtype) if with_mean else None
    visit = visit_order(order, rows, n)
    return launch_topk(q, k, v, cand, score, gamma, mk, mv, visit, ALL_BITS, with_weights,
                       kernel)


def narrow_candidates(cand, n: int):
    """``cand`` as int32 for the fast kernels (``n < 2**31``): int32 as it is; int64 through
    ``zeta_narrow_candidates``, which keeps 0 .. n - 1 and makes anything else -1 (empty), so
    that no value wraps onto a real key."""
    if cand.dtype == np.int32:
        return cand
    out = rt.empty(cand.shape, np.int32)
    rt.launch(_fn("zeta_narrow_candidates"), cand.size, (cand, rt.i64(cand.size), rt.i64(n), out))
    return out


#: A visiting mask that keeps a whole int64 position.
ALL_BITS = np.uint64(2**64 - 1)


def launch_topk(q, k, v, cand, score, gamma, mean_k, mean_v, visit, visit_mask, with_weights,
                kernel="auto"):
    """The launch behind :func:`topk_attention`, for inputs already on the device, contiguous
    and checked. Query t of row r is ``visit[r, t] & visit_mask``: an order of positions (mask
    ALL_BITS), or the fast path's sorted packed query keys (mask: the position bits)."""
    dtype = q.dtype
    lead, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    d_v, n_slots = v.shape[-1], cand.shape[-1]
    rows = q.size // (n * d_k)
    with_mean = mean_k is not None
    mk = mean_k if with_mean else rt.empty((1, d_k), dtype)
    mv = mean_v if with_mean else rt.empty((1, d_v), dtype)
    out = rt.empty(lead + (n, d_v), dtype)
    weights = rt.empty(lead + (n, n_slots) if with_weights else (1,), dtype)
    mean_weight = rt.empty(lead + (n,), dtype)
    fast_ok = (dtype == np.float32 and d_v % 4 == 0 and d_v <= FAST_MAX_DV
               and n_slots + 1 <= FAST_MAX_SLOTS and n <= np.iinfo(np.int32).max
               and v.data.ptr % 16 == 0 and mv.data.ptr % 16 == 0)  # float4 loads
    if kernel == "fast" and not fast_ok:
        raise ValueError("the fast kernel takes float32 values of width 4, 8, ... 256 and "
                         "k + 1 <= 128 slots")
    use_fast = fast_ok if kernel == "auto" else kernel == "fast"
    ctype = np.float32 if dtype == np.float32 else np.float64
    # the constants of topk_softmax.cu's raw_score, from the one definition of the scores
    # (zeta_ref.stages.topk_softmax): `add` of "cauchy" and "inv_euclidean", `root_d` of
    # "softmax"; each score reads only its own
    c = score_constant(score, gamma, d_k)
    add, root_d = (ctype(0), ctype(c)) if score in EXP_SCORES else (ctype(c), ctype(1))
    if use_fast:  # int32 candidates (the fused pass's already are)
        cand = narrow_candidates(cand, n)
    index = "int" if cand.dtype == np.int32 else "long long"
    common = (q, k, v, cand, mk, mv, np.int32(with_mean), visit, np.uint64(visit_mask),
              rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(d_v))
    tail = (np.int32(_SCORE_IDS[score]), add, root_d, out, weights,
            np.int32(with_weights), mean_weight)
    if use_fast:
        per_lane = next(u for u in (1, 2, 3, 4, 8) if 16 * u >= n_slots + 1)
        stripes = next(x for x in (1, 2, 4) if 64 * x >= d_v)
        per_run = FAST_THREADS // 16  # queries a block takes at once
        runs = max(FAST_ROUNDS, -(-rows * n // (per_run * MAX_BLOCKS)))  # runs a block takes
        name = f"zeta_topk_fast<{per_lane}, {stripes}>"
        if NARROW and stripes == 1 and per_lane == 3:  # 8 threads a query: the same bits,
            # faster (the instance checked and timed on the GPU: k + 1 in 33 .. 48 slots,
            # d_v <= 64)
            per_run, runs = 2 * per_run, max(1, runs // 2)  # the same queries a block
            name = (f"zeta_topk_narrow<8, {per_lane}, 1, 8, "
                    f"{NARROW_DK if d_k == NARROW_DK else 0}>")
        blocks = max(1, -(-rows * n // (per_run * runs)))
        _fn(name)((blocks,), (FAST_THREADS,),
                  common + (np.int32(n_slots),) + tail + (np.int32(runs),))
    else:
        rt.launch(_fn(f"zeta_topk_plain<{rt.ctype_name(dtype)}, {index}>"), rows * n,
                  common + (rt.i64(n_slots),) + tail)
    return out, (weights if with_weights else None), mean_weight
