"""What the host's pieces of one GPU call cost, one by one (docs/benchmarks.md): at B = 1 the
call is bound by the host, so these are what the call's time is made of.
`python docs/data/host_costs.py OUT.json [SHAPE]` (default 1x8x65536, the benchmark's workload).

Each piece is called 2000 times in a loop (the GPU kept busy by a spinning kernel where a piece
launches work, so that no piece waits for the GPU); the median of five such loops, in us a
call. Also the whole call's host time (to its return, after its one transfer) and its GPU
time by events, for scale.
"""
import sys
import time

import cupy as cp
import numpy as np

from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref._checks import check_qkv, check_qkv_values, on_device
from zeta_ref.backends import get_backend
from zeta_ref.cupy import _runtime as rt
from zeta_ref.cupy import fused
from zeta_ref.cupy.topk_softmax import history_means
# gpu_timing: this folder is on the path when run as a script
from gpu_timing import benchmark_inputs, busy, header, timed, write_result

LOOPS, CALLS = 5, 2000

def cost(fn, calls=CALLS, gpu=False):
    """us per call of fn, the median of LOOPS loops of `calls` calls."""
    loops = []
    for _ in range(LOOPS):
        cp.cuda.Device().synchronize()
        if gpu:
            busy(0.2)  # the GPU busy for longer than the loop: no launch waits for it
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        loops.append((time.perf_counter() - t0) / calls * 1e6)
        cp.cuda.Device().synchronize()
    return float(np.median(loops))


def main():
    path = sys.argv[1]
    shape = sys.argv[2] if len(sys.argv) > 2 else "1x8x65536"
    q, k, v = benchmark_inputs(shape)
    cfg = ZetaConfig()
    side = rt.side_stream()
    trivial = rt.kernel("checks", "zeta_max_abs<float, float>",
                        tuple(f"zeta_max_abs<{t}>" for t in rt._MAX_ABS_PAIRS))
    bits = cp.zeros(3, np.uint64)
    keys = cp.empty(128, np.uint64)
    fused_keys = fused._fn("zeta_fused_keys<float>")
    from zeta_ref.cupy.quantize import _squash_args
    args15 = ((k, q, np.int64(1), np.int64(64), np.int32(3), np.int32(10))  # 1 row of 64
              + _squash_args(10, "sigmoid", (-4.0, 4.0)) + (np.int32(30), np.int32(6), keys))
    args6 = (q, q, np.int32(0), np.float64(0), np.int64(64), bits)
    small = cp.arange(1 << 20, dtype=cp.uint64)
    pieces = {
        "np.int32(x)": (lambda: np.int32(5), False),
        "rt.i64(x)": (lambda: rt.i64(5), False),
        "get_backend('cupy') and .stages()": (lambda: get_backend("cupy").stages(), False),
        "on_device(q)": (lambda: on_device(q), False),
        "hasattr(q, '__cuda_array_interface__')":
            (lambda: hasattr(q, "__cuda_array_interface__"), False),
        "check_qkv(q, k, v, values=False)": (lambda: check_qkv(q, k, v, xp=cp, values=False),
                                             False),
        "check_qkv_values (from 3 floats)":
            (lambda: check_qkv_values(q, k, v, [1.0, 1.0, 1.0], cp), False),
        "cp.ascontiguousarray(q)": (lambda: cp.ascontiguousarray(q), False),
        "cp.zeros(3, uint64)": (lambda: cp.zeros(3, dtype=np.uint64), True),
        "rt.empty((1, 8, N, 32), int32)": (lambda: rt.empty(q.shape[:-1] + (32,), np.int32),
                                           False),
        "cp.cuda.Event(disable_timing).record()": (lambda: rt.event_now(), True),
        "side.wait_event(event_now())": (lambda: side.wait_event(rt.event_now()), True),
        "rt.kernel lookup (lru_cache)": (lambda: rt.kernel(
            "checks", "zeta_max_abs<float, float>",
            tuple(f"zeta_max_abs<{t}>" for t in rt._MAX_ABS_PAIRS)), False),
        "launch, 6 arguments (1 block)": (lambda: trivial((1,), (32,), args6), True),
        "launch, 14 arguments (1 block)": (lambda: fused_keys((1,), (32,), args15), True),
        "rt.max_abs_into(bits, 0, q)": (lambda: rt.max_abs_into(bits, 0, q), True),
        "history_means(stream=side): allocations only": (
            lambda: history_means(k, v, "inclusive", largest=bits[2:3], stream=side), True),
        "fused.packing + cfg.k_for + window_for + chunk_size_for": (
            lambda: (fused.packing(8, 65536, 30), cfg.k_for(65536), cfg.window_for(65536),
                     cfg.chunk_size_for(65536)), False),
        "x.sort(), 2^20 uint64": (lambda: small.sort(), True),
        "bits.view(float64).get() (GPU idle)": (lambda: bits.view(np.float64).get(), False),
    }
    result = header()
    result["shape"] = shape
    result["us_per_call"] = {}
    for name, (fn, gpu) in pieces.items():
        calls = 200 if "sort" in name or "launch" in name or "max_abs" in name \
            or "history" in name else CALLS
        us = cost(fn, calls, gpu)
        result["us_per_call"][name] = round(us, 2)
        print(f"{name:56s} {us:9.2f} us", flush=True)
    call = lambda: zeta_attention(q, k, v, cfg, backend="cupy")  # noqa: E731
    for _ in range(5):
        call()
    host = []
    for _ in range(100):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        call()
        host.append((time.perf_counter() - t0) * 1e3)
    result["call_host_ms"] = float(np.median(host))
    result["call_events_ms"] = timed(call, 100)
    print(f"the call at {shape}: host {result['call_host_ms']:.3f} ms, events "
          f"{result['call_events_ms']:.3f} ms", flush=True)
    write_result(path, result)


if __name__ == "__main__":
    main()
