"""The script that wrote docs/data/backward_query_ab.json (docs/benchmarks.md): on one GPU, in
one run, the backward pass's query step with the 16-lane kernel it had before 2026-12-03
(zeta_bwd_query_half, which still takes float64) against zeta_bwd_query_fast (float4 rows,
keys staged in shared memory), on the arguments a backward call hands to query_pass; the fast
kernel also compiled with a register cap (__launch_bounds__ with 3 and 4 blocks an SM); how
close the two kernels' results are and whether the fast one gives the same bits twice; then
the whole backward call with either kernel next to the fused forward pass.

    python docs/data/backward_query_ab.py out.json
"""
import json, sys, time
import numpy as np, cupy as cp
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.backward import zeta_attention_backward
from zeta_ref.cupy import backward as B, _runtime as rt
from gpu_timing import timed

SOURCE = (rt.HERE / "backward.cu").read_text()
BOUND = "__launch_bounds__(ZETA_BWD_FAST_THREADS, U * NX <= 4 ? 4 : 2)"
assert BOUND in SOURCE


def capped(blocks, name):
    """The fast kernel compiled with __launch_bounds__(256, blocks)."""
    code = SOURCE.replace(BOUND, f"__launch_bounds__(ZETA_BWD_FAST_THREADS, {blocks})")
    code = code[:code.index("#define ZETA_BWD_QUERY(T, I)")]  # no other instance: quick
    mod = cp.RawModule(code=code, options=rt.OPTIONS, name_expressions=(name,))
    return mod.get_function(name)


res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
       "cupy": cp.__version__, "shapes": {}}
for shape in ((1, 8, 16384), (1, 8, 65536), (1, 8, 131072), (16, 8, 65536)):
    b, h, n = shape
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(np.float32)) for _ in range(2))
    v, g = (cp.asarray(rng.standard_normal((b, h, n, 64)).astype(np.float32)) for _ in range(2))
    cfg = ZetaConfig()
    _, inter = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    got = {}
    real = B.query_pass
    def grab(*a, **kw):
        got["args"] = a
        return real(*a, **kw)
    B.query_pass = grab
    zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="cupy")
    B.query_pass = real
    args = got["args"]
    qq, kk, vv, cand, mk, mv, with_mean, grad, visit, score, c = args
    rows, n_slots = qq.size // (n * 3), cand.shape[-1]
    per_lane = next(u for u in (1, 2, 3, 4, 8) if 16 * u >= n_slots + with_mean)
    name = f"zeta_bwd_query_fast<{per_lane}, 1>"
    cand32 = B.narrow_candidates(cand, n)
    variants = {"half": lambda: real(*args, kernel="half"),
                "fast": lambda: real(*args, kernel="fast")}
    for blocks in (3, 4):
        fn = capped(blocks, name)
        outs = real(*args, kernel="fast")  # buffers of the right shapes
        def run(fn=fn, outs=outs):
            rt.launch(fn, 16 * rows * n, (qq, kk, vv, cand32, mk, mv, np.int32(with_mean), grad,
                                          visit, rt.i64(rows), rt.i64(n), np.int32(3),
                                          np.int32(64), np.int32(n_slots),
                                          np.int32(B._SCORE_IDS[score]), c) + tuple(outs),
                      threads=B.FAST_THREADS)
            return outs
        variants[f"fast_min{blocks}"] = run
    results = {key: [cp.copy(x) for x in fn()] for key, fn in variants.items()}
    again = variants["fast"]()
    names = ("dq", "dmean_k", "dmean_v", "coef_w", "coef_k", "dc")
    rel = {nm: float(cp.abs(a - bb).max() / cp.abs(bb).max())
           for nm, a, bb in zip(names, results["fast"], results["half"])}
    same_twice = all(bool(cp.array_equal(a, bb)) for a, bb in zip(results["fast"], again))
    capped_same = {key: all(bool(cp.array_equal(a, bb)) for a, bb in zip(results[key],
                                                                          results["fast"]))
                   for key in ("fast_min3", "fast_min4")}
    times = {key: [] for key in variants}
    for _ in range(3):
        for key, fn in variants.items():
            times[key].append(timed(fn))
    fwd = lambda: zeta_attention(q, k, v, cfg, backend="cupy")
    bwd = lambda: zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="cupy")
    def bwd_half():
        B.query_pass = lambda *a, **kw: real(*a, **{**kw, "kernel": "half"})
        try:
            return bwd()
        finally:
            B.query_pass = real
    fwd(); bwd(); bwd_half()
    whole = {"forward": [], "backward_fast": [], "backward_half": []}
    for _ in range(3):
        whole["forward"].append(timed(fwd, 15))
        whole["backward_fast"].append(timed(bwd, 15))
        whole["backward_half"].append(timed(bwd_half, 15))
    r = {f"query_{key}_ms": float(np.median(t)) for key, t in times.items()}
    r.update({f"{key}_ms": float(np.median(t)) for key, t in whole.items()})
    r["ratio_fast"] = r["backward_fast_ms"] / r["forward_ms"]
    r["ratio_half"] = r["backward_half_ms"] / r["forward_ms"]
    r.update(max_rel_diff_fast_vs_half=rel, fast_same_bits_twice=same_twice,
             capped_same_bits_as_fast=capped_same, instance=name)
    res["shapes"]["x".join(map(str, shape))] = r
    print("x".join(map(str, shape)), {k2: (round(x, 4) if isinstance(x, float) else x)
                                      for k2, x in r.items() if k2 != "max_rel_diff_fast_vs_half"},
          "max rel", max(rel.values()), flush=True)
    del q, k, v, g, inter, results, again
    cp.get_default_memory_pool().free_all_blocks()
json.dump(res, open(sys.argv[1], "w"), indent=1)
