"""The fast forward pass on the GPU: stages 2 to 6 with nothing materialised that the output
does not need (``zeta_attention(..., backend="cupy")`` without intermediates).

Per call, for all (batch, head) rows at once, with no synchronisation with the host:

1. ``zeta_fused_keys``: queries and keys quantised, interleaved and packed with their row,
   kind (key or query) and position into uint64 sort entries, one kernel (stages 2, 3;
   ``fused.cu``).
2. the mean term's blocked scan, three kernels for keys and values together (D8). It needs
   nothing of the sort. For small inputs it comes before the sort on the current stream, so
   that the GPU has this work while the host prepares the sort (``cupy.sort`` spends some
   0.1 ms of the host's time before its first kernel runs); for large ones
   (:data:`MEANS_STREAM_MIN`) it runs on a second stream beside steps 3, 4 and 5, queued
   just after the sort. Its first kernel also finds ``max |v|`` for the call's checks of the
   values (``largest``), which would otherwise read v once more (at 16 x 8 x 65536, 2 GiB
   and 0.48 ms).
3. one radix sort of all 2 R N entries (``cupy.sort``'s, in place): every row's keys and
   queries together in Z order, each query just before the keys of its own code (stage 4).
4. the prefix pools, three kernels for all levels of all rows; the same scan counts, for each
   query, the keys of its own pool before it: its place in that pool, which the binary search
   of the stage path finds, and lists every row's queries in Z order, the order the next steps
   visit them in.
5. ``zeta_fused_window_group``: every query's window from its place, 8 threads a query, each
   step of the walk reading 8 neighbouring pool entries at once; with W > k,
   ``zeta_fused_window``, a thread a query keeping the k nearest as it walks. Either writes
   int32 candidates (R, N, k), no (N, W) array (stage 5).
6. the attention kernel, 16 threads per query (8 for the default k = 32 and d_v <= 64),
   queries in Z order (stage 6).

It computes what the stage-by-stage path computes: the same candidates, bit for bit, and the
same outputs within the tolerances (tests/test_cupy.py checks both); the visiting order
changes no result. When a row, a code and a position do not fit in 64 bits together, it runs
the stage functions instead.
"""

from __future__ import annotations

import contextlib

import numpy as np

import cupy as cp

from ..config import ZetaConfig
from . import _runtime as rt
from .quantize import _squash_args
from .topk_softmax import history_means, launch_topk
from .window import _check_n

#: The stages as the benchmark times them (``marks``).
STAGE_NAMES = ("codes", "means", "sort", "pools", "window", "attention")
#: log2 of S_0, the smallest prefix pool (window.cu); the tile of the level kernels.
S0_BITS = 8
TILE = 1024
#: The largest y of a CUDA grid; the level kernels' grid has a y per row, up to this many.
MAX_GRID_Y = 65535
_CAUSAL_IDS = {"inclusive": 0, "strict": 1, "none": 2}
_NAMES = ("zeta_fused_keys<float>", "zeta_fused_keys<double>", "zeta_level_counts",
          "zeta_level_offsets", "zeta_level_scatter", "zeta_fused_window<float, 0>",
          "zeta_fused_window<float, 1>", "zeta_fused_window<double, 0>",
          "zeta_fused_window<double, 1>") + tuple(
    f"zeta_fused_window_group<{lanes}, {ix}>" for lanes in (8, 16, 32)
    for ix in ("int", "long long"))
#: Threads a query of the window kernel without a re-rank (8, 16 or 32; 0: one thread).
WINDOW_LANES = 8
#: The window kernel's walks count in int (fewer 64-bit operations) where every pool index
#: and a walk's step past a pool's end stay below 2^31, as for N <= WINDOW_INT_MAX_N; False:
#: in long long always (for the tests and the A/B: the same candidates).
WINDOW_INT = True
WINDOW_INT_MAX_N = 2**31 - 64
#: The mean term runs on a second stream (rt.side_stream), beside the sort, the pools and the
#: window, which do not need it, and the attention waits for it (the checks' passes over q
#: and k follow it there, beside the attention): its kernels, bound by memory, share the GPU
#: with theirs; from this many rows x N (B·H·N) up, where the GPU has work for both. Below
#: it, and with ``marks`` (whose stage times need it), all on the current stream, one stage
#: after another: the events and the wait cost more than the overlap gives
#: (docs/benchmarks.md). 0: always; a larger number than any input: never. The same kernels
#: either way: the same bits.
MEANS_STREAM_MIN = 1 << 19


def _fn(name):
    return rt.kernel("fused", name, _NAMES)


def level_count(n: int) -> int:
    """T, the number of prefix pools below the top one (sizes S_0, 2 S_0, ... below N)."""
    n_levels = 0
    while (1 << (S0_BITS + n_levels)) < n:
        n_levels += 1
    return n_levels


def packing(rows: int, n: int, code_bits: int):
    """(pos_bits, fits): the position's bits, and whether row, code, kind and position fit 64."""
    pos_bits = (n - 1).bit_length()
    row_bits = (rows - 1).bit_length()
    return pos_bits, row_bits + code_bits + 1 + pos_bits <= 64


def prefix_levels(sorted_entries, rows: int, n: int, code_bits: int, pos_bits: int,
                  causal, chunk):
    """The prefix pools and the queries' places, from the sorted entries: (levels, T, queries,
    places).

    Level t < T holds R rows of S_t = S_0 2^t keys and begins where the levels below it end,
    at R S_0 (2^t - 1) (fused.cu's ``level_start``: no table of offsets is copied to the GPU);
    the top level T, R rows of all N keys, follows. ``queries`` (R N uint64) lists each row's
    query entries in Z order; ``places`` (R N int32) the place of each in its own pool."""
    n_levels = level_count(n)
    top = rows * ((1 << (S0_BITS + n_levels)) - (1 << S0_BITS))  # where level T begins
    levels = rt.empty(top + rows * n, np.uint64)
    queries = rt.empty(rows * n, np.uint64)
    places = rt.empty(rows * n, np.int32)
    tiles = -(-2 * n // TILE)
    counts = rt.empty((rows, tiles, n_levels + 1), np.int32)
    starts = rt.empty((rows, tiles, n_levels + 1), np.int64)
    sizes = (rt.i64(rows), rt.i64(n), rt.i64(tiles), np.int32(n_levels),
             np.int32(S0_BITS), np.int32(code_bits), np.int32(pos_bits))
    grid = (tiles, min(rows, MAX_GRID_Y))  # more rows: a block takes several
    _fn("zeta_level_counts")(grid, (TILE,), (sorted_entries,) + sizes + (counts,))
    rt.launch(_fn("zeta_level_offsets"), 32 * rows * (n_levels + 1),  # a warp per (row, level)
              (counts, rt.i64(rows), rt.i64(tiles), np.int32(n_levels + 1), starts))
    _fn("zeta_level_scatter")(grid, (TILE,), (sorted_entries,) + sizes
                              + (causal, chunk, starts, levels, queries, places))
    return levels, n_levels, queries, places


def forward(q, k, v, cfg: ZetaConfig, *, return_candidates: bool = False, marks=None,
            largest=None):
    """ZETA forward for checked, contiguous CuPy arrays q, k (..., N, d_k), v (..., N, d_v).

    Returns the output (..., N, d_v), and with ``return_candidates`` also the candidates
    (..., N, k) as int64 (for the tests: they must equal the stage-by-stage candidates).
    ``marks``, a list, receives a recorded CUDA event at the start and after each stage of
    :data:`STAGE_NAMES`, for the benchmark's per-stage times. ``largest``, a zeroed uint64
    device array of 3, receives ``max |q|``, ``max |k|`` and ``max |v|`` as the bits of
    float64s (NaN where a NaN is met), for the caller's checks of the values: q's and k's from
    a pass over each, queued last (the host queues them while the GPU computes the attention;
    on the second stream, beside it, where the mean term runs there), v's from the mean term's
    first kernel, which reads every value anyway (from a pass of its own without the mean
    term).
    """
    lead, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    _check_n(n)  # the candidates are int32, as on the stage path
    rt.check_width(d_k, v.shape[-1])
    rows = q.size // (n * d_k)
    k_top, width = cfg.k_for(n), cfg.window_for(n)
    code_bits = d_k * cfg.bits
    pos_bits, fits = packing(rows, n, code_bits)
    # the mean term on a second stream beside stages 4 and 5 (and the checks' passes over q
    # and k beside the attention)
    beside = (fits and cfg.history_mean and rows * n >= MEANS_STREAM_MIN and marks is None)
    side = rt.side_stream() if beside else None
    join = None
    try:
        if not fits:  # (never beside: the second stream needs the packed entries to fit)
            if largest is not None:
                for slot, x in enumerate((q, k, v)):
                    rt.max_abs_into(largest, slot, x)
            return _by_stages(q, k, v, cfg, return_candidates)
        causal, chunk = np.int32(_CAUSAL_IDS[cfg.causal]), rt.i64(cfg.chunk_size_for(n))

        def mark():
            if marks is not None:
                event = cp.cuda.Event()
                event.record()
                marks.append(event)

        mark()
        # stages 2 and 3: entries 0 .. RN-1 the keys, RN .. 2RN-1 the queries, packed for the sort
        keys = rt.empty(2 * rows * n, np.uint64)  # (2 R N,)
        rt.launch(_fn(f"zeta_fused_keys<{rt.ctype_name(q.dtype)}>"), keys.size,
                  (k, q, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(cfg.bits))
                  + _squash_args(cfg.bits, cfg.squash, cfg.clip_range)
                  + (np.int32(code_bits), np.int32(pos_bits), keys))
        mean_k = mean_v = None
        if beside:  # its arrays now, after the first launch (the GPU has work) and before the
            # sort frees its scratch memory into the pool; its kernels after the sort
            mean_k, mean_v, start, join = history_means(
                k, v, cfg.causal, largest=None if largest is None else largest[2:3],
                stream=side)
        mark()
        # stage 6's mean term (on this stream: the GPU's work while the host prepares the sort)
        if cfg.history_mean and not beside:
            mean_k, mean_v = history_means(k, v, cfg.causal,
                                           largest=None if largest is None else largest[2:3])
        elif largest is not None and not cfg.history_mean:
            rt.max_abs_into(largest, 2, v)
        mark()
        # stage 4: one sort for every row's keys and queries together
        keys.sort()  # in place (cupy.sort would copy the keys first)
        if beside:  # the mean term beside the next stages (queued after the sort: the host
            start()  # gets to the sort sooner; it waits for the inputs alone)
        mark()
        levels, n_levels, queries, places = prefix_levels(keys, rows, n, code_bits, pos_bits,
                                                          causal, chunk)
        del keys  # the pools, the queries and their places hold all the rest needs
        mark()
        # stage 5: window (and re-rank) per query, in Z order, into int32 candidates
        cand = rt.empty(lead + (n, k_top), np.int32)  # (..., N, k)
        rerank = width > k_top
        pools = (queries, places, levels, np.int32(n_levels), np.int32(S0_BITS),
                 np.int32(code_bits), np.int32(pos_bits), rt.i64(rows), rt.i64(n), causal, chunk,
                 rt.i64(width))
        if not rerank and WINDOW_LANES:  # a group of threads a query: the window is the selection
            ix = "int" if WINDOW_INT and n <= WINDOW_INT_MAX_N else "long long"
            rt.launch(_fn(f"zeta_fused_window_group<{WINDOW_LANES}, {ix}>"),
                      WINDOW_LANES * rows * n, pools + (cand,))
        else:
            heap = ((rt.empty(rows * n * k_top, q.dtype), rt.empty(rows * n * k_top, np.int64),
                     rt.empty(rows * n * k_top, np.int64)) if rerank
                    else (rt.empty(1, q.dtype), rt.empty(1, np.int64), rt.empty(1, np.int64)))
            rt.launch(_fn(f"zeta_fused_window<{rt.ctype_name(q.dtype)}, {int(rerank)}>"), rows * n,
                      pools + (rt.i64(k_top), q, k, np.int32(d_k),
                               np.int32(cfg.score == "softmax")) + heap + (cand,))
        mark()
        # stage 6: the weights and the output, once the mean term is done
        if beside:
            join()
        out, _, _ = launch_topk(q, k, v, cand, cfg.score, cfg.gamma, mean_k, mean_v, queries,
                                np.uint64((1 << pos_bits) - 1), False)
        mark()
        if largest is not None:  # the checks' passes over q and k last: the host queues them
            # while the GPU computes the attention (beside it, on the second stream)
            with side if beside else contextlib.nullcontext():
                rt.max_abs_into(largest, 0, q)
                rt.max_abs_into(largest, 1, k)
        if return_candidates:
            return out, cand.astype(np.int64)
        return out
    finally:  # and after an error: the current stream waits for the second before any of
        # the arrays it uses (the checks' maxima, the mean term's) can be handed out again
        if join is not None:
            join()


def _by_stages(q, k, v, cfg, return_candidates):
    """The same pass through the stage functions, for codes too wide to pack."""
    from .. import attention  # here, not above: the composer is what calls this module

    out, im = attention.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    return (out, im.candidates) if return_candidates else out
