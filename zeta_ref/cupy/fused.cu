// The fast forward pass on the GPU (fused.py): stages 2 to 5 on packed sort keys.
//
// A packed key holds a token's row, Z code and position in one uint64:
//     key = row << (code_bits + pos_bits) | code << pos_bits | position
// so that one radix sort of all keys (cupy.sort) orders every row's keys by code, ties by
// position (D10), and the queries likewise. A sorted key then says which token it is (its low
// bits), which row it belongs to and its code: nothing else needs materialising.
//
// zeta_fused_keys      one thread per token: quantise and interleave (stages 2-3, exactly as
//                      zeta_common.cuh does) and write the packed key. Rows 0 .. R-1 hold the
//                      keys, rows R .. 2R-1 the queries, so ONE sort orders both.
// zeta_level_counts    the prefix pools (window.cu explains them), from the sorted keys, in
// zeta_level_offsets   three launches for all levels of all rows. A key at position p belongs
// zeta_level_scatter   to level t when p < S_t = S_0 2^t: its level number is
//                      lvl(p) = bit_length(p >> log2 S_0), and its rank in a level t >= lvl(p)
//                      is the number of keys before it in Z order whose level is <= t. So:
//                      counts of each level per tile of 1024 sorted keys; a scan of those over
//                      the tiles; a scan inside each tile while scattering. The top level
//                      (S_T = N) is the sorted keys themselves and is not copied.
// zeta_fused_window    one thread per query, in Z order: its position and code from its sorted
//                      key, its pool length from the causal mode (D4, D5), the walk of
//                      window_walk.cuh and, for W > k, the re-rank heap; writes int32
//                      candidates (R, N, k).
// zeta_fused_window_group  the same for W = k (no re-rank) by a group of 8, 16 or 32 threads
//                      a query (window_walk.cuh's group_window): each step of the search and
//                      of the walk reads that many neighbouring pool entries at once.
#include "window_walk.cuh"

#define ZETA_TILE 1024
#define ZETA_MAX_LEVELS 48

// ---------------------------------------------------------------- stages 2-3 into sort keys
template <typename T>
__global__ void zeta_fused_keys(const T* __restrict__ k, const T* __restrict__ q, long long rows,
                                long long n, int d, int bits, double scale,
                                unsigned long long top, int method, double lo, double hi,
                                int code_bits, int pos_bits,
                                unsigned long long* __restrict__ keys) {
    Packing pk{code_bits, pos_bits};
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < 2 * rows * n;
         e += (long long)gridDim.x * blockDim.x) {
        long long row = e / n, i = e % n;  // rows 0 .. R-1: keys; R .. 2R-1: queries
        const T* x = row < rows ? k + e * d : q + (e - rows * n) * d;
        unsigned long long code = 0;
        for (int j = 0; j < d; ++j)
            code |= spread_bits(cell_of((double)x[j], method, lo, hi, scale, top), j, d, bits);
        keys[e] = pk.row_bits(row) | (code << pk.pos_bits) | (unsigned long long)i;
    }
}

// ---------------------------------------------------------------- the prefix pools
__device__ __forceinline__ int level_of(long long p, int s0_bits) {
    unsigned long long b = (unsigned long long)(p >> s0_bits);
    return b == 0 ? 0 : 64 - __clzll(b);
}

// counts[(r * tiles + tile) * T + t]: the tile's keys whose level is exactly t (t < T).
// Grid (tiles, min(rows, 65535)), ZETA_TILE threads: a grid's y is at most 65535, so a block
// takes rows blockIdx.y, blockIdx.y + gridDim.y, ...
extern "C" __global__ void zeta_level_counts(const unsigned long long* __restrict__ sorted,
                                             long long rows, long long n, long long tiles,
                                             int n_levels, int s0_bits, int code_bits,
                                             int pos_bits, int* __restrict__ counts) {
    Packing pk{code_bits, pos_bits};
    __shared__ int hist[ZETA_MAX_LEVELS];
    long long tile = blockIdx.x, s = tile * ZETA_TILE + threadIdx.x;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int t = threadIdx.x; t < n_levels; t += blockDim.x) hist[t] = 0;
        __syncthreads();
        if (s < n) {
            int lvl = level_of(pk.pos(sorted[r * n + s]), s0_bits);
            if (lvl < n_levels) atomicAdd(&hist[lvl], 1);  // integer counts: any order
        }
        __syncthreads();
        for (int t = threadIdx.x; t < n_levels; t += blockDim.x)
            counts[(r * tiles + tile) * n_levels + t] = hist[t];
        __syncthreads();  // hist is cleared for the next row
    }
}

// offsets[(r, tile, t)] = the keys of level <= t in row r's tiles before `tile`. One warp per
// (row, level): 32 tiles at a time, a shuffle scan of their counts (integers: exact in any order).
extern "C" __global__ void zeta_level_offsets(const int* __restrict__ counts, long long rows,
                                              long long tiles, int n_levels,
                                              long long* __restrict__ offsets) {
    int lane = threadIdx.x & 31;
    long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
         task < rows * n_levels; task += warps) {
        long long r = task / n_levels;
        int t = (int)(task % n_levels);
        long long run = 0;  // the keys of level <= t in the groups of 32 tiles before
        for (long long t0 = 0; t0 < tiles; t0 += 32) {
            long long tile = t0 + lane;
            long long mine = 0;
            if (tile < tiles) {
                const int* c = counts + (r * tiles + tile) * n_levels;
                for (int u = 0; u <= t; ++u) mine += c[u];
            }
            long long inc = mine;
            for (int m = 1; m < 32; m <<= 1) {
                long long up = __shfl_up_sync(0xffffffffu, inc, m);
                if (lane >= m) inc += up;
            }
            if (tile < tiles) offsets[(r * tiles + tile) * n_levels + t] = run + inc - mine;
            run += __shfl_sync(0xffffffffu, inc, 31);
        }
    }
}

// Where level t begins in `levels`: after the levels below it, R rows of S_u = S_0 2^u keys
// each, u < t; R S_0 (2^t - 1) in all.
__device__ __forceinline__ long long level_start(int t, long long rows, int s0_bits) {
    return rows * (((long long)1 << (s0_bits + t)) - ((long long)1 << s0_bits));
}

// Every key of the tile goes to each level t >= lvl at rank offsets + (keys of level <= t
// before it in the tile). Level t of row r starts at levels[level_start(t) + r * (S_0 << t)].
// Grid (tiles, min(rows, 65535)), as zeta_level_counts.
extern "C" __global__ void zeta_level_scatter(const unsigned long long* __restrict__ sorted,
                                              long long rows, long long n, long long tiles,
                                              int n_levels, int s0_bits, int code_bits,
                                              int pos_bits,
                                              const long long* __restrict__ offsets,
                                              unsigned long long* __restrict__ levels) {
    Packing pk{code_bits, pos_bits};
    __shared__ int warp_total[ZETA_TILE / 32];
    long long tile = blockIdx.x, s = tile * ZETA_TILE + threadIdx.x;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        unsigned long long key = 0;
        int lvl = n_levels;  // past the end: in no level below the top
        if (s < n) {
            key = sorted[r * n + s];
            lvl = level_of(pk.pos(key), s0_bits);
        }
        for (int t = 0; t < n_levels; ++t) {
            bool in = lvl <= t;
            unsigned ballot = __ballot_sync(0xffffffffu, in);
            if (lane == 0) warp_total[warp] = __popc(ballot);
            __syncthreads();
            if (in) {
                long long rank = offsets[(r * tiles + tile) * n_levels + t] +
                                 __popc(ballot & ((1u << lane) - 1));
                for (int w = 0; w < warp; ++w) rank += warp_total[w];
                long long level_row = level_start(t, rows, s0_bits) +
                                      r * ((long long)1 << (s0_bits + t));
                levels[level_row + rank] = key;
            }
            __syncthreads();  // warp_total is rewritten for the next level
        }
    }
}

// ---------------------------------------------------------------- stage 5 per query
// causal ids: 0 inclusive, 1 strict, 2 none (pool_lengths of window.py)
__device__ __forceinline__ long long pool_length(long long i, long long n, int causal,
                                                 long long chunk) {
    if (causal == 0) return i + 1;
    if (causal == 1) return (i / chunk) * chunk;
    return n;
}

// The prefix pool of a query whose pool length is L, the smallest holding positions 0 .. L - 1:
// the smallest level t with S_0 2^t >= L, or n_levels, the top level (all N keys).
__device__ __forceinline__ int pool_level(long long L, int n_levels, int s0_bits) {
    int t = 0;
    while (t < n_levels && ((long long)1 << (s0_bits + t)) < L) ++t;
    return t;
}

// Row r's prefix pool of level t: level t of `levels`, or for t = n_levels the row's sorted
// keys themselves (all N).
__device__ __forceinline__ PackedPool prefix_pool(const unsigned long long* sorted,
                                                  const unsigned long long* levels,
                                                  long long rows, int n_levels, int s0_bits,
                                                  long long r, long long n, int t,
                                                  Packing pk) {
    if (t == n_levels) return PackedPool{sorted + r * n, n, pk.row_bits(r), pk};
    long long size = (long long)1 << (s0_bits + t);
    return PackedPool{levels + level_start(t, rows, s0_bits) + r * size, size, pk.row_bits(r),
                      pk};
}

template <typename T, int RERANK>
__global__ void zeta_fused_window(const unsigned long long* __restrict__ sorted,
                                  const unsigned long long* __restrict__ levels, int n_levels,
                                  int s0_bits, int code_bits, int pos_bits, long long rows,
                                  long long n,
                                  int causal, long long chunk, long long width, long long k_top,
                                  const T* __restrict__ q, const T* __restrict__ k, int d,
                                  int softmax, T* __restrict__ heap_near,
                                  long long* __restrict__ heap_pos,
                                  long long* __restrict__ heap_slot, int* __restrict__ cand) {
    Packing pk{code_bits, pos_bits};
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < rows * n;
         task += (long long)gridDim.x * blockDim.x) {
        long long r = task / n;
        unsigned long long qkey = sorted[rows * n + task];  // queries: rows R .. 2R-1
        long long i = pk.pos(qkey), at = r * n + i;
        unsigned long long qz = pk.code(qkey);
        long long L = pool_length(i, n, causal, chunk);
        int* out = cand + at * k_top;
        PackedPool pool = prefix_pool(sorted, levels, rows, n_levels, s0_bits, r, n,
                                      pool_level(L, n_levels, s0_bits), pk);
        if (RERANK) {
            NearestK<T> heap{heap_near + at * k_top, heap_pos + at * k_top,
                             heap_slot + at * k_top, k_top, 0, q + at * d, k + r * n * d, d,
                             softmax};
            if (L > 0) walk_window(pool, L, qz, width, heap);
            emit_kept(heap, out);
        } else {
            long long found = 0;
            if (L > 0) {
                WriteSink<int> sink{out};
                found = walk_window(pool, L, qz, width, sink);
            }
            for (long long s = found; s < width; ++s) out[s] = -1;  // D9
        }
    }
}

// The same without a re-rank (W = k), LANES threads a query (window_walk.cuh's group_window):
// the search and the walks read LANES neighbouring entries a step instead of one. Launched
// with blocks of 256 threads (rt.THREADS); at most 40 registers a thread, so that 6 blocks
// fit an SM (2-5 % faster than 42 registers and 5 blocks, docs/benchmarks.md).
template <int LANES>
__global__ void __launch_bounds__(256, 6)
zeta_fused_window_group(const unsigned long long* __restrict__ sorted,
                        const unsigned long long* __restrict__ levels, int n_levels, int s0_bits,
                        int code_bits, int pos_bits, long long rows, long long n, int causal,
                        long long chunk, long long width, int* __restrict__ cand) {
    Packing pk{code_bits, pos_bits};
    Group<LANES> g;
    long long groups = ((long long)gridDim.x * blockDim.x) / LANES;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / LANES;
         task < rows * n; task += groups) {
        long long r = task / n;
        unsigned long long qkey = sorted[rows * n + task];  // queries: rows R .. 2R-1
        long long i = pk.pos(qkey), at = r * n + i;
        long long L = pool_length(i, n, causal, chunk);
        int* out = cand + at * width;
        PackedPool pool = prefix_pool(sorted, levels, rows, n_levels, s0_bits, r, n,
                                      pool_level(L, n_levels, s0_bits), pk);
        long long found = L > 0 ? group_window(pool, L, pk.code(qkey), width, g, out) : 0;
        for (long long s = found + g.lane; s < width; s += LANES) out[s] = -1;  // D9
    }
}
template __global__ void zeta_fused_window_group<8>(
    const unsigned long long*, const unsigned long long*, int, int, int, int, long long,
    long long, int, long long, long long, int*);
template __global__ void zeta_fused_window_group<16>(
    const unsigned long long*, const unsigned long long*, int, int, int, int, long long,
    long long, int, long long, long long, int*);
template __global__ void zeta_fused_window_group<32>(
    const unsigned long long*, const unsigned long long*, int, int, int, int, long long,
    long long, int, long long, long long, int*);

#define ZETA_FUSED(T)                                                                          \
    template __global__ void zeta_fused_keys<T>(const T*, const T*, long long, long long, int,  \
                                                int, double, unsigned long long, int, double,  \
                                                double, int, int, unsigned long long*);        \
    template __global__ void zeta_fused_window<T, 0>(                                          \
        const unsigned long long*, const unsigned long long*, int, int, int, int, long long,    \
        long long, int, long long, long long, long long, const T*,                             \
        const T*, int, int, T*, long long*, long long*, int*);                                 \
    template __global__ void zeta_fused_window<T, 1>(                                          \
        const unsigned long long*, const unsigned long long*, int, int, int, int, long long,    \
        long long, int, long long, long long, long long, const T*,                             \
        const T*, int, int, T*, long long*, long long*, int*);
ZETA_FUSED(float)
ZETA_FUSED(double)
