"""When the host queues each launch of one call, and when the GPU gets to it (docs/benchmarks.md):
where the GPU waits for the host.

    python docs/data/timeline.py OUT.json SHAPE... [-- MODULE.NAME=VALUE ...]

For each shape "BxHxN" (the benchmark's workload, float32, the default config), after five
calls: 30 calls of zeta_attention(q, k, v, backend="cupy"), each with

- host: the time (ms from the call's start) at which Python queues each kernel, begins to
  queue the second stream's work and the pools (the sort, cupy's, has returned by then), and
  the call returns;
- gpu: the time (ms from the call's start, by CUDA events) at which the GPU reaches the point
  just before each kernel on its stream: the end of the stream's previous work, or the
  moment the host queued it if the stream was idle then.

A launch whose `gpu - host` is near zero found its stream idle: the GPU had waited for the
host. Each launch records one event more than the call does (a few us of the host's time
each), so the instrumented call is slower than the plain one; both are reported (medians).
The first event is recorded just after a synchronisation, so that the GPU reaches it at once:
it is the common origin of both clocks (to within the launch latency, some 5 us).

Settings after `--` (as knob_ab.py: MODULE of zeta_ref.cupy, VALUE a Python literal) are
applied for the whole run.

Also, once: whether a cupy sort waits for the GPU (returns only when its kernels are done):
the host's time of `x.sort()` on 2^20 uint64 keys queued behind a kernel that spins 5 ms
(`--no-sort-check` skips it).
"""
import ast
import sys
import time

import cupy as cp
import numpy as np

from zeta_ref import zeta_attention
from zeta_ref.cupy import _runtime as rt
from zeta_ref.cupy import fused
import zeta_ref.cupy.topk_softmax  # noqa: F401 (for the settings)
# gpu_timing: this folder is on the path when run as a script
from gpu_timing import benchmark_inputs, busy, header, timed, write_result

CALLS = 30
LOG = []  # (label, stream ptr, host time, event or None)


class Timed:
    """A kernel whose launches are logged: the host time and an event just before each."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, grid, block, args, **kwargs):
        stream = cp.cuda.get_current_stream()
        event = cp.cuda.Event()
        event.record(stream)
        LOG.append((self.name, stream.ptr, time.perf_counter(), event))
        return self.fn(grid, block, args, **kwargs)


def log_point(label):
    stream = cp.cuda.get_current_stream()
    event = cp.cuda.Event()
    event.record(stream)
    LOG.append((label, stream.ptr, time.perf_counter(), event))


def instrument():
    kernel, levels, means = rt.kernel, fused.prefix_levels, fused.history_means

    def timed_kernel(stem, name, all_names):
        return Timed(kernel(stem, name, all_names), name.split("<")[0])

    def timed_levels(*args, **kwargs):  # called once the sort (and any work beside) is queued
        log_point("(pools: queued from here)")
        return levels(*args, **kwargs)

    def timed_means(*args, **kwargs):
        result = means(*args, **kwargs)
        if kwargs.get("stream") is None:
            return result
        mean_k, mean_v, start, join = result

        def timed_start(*args):
            log_point("(second stream: queued from here)")
            start(*args)

        return mean_k, mean_v, timed_start, join

    rt.kernel, fused.prefix_levels, fused.history_means = timed_kernel, timed_levels, timed_means


def one_call(q, k, v):
    del LOG[:]
    cp.cuda.Device().synchronize()
    start = cp.cuda.Event()
    start.record()
    t0 = time.perf_counter()
    zeta_attention(q, k, v, backend="cupy")
    t1 = time.perf_counter()
    end = cp.cuda.Event()
    end.record()
    end.synchronize()
    rows = [(label, ptr, (t - t0) * 1e3, cp.cuda.get_elapsed_time(start, e))
            for label, ptr, t, e in LOG]
    rows.append(("(call returned)", 0, (t1 - t0) * 1e3, cp.cuda.get_elapsed_time(start, end)))
    return rows


def sort_waits() -> dict:
    x = cp.random.randint(0, 2**62, size=1 << 20, dtype=cp.int64).view(cp.uint64)
    x.sort()
    host = []
    for _ in range(5):
        cp.cuda.Device().synchronize()
        busy(5e-3)
        t0 = time.perf_counter()
        x.sort()
        host.append((time.perf_counter() - t0) * 1e3)
        cp.cuda.Device().synchronize()
    return {"host ms of x.sort() behind a 5 ms kernel": host,
            "the sort waits for the GPU": bool(np.median(host) > 4.0)}


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-sort-check"]
    knobs = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    if len(args) < 2:
        sys.exit(__doc__)
    path, shapes = args[0], args[1:]
    result = header()
    for knob in knobs:
        name, value = knob.split("=")
        module, attr = name.split(".")
        setattr(sys.modules[f"zeta_ref.cupy.{module}"], attr, ast.literal_eval(value))
    result["settings"] = knobs
    if "--no-sort-check" not in sys.argv:
        result["sort"] = sort_waits()
        print(result["sort"], flush=True)
    plain = {}
    for shape in shapes:
        q, k, v = benchmark_inputs(shape)
        plain[shape] = timed(lambda: zeta_attention(q, k, v, backend="cupy"), 50)
    instrument()
    result["shapes"] = {}
    for shape in shapes:
        q, k, v = benchmark_inputs(shape)
        for _ in range(5):
            one_call(q, k, v)
        calls = [one_call(q, k, v) for _ in range(CALLS)]
        if len({tuple(r[0] for r in c) for c in calls}) != 1:
            sys.exit(f"the calls at {shape} did not launch the same kernels")
        streams = {}
        table = []
        for i, (label, ptr, _, _) in enumerate(calls[0]):
            host = float(np.median([c[i][2] for c in calls]))
            gpu = float(np.median([c[i][3] for c in calls]))
            stream = streams.setdefault(ptr, f"s{len(streams)}") if ptr else "-"
            table.append({"launch": label, "stream": stream, "host_ms": round(host, 4),
                          "gpu_ms": round(gpu, 4), "gpu_minus_host_ms": round(gpu - host, 4)})
        instrumented = float(np.median([c[-1][3] for c in calls]))
        result["shapes"][shape] = {"call_ms_plain": plain[shape],
                                   "call_ms_instrumented": instrumented, "launches": table}
        print(f"\n{shape}: the call {plain[shape]:.3f} ms (events, plain), "
              f"{instrumented:.3f} ms instrumented; medians of {CALLS} calls", flush=True)
        print(f"{'launch':34s} {'stream':>6s} {'host ms':>8s} {'gpu ms':>8s} {'gpu-host':>8s}")
        for row in table:
            print(f"{row['launch']:34s} {row['stream']:>6s} {row['host_ms']:8.3f} "
                  f"{row['gpu_ms']:8.3f} {row['gpu_minus_host_ms']:8.3f}", flush=True)
        q = k = v = None
        cp.get_default_memory_pool().free_all_blocks()
    write_result(path, result)


if __name__ == "__main__":
    main()
