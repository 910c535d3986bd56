"""Launch every backward kernel of the CuPy backend at small sizes, for compute-sanitizer
(docs/backward.md): `compute-sanitizer --tool memcheck python docs/data/backward_sanitizer.py`.
Argument "race": only the kernels with shared memory (both fast kernels, every instance)."""
import sys
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.backward import zeta_attention_backward
from zeta_ref.cupy import backward as B
from zeta_ref.stages.topk_softmax import history_means, score_constant
rng = np.random.default_rng(0)
s = zeta_ref.get_backend("cupy").stages()
race = len(sys.argv) > 1 and sys.argv[1] == "race"
n = 300
if race:
    for d_v in (4, 100, 256):
        q, k, v, g = (rng.standard_normal((2, n, w)).astype(np.float32) for w in (3, 3, d_v, d_v))
        for k_top in (15, 20, 32, 50, 127):
            cfg = ZetaConfig(k=k_top, causal="strict")
            _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
            s.topk_attention(q, k, v, im.candidates, cfg.score, cfg.gamma, im.mean_k, im.mean_v,
                             kernel="fast")
            args = [cp.asarray(x) for x in (q, k, v, im.candidates, im.mean_k, im.mean_v)]
            B.query_pass(*args[:6], True, cp.asarray(g), cp.tile(cp.arange(n), (2, 1)),
                         cfg.score, np.float32(0.25), kernel="fast")
    cp.cuda.Device().synchronize()
    print("done race")
    sys.exit()
count = 0
for dtype in (np.float32, np.float64):
    for d_v in (64, 100, 256, 6):
        q, k, v, g = (rng.standard_normal((2, n, w)).astype(dtype) for w in (3, 3, d_v, d_v))
        for cfg in (ZetaConfig(k=32), ZetaConfig(k=16, window=48, causal="strict"),
                    ZetaConfig(k=127, score="softmax", history_mean=False, causal="none"),
                    ZetaConfig(k=20, score="inv_euclidean")):
            _, im = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
            zeta_attention_backward(q, k, v, g, cfg, intermediates=im, backend="cupy")
            mean = cfg.history_mean
            mk, mv = history_means(k, v, cfg.causal) if mean else (None, None)
            c = dtype(score_constant(cfg.score, cfg.gamma, 3))
            dmk = cp.asarray(mk) if mean else cp.empty((1, 3), dtype)
            dmv = cp.asarray(mv) if mean else cp.empty((1, d_v), dtype)
            for index in (np.int32, np.int64):
                cand = cp.asarray(im.candidates.astype(index))
                args = [cp.asarray(x) for x in (q, k, v)] + [cand, dmk, dmv, mean, cp.asarray(g),
                                                           cp.tile(cp.arange(n), (2, 1)),
                                                           cfg.score, c]
                for kernel in ("fast", "half", "warp"):
                    try:
                        out = B.query_pass(*args, kernel=kernel)
                        count += 1
                    except ValueError:
                        continue
                pairs, starts = B.pair_lists(cand, 2, n)
                for kind in ("values", "plain"):
                    try:
                        B.key_pass(*[cp.asarray(x) for x in (q, k, g)], out[3], out[4], pairs,
                                   starts, cp.tile(cp.arange(n), (2, 1)), cfg.score, kernel=kind)
                    except ValueError:
                        pass
            if mean:
                B.history_means_backward(cp.asarray(mk), cp.asarray(mv), cfg.causal)
                B.history_means_backward(cp.asarray(mk), cp.asarray(mv), cfg.causal,
                                         add_to=(cp.asarray(mk), cp.asarray(mv)))
# bad candidates straight into the twin: -2, n and 2**40 (int64), n + 3 and -7 (int32)
q, k, v, g = (rng.standard_normal((2, n, w)).astype(np.float32) for w in (3, 3, 64, 64))
_, im = zeta_attention(q, k, v, ZetaConfig(k=32), return_intermediates=True)
mk, mv = history_means(k, v, "inclusive")
for bad, index in ((-2, np.int64), (n, np.int64), (2**40, np.int64), (n + 3, np.int32),
                   (-7, np.int32)):
    cand = im.candidates.astype(index)
    cand[1, 200, 5] = bad
    cand[0, 7, 0] = bad
    B.topk_attention_backward(q, k, v, cand, "cauchy", 0.5, mk, mv, g)
cp.cuda.Device().synchronize()
print("done; query kernel launches", count)
