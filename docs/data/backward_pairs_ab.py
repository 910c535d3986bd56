"""The script that wrote docs/data/backward_pairs_ab.json (docs/benchmarks.md): on one GPU, in one
run, the backward pass's step 2 (the (query, slot) pairs sorted by key) by the project's radix
sort against one stable cupy.argsort (the way before), on the candidates of a forward pass;
whether they give the same arrays; then the whole backward call with either, and the forward
call, in alternating rounds (medians of three medians of 15 calls, CUDA events).

The radix sort was measured slower and removed after commit 199a09d, the tree this script
runs on (`git worktree add /tmp/radix 199a09d`, then from there):

    PYTHONPATH=$PWD:$PWD/docs/data python docs/data/backward_pairs_ab.py out.json [BxHxN ...]
"""
import json, sys, time
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig
from zeta_ref.backward import zeta_attention_backward
from zeta_ref.cupy import backward as B
from gpu_timing import timed

cfg = ZetaConfig()
real = B.pair_lists
res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
       "command": "python docs/data/backward_pairs_ab.py " + " ".join(sys.argv[1:]), "shapes": {}}
for spec in sys.argv[2:] or ["1x8x65536"]:
    b, h, n = (int(x) for x in spec.split("x"))
    rs = cp.random.RandomState(0)
    q, k, v, g = (rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64, 64))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    cand = B.narrow_candidates(cp.asarray(inter.candidates), n)
    rows = b * h
    got = [real(cand, rows, n, method=m) for m in ("radix", "argsort")]
    same = all(bool(cp.array_equal(x, y)) for x, y in zip(got[0], got[1]))
    del got
    fns = {"pairs radix": lambda: real(cand, rows, n, method="radix"),
           "pairs argsort": lambda: real(cand, rows, n, method="argsort"),
           "forward": lambda: zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy")}
    for m in ("radix", "argsort"):
        def bwd(_m=m):
            B.pair_lists = lambda c, r, nn: real(c, r, nn, method=_m)
            try:
                return zeta_attention_backward(q, k, v, g, cfg, backend="cupy",
                                               intermediates=inter)
            finally:
                B.pair_lists = real
        fns[f"backward {m}"] = bwd
    outs = [fns[f"backward {m}"]() for m in ("radix", "argsort")]
    grads_same = all(bool(cp.array_equal(getattr(outs[0], f), getattr(outs[1], f)))
                     for f in ("dq", "dk", "dv"))
    del outs
    for fn in fns.values():
        for _ in range(2): fn()
    times = {name: [] for name in fns}
    for _ in range(3):
        for name, fn in fns.items():
            times[name].append(timed(fn, 15))
    row = {name: float(np.median(ts)) for name, ts in times.items()}
    row["pairs bit-identical"] = same
    row["gradients bit-identical"] = grads_same
    row["backward radix / forward"] = row["backward radix"] / row["forward"]
    row["backward argsort / forward"] = row["backward argsort"] / row["forward"]
    res["shapes"][spec] = row
    print(spec, {a: (round(x, 4) if isinstance(x, float) else x) for a, x in row.items()}, flush=True)
if sys.argv[1] != "-":
    json.dump(res, open(sys.argv[1], "w"), indent=1)
