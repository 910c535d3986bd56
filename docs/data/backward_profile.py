"""Where a backward call's time goes on the GPU (docs/benchmarks.md, the backward pass).

`time [BxHxN ...]` prints the medians (CUDA events, three rounds of 15 calls after warm-up) of
the fused forward call, the forward call with intermediates and `zeta_attention_backward`, and
a JSON line of them; `split BxHxN` the host's and the device's time of a backward call
(cupyx.profiler.benchmark); `ncu BxHxN` makes one backward call inside a profiler range, for
`ncu --profile-from-start off --metrics gpu__time_duration.sum` (the time of every kernel).
float32, d_k = 3, d_v = 64, the default config."""
import json, sys, time
import numpy as np, cupy as cp, cupyx.profiler
import zeta_ref
from zeta_ref import ZetaConfig
from zeta_ref.backward import zeta_attention_backward
import gpu_timing

cfg = ZetaConfig()


def inputs(b, h, n):
    rs = cp.random.RandomState(0)
    return [rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64, 64)]


def timed(fn, reps=15):
    return gpu_timing.timed(fn, reps)


mode = sys.argv[1]
if mode == "time":
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "shapes": {}}
    for spec in sys.argv[2:] or ["1x8x65536"]:
        q, k, v, g = inputs(*(int(x) for x in spec.split("x")))
        fwd = lambda: zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy")
        _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
        staged = lambda: zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy",
                                                 return_intermediates=True)
        bwd = lambda: zeta_attention_backward(q, k, v, g, cfg, backend="cupy",
                                              intermediates=inter)
        for fn in (fwd, staged, bwd):
            for _ in range(3): fn()
        rounds = {"forward": [], "staged": [], "backward": []}
        for _ in range(3):
            for name, fn in (("forward", fwd), ("staged", staged), ("backward", bwd)):
                rounds[name].append(timed(fn))
        row = {name: float(np.median(ts)) for name, ts in rounds.items()}
        row["backward / forward"] = row["backward"] / row["forward"]
        res["shapes"][spec] = row
        print(spec, " ".join(f"{a} {b:.3f}" for a, b in row.items()), flush=True)
    print("JSON", json.dumps(res))
elif mode == "split":
    q, k, v, g = inputs(*(int(x) for x in sys.argv[2].split("x")))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    r = cupyx.profiler.benchmark(zeta_attention_backward, (q, k, v, g, cfg),
                                 {"backend": "cupy", "intermediates": inter}, n_repeat=30,
                                 n_warmup=3)
    print(sys.argv[2], "backward: host ms %.3f  device ms %.3f" % (
        np.median(r.cpu_times) * 1e3, np.median(r.gpu_times[0]) * 1e3))
elif mode == "ncu":
    q, k, v, g = inputs(*(int(x) for x in sys.argv[2].split("x")))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    for _ in range(3):
        zeta_attention_backward(q, k, v, g, cfg, backend="cupy", intermediates=inter)
    cp.cuda.Device().synchronize()
    with cupyx.profiler.profile():
        zeta_attention_backward(q, k, v, g, cfg, backend="cupy", intermediates=inter)
        cp.cuda.Device().synchronize()
