// An experiment of docs/benchmarks.md, timed by docs/data/attention_ahead_ab.py; not part of
// the library. The attention kernel zeta_topk_fast of topk_softmax.cu, with one change:
//
// Each half-warp takes `rounds` queries one after the other, and each query is a chain of
// dependent loads: its place in the visiting order, then its candidates, then their keys (for
// the scores), then their value rows (for the weighted sum). The kernel is bound by the
// latency of those loads (docs/benchmarks.md, the Nsight Compute readings). Here a round loads
// the NEXT round's place and candidates just before its own weighted sum, so that they arrive
// while the value rows are summed: a round then waits for two links of the chain (keys, then
// value rows), not four. UNROLL is the unrolling of the weighted sum's loop (8 in the
// library), and MIN_BLOCKS the blocks an SM that __launch_bounds__ asks for (0: none).
//
// The arithmetic and its order are the library kernel's, so the outputs must be bit-identical
// to it (the script checks that before it times anything).
#include "topk_softmax.cu"

// The visiting order's query `task` (past the end: a copy of the last query, as in the library
// kernel): its index r n + i, and its row r in `row`.
__device__ __forceinline__ long long ahead_place(long long task, long long total_q, long long n,
                                                 const unsigned long long* __restrict__ visit,
                                                 unsigned long long visit_mask, long long& row) {
    if (task >= total_q) task = total_q - 1;
    row = task / n;
    return row * n + (long long)(visit[task] & visit_mask);
}

// The candidates of query `at` in lane `lane`'s slots lane + 16 u: -2 for the mean term's
// slot, -1 past the last slot.
template <int U>
__device__ __forceinline__ void ahead_candidates(long long at, const int* __restrict__ cand,
                                                 int n_slots, int slots, int lane, int (&c)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int s = lane + 16 * u;
        c[u] = s < slots ? (s < n_slots ? cand[at * n_slots + s] : -2) : -1;
    }
}

// The kernel's parameters (the library kernel's) and the arguments that pass them on.
#define AHEAD_PARAMS                                                                           \
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,    \
        const int* __restrict__ cand, const float* __restrict__ mean_k,                        \
        const float* __restrict__ mean_v, int with_mean,                                       \
        const unsigned long long* __restrict__ visit, unsigned long long visit_mask,           \
        long long rows, long long n, int d_k, int d_v, int n_slots, int score, float add,      \
        float root_d, float* __restrict__ out, float* __restrict__ weights, int with_weights,  \
        float* __restrict__ mean_weight, int rounds
#define AHEAD_ARGS                                                                             \
    q, k, v, cand, mean_k, mean_v, with_mean, visit, visit_mask, rows, n, d_k, d_v, n_slots,   \
        score, add, root_d, out, weights, with_weights, mean_weight, rounds

// AHEAD = 1: only the next round's place is loaded ahead (the chain: candidates, keys, value
// rows); AHEAD = 2: its candidates too (keys, value rows); AHEAD = 3: both, but loaded after
// the weighted sum rather than before it (where they arrive later, during the output's
// stores and the next round's start, and the compiler keeps the library kernel's registers:
// nvcc 13 gives 53-56 a thread against 84-86 for AHEAD = 1, 2, and 52 for the library's).
template <int U, int NX, int AHEAD, int UNROLL>
__device__ __forceinline__ void ahead_body(AHEAD_PARAMS) {
    const unsigned full = 0xffffffffu;
    __shared__ int2 staged[ZETA_FAST_THREADS / 16][16 * U];
    int2* mine = staged[threadIdx.x >> 4];
    int lane = threadIdx.x & 15;
    const long long per_run = ZETA_FAST_THREADS / 16;
    long long first = blockIdx.x * per_run * rounds + (threadIdx.x >> 4);
    long long total_q = rows * n;
    bool exp_score = score == 1 || score == 2;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool has[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) has[x] = 64 * x + 4 * lane < d_v;
    // the first round's query (and candidates); later rounds' are loaded one round ahead
    int jn[U];
    long long r_next;
    long long at_next = ahead_place(first, total_q, n, visit, visit_mask, r_next);
    if (AHEAD >= 2) ahead_candidates<U>(at_next, cand, n_slots, slots, lane, jn);
#pragma unroll 1  // one round at a time (unrolled, the rounds' registers add up)
    for (long long round = 0; round < rounds; ++round) {
        long long task = first + round * per_run;
        bool live = task < total_q;
        long long at = at_next, r = r_next;
        int jj[U];  // the slot's key; -1 empty (D9), -2 the mean term
        if (AHEAD >= 2) {
#pragma unroll
            for (int u = 0; u < U; ++u) jj[u] = jn[u];
        } else {
            ahead_candidates<U>(at, cand, n_slots, slots, lane, jj);
        }
        const float* qi = q + at * d_k;
        const float* keys = k + r * n * d_k;
        const float* vals = v + r * n * d_v + 4 * lane;
        // step 1, the scores: lane l takes slots l, l + 16, ...
        float sc[U];
        float top = -__int_as_float(0x7f800000);  // -inf
#pragma unroll
        for (int u = 0; u < U; ++u) {
            sc[u] = 0.0f;
            if (jj[u] != -1) {
                const float* key = jj[u] >= 0 ? keys + (long long)jj[u] * d_k : mean_k + at * d_k;
                sc[u] = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
                top = fmaxf(top, sc[u]);
            }
        }
        // step 2: the largest logit and the sum of the affinities over the 16 lanes
        for (int m = 8; m > 0; m >>= 1) top = fmaxf(top, __shfl_xor_sync(full, top, m, 16));
        if (!exp_score || isinf(top)) top = 0.0f;
        float total = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (jj[u] != -1) sc[u] = exp_score ? expf(sc[u] - top) : sc[u];
            total += jj[u] != -1 ? sc[u] : 0.0f;
        }
        for (int m = 8; m > 0; m >>= 1) total += __shfl_xor_sync(full, total, m, 16);
        if (!(total > 0.0f)) total = 1.0f;
        // step 3: the weights, written out and staged for the weighted sum
        float w_mean = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int s = lane + 16 * u;
            float w = jj[u] != -1 ? sc[u] / total : 0.0f;
            if (s < n_slots) {
                if (live && with_weights) weights[at * n_slots + s] = w;
                mine[s] = make_int2(jj[u], __float_as_int(w));
            }
            if (s == n_slots && with_mean) w_mean = w;
        }
        for (int m = 8; m > 0; m >>= 1) w_mean += __shfl_xor_sync(full, w_mean, m, 16);
        __syncwarp(full);
        // the change: the next round's place (and candidates), in flight during the sum below
        if (AHEAD != 3 && round + 1 < rounds) {
            at_next = ahead_place(task + per_run, total_q, n, visit, visit_mask, r_next);
            if (AHEAD == 2) ahead_candidates<U>(at_next, cand, n_slots, slots, lane, jn);
        }
        // step 4: the weighted sum, slot by slot in slot order, the mean term last
        float4 acc[NX];
#pragma unroll
        for (int x = 0; x < NX; ++x) acc[x] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll UNROLL
        for (int t = 0; t < n_slots; ++t) {
            int2 e = mine[t];
            float wt = __int_as_float(e.y);
            bool ok = e.x >= 0;
            const float* row = vals + (long long)(ok ? e.x : 0) * d_v;
#pragma unroll
            for (int x = 0; x < NX; ++x) {
                float4 y = make_float4(0.f, 0.f, 0.f, 0.f);
                if (ok && has[x]) y = __ldg(reinterpret_cast<const float4*>(row + 64 * x));
                acc[x].x += wt * y.x; acc[x].y += wt * y.y;
                acc[x].z += wt * y.z; acc[x].w += wt * y.w;
            }
        }
        if (with_mean) {
            const float* row = mean_v + at * d_v + 4 * lane;
#pragma unroll
            for (int x = 0; x < NX; ++x) {
                if (has[x]) {
                    float4 y = *reinterpret_cast<const float4*>(row + 64 * x);
                    acc[x].x += w_mean * y.x; acc[x].y += w_mean * y.y;
                    acc[x].z += w_mean * y.z; acc[x].w += w_mean * y.w;
                }
            }
        }
        if (AHEAD == 3 && round + 1 < rounds) {  // the same, after the sum
            at_next = ahead_place(task + per_run, total_q, n, visit, visit_mask, r_next);
            ahead_candidates<U>(at_next, cand, n_slots, slots, lane, jn);
        }
        __syncwarp(full);  // every lane has read `mine` before the next round writes it
        if (live) {
#pragma unroll
            for (int x = 0; x < NX; ++x)
                if (has[x]) *reinterpret_cast<float4*>(out + at * d_v + 64 * x + 4 * lane) = acc[x];
            if (lane == 0) mean_weight[at] = w_mean;
        }
    }
}

// The kernels: without __launch_bounds__, as the library's, and with one asking for
// MIN_BLOCKS blocks of 256 threads an SM (the compiler then keeps to 65536 / (256 MIN_BLOCKS)
// registers a thread, spilling the rest to local memory).
template <int U, int NX, int AHEAD, int UNROLL>
__global__ void zeta_topk_ahead(AHEAD_PARAMS) {
    ahead_body<U, NX, AHEAD, UNROLL>(AHEAD_ARGS);
}

template <int U, int NX, int AHEAD, int UNROLL, int MIN_BLOCKS>
__global__ void __launch_bounds__(ZETA_FAST_THREADS, MIN_BLOCKS)
zeta_topk_ahead_bounded(AHEAD_PARAMS) {
    ahead_body<U, NX, AHEAD, UNROLL>(AHEAD_ARGS);
}

// the variants docs/data/attention_ahead_ab.py times (the first: zeta_topk_fast<3, 1> but for
// the place of the next round); MIN_BLOCKS 0: the kernel without __launch_bounds__
#define ZETA_TOPK_AHEAD(AHEAD, UNROLL, MIN_BLOCKS)                                             \
    ZETA_TOPK_AHEAD_##MIN_BLOCKS(AHEAD, UNROLL, MIN_BLOCKS)
#define ZETA_TOPK_AHEAD_0(AHEAD, UNROLL, MIN_BLOCKS)                                           \
    template __global__ void zeta_topk_ahead<3, 1, AHEAD, UNROLL>(AHEAD_PARAMS);
#define ZETA_TOPK_AHEAD_B(AHEAD, UNROLL, MIN_BLOCKS)                                           \
    template __global__ void zeta_topk_ahead_bounded<3, 1, AHEAD, UNROLL, MIN_BLOCKS>(AHEAD_PARAMS);
#define ZETA_TOPK_AHEAD_3 ZETA_TOPK_AHEAD_B
#define ZETA_TOPK_AHEAD_4 ZETA_TOPK_AHEAD_B
ZETA_TOPK_AHEAD(1, 8, 0)
ZETA_TOPK_AHEAD(2, 8, 0)
ZETA_TOPK_AHEAD(2, 8, 3)
ZETA_TOPK_AHEAD(2, 8, 4)
ZETA_TOPK_AHEAD(2, 16, 3)
ZETA_TOPK_AHEAD(3, 8, 0)
