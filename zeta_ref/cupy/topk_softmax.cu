// Stage 6 on the GPU: the mean term and the top-k softmax (paper section 3.4, Eq. 6; D7-D9).
// Mirrors zeta_ref/stages/topk_softmax.py.
//
// The mean term (D8), a blocked scan in double, three kernels:
//   zeta_block_sums   thread per (row, block of positions, column): the block's column sum
//   zeta_scan_blocks  thread per (row, column): exclusive prefix of the block sums, and total
//   zeta_means_write  thread per (row, block, column): running sum through the block, divided
//                     by i + 1 (causal), or the total / N ("none"), written in T
//
// The weights and the output, per query i with candidates j_1 .. j_k (-1 = empty, D9) and the
// mean term as slot k:
//   near_s = ||q_i - k_j||^2, or -<q_i, k_j> for "softmax" (no FMA, as window.nearness)
//   a_s    = 1 / (near_s + add)  ("cauchy": add = gamma^2; "inv_euclidean": 1e-6), or
//            exp(logit_s - max logit) with logit = -near / sqrt(d_k) ("softmax") or -near
//   w_s    = a_s / sum a;  out_i = sum_s w_s v_{j_s} + w_k vbar_i
// zeta_topk_plain: one thread per query, any d_k, d_v and dtype: the obviously right version.
// zeta_topk_narrow (below zeta_topk_fast): its steps at 8 threads a query, same bits, for the
// default k = 32 and d_v <= 64.
// zeta_topk_fast (float, d_v a multiple of 4 up to 256, int32 candidates): 16 threads per
// query, two queries per warp. Lane l scores slots l, l + 16, ...; shuffles give the maximum
// and the sum; each lane stages its slots' (key, weight) in shared memory, and then all 16
// lanes walk the slots in order, reading each slot's pair once (the same address for all 16:
// one broadcast) and the candidate's value row as 16 float4 (one 256-byte row per 16 lanes,
// coalesced), 64 NX columns a row, NX a template argument so that no lane tests a stripe the
// row does not have. Queries are taken in `order` (Z order), so neighbouring queries, which
// share most candidates, read value rows the L2 cache already holds; a block takes several
// runs of 16 neighbouring queries one after the other.
#include "zeta_common.cuh"

#define ZETA_INV_EUCLIDEAN_EPS 1e-6

// ---------------------------------------------------------------- the mean term
// Keys and values in one pass: column e of the (rows, n, D = d1 + d2) "table" is column e of
// x1 (the keys) for e < d1, and column e - d1 of x2 (the values) otherwise.
template <typename T>
__device__ __forceinline__ T column(const T* x1, const T* x2, long long r, long long i,
                                    long long n, int d1, int d2, int e) {
    return e < d1 ? x1[(r * n + i) * d1 + e] : x2[(r * n + i) * d2 + (e - d1)];
}

// V neighbouring values of one row, loaded or stored at once (V = 1; or 16 bytes, 4 floats or
// 2 doubles, where the launcher found x2's rows and address aligned): the table's tasks are
// then (row, block, group), a group being one column of x1 or V columns of x2. Each column is
// still summed on its own, position after position: V changes how many columns a thread
// carries, never an addition.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack { T x[V]; };

// The group g of the table's row: its first column, its width (1 or V), its stride and where it
// begins in x1 or x2 at row r.
template <typename T, int V>
struct ColumnGroup {
    int e, width, stride;
    long long base;
    __device__ ColumnGroup(int g, int d1, int d2, long long r, long long n) {
        bool key = g < d1;
        e = key ? g : d1 + (g - d1) * V;
        width = key ? 1 : V;
        stride = key ? d1 : d2;
        base = key ? r * n * d1 + g : r * n * d2 + (e - d1);
    }
};

// sums[(r, b, e)] = the sum of column e over block b's positions. Task (r, b, g) over the
// d1 + d2 / V groups of a row; V > 1 only where d2 is a multiple of V and x2 is aligned. With
// `track`, also the largest |x2| into *largest (abs_bits, one atomic a warp): the call's
// check of the values, which would otherwise read them all once more.
template <typename T, int V>
__global__ void zeta_block_sums(const T* __restrict__ x1, const T* __restrict__ x2,
                                long long rows, long long n, int d1, int d2, long long block,
                                double* __restrict__ sums, int track,
                                unsigned long long* __restrict__ largest) {
    int d = d1 + d2, groups = d1 + d2 / V;
    long long n_blocks = (n + block - 1) / block;
    unsigned long long best = 0ULL;  // the bits of +0.0
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n_blocks * groups; task += (long long)gridDim.x * blockDim.x) {
        long long rb = task / groups;  // r n_blocks + b
        long long b = rb % n_blocks, r = rb / n_blocks;
        ColumnGroup<T, V> grp((int)(task % groups), d1, d2, r, n);
        long long i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
        double* out = sums + rb * d + grp.e;
        if (grp.width == 1) {
            bool key = grp.e < d1, seen = track && !key;
            const T* src = (key ? x1 : x2) + grp.base;
            double s = 0.0;
#pragma unroll 8
            for (long long i = i0; i < i1; ++i) {
                double x = widen(src[i * grp.stride]);
                s += x;
                if (seen) best = max(best, abs_bits(x));
            }
            out[0] = s;
        } else {
            const T* src = x2 + grp.base;
            double s[V];
#pragma unroll
            for (int c = 0; c < V; ++c) s[c] = 0.0;
#pragma unroll 8
            for (long long i = i0; i < i1; ++i) {
                Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(src + i * grp.stride);
#pragma unroll
                for (int c = 0; c < V; ++c) {
                    double x = widen(p.x[c]);
                    s[c] += x;
                    if (track) best = max(best, abs_bits(x));
                }
            }
#pragma unroll
            for (int c = 0; c < V; ++c) out[c] = s[c];
        }
    }
    if (track) warp_max_into(largest, best);
}

// In place: sums[r, b, e] becomes the sum over the blocks before b; totals[r, e] the sum of all.
// One warp per (row, column): 32 blocks at a time, a shuffle scan inside each group of 32. The
// loads of up to ZETA_SCAN_AHEAD groups are made before the first scan, so that the warp waits
// for memory once per ZETA_SCAN_AHEAD groups, not once per group (the additions are the same).
#define ZETA_SCAN_AHEAD 8
extern "C" __global__ void zeta_scan_blocks(double* __restrict__ sums, long long rows,
                                            long long n_blocks, int d,
                                            double* __restrict__ totals) {
    int lane = threadIdx.x & 31;
    long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
         task < rows * d; task += warps) {
        long long r = task / d, e = task % d;
        double* column = sums + r * n_blocks * d + e;  // block b's sum at column[b * d]
        double run = 0.0;  // the sum of the groups before
        for (long long c0 = 0; c0 < n_blocks; c0 += 32 * ZETA_SCAN_AHEAD) {
            double s[ZETA_SCAN_AHEAD];
#pragma unroll
            for (int g = 0; g < ZETA_SCAN_AHEAD; ++g) {
                long long b = c0 + 32 * g + lane;
                s[g] = b < n_blocks ? column[b * d] : 0.0;
            }
#pragma unroll
            for (int g = 0; g < ZETA_SCAN_AHEAD; ++g) {
                if (c0 + 32 * g >= n_blocks) break;  // the same on every lane
                long long b = c0 + 32 * g + lane;
                double inc = s[g];  // inclusive scan over the group (a fixed order: deterministic)
                for (int m = 1; m < 32; m <<= 1) {
                    double up = __shfl_up_sync(0xffffffffu, inc, m);
                    if (lane >= m) inc += up;
                }
                if (b < n_blocks) column[b * d] = run + inc - s[g];
                run += __shfl_sync(0xffffffffu, inc, 31);
            }
        }
        if (lane == 0) totals[task] = run;
    }
}

// A running sum / count, correctly rounded in double, then rounded to T. For T = double, the
// division. For T = float the same quotient from y = 1 / count (rounded once a position, for
// all of its columns) and two corrections by fused multiply-adds, with far fewer registers
// than the division's: q = run y is within 2 ulp; r = run - q count is exact (a multiple of
// q's last place, at most 2 count of them: fewer than 2^53 for a count below 2^52), and
// q + r y is then within 1 ulp (faithful); the second correction is Markstein's exact step (y
// the correctly rounded reciprocal, q faithful), which gives the correctly rounded quotient.
// It holds where nothing underflows or overflows: a float kernel's running sums are 0 (+0:
// the scan's and the sums' zeros are never -0) or between 2^-149 and 2^128 N in size, far
// inside double's range.
template <typename T>
struct Quotient {
    __device__ static double inverse(double) { return 0.0; }  // not needed
    __device__ static double of(double run, double count, double) { return run / count; }
};
template <>
struct Quotient<float> {
    __device__ static double inverse(double count) { return 1.0 / count; }
    __device__ static double of(double run, double count, double y) {
        double q = run * y;
        double r = fma(-q, count, run);
        q = fma(r, y, q);
        r = fma(-q, count, run);
        return fma(r, y, q);
    }
};

// The means: causal, the running sum through the block / (i + 1); whole ("none"), total / n.
// Tasks as zeta_block_sums'. A group's entries are `stride` apart (d1 or d2); U positions are
// loaded before any is added (8 of one column, 4 of a group of floats, 2 of one of doubles),
// so that the loads overlap and only the additions form a chain (the same additions, in the
// same order, as one at a time).
template <typename T, int W, int U>
__device__ __forceinline__ void running_means(const T* src, T* dst, int stride, long long i0,
                                              long long i1, const double* prefix) {
    double run[W];
#pragma unroll
    for (int c = 0; c < W; ++c) run[c] = prefix[c];
    long long i = i0;
    for (; i + U <= i1; i += U) {
        Pack<T, W> x[U];
#pragma unroll
        for (int u = 0; u < U; ++u)
            x[u] = *reinterpret_cast<const Pack<T, W>*>(src + (i + u) * stride);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            Pack<T, W> m;
            double count = (double)(i + u + 1), y = Quotient<T>::inverse(count);
#pragma unroll
            for (int c = 0; c < W; ++c) {
                run[c] += widen(x[u].x[c]);
                m.x[c] = narrow<T>(Quotient<T>::of(run[c], count, y));
            }
            *reinterpret_cast<Pack<T, W>*>(dst + (i + u) * stride) = m;
        }
    }
    for (; i < i1; ++i) {
        Pack<T, W> x = *reinterpret_cast<const Pack<T, W>*>(src + i * stride), m;
        double count = (double)(i + 1), y = Quotient<T>::inverse(count);
#pragma unroll
        for (int c = 0; c < W; ++c) {
            run[c] += widen(x.x[c]);
            m.x[c] = narrow<T>(Quotient<T>::of(run[c], count, y));
        }
        *reinterpret_cast<Pack<T, W>*>(dst + i * stride) = m;
    }
}

template <typename T, int V>
__global__ void zeta_means_write(const T* __restrict__ x1, const T* __restrict__ x2,
                                 const double* __restrict__ prefix,
                                 const double* __restrict__ totals, int whole, long long rows,
                                 long long n, int d1, int d2, long long block,
                                 T* __restrict__ out1, T* __restrict__ out2) {
    int d = d1 + d2, groups = d1 + d2 / V;
    long long n_blocks = (n + block - 1) / block;
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n_blocks * groups; task += (long long)gridDim.x * blockDim.x) {
        long long rb = task / groups;  // r n_blocks + b
        long long b = rb % n_blocks, r = rb / n_blocks;
        ColumnGroup<T, V> grp((int)(task % groups), d1, d2, r, n);
        long long i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
        bool key = grp.e < d1;
        const T* src = (key ? x1 : x2) + grp.base;
        T* dst = (key ? out1 : out2) + grp.base;
        if (whole) {
            for (int c = 0; c < grp.width; ++c) {
                T mean = narrow<T>(totals[r * d + grp.e + c] / (double)n);
                for (long long i = i0; i < i1; ++i) dst[i * grp.stride + c] = mean;
            }
            continue;
        }
        const double* before = prefix + rb * d + grp.e;  // the sums of the blocks before b
        if (V == 1 || key) running_means<T, 1, 8>(src, dst, grp.stride, i0, i1, before);
        else running_means<T, V, sizeof(T) == 4 ? 4 : 2>(src, dst, grp.stride, i0, i1, before);
    }
}

// ---------------------------------------------------------------- scores

// logit for the exp scores, affinity for the inverse ones
template <typename T>
__device__ __forceinline__ T raw_score(T near, int score, T add, T root_d) {
    if (score == 0 || score == 3) return (T)1 / (near + add);
    return score == 1 ? -near / root_d : -near;
}

// ---------------------------------------------------------------- one thread per query
template <typename T, typename I>
__global__ void zeta_topk_plain(const T* __restrict__ q, const T* __restrict__ k,
                                const T* __restrict__ v, const I* __restrict__ cand,
                                const T* __restrict__ mean_k, const T* __restrict__ mean_v,
                                int with_mean, const unsigned long long* __restrict__ visit,
                                unsigned long long visit_mask, long long rows, long long n,
                                int d_k, int d_v, long long n_slots,
                                int score, T add, T root_d, T* __restrict__ out,
                                T* __restrict__ weights, int with_weights,
                                T* __restrict__ mean_weight) {
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < rows * n;
         task += (long long)gridDim.x * blockDim.x) {
        long long r = task / n, i = (long long)(visit[task] & visit_mask), at = r * n + i;
        const T* qi = q + at * d_k;
        const I* c = cand + at * n_slots;
        const T* keys = k + r * n * d_k;
        const T* vals = v + r * n * d_v;
        bool exp_score = score == 1 || score == 2;
        // pass 1: the largest logit (exp scores)
        T top = (T)0;
        bool any = false;
        for (long long s = 0; s <= n_slots; ++s) {
            if (s == n_slots && !with_mean) break;
            if (s < n_slots && c[s] < 0) continue;
            const T* key = s < n_slots ? keys + (long long)c[s] * d_k : mean_k + at * d_k;
            T x = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
            if (!any || x > top) top = x;
            any = true;
        }
        if (!exp_score) top = (T)0;
        // pass 2: the sum of the affinities
        T total = (T)0;
        for (long long s = 0; s <= n_slots; ++s) {
            if (s == n_slots && !with_mean) break;
            if (s < n_slots && c[s] < 0) continue;
            const T* key = s < n_slots ? keys + (long long)c[s] * d_k : mean_k + at * d_k;
            T x = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
            total += exp_score ? exp_t(x - top) : x;
        }
        if (!(total > (T)0)) total = (T)1;  // nothing valid: weights and output 0
        // pass 3: weights and the weighted sum
        T* o = out + at * d_v;
        for (int e = 0; e < d_v; ++e) o[e] = (T)0;
        T w_mean = (T)0;
        for (long long s = 0; s <= n_slots; ++s) {
            if (s == n_slots && !with_mean) break;
            bool empty = s < n_slots && c[s] < 0;
            T w = (T)0;
            if (!empty) {
                const T* key = s < n_slots ? keys + (long long)c[s] * d_k : mean_k + at * d_k;
                T x = raw_score(near_of(qi, key, d_k, score), score, add, root_d);
                w = (exp_score ? exp_t(x - top) : x) / total;
                const T* row = s < n_slots ? vals + (long long)c[s] * d_v : mean_v + at * d_v;
                for (int e = 0; e < d_v; ++e) o[e] += w * row[e];
            }
            if (s < n_slots && with_weights) weights[at * n_slots + s] = w;
            if (s == n_slots) w_mean = w;
        }
        mean_weight[at] = w_mean;
    }
}

// ---------------------------------------------------------------- 16 threads per query
#define ZETA_FAST_MAX_DV 256
// threads per block of the fast kernel (the launcher's rt.THREADS): 16 queries per block
#define ZETA_FAST_THREADS 256

// U: slots per lane (k + 1 <= 16 U); NX: 64-column stripes of a value row (d_v <= 64 NX).
template <int U, int NX>
__global__ void zeta_topk_fast(const float* __restrict__ q, const float* __restrict__ k,
                               const float* __restrict__ v, const int* __restrict__ cand,
                               const float* __restrict__ mean_k, const float* __restrict__ mean_v,
                               int with_mean, const unsigned long long* __restrict__ visit,
                               unsigned long long visit_mask, long long rows, long long n,
                               int d_k, int d_v, int n_slots,
                               int score, float add, float root_d, float* __restrict__ out,
                               float* __restrict__ weights, int with_weights,
                               float* __restrict__ mean_weight, int rounds) {
    const unsigned full = 0xffffffffu;
    // each query's (key, weight) per slot, written by the lane that scored the slot and read
    // by all 16 lanes of its query (a broadcast read from shared memory)
    __shared__ int2 staged[ZETA_FAST_THREADS / 16][16 * U];
    int2* mine = staged[threadIdx.x >> 4];
    int lane = threadIdx.x & 15;
    // a block takes `rounds` runs of 16 queries one after the other, neighbours in the visiting
    // order, so that a run may find in the L1 cache rows the run before read. Every lane of the
    // warp runs every round, so the shuffles always have all 32 lanes; a half-warp past the end
    // computes on a copy of the last query and writes nothing
    const long long per_run = ZETA_FAST_THREADS / 16;
    long long first = blockIdx.x * per_run * rounds + (threadIdx.x >> 4);
    long long total_q = rows * n;
    bool exp_score = score == 1 || score == 2;
    int slots = n_slots + (with_mean ? 1 : 0);
    // lane l owns columns 64 x + 4 l .. 64 x + 4 l + 3 of every value row
    bool has[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) has[x] = 64 * x + 4 * lane < d_v;
    for (long long round = 0; round < rounds; ++round) {
        long long task = first + round * per_run;
        bool live = task < total_q;
        if (!live) task = total_q - 1;
        long long r = task / n, i = (long long)(visit[task] & visit_mask), at = r * n + i;
        const float* qi = q + at * d_k;
        const int* c = cand + at * n_slots;
        const float* keys = k + r * n * d_k;
        const float* vals = v + r * n * d_v + 4 * lane;
        // step 1, the scores, once: lane l takes slots l, l + 16, ... (slot n_slots is the
        // mean term)
        float sc[U];
        int jj[U];  // the slot's key; -1 empty (D9), -2 the mean term
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
        // step 2: the largest logit and the sum of the affinities over the 16 lanes
        for (int m = 8; m > 0; m >>= 1) top = fmaxf(top, __shfl_xor_sync(full, top, m, 16));
        if (!exp_score || isinf(top)) top = 0.0f;  // -inf: nothing valid
        float total = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (jj[u] != -1) sc[u] = exp_score ? expf(sc[u] - top) : sc[u];  // affinity
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
        // step 4: the weighted sum, slot by slot in slot order, the mean term last. An empty
        // slot loads nothing and adds 0 (acc + 0 * 0 is acc, bit for bit).
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
        __syncwarp(full);  // every lane has read `mine` before the next round writes it
        if (live) {
#pragma unroll
            for (int x = 0; x < NX; ++x)
                if (has[x]) *reinterpret_cast<float4*>(out + at * d_v + 64 * x + 4 * lane) = acc[x];
            if (lane == 0) mean_weight[at] = w_mean;
        }
    }
}

// ---------------------------------------------------------------- G threads per query
// zeta_topk_fast with G = 8 (or 4) threads a query instead of 16, for rows of one stripe
// (d_v <= 64): lane l stands for the fast kernel's lanes l + G h (h < 16 / G), holds their
// slots and partial sums and keeps their tree of additions, so the outputs are bit for bit the
// fast kernel's; each lane reads 16 / G float4 of a value row per staged (key, weight) pair, so
// a lane has more loads in flight (the kernel is bound by their latency). On an H200 at
// 1 x 8 x 65536 and 16 x 8 x 65536 (2026-12-05, docs/data/attention_narrow_ab.py) G = 8 took
// 0.82x and 0.80x of the fast kernel's time. A block takes 256 / G queries a run. One
// instance, the one checked bit for bit and timed on the GPU: U = 3 (k + 1 in 33 .. 48 slots,
// the default k = 32 with the mean term), one stripe; the others stay with the fast kernel.
// DK > 0: d_k known when compiling (the launcher passes it only where d_k == DK). Step 1 then
// loads every slot's key first, then every key's DK coordinates, and only then scores them,
// so that a lane waits for memory twice in step 1 instead of once per slot and coordinate
// (with d_k read at run time each coordinate is a branch of its own, and each slot waits for
// its loads before the next slot's are made); the same operations in the same order, so the
// same bits. On an H100 (2026-12-05) the DK = 3 instance took 0.80x and 0.87x of the general
// one's time at 1 x 8 x 65536 and 16 x 8 x 65536. DK = 0: any d_k, one slot after the other.
template <int G, int UL, int NX, int UNROLL, int DK>
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
        if (DK > 0) {
            constexpr int D = DK > 0 ? DK : 1;  // d_k == DK here
            // every slot's key first ...
#pragma unroll
            for (int h = 0; h < H; ++h)
#pragma unroll
                for (int u = 0; u < UL; ++u) {
                    int s = lane + G * h + 16 * u;
                    jj[h][u] = s < slots ? (s < n_slots ? c[s] : -2) : -1;
                }
            // ... then the query's and every key's coordinates (none for an empty slot) ...
            float qv[D], kv[H][UL][D];
#pragma unroll
            for (int e = 0; e < D; ++e) qv[e] = qi[e];
#pragma unroll
            for (int h = 0; h < H; ++h)
#pragma unroll
                for (int u = 0; u < UL; ++u) {
                    const float* key = jj[h][u] >= 0 ? keys + (long long)jj[h][u] * D
                                                     : mean_k + at * D;
#pragma unroll
                    for (int e = 0; e < D; ++e) kv[h][u][e] = jj[h][u] != -1 ? key[e] : 0.0f;
                }
            // ... then the scores, in the slots' order
#pragma unroll
            for (int h = 0; h < H; ++h)
#pragma unroll
                for (int u = 0; u < UL; ++u) {
                    sc[h][u] = 0.0f;
                    if (jj[h][u] != -1) {
                        // near_of on the registers, its loop unrolled (D is a constant)
                        sc[h][u] = raw_score(near_of(qv, kv[h][u], D, score), score, add,
                                             root_d);
                        top = fmaxf(top, sc[h][u]);
                    }
                }
        } else {
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
                            sc[h][u] = raw_score(near_of(qi, key, d_k, score), score, add,
                                                 root_d);
                            top = fmaxf(top, sc[h][u]);
                        }
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

#define ZETA_TOPK_NARROW8(U, DK)                                                               \
    template __global__ void zeta_topk_narrow<8, U, 1, 8, DK>(                                 \
        const float*, const float*, const float*, const int*, const float*, const float*, int, \
        const unsigned long long*, unsigned long long, long long, long long, int, int, int,    \
        int, float, float, float*, float*, int, float*, int);
ZETA_TOPK_NARROW8(3, 0)
ZETA_TOPK_NARROW8(3, 3)

// ---------------------------------------------------------------- int64 candidates as int32
// The fast kernels (here and in backward.cu) read int32 candidates: out[p] = cand[p] where it
// is a position 0 .. n - 1, else -1 (empty), so that no int64 value wraps onto a real key.
extern "C" __global__ void zeta_narrow_candidates(const long long* __restrict__ cand,
                                                  long long size, long long n,
                                                  int* __restrict__ out) {
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < size;
         p += (long long)gridDim.x * blockDim.x) {
        long long j = cand[p];
        out[p] = j >= 0 && j < n ? (int)j : -1;
    }
}

#define ZETA_MEANS(T, V)                                                                       \
    template __global__ void zeta_block_sums<T, V>(const T*, const T*, long long, long long,   \
                                                   int, int, long long, double*, int,          \
                                                   unsigned long long*);                       \
    template __global__ void zeta_means_write<T, V>(const T*, const T*, const double*,         \
                                                    const double*, int, long long, long long,  \
                                                    int, int, long long, T*, T*);
ZETA_MEANS(float, 1)
ZETA_MEANS(float, 4)
ZETA_MEANS(double, 1)
ZETA_MEANS(double, 2)
#define ZETA_TOPK_PLAIN(T, I)                                                                  \
    template __global__ void zeta_topk_plain<T, I>(                                            \
        const T*, const T*, const T*, const I*, const T*, const T*, int,                       \
        const unsigned long long*, unsigned long long, long long, long long, int, int,         \
        long long, int, T, T, T*, T*, int, T*);
ZETA_TOPK_PLAIN(float, long long)
ZETA_TOPK_PLAIN(double, long long)
ZETA_TOPK_PLAIN(float, int)
ZETA_TOPK_PLAIN(double, int)
#define ZETA_TOPK_FAST(U, NX)                                                                  \
    template __global__ void zeta_topk_fast<U, NX>(                                            \
        const float*, const float*, const float*, const int*, const float*, const float*, int, \
        const unsigned long long*, unsigned long long, long long, long long, int, int, int,    \
        int, float, float, float*, float*, int, float*, int);
#define ZETA_TOPK_FAST_U(U) ZETA_TOPK_FAST(U, 1) ZETA_TOPK_FAST(U, 2) ZETA_TOPK_FAST(U, 4)
ZETA_TOPK_FAST_U(1)
ZETA_TOPK_FAST_U(2)
ZETA_TOPK_FAST_U(3)
ZETA_TOPK_FAST_U(4)
ZETA_TOPK_FAST_U(8)
