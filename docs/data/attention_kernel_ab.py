"""The script that wrote docs/data/attention_kernel_ab.json (docs/benchmarks.md): on one GPU, in
one run, the fast attention kernel as it was before 2026-12-03 against the current one, on the
arguments a fused pass hands to launch_topk (and whether their outputs are bit-identical); the
whole call with the input checks before the pass (as before) against after it (now); torch's
SDPA bf16 on the same shapes.

    git show 6c03574:zeta_ref/cupy/topk_softmax.cu > /tmp/topk_old.cu
    python docs/data/attention_kernel_ab.py /tmp/topk_old.cu out.json
"""
import json, sys, time
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref._checks import check_qkv
from zeta_ref.cupy import fused, topk_softmax as T, _runtime as rt
from gpu_timing import timed

old_mod = cp.RawModule(code=open(sys.argv[1]).read(), options=rt.OPTIONS,
                       name_expressions=("zeta_topk_fast<int, 3>",))
old_fn = old_mod.get_function("zeta_topk_fast<int, 3>")


res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "shapes": {}}
for shape in ((1, 8, 4096), (1, 8, 16384), (1, 8, 65536), (1, 8, 131072), (16, 8, 65536)):
    b, h, n = shape
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((b, h, n, 64)).astype(np.float32))
    cfg = ZetaConfig()
    got = {}
    real = T.launch_topk
    def grab(*a, **kw):
        got["args"] = a
        return real(*a, **kw)
    fused.launch_topk = grab
    fused.forward(q, k, v, cfg)
    fused.launch_topk = real
    (qq, kk, vv, cand, score, gamma, mk, mv, visit, mask, ww) = got["args"]
    rows, n_slots = qq.size // (n * 3), cand.shape[-1]
    out_old = cp.empty_like(T.launch_topk(*got["args"])[0]); mw_old = cp.empty((rows * n,), np.float32)
    c = T.score_constant(score, gamma, 3)
    def old():
        rt.launch(old_fn, 16 * rows * n, (qq, kk, vv, cand, mk, mv, np.int32(1), visit, np.uint64(mask),
                  rt.i64(rows), rt.i64(n), np.int32(3), np.int32(64), np.int32(n_slots), np.int32(0),
                  np.float32(c), np.float32(1), out_old, cp.empty(1, np.float32), np.int32(0), mw_old))
    new = lambda: T.launch_topk(*got["args"])
    old(); out_new, _, mw_new = new(); cp.cuda.Device().synchronize()
    same = bool(cp.array_equal(out_old, out_new)) and bool(cp.array_equal(mw_old.reshape(mw_new.shape), mw_new))
    t_old, t_new = [], []
    for _ in range(3):
        t_old.append(timed(old)); t_new.append(timed(new))
    early = lambda: fused.forward(*check_qkv(q, k, v, xp=cp), cfg)
    late = lambda: zeta_attention(q, k, v, cfg, backend="cupy")
    early(); late()
    e_t, l_t = [], []
    for _ in range(3):
        e_t.append(timed(early, 15)); l_t.append(timed(late, 15))
    sdpa = None
    try:
        import torch
        import torch.nn.functional as F
        tq, tk, tv = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sd = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        sd(); torch.cuda.synchronize()
        def tt(fn, reps=10):
            ts = []
            for _ in range(reps):
                a, b2 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(); fn(); b2.record(); b2.synchronize(); ts.append(a.elapsed_time(b2))
            return float(np.median(ts))
        sdpa = tt(sd)
        del tq, tk, tv
    except Exception as e:
        print("no sdpa:", e)
    r = dict(sdpa_bf16_ms=sdpa, kernel_old_ms=float(np.median(t_old)), kernel_new_ms=float(np.median(t_new)),
             outputs_bit_identical=same, call_checks_first_ms=float(np.median(e_t)),
             call_checks_after_ms=float(np.median(l_t)))
    res["shapes"]["x".join(map(str, shape))] = r
    print("x".join(map(str, shape)), {k2: (round(x, 4) if isinstance(x, float) else x) for k2, x in r.items()}, flush=True)
json.dump(res, open(sys.argv[2], "w"), indent=1)
