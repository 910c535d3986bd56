"""Launch every forward kernel of the CuPy backend at small sizes, for compute-sanitizer
(docs/benchmarks.md): `compute-sanitizer --tool memcheck python docs/data/forward_sanitizer.py`.
Argument "race": only the kernels with shared memory or warp votes (the fast attention kernel,
every instance, one and several runs a block; the window kernels of 8, 16 and 32 threads)."""
import sys
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.cupy import fused, topk_softmax as T
rng = np.random.default_rng(0)
s = zeta_ref.get_backend("cupy").stages()
race = len(sys.argv) > 1 and sys.argv[1] == "race"
n = 300
count = 0
# the window kernels without a re-rank (one thread, 8, 16, 32 a query; the groups' walks in
# int and in long long), every causal mode
for lanes, wide in ((0, False), (8, False), (8, True), (16, False), (32, False), (32, True)):
    fused.WINDOW_LANES, fused.WINDOW_INT = lanes, not wide
    for causal in ("inclusive", "strict", "none"):
        for nn, k_top in ((1, 32), (33, 32), (n, 7), (1500, 32)):
            q, k, v = (cp.asarray(rng.standard_normal((2, nn, w)).astype(np.float32)) for w in (3, 3, 8))
            fused.forward(q, k, v, ZetaConfig(k=k_top, causal=causal, chunk_size=max(1, nn // 5)))
            count += 1
fused.WINDOW_LANES, fused.WINDOW_INT = 8, True
# the fast attention kernel: every instance, one run a block and several
for d_v in (4, 100, 256):
    q, k, v = (rng.standard_normal((2, n, w)).astype(np.float32) for w in (3, 3, d_v))
    for k_top in (15, 20, 32, 50, 127):
        cfg = ZetaConfig(k=k_top, causal="strict")
        _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
        for runs in (1, 4):
            T.FAST_ROUNDS = runs
            s.topk_attention(q, k, v, im.candidates, cfg.score, cfg.gamma, im.mean_k, im.mean_v,
                             kernel="fast")
            count += 1
T.FAST_ROUNDS = 4
if not race:
    for dtype in (np.float32, np.float64):
        for d_v in (64, 100, 256, 6):
            q, k, v = (rng.standard_normal((2, n, w)).astype(dtype) for w in (3, 3, d_v))
            for cfg in (ZetaConfig(k=32), ZetaConfig(k=16, window=48, causal="strict"),
                        ZetaConfig(k=127, score="softmax", history_mean=False, causal="none"),
                        ZetaConfig(k=20, score="inv_euclidean", causal="none")):
                zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
                zeta_attention(q, k, v, cfg, backend="cupy")
                s.history_means(k, v, cfg.causal)
                count += 3
    # the mean term and the checks' passes on the second stream
    saved = fused.MEANS_STREAM_MIN
    fused.MEANS_STREAM_MIN = 0
    for causal in ("inclusive", "strict", "none"):
        q, k, v = (cp.asarray(rng.standard_normal((2, n, w)).astype(np.float32))
                   for w in (3, 3, 64))
        zeta_attention(q, k, v, ZetaConfig(causal=causal), backend="cupy")
        count += 1
    fused.MEANS_STREAM_MIN = saved
    refused = 0
    for bad in (np.nan, np.inf, 1e30):
        q, k, v = (rng.standard_normal((2, n, w)).astype(np.float32) for w in (3, 3, 64))
        q[0, 5, 1] = bad
        try:
            zeta_attention(q, k, v, ZetaConfig(), backend="cupy")
        except ValueError:
            refused += 1
    print("refused", refused, "of 3")
cp.cuda.Device().synchronize()
print("done", "race" if race else "memcheck", count, "calls")
