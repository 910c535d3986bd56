// An experiment of docs/benchmarks.md, run by docs/data/window_attend_ab.py; not part of the
// library. Stages 5 and 6 of the fused pass (fused.cu's window, topk_softmax.cu's attention)
// in one kernel, so that a query's candidates never leave the multiprocessor.
//
// The library runs them as two kernels: zeta_fused_window_group<8> writes each query's k
// candidates (int32, R N k of them: 67 MB at 1 x 8 x 65536) and zeta_topk_fast<3, 1> reads
// them back, after it has read the query's place in the visiting order. Its chain of
// dependent loads per query is: place, candidates, their keys, their value rows. Here a group
// of 16 threads (the attention's half-warp) finds the query's window in the prefix pools
// (window_walk.cuh's group_window, unchanged, at 16 threads a query instead of 8) and writes
// it to shared memory; the same 16 threads then weigh and sum it as zeta_topk_fast does,
// reading the candidates from there. What goes: the candidates' write and read, one launch,
// and two of the four links of the attention's chain (the place is the window's, read once;
// the candidates are in shared memory). What it costs: the window's steps at 16 threads a
// query (docs/data/window_rounds.py: 7.8 rounds of loads a query at N = 65536, against 11.8
// at 8 threads, but twice the threads), and the registers of both phases in one kernel.
//
// The queries are visited in the same order (each row's, in Z order), the window's steps
// and the attention's arithmetic are the library's, in the library's order: the candidates
// and the outputs must be the library's, bit for bit (the script checks both before it times
// anything). For W = k (no re-rank), float32, d_v a multiple of 4 up to 64 NX, k + 1 <= 16 U.
//
// MERGED = 1 takes the pools and each query's place from window_merged.cu's scan (each row's
// queries sorted into its keys; the section of docs/benchmarks.md before this one) instead of
// searching the library's pools: both experiments at once.
#include "window_merged.cu"  // and the fused.cu it includes
#include "topk_softmax.cu"

// Grid and runs as zeta_topk_fast's launch (launch_topk): blocks of ZETA_FAST_THREADS threads,
// 16 queries a run, `rounds` runs a block. Task t is the t-th query of all rows in the
// visiting order: the query of sorted key R N + t (fused.cu's packing), or with MERGED the
// entry queries[t] and its place places[t] (zeta_merged_scatter's).
template <int U, int NX, int MERGED>
__device__ __forceinline__ void window_attend(const unsigned long long* __restrict__ sorted,
                                   const unsigned long long* __restrict__ levels, int n_levels,
                                   int s0_bits, int code_bits, int pos_bits, long long rows,
                                   long long n, int causal, long long chunk,
                                   const float* __restrict__ q, const float* __restrict__ k,
                                   const float* __restrict__ v,
                                   const float* __restrict__ mean_k,
                                   const float* __restrict__ mean_v, int with_mean, int d_k,
                                   int d_v, int n_slots, int score, float add, float root_d,
                                   float* __restrict__ out, float* __restrict__ mean_weight,
                                   int* __restrict__ cand, int write_cand,
                                   const unsigned long long* __restrict__ queries,
                                   const int* __restrict__ places, int rounds) {
    const unsigned full = 0xffffffffu;
    __shared__ int2 staged[ZETA_FAST_THREADS / 16][16 * U];  // as zeta_topk_fast's
    __shared__ int window[ZETA_FAST_THREADS / 16][16 * U];   // each query's candidates
    int2* mine = staged[threadIdx.x >> 4];
    int* c = window[threadIdx.x >> 4];
    Packing pk{code_bits, pos_bits};
    Group<16> g;  // the half-warp: g.lane == threadIdx.x & 15
    int lane = threadIdx.x & 15;
    const long long per_run = ZETA_FAST_THREADS / 16;
    long long first = blockIdx.x * per_run * rounds + (threadIdx.x >> 4);
    long long total_q = rows * n;
    bool exp_score = score == 1 || score == 2;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool has[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) has[x] = 64 * x + 4 * lane < d_v;
    for (long long round = 0; round < rounds; ++round) {
        long long task = first + round * per_run;
        bool live = task < total_q;
        if (!live) task = total_q - 1;  // a copy of the last query, nothing written
        // queries: rows R .. 2R-1 of the library's sorted keys, or the merged scan's
        unsigned long long qkey = MERGED ? queries[task] : sorted[total_q + task];
        long long r = task / n, i = pk.pos(qkey), at = r * n + i;
        // stage 5: the window, as zeta_fused_window_group (or zeta_merged_window_group), into
        // shared memory
        long long L = pool_length(i, n, causal, chunk);
        int level = pool_level(L, n_levels, s0_bits);
        long long found = 0;
        if constexpr (MERGED) {
            long long size = level < n_levels ? (long long)1 << (s0_bits + level) : n;
            PlacedPool pool{PackedPool{levels + level_start(level, rows, s0_bits) + r * size,
                                       size, 0ULL, pk},
                            size, (long long)places[task]};
            found = L > 0 ? group_window(pool, L, 0ULL, (long long)n_slots, g, c) : 0;
        } else {
            PackedPool pool = prefix_pool(sorted, levels, rows, n_levels, s0_bits, r, n, level,
                                          pk);
            found = L > 0 ? group_window(pool, L, pk.code(qkey), (long long)n_slots, g, c) : 0;
        }
        for (long long s = found + lane; s < n_slots; s += 16) c[s] = -1;  // D9
        __syncwarp(full);  // the window is in shared memory for all 16 lanes
        if (live && write_cand)  // for the checks only
            for (int s = lane; s < n_slots; s += 16) cand[at * n_slots + s] = c[s];
        // stage 6: zeta_topk_fast's steps 1 to 4, the candidates read from `c`
        const float* qi = q + at * d_k;
        const float* keys = k + r * n * d_k;
        const float* vals = v + r * n * d_v + 4 * lane;
        float sc[U];
        int jj[U];
        float top = -__int_as_float(0x7f800000);  // -inf
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int s = lane + 16 * u;
            jj[u] = -1;
            sc[u] = 0.0f;
            if (s < slots) {
                jj[u] = s < n_slots ? c[s] : -2;
                if (jj[u] != -1) {
                    const float* key = jj[u] >= 0 ? keys + (long long)jj[u] * d_k
                                                  : mean_k + at * d_k;
                    sc[u] = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
                    top = fmaxf(top, sc[u]);
                }
            }
        }
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
        float w_mean = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int s = lane + 16 * u;
            float w = jj[u] != -1 ? sc[u] / total : 0.0f;
            if (s < n_slots) {
                mine[s] = make_int2(jj[u], __float_as_int(w));
            }
            if (s == n_slots && with_mean) w_mean = w;
        }
        for (int m = 8; m > 0; m >>= 1) w_mean += __shfl_xor_sync(full, w_mean, m, 16);
        __syncwarp(full);
        float4 acc[NX];
#pragma unroll
        for (int x = 0; x < NX; ++x) acc[x] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
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
        __syncwarp(full);  // `mine` and `c` are read before the next round writes them
        if (live) {
#pragma unroll
            for (int x = 0; x < NX; ++x)
                if (has[x]) *reinterpret_cast<float4*>(out + at * d_v + 64 * x + 4 * lane) = acc[x];
            if (lane == 0) mean_weight[at] = w_mean;
        }
    }
}

// The kernel as NVRTC compiles it (72 registers under nvcc 13.0: three blocks an SM), and
// the same with __launch_bounds__ asking for MIN_BLOCKS blocks an SM (4: at most 64
// registers; 5: at most 48), in case the occupancy pays for the spills; and both with the
// merged pools and places. `sorted` is unused with them (`queries`, `places` without).
#define ZETA_WINDOW_ATTEND_ARGS                                                                \
    const unsigned long long *sorted, const unsigned long long *levels, int n_levels,          \
        int s0_bits, int code_bits, int pos_bits, long long rows, long long n, int causal,     \
        long long chunk, const float *q, const float *k, const float *v, const float *mean_k,  \
        const float *mean_v, int with_mean, int d_k, int d_v, int n_slots, int score,          \
        float add, float root_d, float *out, float *mean_weight, int *cand, int write_cand,    \
        const unsigned long long *queries, const int *places, int rounds
#define ZETA_WINDOW_ATTEND_CALL(MERGED)                                                        \
    window_attend<U, NX, MERGED>(sorted, levels, n_levels, s0_bits, code_bits, pos_bits, rows, \
                                 n, causal, chunk, q, k, v, mean_k, mean_v, with_mean, d_k,    \
                                 d_v, n_slots, score, add, root_d, out, mean_weight, cand,     \
                                 write_cand, queries, places, rounds)

template <int U, int NX>
__global__ void zeta_window_attend(ZETA_WINDOW_ATTEND_ARGS) { ZETA_WINDOW_ATTEND_CALL(0); }

template <int U, int NX, int MIN_BLOCKS>
__global__ void __launch_bounds__(ZETA_FAST_THREADS, MIN_BLOCKS)
zeta_window_attend_bounded(ZETA_WINDOW_ATTEND_ARGS) { ZETA_WINDOW_ATTEND_CALL(0); }

template <int U, int NX>
__global__ void zeta_window_attend_merged(ZETA_WINDOW_ATTEND_ARGS) {
    ZETA_WINDOW_ATTEND_CALL(1);
}

template <int U, int NX, int MIN_BLOCKS>
__global__ void __launch_bounds__(ZETA_FAST_THREADS, MIN_BLOCKS)
zeta_window_attend_merged_bounded(ZETA_WINDOW_ATTEND_ARGS) { ZETA_WINDOW_ATTEND_CALL(1); }

template __global__ void zeta_window_attend<1, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend<2, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend<3, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend<3, 2>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_bounded<3, 1, 4>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_bounded<3, 1, 5>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_merged<1, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_merged<2, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_merged<3, 1>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_merged<3, 2>(ZETA_WINDOW_ATTEND_ARGS);
template __global__ void zeta_window_attend_merged_bounded<3, 1, 5>(ZETA_WINDOW_ATTEND_ARGS);
