"""How much of the fused pass's time at small N is the host's: the pass captured once into a CUDA
graph (cupy stream capture) and replayed, against the pass launched from Python; the same
output, bit for bit (docs/benchmarks.md). `python docs/data/graph_probe.py`, B = 1, H = 8."""
import traceback
import numpy as np, cupy as cp
from zeta_ref import ZetaConfig
from zeta_ref.cupy import fused
from gpu_timing import rounds

cfg = ZetaConfig()
for n in (4096, 8192, 16384, 65536):
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((1, 8, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((1, 8, n, 64)).astype(np.float32))
    want = fused.forward(q, k, v, cfg)
    t_plain = rounds(lambda: fused.forward(q, k, v, cfg), warm=3)
    try:
        s = cp.cuda.Stream(non_blocking=True)
        with s:
            fused.forward(q, k, v, cfg)  # warm the pool on this stream
            s.synchronize()
            s.begin_capture()
            out = fused.forward(q, k, v, cfg)
            g = s.end_capture()
        g.launch(stream=s); s.synchronize()
        same = bool(cp.array_equal(out, want))
        def replay():
            g.launch(stream=cp.cuda.get_current_stream())
        t_graph = rounds(replay, warm=3)
        print(n, "plain %.4f ms  graph %.4f ms  same %s" % (t_plain, t_graph, same), flush=True)
    except Exception:
        traceback.print_exc()
        print(n, "plain %.4f ms  graph failed" % t_plain, flush=True)
