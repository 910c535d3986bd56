"""Where a forward call's time goes on the GPU (docs/benchmarks.md): `split` prints host and device
(CUDA events) time of a call and of the fused pass alone (cupyx.profiler.benchmark); `prof` a
cProfile of 300 calls at 1 x 8 x 4096; `ncu BxHxN` makes one call inside a profiler range, for
`ncu --profile-from-start off --metrics gpu__time_duration.sum` (the time of every kernel)."""
import cProfile, io, pstats, sys, time, json
import numpy as np, cupy as cp, cupyx.profiler
import zeta_ref
from zeta_ref import ZetaConfig
mode = sys.argv[1]
cfg = ZetaConfig()

def inputs(b, h, n):
    rs = cp.random.RandomState(0)
    return [rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64)]

def call(q, k, v):
    return zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy")

if mode == "split":
    for shape in [(1, 8, 4096), (1, 8, 8192), (1, 8, 16384), (1, 8, 65536), (16, 8, 65536)]:
        q, k, v = inputs(*shape)
        for _ in range(3): call(q, k, v)
        r = cupyx.profiler.benchmark(call, (q, k, v), n_repeat=30, n_warmup=3)
        print(shape, "cpu ms median %.3f  gpu ms median %.3f" % (np.median(r.cpu_times) * 1e3, np.median(r.gpu_times[0]) * 1e3), flush=True)
        # only the fused pass, without checks
        from zeta_ref.cupy import fused
        r = cupyx.profiler.benchmark(fused.forward, (q, k, v, cfg), n_repeat=30, n_warmup=3)
        print(shape, "fused only: cpu ms %.3f  gpu ms %.3f" % (np.median(r.cpu_times) * 1e3, np.median(r.gpu_times[0]) * 1e3), flush=True)
elif mode == "prof":
    q, k, v = inputs(1, 8, 4096)
    for _ in range(5): call(q, k, v)
    cp.cuda.Device().synchronize()
    pr = cProfile.Profile(); pr.enable()
    for _ in range(300): call(q, k, v)
    cp.cuda.Device().synchronize()
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(35); print(s.getvalue())
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue())
elif mode == "ncu":
    shape = tuple(int(x) for x in sys.argv[2].split("x"))
    q, k, v = inputs(*shape)
    for _ in range(3): call(q, k, v)
    cp.cuda.Device().synchronize()
    with cupyx.profiler.profile():
        call(q, k, v)
        cp.cuda.Device().synchronize()
