"""The script that wrote docs/data/attention_shared_ab.json (docs/benchmarks.md): on one GPU, in
one run, the attention kernel that reads its value rows from global memory (``fast``) against
the one that loads a run's distinct rows into shared memory first (``shared``), at several
run lengths and cache sizes, on the arguments a fused pass hands to launch_topk; whether their
outputs are bit-identical; and the whole call with either kernel.

The shared-row kernel was measured slower everywhere and removed after commit 20e0efa, the
tree this script runs on:

    git worktree add /tmp/shared_ab 20e0efa && cd /tmp/shared_ab
    PYTHONPATH=$PWD:$PWD/docs/data python docs/data/attention_shared_ab.py out.json [BxHxN ...]
"""
import json, sys, time
import numpy as np, cupy as cp
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.cupy import fused, topk_softmax as T
from gpu_timing import rounds

SETTINGS = [(r, c) for r in (2, 4) for c in (16384, 32768, 65536)]  # (runs of 16, cache bytes)
shapes = [tuple(int(x) for x in s.split("x")) for s in sys.argv[2:]] or [
    (1, 8, 4096), (1, 8, 16384), (1, 8, 65536), (1, 8, 131072), (16, 8, 65536)]
res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "shapes": {}}
for b, h, n in shapes:
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
    args = got["args"]
    run = lambda kernel: T.launch_topk(*args, kernel=kernel)
    ref_out, _, ref_mw = run("fast")
    r = {"fast_ms": rounds(lambda: run("fast"), warm=2)}
    for n_rounds, nbytes in SETTINGS:
        T.SHARED_ROUNDS, T.SHARED_CACHE_BYTES = n_rounds, nbytes
        out, _, mw = run("shared")
        same = bool(cp.array_equal(out, ref_out)) and bool(cp.array_equal(mw, ref_mw))
        r[f"shared_{16 * n_rounds}q_{nbytes // 1024}KiB_ms"] = rounds(lambda: run("shared"), warm=2)
        r[f"shared_{16 * n_rounds}q_{nbytes // 1024}KiB_bit_identical"] = same
    T.SHARED_ROUNDS, T.SHARED_CACHE_BYTES = 4, 32768
    for kind in ("fast", "shared"):
        T.AUTO_FAST = kind
        call = lambda: zeta_attention(q, k, v, cfg, backend="cupy")
        r[f"call_{kind}_ms"] = rounds(call, reps=15, warm=2)
    T.AUTO_FAST = "fast"  # the default
    key = f"{b}x{h}x{n}"
    res["shapes"][key] = r
    print(key, {k2: (round(x, 4) if isinstance(x, float) else x) for k2, x in r.items()}, flush=True)
if sys.argv[1] != "-":
    json.dump(res, open(sys.argv[1], "w"), indent=1)
