"""Does one warm-up call leave the GPU in its steady state? (docs/benchmarks.md)

    python3 docs/data/warmup_check.py OUT.json [SHAPE ...]     (default 1x8x8192 1x8x65536)

At each shape, in one process, the benchmark's ZETA call (zeta_attention, backend="cupy",
k = 32, the benchmark's inputs) and SDPA bf16 (causal, (B, H, N, 64), when torch is
importable), each timed call by call with two CUDA events:
  one      10 calls after one warm-up call (the benchmark's way);
  warmed   10 calls after 0.2 s of warm-up calls;
  idle     10 calls after the host slept 0.5 s (the GPU idle);
every call's time kept, so a slow start shows as a trend; the medians printed. Run on an
H100 on 2026-12-05 (docs/data/warmup_check_2026-12-05_1800_h100.json): no steady gain from
the longer warm-up, so the benchmark keeps its one call.
"""
import json
import sys
import time

import cupy as cp
import numpy as np

from zeta_ref import ZetaConfig, zeta_attention
from gpu_timing import header  # this folder is on the path when run as a script

REPEATS = 10


def per_call(fn, sync, event):
    times = []
    for _ in range(REPEATS):
        a, b = event(), event()
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) if hasattr(a, "elapsed_time")
                     else cp.cuda.get_elapsed_time(a, b))
    sync()
    return times


def runs(fn, sync, event):
    out = {}
    fn(); sync()
    out["one"] = per_call(fn, sync, event)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        fn(); sync()
    out["warmed"] = per_call(fn, sync, event)
    time.sleep(0.5)
    out["idle"] = per_call(fn, sync, event)
    return out


def main() -> None:
    path, shapes = sys.argv[1], sys.argv[2:] or ["1x8x8192", "1x8x65536"]
    try:
        import torch
    except ImportError:
        torch = None
    result = header()
    result["shapes"] = {}
    cfg = ZetaConfig(k=32)
    for shape in shapes:
        b, h, n = (int(x) for x in shape.split("x"))
        rs = cp.random.RandomState(0)
        q, k = (rs.standard_normal((b, h, n, 3), dtype=cp.float32) for _ in range(2))
        v = rs.standard_normal((b, h, n, 64), dtype=cp.float32)
        table = result["shapes"][shape] = {}
        table["zeta"] = runs(lambda: zeta_attention(q, k, v, cfg, backend="cupy"),
                             cp.cuda.Device().synchronize, cp.cuda.Event)
        if torch is not None:
            tq, tk, tv = (torch.randn((b, h, n, 64), device="cuda", dtype=torch.bfloat16)
                          for _ in range(3))
            sdpa = torch.nn.functional.scaled_dot_product_attention
            with torch.inference_mode():
                table["sdpa_bf16"] = runs(lambda: sdpa(tq, tk, tv, is_causal=True),
                                          torch.cuda.synchronize,
                                          lambda: torch.cuda.Event(enable_timing=True))
            tq = tk = tv = None
        for method, seqs in table.items():
            print(shape, method, "  ".join(f"{name} {np.median(t):.3f}" for name, t in seqs.items()),
                  "| first calls after one warm-up:", " ".join(f"{x:.3f}" for x in seqs["one"][:5]),
                  flush=True)
        q = k = v = None
        cp.get_default_memory_pool().free_all_blocks()
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
