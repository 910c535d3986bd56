// An experiment of docs/benchmarks.md, timed by docs/data/attention_narrow_ab.py; not part of
// the library. The attention kernel zeta_topk_fast of topk_softmax.cu with G = 8 or 4 threads
// a query instead of 16 (G = 16: the library's kernel written this way, a check):
//
// The library's kernel gives each query 16 lanes, and each lane one float4 of every 64-column
// stripe of a value row: per candidate a lane reads the staged (key, weight) pair, computes the
// row's address and makes ONE 16-byte load for four multiply-adds. Here a lane takes 16 / G
// float4 of each stripe (lane l the columns 4 (l + G p) .. + 3, p < 16 / G, so that each load
// instruction of the G lanes reads 16 G contiguous bytes), so the pair and the address serve
// 16 / G loads, and a lane has 16 / G times as many loads in flight; a warp serves 32 / G
// queries at once. The kernel is bound by the latency of its loads (docs/benchmarks.md, the
// Nsight Compute readings): whether more loads in flight a thread, with more registers and
// fewer queries a warp, pays is what the script measures.
//
// The arithmetic is the library kernel's, in its order (up to the order of the two operands of
// an addition, which IEEE addition does not see), so the outputs must be bit-identical to it
// (the script checks that first). Lane l of G stands for the library's lanes l + G h,
// h < 16 / G, and holds their slots l + G h + 16 u; the sum of the affinities keeps the
// library's tree: each of those lanes' partial sums first, then its xor steps 8, 4, ... (the
// steps of G and above add partials a lane holds, the steps below G are shuffles, with the
// same partners), so every addition has the library's operands.
#include "topk_softmax.cu"

// zeta_topk_narrow<G, UL, NX, UNROLL, DK> itself now lives in topk_softmax.cu (the library
// takes G = 8, unroll 8, since 2026-12-05); the other variants are instantiated here, in the
// kernel's general form (DK = 0, any d_k).
// the variants docs/data/attention_narrow_ab.py times: k = 32 (33 slots with the mean term: 3
// of the library's lanes' slots each), d_v = 64 (one stripe); G = 8, unroll 8 is the library's
#define ZETA_TOPK_NARROW(G, UNROLL)                                                            \
    template __global__ void zeta_topk_narrow<G, 3, 1, UNROLL, 0>(                             \
        const float*, const float*, const float*, const int*, const float*, const float*, int, \
        const unsigned long long*, unsigned long long, long long, long long, int, int, int,    \
        int, float, float, float*, float*, int, float*, int);
ZETA_TOPK_NARROW(16, 8)
ZETA_TOPK_NARROW(8, 4)
ZETA_TOPK_NARROW(4, 4)
ZETA_TOPK_NARROW(4, 2)
