"""Where the host's time goes in one call of the GPU pass (docs/benchmarks.md): at small N the
call waits for Python, not for the GPU. `python docs/data/host_profile.py [OUT.txt]`, B = 1,
H = 8, float32, the default config.

For N = 4096 and 65536 it prints, per call (medians of 200):
  launch   host seconds of fused.forward alone (it returns once its kernels are queued),
  call     host seconds of zeta_attention (it waits for the checks' one transfer),
  gpu      CUDA-event time of the call, as the benchmark measures it;
then cProfile's 30 heaviest functions of 200 calls of zeta_attention by own time.
"""
import cProfile
import io
import pstats
import sys
import time

import cupy as cp
import numpy as np

from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.cupy import fused
from gpu_timing import timed  # this folder is on the path when run as a script

cfg = ZetaConfig()
out_path = sys.argv[1] if len(sys.argv) > 1 else None
report = []


def say(line=""):
    print(line, flush=True)
    report.append(line)


def host_median(fn, calls=200):
    times = []
    for _ in range(calls):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cp.cuda.Device().synchronize()
    return float(np.median(times))


for n in (4096, 65536):
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((1, 8, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((1, 8, n, 64)).astype(np.float32))
    call = lambda: zeta_attention(q, k, v, cfg, backend="cupy")  # noqa: E731
    launch = lambda: fused.forward(q, k, v, cfg)  # noqa: E731
    for _ in range(5):
        call()
    say(f"1 x 8 x {n}: launch {host_median(launch) * 1e3:.3f} ms, call (host) "
        f"{host_median(call) * 1e3:.3f} ms, call (events) {timed(call, 200):.3f} ms")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        call()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    say(f"cProfile of 200 calls at 1 x 8 x {n}, by own time:")
    for line in text.getvalue().splitlines()[:60]:
        say(line)

if out_path:
    with open(out_path, "w") as f:
        f.write("\n".join(report) + "\n")
