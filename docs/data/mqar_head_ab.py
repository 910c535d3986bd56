"""The MQAR model's output head on the GPU: its three matrix products, as zeta_ref.mqar.model
writes them and in the other orientations cuBLAS could be given (docs/experiments.md, "What a
training step costs": two of them took 2.3 and 2.6 ms of a 36 ms step at N = 128, batch 512).

    python docs/data/mqar_head_ab.py [B] [P] [V] [d]

B sequences of P scored positions each (default 512 x 8), V the vocabulary (8192), d =
d_model (256), float32. For each product: the median device time of 20 calls
(cupyx.profiler.benchmark, after 3 warm-up calls) of every variant, and its largest difference
from the first variant relative to that variant's largest magnitude (the same product summed
in another order: float32 rounding only). The first variant of the first two products is the
3-D form zeta_ref.mqar.model used until 2026-12-04 ((B, P, d) @ (d, V): a stack of B
products of P rows each, as matmul treats it); the second is the 2-D form it uses now (B P rows at once).
"""
import sys

import numpy as np
import cupy as cp
import cupyx.profiler


def main():
    defaults = ["512", "8", "8192", "256"]
    b, p, v, d = (int(x) for x in (sys.argv[1:] + defaults[len(sys.argv) - 1:]))
    m = b * p
    rng = cp.random.RandomState(0)
    h = rng.standard_normal((m, d), dtype=cp.float32)  # the final layer norm's output
    wte = rng.standard_normal((v, d), dtype=cp.float32) * 0.02  # the tied embedding
    dlogits = rng.standard_normal((m, v), dtype=cp.float32) / m  # the loss's gradient
    h3, dlogits3 = h.reshape(b, p, d), dlogits.reshape(b, p, v)
    products = {
        "logits = h @ wte.T  (M, V)": [
            ("h3 @ wte.T  (3-D, model.py before)", lambda: (h3 @ wte.T).reshape(m, v)),
            ("h @ wte.T  (2-D, model.py now)", lambda: h @ wte.T),
            ("(wte @ h.T).T", lambda: (wte @ h.T).T),
            ("h @ ascontiguousarray(wte.T)", lambda: h @ cp.ascontiguousarray(wte.T)),
        ],
        "dh = dlogits @ wte  (M, d)": [
            ("dlogits3 @ wte  (3-D, model.py before)", lambda: (dlogits3 @ wte).reshape(m, d)),
            ("dlogits @ wte  (2-D, model.py now)", lambda: dlogits @ wte),
            ("(wte.T @ dlogits.T).T", lambda: (wte.T @ dlogits.T).T),
        ],
        "dwte = dlogits.T @ h  (V, d)": [
            ("dlogits.T @ h  (model.py)", lambda: dlogits.T @ h),
            ("(h.T @ dlogits).T", lambda: (h.T @ dlogits).T),
            ("ascontiguousarray(dlogits.T) @ h", lambda: cp.ascontiguousarray(dlogits.T) @ h),
        ],
    }
    print(f"B = {b}, P = {p}, M = {m}, V = {v}, d = {d}, float32; "
          f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cp.__version__}")
    for title, variants in products.items():
        print(title)
        want = variants[0][1]()
        scale = float(cp.abs(want).max())
        for name, fn in variants:
            got = fn()
            diff = float(cp.abs(got - want).max()) / scale
            r = cupyx.profiler.benchmark(fn, (), n_repeat=20, n_warmup=3)
            print(f"  {name:40s} {np.median(r.gpu_times[0]) * 1e3:8.3f} ms   "
                  f"max diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
