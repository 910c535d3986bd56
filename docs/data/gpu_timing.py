"""The timing helpers of the GPU scripts in this folder (each run as `python docs/data/NAME.py`,
which puts this folder on the import path)."""
import numpy as np
import cupy as cp


def timed(fn, reps=25):
    """The median over `reps` calls of `fn`'s time in ms, a pair of CUDA events around each."""
    ts = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(ts))


def rounds(fn, reps=25, n=3, warm=0):
    """The median of `n` rounds of :func:`timed`, after `warm` calls."""
    for _ in range(warm):
        fn()
    return float(np.median([timed(fn, reps) for _ in range(n)]))


def header() -> dict:
    """The first keys of an A/B's JSON: the date, the GPU and the command."""
    import sys
    import time
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
            "command": " ".join(sys.argv)}


def benchmark_inputs(shape: str):
    """q, k (B, H, N, 3) and v (B, H, N, 64), float32 standard normal (seed 0), on the GPU,
    for a shape "BxHxN": the benchmark's workload."""
    b, h, n = (int(x) for x in shape.split("x"))
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((b, h, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((b, h, n, 64)).astype(np.float32))
    return q, k, v


def write_result(path: str, result: dict) -> None:
    """The script's JSON to `path`, and a last line saying so."""
    import json
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


_SPIN = None


def busy(seconds: float) -> None:
    """Queue a kernel that keeps the GPU busy for about `seconds` (one thread spinning on the
    clock): the host's later calls then find the GPU occupied."""
    global _SPIN
    if _SPIN is None:
        _SPIN = cp.RawKernel(r"""
        extern "C" __global__ void spin(long long cycles) {
            long long t0 = clock64();
            while (clock64() - t0 < cycles) { }
        }""", "spin")
    rate = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrClockRate, 0) * 1e3
    _SPIN((1,), (1,), (np.int64(rate * seconds),))
