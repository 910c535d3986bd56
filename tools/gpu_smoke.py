"""A quick look at the fused GPU pass on the device machine: per-stage and end-to-end times at
a few shapes, next to torch's SDPA (bf16, causal) when torch is there. For development; the
benchmark of record is `zeta-ref bench --backends cupy`.

    PYTHONPATH=$PWD python3 tools/gpu_smoke.py
"""

import sys

import cupy as cp
import numpy as np

import zeta_ref
from zeta_ref.cupy import fused


def events_ms(fn, repeats=20):
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(times))


def main(shapes):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    cfg = zeta_ref.ZetaConfig()
    for b, h, n in shapes:
        rng = cp.random.default_rng(0)
        q = rng.standard_normal((b, h, n, 3), dtype=cp.float32)
        k = rng.standard_normal((b, h, n, 3), dtype=cp.float32)
        v = rng.standard_normal((b, h, n, 64), dtype=cp.float32)
        t = events_ms(lambda: zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy"))
        stages = []
        for _ in range(10):
            marks = []
            fused.forward(q, k, v, cfg, marks=marks)
            marks[-1].synchronize()
            stages.append([cp.cuda.get_elapsed_time(x, y) for x, y in zip(marks, marks[1:])])
        st = np.median(np.array(stages), axis=0)
        line = f"B={b} H={h} N={n}: zeta {t:.3f} ms | " + " ".join(
            f"{name} {s:.3f}" for name, s in zip(fused.STAGE_NAMES, st))
        if torch is not None and n <= 131072:
            tq = torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16)
            s = events_ms(lambda: F.scaled_dot_product_attention(tq, tq, tq, is_causal=True), 10)
            line += f" | sdpa bf16 {s:.3f} ms, ratio {t / s:.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    shapes = [(1, 8, 4096), (1, 8, 16384), (1, 8, 65536), (1, 8, 131072), (16, 8, 65536),
              (1, 8, 1 << 20)]
    if len(sys.argv) > 1:
        shapes = [tuple(int(x) for x in s.split("x")) for s in sys.argv[1:]]
    main(shapes)
