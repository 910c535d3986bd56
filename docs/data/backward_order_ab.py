"""The backward pass's visiting orders (docs/benchmarks.md, "2026-12-03, night"): the query pass
and the key pass in position order against Z order, on the same inputs, in one run; whether
the results are bit-identical; what finding the Z order costs (one sort of packed keys, as the
fused forward pass makes them). Data: docs/data/backward_ab_2026-12-03.json ("orders").

    python docs/data/backward_order_ab.py 1x8x16384 1x8x65536 1x8x131072 16x8x65536

When it ran, the twin had a switch (`VISIT_Z`) taking both orders from `z_orders` below; both
were removed after this measurement, so the last part (the whole call with and without it)
runs only where the switch exists."""
import json, sys, time
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig
from zeta_ref.backward import zeta_attention_backward
from zeta_ref.cupy import backward as B, _runtime as rt
from zeta_ref.cupy.fused import _fn as fused_fn
from zeta_ref.cupy.quantize import _squash_args
from zeta_ref.stages.topk_softmax import score_constant
import gpu_timing


def z_orders(q, k):
    """The queries' and the keys' Z order in every row, (R, N) int64 each: one sort of packed
    (row, code, key or query, position) entries from the fused pass's zeta_fused_keys
    (sigmoid, up to 10 bits)."""
    n, d_k = q.shape[-2], q.shape[-1]
    rows = q.size // (n * d_k)
    pos_bits, row_bits = (n - 1).bit_length(), (2 * rows - 1).bit_length()
    bits = min(10, (64 - row_bits - pos_bits) // d_k)
    keys = rt.empty(2 * rows * n, np.uint64)
    rt.launch(fused_fn(f"zeta_fused_keys<{rt.ctype_name(q.dtype)}>"), keys.size,
              (k, q, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(bits))
              + _squash_args(bits, "sigmoid", (-4.0, 4.0))
              + (np.int32(d_k * bits), np.int32(pos_bits), keys))
    keys.sort()  # since 2026-12-05 each row's keys and queries together, a bit telling which
    positions = (keys & np.uint64((1 << pos_bits) - 1)).astype(np.int64)
    is_key = ((keys >> np.uint64(pos_bits)) & np.uint64(1)).astype(bool)  # N of each a row
    return positions[~is_key].reshape(rows, n), positions[is_key].reshape(rows, n)


def timed(fn, reps=15):
    return gpu_timing.timed(fn, reps)

def med3(fn, reps=15):
    return gpu_timing.rounds(fn, reps, warm=2)

cfg = ZetaConfig()
res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "shapes": {}}
for spec in sys.argv[1:]:
    b, h, n = (int(x) for x in spec.split("x"))
    rs = cp.random.RandomState(0)
    q, k, v, g = (rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64, 64))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    cand, mk, mv = inter.candidates, inter.mean_k, inter.mean_v
    rows = b * h
    pos = B.visit_order(None, rows, n)
    zq, zk = z_orders(q, k)
    c = np.float32(score_constant("cauchy", cfg.gamma, 3))
    qp = lambda visit: B.query_pass(q, k, v, cand, mk, mv, True, g, visit, "cauchy", c)
    a, z = qp(pos), qp(zq)
    same_q = all(bool((x == y).all()) for x, y in zip(a, z))
    coef_w, coef_k = a[3], a[4]
    pairs, starts = B.pair_lists(cand, rows, n)
    kp = lambda order: B.key_pass(q, k, g, coef_w, coef_k, pairs, starts, order, "cauchy")
    ka, kz = kp(pos), kp(zk)
    same_k = all(bool((x == y).all()) for x, y in zip(ka, kz))
    r = {"identical query pass": same_q, "identical key pass": same_k,
         "z_orders": med3(lambda: z_orders(q, k)),
         "query pass, position": med3(lambda: qp(pos)), "query pass, Z": med3(lambda: qp(zq)),
         "pair lists": med3(lambda: B.pair_lists(cand, rows, n)),
         "key pass, position": med3(lambda: kp(pos)), "key pass, Z": med3(lambda: kp(zk))}
    if hasattr(B, "VISIT_Z"):  # the whole call with the switch off and on
        fwd = lambda: zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy")
        bwd = lambda: zeta_attention_backward(q, k, v, g, cfg, backend="cupy", intermediates=inter)
        B.VISIT_Z = False; g0 = bwd()
        B.VISIT_Z = True; g1 = bwd()
        r["identical backward"] = (all(bool((x == y).all()) for x, y in zip(g0[:3], g1[:3]))
                                   and g0.dgamma == g1.dgamma)
        ts = {"forward": [], "backward, position": [], "backward, Z": []}
        for _ in range(3):
            ts["forward"].append(timed(fwd))
            B.VISIT_Z = False; bwd(); ts["backward, position"].append(timed(bwd))
            B.VISIT_Z = True; bwd(); ts["backward, Z"].append(timed(bwd))
        for key, vals in ts.items():
            r[key] = float(np.median(vals))
        r["Z / forward"] = r["backward, Z"] / r["forward"]
    res["shapes"][spec] = r
    print(spec, json.dumps(r), flush=True)
print("JSON", json.dumps(res))
