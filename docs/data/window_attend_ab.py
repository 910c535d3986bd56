"""An A/B of the fused pass's last two kernels (docs/benchmarks.md, issue 10's analysis): the
library's window kernel (zeta_fused_window_group<8>, candidates to memory) and attention
kernel (zeta_topk_fast) against docs/data/window_attend.cu's zeta_window_attend, which finds
each query's window and weighs it in one kernel, the candidates kept in shared memory; and
the same kernel on docs/data/window_merged.cu's pools, where each query's place comes from
the sort instead of a search (the "merged" variants: both experiments at once).

Written for one H200, not yet run (2026-12-05):

    PYTHONPATH=$PWD python docs/data/window_attend_ab.py out.json 1x8x4096 1x8x16384 1x8x65536 16x8x65536 1x8x131072

(B x H x N; float32, d_k = 3, d_v = 64, k = 32, the default config.) First, on small shapes
and the settings that change the window or the weights (N = 1, N at and past the smallest
pool's 256, bits = 1 and 17, each causal mode, each score, the mean term off, k = 8 and 20,
d_v = 128), both passes run with every buffer poisoned (NaN bits in floats, 0x7F bytes in
integers) and must give the same candidates, all of them written, and the same output, bit
for bit, for each variant of the kernel; it stops if one differs. Then, at each shape, the
whole pass of each (CUDA events; medians of three medians of 25 calls, the library's first
and again last, for drift) and the stages of one pass from 25 marked calls (medians): the
library's window and attention against the one kernel, and the library with its window
kernel at 16 threads a query (the one kernel's), a control of what the lanes alone change.

    PYTHONPATH=$PWD compute-sanitizer --tool memcheck python docs/data/window_attend_ab.py --check-only

runs only the bit checks, those of at most 100,000 queries (under compute-sanitizer:
memcheck, then racecheck and synccheck).
"""
import json
import sys
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref import ZetaConfig
from zeta_ref.cupy import fused, _runtime as rt
from zeta_ref.cupy import topk_softmax as T
from zeta_ref.cupy.quantize import _squash_args
from zeta_ref.stages.topk_softmax import EXP_SCORES, score_constant
from gpu_timing import benchmark_inputs, header, rounds
# the library's pass at 8 or 16 threads a query in its window kernel (the one kernel's 16: a
# control of what the lanes alone change), and buffers filled with poison
from window_merged_ab import library_forward, merged_pools, poisoned

HERE = Path(__file__).resolve().parent
#: label -> the kernel's name for U = 3, NX = 1 (the default config's instance); "merged":
#: on window_merged.cu's pools and places (window_merged_ab.merged_pools), no search
VARIANTS = {"one kernel": "zeta_window_attend<3, 1>",
            "one kernel, 4 blocks an SM": "zeta_window_attend_bounded<3, 1, 4>",
            "one kernel, 5 blocks an SM": "zeta_window_attend_bounded<3, 1, 5>",
            "one kernel, merged": "zeta_window_attend_merged<3, 1>",
            "one kernel, merged, 5 blocks an SM": "zeta_window_attend_merged_bounded<3, 1, 5>"}
NAMES = ("zeta_window_attend<1, 1>", "zeta_window_attend<2, 1>", "zeta_window_attend<3, 1>",
         "zeta_window_attend<3, 2>", "zeta_window_attend_bounded<3, 1, 4>",
         "zeta_window_attend_bounded<3, 1, 5>", "zeta_window_attend_merged<1, 1>",
         "zeta_window_attend_merged<2, 1>", "zeta_window_attend_merged<3, 1>",
         "zeta_window_attend_merged<3, 2>", "zeta_window_attend_merged_bounded<3, 1, 5>")
#: the stages of a pass of the experiment, as fused.STAGE_NAMES with window and attention one
STAGES = ("codes", "sort", "pools", "means", "window + attention")
_module = None


def fn(name):
    global _module
    if _module is None:
        _module = cp.RawModule(code=(HERE / "window_attend.cu").read_text(),
                               options=rt.OPTIONS + (f"-I{HERE}",),  # window_merged.cu
                               name_expressions=NAMES)
    return _module.get_function(name)


def instance(n_slots: int, d_v: int, merged: bool = False) -> str:
    """The unbounded kernel's instance for k slots and d_v columns (launch_topk's choice)."""
    u = next((u for u in (1, 2, 3) if 16 * u >= n_slots + 1), None)
    nx = next((x for x in (1, 2) if 64 * x >= d_v), None)
    name = f"zeta_window_attend{'_merged' if merged else ''}<{u}, {nx}>"
    assert name in NAMES, f"no instance for k = {n_slots}, d_v = {d_v}"
    return name


def attend_forward(q, k, v, cfg: ZetaConfig, kernel=None, marks=None, candidates=False):
    """fused.forward with window_attend.cu's kernel for the window and the attention: the
    output, and with ``candidates`` the candidates (int32, written by the kernel for the
    checks). For W = k (no re-rank), float32, packings that fit. A "merged" kernel runs on
    window_merged.cu's pools and places, the others on the library's."""
    lead, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    d_v = v.shape[-1]
    rows = q.size // (n * d_k)
    k_top, width = cfg.k_for(n), cfg.window_for(n)
    code_bits = d_k * cfg.bits
    pos_bits, fits = fused.packing(rows, n, code_bits)
    assert fits and width == k_top and q.dtype == np.float32 and d_v % 4 == 0
    kernel = kernel or instance(k_top, d_v)
    causal, chunk = np.int32(fused._CAUSAL_IDS[cfg.causal]), rt.i64(cfg.chunk_size_for(n))

    def mark():
        if marks is not None:
            event = cp.cuda.Event()
            event.record()
            marks.append(event)

    mark()  # stages 2 to 4 and the pools: fused.forward's, or window_merged.cu's
    if "merged" in kernel:
        levels, queries, places, n_levels, _, _ = merged_pools(q, k, cfg, mark)
        keys = queries  # not read by a merged kernel
    else:
        keys = rt.empty(2 * rows * n, np.uint64)
        rt.launch(fused._fn("zeta_fused_keys<float>"), keys.size,
                  (k, q, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(cfg.bits))
                  + _squash_args(cfg.bits, cfg.squash, cfg.clip_range)
                  + (np.int32(code_bits), np.int32(pos_bits), keys))
        mark()
        keys.sort()
        mark()
        levels, n_levels = fused.prefix_levels(keys, rows, n, code_bits, pos_bits)
        mark()
        queries, places = keys, rt.empty(1, np.int32)  # not read by the library's kind
    with_mean = cfg.history_mean
    if with_mean:
        mk, mv = T.history_means(k, v, cfg.causal)
    else:
        mk, mv = rt.empty((1, d_k), np.float32), rt.empty((1, d_v), np.float32)
    mark()
    out = rt.empty(lead + (n, d_v), np.float32)
    mean_weight = rt.empty(lead + (n,), np.float32)
    cand = rt.empty(lead + (n, k_top) if candidates else (1,), np.int32)
    c = score_constant(cfg.score, cfg.gamma, d_k)
    add, root_d = ((np.float32(0), np.float32(c)) if cfg.score in EXP_SCORES
                   else (np.float32(c), np.float32(1)))
    per_run = T.FAST_THREADS // 16
    runs = max(T.FAST_ROUNDS, -(-rows * n // (per_run * T.MAX_BLOCKS)))  # as launch_topk
    blocks = max(1, -(-rows * n // (per_run * runs)))
    fn(kernel)((blocks,), (T.FAST_THREADS,),
               (keys, levels, np.int32(n_levels), np.int32(fused.S0_BITS), np.int32(code_bits),
                np.int32(pos_bits), rt.i64(rows), rt.i64(n), causal, chunk, q, k, v, mk, mv,
                np.int32(with_mean), np.int32(d_k), np.int32(d_v), np.int32(k_top),
                np.int32(T._SCORE_IDS[cfg.score]), add, root_d, out, mean_weight, cand,
                np.int32(candidates), queries, places, np.int32(runs)))
    mark()
    return (out, cand) if candidates else out


CHECKS = [  # (B, H, N, d_v, config)
    (1, 1, 1, 64, ZetaConfig()),
    (1, 3, 1000, 64, ZetaConfig()),  # the last block's last half-warps past the end
    (2, 3, 255, 64, ZetaConfig()),
    (2, 3, 256, 64, ZetaConfig(causal="strict")),
    (2, 3, 257, 64, ZetaConfig()),
    (1, 2, 300, 64, ZetaConfig(bits=1)),
    (1, 1, 3000, 64, ZetaConfig(bits=17)),  # 51 + 12 bits
    (1, 4, 5000, 64, ZetaConfig(causal="strict", chunk_size=700)),
    (1, 4, 4097, 64, ZetaConfig(causal="none", bits=3)),
    (2, 2, 2049, 64, ZetaConfig(score="softmax", history_mean=False)),
    (1, 2, 2049, 64, ZetaConfig(score="inv_euclidean")),
    (1, 2, 2049, 64, ZetaConfig(score="neg_euclidean")),
    (1, 2, 1500, 64, ZetaConfig(k=8)),
    (1, 2, 1500, 64, ZetaConfig(k=20, history_mean=False)),
    (1, 2, 1500, 128, ZetaConfig()),
    (1, 8, 16384, 64, ZetaConfig()),
]


def check_bits(small_only: bool = False) -> list:
    """Each case of CHECKS through the library's pass and through each variant's (the default
    config's instance where the case allows it, else the unbounded one that fits), buffers
    poisoned: the same candidates and output, bit for bit? One record per case and variant.
    ``small_only`` leaves out the cases of more than 100,000 queries (for compute-sanitizer,
    which runs the kernels many times slower)."""
    records = []
    real = rt.empty
    rt.empty = poisoned
    try:
        for b, h, n, d_v, cfg in CHECKS:
            if small_only and b * h * n > 100_000:
                continue
            rng = np.random.default_rng(n)
            q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(np.float32))
                    for _ in range(2))
            v = cp.asarray(rng.standard_normal((b, h, n, d_v)).astype(np.float32))
            out_a, cand_a = library_forward(q, k, v, cfg, candidates=True)
            default = instance(cfg.k_for(n), d_v)
            kernels = (dict(VARIANTS) if default == VARIANTS["one kernel"] else
                       {"one kernel": default,
                        "one kernel, merged": instance(cfg.k_for(n), d_v, merged=True)})
            for label, name in kernels.items():
                out_b, cand_b = attend_forward(q, k, v, cfg, name, candidates=True)
                same_cand = (bool(cp.array_equal(cand_a, cand_b.astype(np.int64)))
                             and bool(((cand_a >= -1) & (cand_a < n)).all()))
                same_out = (bool(cp.array_equal(out_a.view(np.uint8), out_b.view(np.uint8)))
                            and not bool(cp.isnan(out_b).any()))  # NaN: a poisoned slot
                records.append({"shape": f"{b}x{h}x{n}", "d_v": d_v, "config": repr(cfg),
                                "kernel": name, "same_candidates": same_cand,
                                "same_output": same_out})
                print(f"check {b}x{h}x{n} d_v {d_v} {cfg.causal} {cfg.score} bits {cfg.bits} "
                      f"k {cfg.k} mean {cfg.history_mean} {name}: candidates "
                      f"{'same' if same_cand else 'DIFFER'}, output "
                      f"{'same' if same_out else 'DIFFERS'}", flush=True)
    finally:
        rt.empty = real
    return records


def stage_times(forward, names, reps=25) -> dict:
    """The median time of each stage (``names``) over `reps` marked passes (ms)."""
    per = {name: [] for name in names}
    for _ in range(reps):
        marks = []
        forward(marks)
        marks[-1].synchronize()
        for name, a, b in zip(names, marks, marks[1:]):
            per[name].append(cp.cuda.get_elapsed_time(a, b))
    return {name: float(np.median(ts)) for name, ts in per.items()}


def main():
    check_only = sys.argv[1:] == ["--check-only"]
    if not check_only and (len(sys.argv) < 3 or "--check-only" in sys.argv):
        raise SystemExit(__doc__)
    kernels = {label: fn(name) for label, name in VARIANTS.items()}
    for label, kernel in kernels.items():
        print(f"{label}: {kernel.attributes['num_regs']} registers, "
              f"{kernel.attributes['local_size_bytes']} bytes of local memory", flush=True)
    result = {**header(), "kernels": {label: {"registers": f.attributes["num_regs"],
                                              "local_bytes": f.attributes["local_size_bytes"]}
                                      for label, f in kernels.items()},
              "checks": check_bits(small_only=check_only), "shapes": {}}
    if not all(r["same_candidates"] and r["same_output"] for r in result["checks"]):
        print("the passes differ: nothing timed")
        sys.exit(1)
    if check_only:
        return
    cfg = ZetaConfig()
    plan = ([("library", library_forward, 8, fused.STAGE_NAMES),
             ("library, window at 16 lanes", library_forward, 16, fused.STAGE_NAMES)]
            + [(label, attend_forward, name, STAGES) for label, name in VARIANTS.items()]
            + [("library, again", library_forward, 8, fused.STAGE_NAMES)])
    for shape in sys.argv[2:]:
        q, k, v = benchmark_inputs(shape)
        rows = {}
        for label, forward, kernel, names in plan:
            ms = rounds(lambda: forward(q, k, v, cfg, kernel), warm=2)
            stages = stage_times(lambda marks: forward(q, k, v, cfg, kernel, marks), names)
            rows[label] = {"ms": ms, "stages_ms": stages}
            joint = (stages["window"] + stages["attention"] if "window" in stages
                     else stages["window + attention"])
            print(f"{shape} {label:28s} {ms:8.4f} ms  x{ms / rows['library']['ms']:.3f}"
                  f"  window + attention {joint:.4f}  means {stages['means']:.4f}", flush=True)
        result["shapes"][shape] = rows
        with open(sys.argv[1], "w") as f:  # after each shape: a step cut short keeps the rest
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
