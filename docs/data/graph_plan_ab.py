"""A probe of a planned call (docs/benchmarks.md, issue 10's analysis): the whole forward call,
its value checks included, captured once into a CUDA graph for fixed input arrays and replayed,
against `zeta_attention(..., backend="cupy")` called as a user calls it, and torch's
scaled_dot_product_attention (causal, bf16) in the same run where torch is importable.

At small N the call is bound by the host: at 1 x 8 x 8192 the fused pass's kernels take about
0.25 ms when replayed from a graph (docs/data/graph_probe.py, 2026-12-04) but the call took
0.475 ms (the 03:58 run of 2026-12-04), against 0.244 ms for SDPA bf16: the third target of
the issue (faster than SDPA from N = 8192) needs the host's share gone. A graph replays fixed
addresses, so a plan is made for given q, k, v arrays (their contents may change between
calls, as with a torch CUDA graph's static inputs) and owns every buffer of the pass (a memory
pool of its own that nothing else allocates from); the output it returns is its own buffer,
overwritten by the next call. The checks stay: the graph ends with the max |x| of q, k and
v, and each call reads those three numbers back (one transfer, which waits for the pass) and
refuses NaN, inf or too large values with zeta_attention's own words before returning.

Written for one H200 (2026-12-05) and run there that day (docs/benchmarks.md):

    PYTHONPATH=$PWD python docs/data/graph_plan_ab.py out.json 1x8x4096 1x8x8192 1x8x16384 1x8x65536

First, at each shape, the plan's output must be the call's, bit for bit, on two contents of
the inputs (the second written into the same arrays after the plan was made), and a NaN
written into v must make the plan refuse the call as zeta_attention does; then each is timed
(CUDA events around the whole call; medians of three medians of 25 calls, the call first and
again last, for drift).
"""
import json
import sys

import numpy as np
import cupy as cp

from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref._checks import check_qkv_values
from zeta_ref.cupy import fused
from zeta_ref.cupy._runtime import max_abs_all
from gpu_timing import benchmark_inputs, header, rounds


class GraphPlan:
    """zeta_attention(q, k, v, cfg, backend="cupy") for these very arrays, as one graph."""

    def __init__(self, q, k, v, cfg: ZetaConfig):
        self.q, self.k, self.v = q, k, v
        self.pool = cp.cuda.MemoryPool()  # the plan's buffers: nothing else allocates here
        self.stream = cp.cuda.Stream(non_blocking=True)
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self._pass(cfg)  # fills the pool, so that the capture allocates no new memory
            self.stream.synchronize()
            self.stream.begin_capture()
            self.out, self.largest = self._pass(cfg)
            self.graph = self.stream.end_capture()

    def _pass(self, cfg):
        out = fused.forward(self.q, self.k, self.v, cfg)
        return out, max_abs_all([(x, None) for x in (self.q, self.k, self.v)])

    def __call__(self):
        """The output (the plan's own buffer), after the checks of zeta_attention. On the
        current stream, as the call runs, so that it follows what was written to q, k, v
        there (the capture needed a stream of its own: the default one cannot be captured)."""
        stream = cp.cuda.get_current_stream()
        self.graph.launch(stream=stream)
        largest = [float(x) for x in self.largest.get(stream=stream)]  # waits for the pass
        check_qkv_values(self.q, self.k, self.v, largest, cp)
        return self.out


def check(shape: str, cfg: ZetaConfig) -> dict:
    """The plan against the call at ``shape``: the same bits on two contents, and a NaN
    refused with the call's words."""
    q, k, v = benchmark_inputs(shape)
    plan = GraphPlan(q, k, v, cfg)
    same = []
    for contents in range(2):
        if contents:  # new values in the same arrays
            for x in (q, k, v):
                x[...] = cp.random.default_rng(contents).standard_normal(x.shape,
                                                                         dtype=np.float32)
        want = zeta_attention(q, k, v, cfg, backend="cupy")
        got = plan()
        same.append(bool(cp.array_equal(got.view(np.uint32), want.view(np.uint32))))
    v[0, 0, 3, 5] = np.nan
    words = {}
    for name, call in (("call", lambda: zeta_attention(q, k, v, cfg, backend="cupy")),
                       ("plan", plan)):
        try:
            call()
            words[name] = None
        except ValueError as err:
            words[name] = str(err)
    return {"same_bits": same, "nan_refused": words["call"] is not None
            and words["plan"] == words["call"], "words": words}


def sdpa(shape: str):
    """torch's causal SDPA in bf16 on the benchmark's shape, or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    b, h, n = (int(x) for x in shape.split("x"))
    q, k, v = (torch.randn(b, h, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cfg = ZetaConfig()
    result = {**header(), "shapes": {}}
    for shape in sys.argv[2:]:
        checked = check(shape, cfg)
        print(f"{shape} plan: same bits {checked['same_bits']}, NaN refused alike "
              f"{checked['nan_refused']}", flush=True)
        row = {"checks": checked}
        if all(checked["same_bits"]) and checked["nan_refused"]:
            q, k, v = benchmark_inputs(shape)
            plan = GraphPlan(q, k, v, cfg)
            calls = [("call", lambda: zeta_attention(q, k, v, cfg, backend="cupy")),
                     ("plan", plan),
                     ("call, again", lambda: zeta_attention(q, k, v, cfg, backend="cupy"))]
            dense = sdpa(shape)
            if dense is not None:
                calls.append(("SDPA bf16", dense))
            for label, fn in calls:
                row[label] = rounds(fn, warm=3)
            line = "  ".join(f"{label} {ms:.4f} ms" for label, ms in row.items()
                             if label != "checks")
            print(f"{shape} {line}", flush=True)
            if dense is not None:
                print(f"{shape} plan / SDPA bf16 {row['plan'] / row['SDPA bf16']:.3f}, call / "
                      f"SDPA bf16 {row['call'] / row['SDPA bf16']:.3f}", flush=True)
        result["shapes"][shape] = row
        with open(sys.argv[1], "w") as f:  # after each shape
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
