"""The dv kernel of the backward pass (docs/benchmarks.md, "2026-12-03, night"), three versions on
the arguments a backward call gives it, in one run, and whether their dv is bit-identical:
(a) e868bc1's, a thread per (key, four columns) adding one pair at a time; (b) the committed
one, which asks for four pairs before adding any; (c) 16 threads a key reading its pairs 16 at
a time and passing them round by shuffles (not kept; its source is below). Data:
docs/data/backward_ab_2026-12-03.json ("values").

    git show e868bc1:zeta_ref/cupy/backward.cu > /tmp/backward_old.cu
    python docs/data/backward_values_ab.py /tmp/backward_old.cu 1x8x16384 1x8x65536 ...
"""
import json, sys, time
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig
from zeta_ref.cupy import backward as B, _runtime as rt
from zeta_ref.cupy.topk_softmax import narrow_candidates
from zeta_ref.stages.topk_softmax import score_constant
import gpu_timing


def kernel_text(path, start, end="// ----"):
    """From `start` to the next `end` of a source (a kernel and what it needs)."""
    text = open(path).read()
    i = text.index(start)
    return text[i:text.index(end, i)]


HEAD = '#include "zeta_common.cuh"\n'
QUAD = kernel_text(rt.HERE / "backward.cu", "template <typename T> struct Quad;", "// dv alone")
SOURCES = {
    "a": HEAD + QUAD + kernel_text(sys.argv[1], "template <typename T>\n__global__ void zeta_bwd_values"),
    "b": HEAD + QUAD + kernel_text(rt.HERE / "backward.cu",
                                   "template <typename T>\n__global__ void zeta_bwd_values"),
    "c": HEAD + QUAD + """// a / b for 0 <= a and 0 < b. A 64-bit division is a long software routine on the GPU, a
// 32-bit one a short one; the key side divides once per (pair, thread), so it takes the short
// one whenever both numbers fit 32 bits (every size below 2^32 pairs).
__device__ __forceinline__ long long div_u(long long a, long long b) {
    if (((unsigned long long)a | (unsigned long long)b) >> 32 == 0)
        return (long long)((unsigned)a / (unsigned)b);
    return a / b;
}

template <typename T, int NX>
__global__ void zeta_bwd_values(const T* __restrict__ grad, const T* __restrict__ coef_w,
                                const long long* __restrict__ pairs,
                                const long long* __restrict__ start,
                                const long long* __restrict__ key_order,
                                long long rows, long long n, int d_v, int n_slots,
                                T* __restrict__ dv) {
    constexpr int S = NX == 1 ? 8 : NX == 2 ? 4 : 2;  // rows of grad asked for at once
    const int lane = threadIdx.x & 15;
    const unsigned half = 0xffffu << (threadIdx.x & 16);  // the lanes of this half-warp
    bool has[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) has[x] = 64 * x + 4 * lane < d_v;
    const long long groups = ((long long)gridDim.x * blockDim.x) >> 4;
    for (long long t = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 4; t < rows * n;
         t += groups) {
        long long key = (t / n) * n + key_order[t];  // rank t of row r: key r * n + j
        long long at = start[key], end = start[key + 1];
        double acc[NX][4];
#pragma unroll
        for (int x = 0; x < NX; ++x)
#pragma unroll
            for (int w = 0; w < 4; ++w) acc[x][w] = 0.0;
        long long p = at + lane < end ? pairs[at + lane] : 0;  // this lane's pair of the 16
        for (; at < end; at += 16) {
            int m = end - at < 16 ? (int)(end - at) : 16;  // pairs in this group of 16
            T cw = lane < m ? coef_w[p] : (T)0;
            long long row = div_u(p, n_slots) * d_v;  // where the pair's query's grad begins
            long long next = at + 16 + lane < end ? pairs[at + 16 + lane] : 0;  // asked now
            for (int j0 = 0; j0 < m; j0 += S) {
                T c[S], g[S][NX][4];
#pragma unroll
                for (int u = 0; u < S; ++u) {
                    int j = j0 + u;
                    c[u] = __shfl_sync(half, cw, j & 15, 16);
                    long long rj = __shfl_sync(half, row, j & 15, 16);
#pragma unroll
                    for (int x = 0; x < NX; ++x) {
                        if (j < m && has[x]) {
                            Quad<T>::load(grad + rj + 64 * x + 4 * lane, g[u][x]);
                        } else {
#pragma unroll
                            for (int w = 0; w < 4; ++w) g[u][x][w] = (T)0;
                        }
                    }
                }
#pragma unroll
                for (int u = 0; u < S; ++u) {
                    if (j0 + u < m) {
                        // as pair_term: each product rounded, then added
#pragma unroll
                        for (int x = 0; x < NX; ++x)
#pragma unroll
                            for (int w = 0; w < 4; ++w)
                                acc[x][w] += (double)mul_rn(c[u], g[u][x][w]);
                    }
                }
            }
            p = next;
        }
#pragma unroll
        for (int x = 0; x < NX; ++x) {
            if (has[x]) {
#pragma unroll
                for (int w = 0; w < 4; ++w) dv[key * d_v + 64 * x + 4 * lane + w] = (T)acc[x][w];
            }
        }
    }
}

""",
}
NAMES = {"a": "zeta_bwd_values<float>", "b": "zeta_bwd_values<float>",
         "c": "zeta_bwd_values<float, 1>"}
fns = {x: cp.RawModule(code=SOURCES[x], options=rt.OPTIONS,
                       name_expressions=(NAMES[x],)).get_function(NAMES[x]) for x in "abc"}


def timed(fn, reps=15):
    return gpu_timing.timed(fn, reps)

res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shapes": {}}
cfg = ZetaConfig()
for spec in sys.argv[2:]:
    b, h, n = (int(x) for x in spec.split("x"))
    rs = cp.random.RandomState(0)
    q, k, v, g = (rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64, 64))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    rows = b * h
    cand = narrow_candidates(inter.candidates, n)
    pos = B.visit_order(None, rows, n)
    c = np.float32(score_constant("cauchy", cfg.gamma, 3))
    out = B.query_pass(q, k, v, cand, inter.mean_k, inter.mean_v, True, g, pos, "cauchy", c)
    coef_w = out[3]
    pairs, starts = B.pair_lists(cand, rows, n)
    dvs = {x: cp.full(g.shape, np.nan, np.float32) for x in "abc"}
    calls = {
        "a": lambda: rt.launch(fns["a"], rows * n * 16, (g, coef_w, pairs, starts, rt.i64(rows), rt.i64(n), np.int32(64), np.int32(32), dvs["a"])),
        "b": lambda: rt.launch(fns["b"], rows * n * 16, (g, coef_w, pairs, starts, pos, rt.i64(rows), rt.i64(n), np.int32(64), np.int32(32), dvs["b"])),
        "c": lambda: rt.launch(fns["c"], 16 * rows * n, (g, coef_w, pairs, starts, pos, rt.i64(rows), rt.i64(n), np.int32(64), np.int32(32), dvs["c"])),
    }
    for f in calls.values(): f(); f()
    same = bool((dvs["a"] == dvs["b"]).all()) and bool((dvs["a"] == dvs["c"]).all())
    ts = {x: [] for x in "abc"}
    for _ in range(3):
        for x in "abc":
            ts[x].append(timed(calls[x]))
    r = {"identical": same, **{x: float(np.median(v)) for x, v in ts.items()}}
    res["shapes"][spec] = r
    print(spec, json.dumps(r), flush=True)
print("JSON", json.dumps(res))
