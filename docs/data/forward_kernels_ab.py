"""The script that wrote docs/data/forward_kernels_ab.json (docs/benchmarks.md): on one GPU, in one
run, the forward kernels as they were at 6b14a38 (old) against the current ones, on the arguments
a fused pass makes, and whether their outputs are bit-identical: the pools' level offsets, the
window (a thread a query against groups of 8, 16 and 32 threads), the mean term, the attention
kernel with 1 to 16 runs of 16 queries a block; then the whole call and SDPA bf16.

    git show 6b14a38:zeta_ref/cupy/topk_softmax.cu > /tmp/topk_old.cu
    git show 6b14a38:zeta_ref/cupy/fused.cu > /tmp/fused_old.cu
    python docs/data/forward_kernels_ab.py /tmp/topk_old.cu /tmp/fused_old.cu out.json

It runs on the trees of commits e868bc1 (which added it and its JSON: "the current ones" are
that tree's kernels) to 27058e7 (its last change); since ac723b4 fused.prefix_levels returns
two values, not three, and the script would stop there.
"""
import json, sys, time
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.cupy import fused, topk_softmax as T, _runtime as rt
import gpu_timing
from gpu_timing import timed

OLD_T = ("zeta_block_sums<float>", "zeta_scan_blocks", "zeta_means_write<float>", "zeta_topk_fast<3, 1>")
old_t = cp.RawModule(code=open(sys.argv[1]).read(), options=rt.OPTIONS, name_expressions=OLD_T)
OLD_F = ("zeta_level_offsets", "zeta_fused_window<float, 0>")
old_f = cp.RawModule(code=open(sys.argv[2]).read(), options=rt.OPTIONS, name_expressions=OLD_F)


def med3(fn, reps=25):
    return gpu_timing.rounds(fn, reps)

res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "shapes": {}}
shapes = [(1, 8, 4096), (1, 8, 16384), (1, 8, 65536), (1, 8, 131072), (16, 8, 65536)]
for (b, h, n) in shapes:
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((b, h, n, 64)).astype(np.float32))
    cfg = ZetaConfig()
    rows, d_k, d_v = b * h, 3, 64
    k_top = width = cfg.k_for(n)
    code_bits = 3 * cfg.bits
    pos_bits, _ = fused.packing(rows, n, code_bits)
    r = {}
    # the sorted keys and pools, as forward makes them
    keys = cp.empty(2 * rows * n, np.uint64)
    rt.launch(fused._fn("zeta_fused_keys<float>"), keys.size,
              (k, q, rt.i64(rows), rt.i64(n), np.int32(3), np.int32(cfg.bits))
              + fused._squash_args(cfg.bits, cfg.squash, cfg.clip_range)
              + (np.int32(code_bits), np.int32(pos_bits), keys))
    keys = cp.sort(keys)
    levels, level_offset, n_levels = fused.prefix_levels(keys, rows, n, code_bits, pos_bits)
    # (a) level offsets
    tiles = -(-n // fused.TILE)
    if n_levels:
        counts = cp.random.RandomState(1).randint(0, 200, (rows, tiles, n_levels)).astype(np.int32)
        o_old = cp.full((rows, tiles, n_levels), -7, np.int64); o_new = cp.full_like(o_old, -9)
        f_old = lambda: rt.launch(old_f.get_function("zeta_level_offsets"), rows * n_levels, (counts, rt.i64(rows), rt.i64(tiles), np.int32(n_levels), o_old))
        f_new = lambda: rt.launch(fused._fn("zeta_level_offsets"), 32 * rows * n_levels, (counts, rt.i64(rows), rt.i64(tiles), np.int32(n_levels), o_new))
        f_old(); f_new()
        r["offsets_same"] = bool(cp.array_equal(o_old, o_new))
        r["offsets_old_ms"], r["offsets_new_ms"] = med3(f_old), med3(f_new)
    # (b) window
    pools = (keys, levels, level_offset, np.int32(n_levels), np.int32(fused.S0_BITS), np.int32(code_bits),
             np.int32(pos_bits), rt.i64(rows), rt.i64(n), np.int32(0), rt.i64(cfg.chunk_size_for(n)), rt.i64(width))
    c_old = cp.full((rows, n, k_top), -5, np.int32)
    one = (cp.empty(1, np.float32), cp.empty(1, np.int64), cp.empty(1, np.int64))
    w_old = lambda: rt.launch(old_f.get_function("zeta_fused_window<float, 0>"), rows * n,
                              pools + (rt.i64(k_top), q, k, np.int32(3), np.int32(0)) + one + (c_old,))
    w_old()
    r["window_old_ms"] = med3(w_old)
    for lanes in (8, 16, 32):
        c_new = cp.full((rows, n, k_top), -6, np.int32)
        w_new = lambda: rt.launch(fused._fn(f"zeta_fused_window_group<{lanes}>"), lanes * rows * n, pools + (c_new,))
        w_new()
        r[f"window_g{lanes}_same"] = bool(cp.array_equal(c_old, c_new))
        r[f"window_g{lanes}_ms"] = med3(w_new)
    cand = c_old
    # (c) means
    block = T.scan_block(n); n_blocks = -(-n // block); d = 67
    sums = cp.empty((rows, n_blocks, d), np.float64); totals = cp.empty((rows, d), np.float64)
    mk_old, mv_old = cp.empty_like(k), cp.empty_like(v)
    def m_old():
        rt.launch(old_t.get_function("zeta_block_sums<float>"), sums.size, (k, v, rt.i64(rows), rt.i64(n), np.int32(3), np.int32(64), rt.i64(block), sums))
        rt.launch(old_t.get_function("zeta_scan_blocks"), 32 * rows * d, (sums, rt.i64(rows), rt.i64(n_blocks), np.int32(d), totals))
        rt.launch(old_t.get_function("zeta_means_write<float>"), sums.size, (k, v, sums, totals, np.int32(0), rt.i64(rows), rt.i64(n), np.int32(3), np.int32(64), rt.i64(block), mk_old, mv_old))
    m_old()
    mk, mv = T.history_means(k, v, "inclusive")
    r["means_same"] = bool(cp.array_equal(mk, mk_old)) and bool(cp.array_equal(mv, mv_old))
    r["means_old_ms"], r["means_new_ms"] = med3(m_old), med3(lambda: T.history_means(k, v, "inclusive"))
    # (d) attention kernel: old against new with runs 1, 2, 4, 8, 16
    qkeys = keys[rows * n:]
    mask = np.uint64((1 << pos_bits) - 1)
    c = T.score_constant("cauchy", cfg.gamma, 3)
    out_old = cp.empty_like(v); mw_old = cp.empty((rows * n,), np.float32)
    def t_old():
        rt.launch(old_t.get_function("zeta_topk_fast<3, 1>"), 16 * rows * n, (q, k, v, cand, mk, mv, np.int32(1), qkeys, mask,
                  rt.i64(rows), rt.i64(n), np.int32(3), np.int32(64), np.int32(k_top), np.int32(0),
                  np.float32(c), np.float32(1), out_old, cp.empty(1, np.float32), np.int32(0), mw_old), threads=256)
    t_old()
    r["topk_old_ms"] = med3(t_old)
    for runs in (1, 2, 4, 8, 16):
        T.FAST_ROUNDS = runs
        t_new = lambda: T.launch_topk(q, k, v, cand, "cauchy", cfg.gamma, mk, mv, qkeys, mask, False)
        o, _, mw = t_new()
        r[f"topk_r{runs}_same"] = bool(cp.array_equal(o, out_old)) and bool(cp.array_equal(mw.ravel(), mw_old))
        r[f"topk_r{runs}_ms"] = med3(t_new)
    T.FAST_ROUNDS = 4
    # (e) whole call, lanes 16 and runs 4 (the defaults), and SDPA bf16
    call = lambda: zeta_attention(q, k, v, cfg, backend="cupy")
    call()
    r["call_ms"] = med3(call, 15)
    try:
        import torch, torch.nn.functional as F
        tq, tk, tv = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sd = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        sd(); torch.cuda.synchronize()
        ts = []
        for _ in range(15):
            a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); sd(); e.record(); e.synchronize(); ts.append(a.elapsed_time(e))
        r["sdpa_bf16_ms"] = float(np.median(ts)); r["ratio"] = r["call_ms"] / r["sdpa_bf16_ms"]
        del tq, tk, tv
    except Exception as ex:
        print("no sdpa", ex)
    key = f"{b}x{h}x{n}"
    res["shapes"][key] = r
    print(key, {a: (round(x, 4) if isinstance(x, float) else x) for a, x in r.items()}, flush=True)
    del q, k, v, keys, levels, cand
    cp.get_default_memory_pool().free_all_blocks()
json.dump(res, open(sys.argv[3], "w"), indent=1)
