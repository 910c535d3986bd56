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

template <int G, int UL, int NX, int UNROLL>
__global__ void zeta_topk_narrow(const float* __restrict__ q, const float* __restrict__ k,
                                 const float* __restrict__ v, const int* __restrict__ cand,
                                 const float* __restrict__ mean_k,
                                 const float* __restrict__ mean_v, int with_mean,
                                 const unsigned long long* __restrict__ visit,
                                 unsigned long long visit_mask, long long rows, long long n,
                                 int d_k, int d_v, int n_slots, int score, float add,
                                 float root_d, float* __restrict__ out,
                                 float* __restrict__ weights, int with_weights,
                                 float* __restrict__ mean_weight, int rounds) {
    constexpr int H = 16 / G;  // the library's lanes a lane stands for; its float4 a stripe
    const unsigned full = 0xffffffffu;
    // a query's staged slots, one row each; below G = 16 a half-warp holds several queries,
    // whose rows would share their banks (48 pairs of 8 bytes: 384 bytes, a multiple of 128),
    // so their rows are one pair longer
    __shared__ int2 staged[ZETA_FAST_THREADS / G][16 * UL + (G < 16 ? 1 : 0)];
    int2* mine = staged[threadIdx.x / G];
    int lane = threadIdx.x & (G - 1);
    const long long per_run = ZETA_FAST_THREADS / G;
    long long first = blockIdx.x * per_run * rounds + threadIdx.x / G;
    long long total_q = rows * n;
    bool exp_score = score == 1 || score == 2;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool has[NX][H];
#pragma unroll
    for (int x = 0; x < NX; ++x)
#pragma unroll
        for (int p = 0; p < H; ++p) has[x][p] = 64 * x + 4 * (lane + G * p) < d_v;
    for (long long round = 0; round < rounds; ++round) {
        long long task = first + round * per_run;
        bool live = task < total_q;
        if (!live) task = total_q - 1;
        long long r = task / n, i = (long long)(visit[task] & visit_mask), at = r * n + i;
        const float* qi = q + at * d_k;
        const int* c = cand + at * n_slots;
        const float* keys = k + r * n * d_k;
        const float* vals = v + r * n * d_v + 4 * lane;
        // step 1, the scores: the slots of the library's lanes lane + G h
        float sc[H][UL];
        int jj[H][UL];  // the slot's key; -1 empty (D9), -2 the mean term
        float top = -__int_as_float(0x7f800000);  // -inf
#pragma unroll
        for (int h = 0; h < H; ++h)
#pragma unroll
            for (int u = 0; u < UL; ++u) {
                int s = lane + G * h + 16 * u;
                jj[h][u] = -1;
                sc[h][u] = 0.0f;
                if (s < slots) {
                    jj[h][u] = s < n_slots ? c[s] : -2;
                    if (jj[h][u] != -1) {
                        const float* key = jj[h][u] >= 0 ? keys + (long long)jj[h][u] * d_k
                                                         : mean_k + at * d_k;
                        sc[h][u] = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
                        top = fmaxf(top, sc[h][u]);
                    }
                }
            }
        // step 2: the largest logit (exact in any order), and the sum of the affinities in the
        // library's tree
        for (int m = G / 2; m > 0; m >>= 1) top = fmaxf(top, __shfl_xor_sync(full, top, m, G));
        if (!exp_score || isinf(top)) top = 0.0f;
        float part[H];
#pragma unroll
        for (int h = 0; h < H; ++h) {
            part[h] = 0.0f;
#pragma unroll
            for (int u = 0; u < UL; ++u) {
                if (jj[h][u] != -1) sc[h][u] = exp_score ? expf(sc[h][u] - top) : sc[h][u];
                part[h] += jj[h][u] != -1 ? sc[h][u] : 0.0f;
            }
        }
#pragma unroll
        for (int m = 8; m >= G; m >>= 1)  // library lanes l and l + m, both held here
#pragma unroll
            for (int h = 0; h < m / G; ++h) part[h] += part[h + m / G];
        float total = part[0];
        for (int m = G / 2; m > 0; m >>= 1) total += __shfl_xor_sync(full, total, m, G);
        if (!(total > 0.0f)) total = 1.0f;
        // step 3: the weights, written out and staged for the weighted sum
        float w_mean = 0.0f;
#pragma unroll
        for (int h = 0; h < H; ++h)
#pragma unroll
            for (int u = 0; u < UL; ++u) {
                int s = lane + G * h + 16 * u;
                float w = jj[h][u] != -1 ? sc[h][u] / total : 0.0f;
                if (s < n_slots) {
                    if (live && with_weights) weights[at * n_slots + s] = w;
                    mine[s] = make_int2(jj[h][u], __float_as_int(w));
                }
                if (s == n_slots && with_mean) w_mean = w;
            }
        for (int m = G / 2; m > 0; m >>= 1) w_mean += __shfl_xor_sync(full, w_mean, m, G);
        __syncwarp(full);
        // step 4: the weighted sum, slot by slot in slot order, the mean term last
        float4 acc[NX][H];
#pragma unroll
        for (int x = 0; x < NX; ++x)
#pragma unroll
            for (int p = 0; p < H; ++p) acc[x][p] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll UNROLL
        for (int t = 0; t < n_slots; ++t) {
            int2 e = mine[t];
            float wt = __int_as_float(e.y);
            bool ok = e.x >= 0;
            const float* row = vals + (long long)(ok ? e.x : 0) * d_v;
#pragma unroll
            for (int x = 0; x < NX; ++x)
#pragma unroll
                for (int p = 0; p < H; ++p) {
                    float4 y = make_float4(0.f, 0.f, 0.f, 0.f);
                    if (ok && has[x][p])
                        y = __ldg(reinterpret_cast<const float4*>(row + 64 * x + 4 * G * p));
                    acc[x][p].x += wt * y.x; acc[x][p].y += wt * y.y;
                    acc[x][p].z += wt * y.z; acc[x][p].w += wt * y.w;
                }
        }
        if (with_mean) {
            const float* row = mean_v + at * d_v + 4 * lane;
#pragma unroll
            for (int x = 0; x < NX; ++x)
#pragma unroll
                for (int p = 0; p < H; ++p)
                    if (has[x][p]) {
                        float4 y = *reinterpret_cast<const float4*>(row + 64 * x + 4 * G * p);
                        acc[x][p].x += w_mean * y.x; acc[x][p].y += w_mean * y.y;
                        acc[x][p].z += w_mean * y.z; acc[x][p].w += w_mean * y.w;
                    }
        }
        __syncwarp(full);  // every lane has read `mine` before the next round writes it
        if (live) {
#pragma unroll
            for (int x = 0; x < NX; ++x)
#pragma unroll
                for (int p = 0; p < H; ++p)
                    if (has[x][p])
                        *reinterpret_cast<float4*>(out + at * d_v + 64 * x + 4 * (lane + G * p)) =
                            acc[x][p];
            if (lane == 0) mean_weight[at] = w_mean;
        }
    }
}

// the variants docs/data/attention_narrow_ab.py times: k = 32 (33 slots with the mean term: 3
// of the library's lanes' slots each), d_v = 64 (one stripe)
#define ZETA_TOPK_NARROW(G, UNROLL)                                                            \
    template __global__ void zeta_topk_narrow<G, 3, 1, UNROLL>(                                \
        const float*, const float*, const float*, const int*, const float*, const float*, int, \
        const unsigned long long*, unsigned long long, long long, long long, int, int, int,    \
        int, float, float, float*, float*, int, float*, int);
ZETA_TOPK_NARROW(16, 8)
ZETA_TOPK_NARROW(8, 8)
ZETA_TOPK_NARROW(8, 4)
ZETA_TOPK_NARROW(4, 4)
ZETA_TOPK_NARROW(4, 2)
