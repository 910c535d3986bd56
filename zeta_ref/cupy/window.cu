// Stage 5 on the GPU: causal pools, binary search, neighbour window, re-rank
// (paper section 3.3; D4, D5, D6, D9, D11). Mirrors zeta_ref/stages/window.py.
//
// The pools. Query i may see the key positions 0 .. L_i - 1 (L_i = pool_len[i]). Reading the
// pool straight from the global Z order would mean skipping the N - L_i keys it may not see:
// hopeless for early queries. The launcher (window.py) therefore builds *prefix pools* of
// doubling sizes S_0 < S_1 < ... < S_T = N: level t holds, in Z order, the keys whose position
// is below S_t (a stable filter of the global order, so ties stay in position order, D10).
// Their sizes add up to less than 2N, and a query uses the smallest level with S_t >= L_i, in
// which at least half of the keys (or all, at level 0 when L_i is small) are visible to it.
// Layout, for every level t and row r: pool_pos / pool_codes [level_offset[t] + r * S_t + e].
//
// zeta_window, one thread per query (the queries of a row visited in `order`, Z order from the
// composer, so that neighbouring threads read neighbouring parts of the pools):
//   step 2: ip = the first pool entry whose code is >= the query's (binary search, side
//           "left"); the visible keys before ip are exactly the pool keys with smaller codes.
//   step 3: walk left from ip over visible keys (position < L_i) collecting up to W/2, then
//           right collecting the rest; if the right side runs out, the left walk goes on: the
//           specification's slide (D11). The window is then every visible key between the two
//           stopping points, in Z order; fewer than W leave -1 in the last slots (D9).
// Writes window_idx[r, i, 0 .. W-1].
//
// zeta_rerank (W > k, D6), one thread per query: the k window keys nearest to the query
// (nearness of window.py: squared distance, or -<q, k> for "softmax", summed coordinate by
// coordinate with no FMA, so ties fall as in NumPy), ties to the lower position, kept in window
// order. A bounded max-heap of k entries (in global scratch, O(N k) in all): O(W log k).
//
// zeta_insertion_level: the insertion point p_i (an intermediate shown to the reader) as a sum
// over the aligned blocks that make up [0, L_i): at level l the launcher sorts the keys of
// every block of 2^l positions by code, and each query whose L_i has bit l set counts the keys
// of one such block below its code.
#include "window_walk.cuh"

// ---------------------------------------------------------------- kernels

template <typename I>
__global__ void zeta_window(const unsigned long long* __restrict__ q_codes,
                            const long long* __restrict__ pool_len,
                            const long long* __restrict__ order,
                            const long long* __restrict__ pool_pos,
                            const unsigned long long* __restrict__ pool_codes,
                            const long long* __restrict__ level_offset,
                            const long long* __restrict__ level_size, int n_levels,
                            long long rows, long long n, long long width, I* __restrict__ out) {
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < rows * n;
         task += (long long)gridDim.x * blockDim.x) {
        long long r = task / n, i = order[task];
        long long L = pool_len[i];
        I* row = out + (r * n + i) * width;
        long long found = 0;
        if (L > 0) {
            int t = level_for(level_size, n_levels, L);
            long long m = level_size[t], base = level_offset[t] + r * m;
            WriteSink<I> sink{row};
            SplitPool pool{pool_pos + base, pool_codes + base, m};
            found = walk_window(pool, L, q_codes[r * n + i], width, sink);
        }
        for (long long s = found; s < width; ++s) row[s] = (I)-1;  // D9
    }
}

template <typename T>
__global__ void zeta_rerank(const T* __restrict__ q, const T* __restrict__ k,
                            const long long* __restrict__ window_idx, long long rows, long long n,
                            int d, long long width, long long k_top, int softmax,
                            T* __restrict__ heap_near, long long* __restrict__ heap_pos,
                            long long* __restrict__ heap_slot, long long* __restrict__ out) {
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < rows * n;
         task += (long long)gridDim.x * blockDim.x) {
        long long r = task / n;
        NearestK<T> heap{heap_near + task * k_top, heap_pos + task * k_top,
                         heap_slot + task * k_top, k_top, 0, q + task * d, k + r * n * d, d,
                         softmax};
        const long long* w = window_idx + task * width;
        for (long long s = 0; s < width; ++s)
            if (w[s] >= 0) heap(s, w[s]);  // empty slots are never kept (they rank last)
        emit_kept(heap, out + task * k_top);
    }
}

// Adds to p[r, i] the keys of one aligned block of 2^l positions below the query's code, for
// every query whose pool length has bit l set. level_codes: (rows, n), the codes of every block
// of 2^l positions sorted (block b at [b 2^l, (b + 1) 2^l)).
extern "C" __global__ void zeta_insertion_level(const unsigned long long* __restrict__ q_codes,
                                                const long long* __restrict__ pool_len,
                                                const unsigned long long* __restrict__ level_codes,
                                                long long rows, long long n, int l,
                                                long long* __restrict__ p) {
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < rows * n;
         task += (long long)gridDim.x * blockDim.x) {
        long long r = task / n, i = task % n, L = pool_len[i];
        if (!((L >> l) & 1)) continue;
        long long start = (L >> (l + 1)) << (l + 1);  // the block of bit l inside [0, L)
        p[task] += lower_bound(level_codes + r * n + start, 1LL << l, q_codes[task]);
    }
}

template __global__ void zeta_window<long long>(const unsigned long long*, const long long*,
                                                const long long*, const long long*,
                                                const unsigned long long*, const long long*,
                                                const long long*, int, long long, long long,
                                                long long, long long*);
template __global__ void zeta_rerank<float>(const float*, const float*, const long long*,
                                            long long, long long, int, long long, long long, int,
                                            float*, long long*, long long*, long long*);
template __global__ void zeta_rerank<double>(const double*, const double*, const long long*,
                                             long long, long long, int, long long, long long,
                                             int, double*, long long*, long long*, long long*);

// One level of the prefix pools: the keys whose position is below S, in Z order. cums[e] is the
// number of such keys among global-order entries 0 .. e of the whole (rows, n) array; every row
// holds exactly S of them, so entry cums[e] - 1 of the level's (rows, S) block is the key at e:
// row r's keys land in row r, in their global order (stable, D10).
extern "C" __global__ void zeta_pool_level(const long long* __restrict__ perm,
                                           const unsigned long long* __restrict__ codes,
                                           const long long* __restrict__ cums, long long rows,
                                           long long n, long long S,
                                           long long* __restrict__ pool_pos,
                                           unsigned long long* __restrict__ pool_codes) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < rows * n;
         e += (long long)gridDim.x * blockDim.x) {
        long long j = perm[e];
        if (j >= S) continue;
        long long at = cums[e] - 1;
        pool_pos[at] = j;
        pool_codes[at] = codes[e];
    }
}
