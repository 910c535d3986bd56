"""An A/B of the fused pass's pools and window (docs/benchmarks.md, issue 10's analysis): the
library's (fused.py: keys and queries sorted apart, each query's place found by a binary search
of its prefix pool) against docs/data/window_merged.cu's (each row's queries sorted into its
keys, every query's place counted by the pools' scan; docs/data/window_merged_replay.py checks
that arithmetic on the CPU).

Written for one H200, not yet run (2026-12-04):

    PYTHONPATH=$PWD python docs/data/window_merged_ab.py out.json 1x8x4096 1x8x16384 1x8x65536 16x8x65536 1x8x131072

(B x H x N; float32, d_k = 3, d_v = 64, k = 32, the default config.) First, on small shapes
and every setting that changes the pools or the places (N = 1, N at and past the smallest
pool's 256, bits = 1 and 17, each causal mode, both scores' kinds, the mean term off,
float64, 8, 16 and 32 threads a query), both passes run with every output buffer poisoned
(NaN bits in floats, 0x7F bytes in integers) and must give the same candidates, all of them
written, and the same output, bit for bit; it stops if one differs. Then, at each shape, the whole pass of each (CUDA events; medians of three
medians of 25 calls, the library's first and again last, for drift) and the stages of one
pass each from 25 marked calls (codes, sort, pools, window, means, attention; medians),
for 8, 16 and 32 threads a query.

    PYTHONPATH=$PWD compute-sanitizer --tool memcheck python docs/data/window_merged_ab.py --check-only

runs only the bit checks (under compute-sanitizer: memcheck, then racecheck and synccheck).
"""
import json
import sys
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref import ZetaConfig
from zeta_ref.cupy import fused, _runtime as rt
from zeta_ref.cupy.quantize import _squash_args
from zeta_ref.cupy.topk_softmax import history_means, launch_topk
from gpu_timing import benchmark_inputs, header, rounds

HERE = Path(__file__).resolve().parent
NAMES = ("zeta_merged_keys<float>", "zeta_merged_keys<double>", "zeta_merged_counts",
         "zeta_level_offsets", "zeta_merged_scatter", "zeta_merged_window_group<8>",
         "zeta_merged_window_group<16>", "zeta_merged_window_group<32>")
_module = None


def fn(name):
    global _module
    if _module is None:
        _module = cp.RawModule(code=(HERE / "window_merged.cu").read_text(),
                               options=rt.OPTIONS, name_expressions=NAMES)
    return _module.get_function(name)


def merged_pools(q, k, cfg: ZetaConfig, mark=lambda: None):
    """Stages 2 to 4 and the pools of window_merged.cu: (levels, queries, places, n_levels,
    code_bits, pos_bits), ``mark()`` called after the codes, the sort and the pools. For
    packings that fit (the same bits as the library's: R rows and a key bit)."""
    n, d_k = q.shape[-2], q.shape[-1]
    rows = q.size // (n * d_k)
    code_bits = d_k * cfg.bits
    pos_bits, fits = fused.packing(rows, n, code_bits)
    assert fits, "the experiment covers packings that fit"
    causal, chunk = np.int32(fused._CAUSAL_IDS[cfg.causal]), rt.i64(cfg.chunk_size_for(n))
    entries = rt.empty(2 * rows * n, np.uint64)
    rt.launch(fn(f"zeta_merged_keys<{rt.ctype_name(q.dtype)}>"), entries.size,
              (k, q, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(cfg.bits))
              + _squash_args(cfg.bits, cfg.squash, cfg.clip_range)
              + (np.int32(code_bits), np.int32(pos_bits), entries))
    mark()
    entries.sort()
    mark()
    n_levels = fused.level_count(n)
    s0 = fused.S0_BITS
    tiles = -(-2 * n // fused.TILE)
    counts = rt.empty((rows, tiles, n_levels + 1), np.int32)
    offsets = rt.empty((rows, tiles, n_levels + 1), np.int64)
    levels = rt.empty(rows * ((1 << (s0 + n_levels)) - (1 << s0)) + rows * n, np.uint64)
    queries = rt.empty(rows * n, np.uint64)
    places = rt.empty(rows * n, np.int32)
    packed = (np.int32(s0), np.int32(code_bits), np.int32(pos_bits))
    sizes = (rt.i64(rows), rt.i64(n), rt.i64(tiles), np.int32(n_levels)) + packed
    grid = (tiles, min(rows, fused.MAX_GRID_Y))
    fn("zeta_merged_counts")(grid, (fused.TILE,), (entries,) + sizes + (counts,))
    rt.launch(fn("zeta_level_offsets"), 32 * rows * (n_levels + 1),
              (counts, rt.i64(rows), rt.i64(tiles), np.int32(n_levels + 1), offsets))
    fn("zeta_merged_scatter")(grid, (fused.TILE,), (entries,) + sizes
                              + (causal, chunk, offsets, levels, queries, places))
    mark()
    return levels, queries, places, n_levels, code_bits, pos_bits


def merged_forward(q, k, v, cfg: ZetaConfig, lanes: int = 8, marks=None):
    """fused.forward with window_merged.cu's pools and window; (output, int32 candidates).
    For W = k (no re-rank) and packings that fit, as the window group kernel is."""
    lead, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    rows = q.size // (n * d_k)
    k_top, width = cfg.k_for(n), cfg.window_for(n)
    assert width == k_top, "the experiment covers the group kernel's settings only"
    causal, chunk = np.int32(fused._CAUSAL_IDS[cfg.causal]), rt.i64(cfg.chunk_size_for(n))

    def mark():
        if marks is not None:
            event = cp.cuda.Event()
            event.record()
            marks.append(event)

    mark()
    levels, queries, places, n_levels, code_bits, pos_bits = merged_pools(q, k, cfg, mark)
    packed = (np.int32(fused.S0_BITS), np.int32(code_bits), np.int32(pos_bits))
    cand = rt.empty(lead + (n, k_top), np.int32)
    rt.launch(fn(f"zeta_merged_window_group<{lanes}>"), lanes * rows * n,
              (queries, places, levels, np.int32(n_levels)) + packed
              + (rt.i64(rows), rt.i64(n), causal, chunk, rt.i64(width), cand))
    mark()
    mean_k = mean_v = None
    if cfg.history_mean:
        mean_k, mean_v = history_means(k, v, cfg.causal)
    mark()
    out, _, _ = launch_topk(q, k, v, cand, cfg.score, cfg.gamma, mean_k, mean_v, queries,
                            np.uint64((1 << pos_bits) - 1), False)
    mark()
    return out, cand


def library_forward(q, k, v, cfg, lanes=8, marks=None, candidates=False):
    """fused.forward with `lanes` threads a query in its window kernel: the output, and with
    `candidates` (int64, a copy the timed passes do not make) the candidates."""
    saved, fused.WINDOW_LANES = fused.WINDOW_LANES, lanes
    try:
        return fused.forward(q, k, v, cfg, return_candidates=candidates, marks=marks)
    finally:
        fused.WINDOW_LANES = saved


def poisoned(shape, dtype):
    """rt.empty's array filled with NaN bits (floats) or 0x7F7F... (integers: not -1, the
    empty slot's value, so an unwritten candidate shows)."""
    a = cp.empty(shape, dtype=dtype)
    a.view(np.uint8).fill(0xFF if np.dtype(dtype).kind == "f" else 0x7F)
    return a


CHECKS = [  # (B, H, N, dtype, lanes, config)
    (1, 1, 1, np.float32, 8, ZetaConfig()),
    (1, 3, 1000, np.float32, 8, ZetaConfig()),
    (2, 3, 255, np.float32, 8, ZetaConfig()),
    (2, 3, 256, np.float32, 16, ZetaConfig(causal="strict")),
    (2, 3, 257, np.float32, 32, ZetaConfig()),
    (1, 2, 300, np.float32, 8, ZetaConfig(bits=1)),
    (1, 1, 3000, np.float32, 8, ZetaConfig(bits=17)),  # 51 + 1 + 12 bits: all 64
    (1, 4, 5000, np.float32, 8, ZetaConfig(causal="strict", chunk_size=700)),
    (1, 4, 4097, np.float32, 16, ZetaConfig(causal="none", bits=3)),
    (2, 2, 2049, np.float32, 8, ZetaConfig(score="softmax", history_mean=False)),
    (1, 2, 2049, np.float64, 8, ZetaConfig(score="inv_euclidean")),
    (1, 8, 16384, np.float32, 8, ZetaConfig()),
    (1, 8, 16384, np.float32, 32, ZetaConfig()),
]


def check_bits() -> list:
    """Each case of CHECKS through both passes, outputs poisoned: the same candidates and
    output, bit for bit? One record per case."""
    records = []
    real = rt.empty
    rt.empty = poisoned
    try:
        for b, h, n, dtype, lanes, cfg in CHECKS:
            rng = np.random.default_rng(n)
            q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(dtype)) for _ in range(2))
            v = cp.asarray(rng.standard_normal((b, h, n, 64)).astype(dtype))
            out_a, cand_a = library_forward(q, k, v, cfg, lanes, candidates=True)
            out_b, cand_b = merged_forward(q, k, v, cfg, lanes)
            same_cand = (bool(cp.array_equal(cand_a, cand_b.astype(np.int64)))
                         and bool(((cand_a >= -1) & (cand_a < n)).all()))
            same_out = (bool(cp.array_equal(out_a.view(np.uint8), out_b.view(np.uint8)))
                        and not bool(cp.isnan(out_b).any()))  # NaN: a poisoned slot
            records.append({"shape": f"{b}x{h}x{n}", "dtype": np.dtype(dtype).name,
                            "lanes": lanes, "config": repr(cfg),
                            "same_candidates": same_cand, "same_output": same_out})
            print(f"check {b}x{h}x{n} {np.dtype(dtype).name} lanes {lanes} {cfg.causal} "
                  f"{cfg.score} bits {cfg.bits} mean {cfg.history_mean}: candidates "
                  f"{'same' if same_cand else 'DIFFER'}, output "
                  f"{'same' if same_out else 'DIFFERS'}", flush=True)
    finally:
        rt.empty = real
    return records


def stage_times(forward, reps=25) -> dict:
    """The median time of each stage of fused.STAGE_NAMES over `reps` marked passes (ms)."""
    per = {name: [] for name in fused.STAGE_NAMES}
    for _ in range(reps):
        marks = []
        forward(marks)
        marks[-1].synchronize()
        for name, a, b in zip(fused.STAGE_NAMES, marks, marks[1:]):
            per[name].append(cp.cuda.get_elapsed_time(a, b))
    return {name: float(np.median(ts)) for name, ts in per.items()}


def main():
    check_only = sys.argv[1:] == ["--check-only"]
    if not check_only and (len(sys.argv) < 3 or "--check-only" in sys.argv):
        raise SystemExit(__doc__)
    result = {**header(), "checks": check_bits(), "shapes": {}}
    if not all(r["same_candidates"] and r["same_output"] for r in result["checks"]):
        print("the passes differ: nothing timed")
        sys.exit(1)
    if check_only:
        return
    cfg = ZetaConfig()
    for shape in sys.argv[2:]:
        q, k, v = benchmark_inputs(shape)
        rows = {}
        plan = [(f"library, {lanes} lanes", library_forward, lanes) for lanes in (8, 16, 32)]
        plan += [(f"merged, {lanes} lanes", merged_forward, lanes) for lanes in (8, 16, 32)]
        plan += [("library, 8 lanes, again", library_forward, 8)]
        for label, forward, lanes in plan:  # the library's pass makes no int64 copy here
            ms = rounds(lambda: forward(q, k, v, cfg, lanes), warm=2)
            stages = stage_times(lambda marks: forward(q, k, v, cfg, lanes, marks))
            rows[label] = {"ms": ms, "stages_ms": stages}
            print(f"{shape} {label:26s} {ms:8.4f} ms  x{ms / rows['library, 8 lanes']['ms']:.3f}"
                  f"  pools {stages['pools']:.4f}  window {stages['window']:.4f}"
                  f"  sort {stages['sort']:.4f}  codes {stages['codes']:.4f}", flush=True)
        result["shapes"][shape] = rows
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
