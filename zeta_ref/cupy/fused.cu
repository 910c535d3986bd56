// The fast forward pass on the GPU (fused.py): stages 2 to 5 on packed sort entries.
//
// A packed entry holds a token's row, Z code, kind (key or query) and position in one uint64
// (window_walk.cuh's Packing):
//     entry = row << (code_bits + 1 + pos_bits) | code << (1 + pos_bits) | is_key << pos_bits | i
// so that one radix sort of all entries (cupy.sort) orders every row's keys AND queries by
// code together, keys of one code by position (D10), and each query before the keys of its
// own code. A sorted entry then says which token it is (its low bits), which row it belongs to
// and whether it is a key: nothing else needs materialising.
//
// zeta_fused_keys      one thread per token: quantise and interleave (stages 2-3, exactly as
//                      zeta_common.cuh does) and write the packed entry: entries 0 .. RN-1 the
//                      keys, RN .. 2RN-1 the queries; ONE sort orders both.
// zeta_level_counts    the prefix pools (window.cu explains them) and every query's place in
// zeta_level_offsets   its own pool, from the sorted entries, in three launches for all levels
// zeta_level_scatter   of all rows. A key at position p belongs to level t when
//                      p < S_t = S_0 2^t: its level number is lvl(p) = bit_length(p >> log2
//                      S_0), and its rank in a level t >= lvl(p) is the number of keys before
//                      it in Z order whose level is <= t. So: counts of each level per tile of
//                      1024 sorted entries; a scan of those over the tiles; a scan inside each
//                      tile while scattering. The top level (S_T = N: all the row's keys) is
//                      scattered too, without the queries. A query counts the same way: the
//                      keys of its pool's level before it are its place in that pool, where a
//                      binary search for its code would land (the pool's keys of a smaller
//                      code), and the keys of the top level before it give its rank among the
//                      row's queries (its index among the row's entries minus that count).
// zeta_fused_window    one thread per query, in Z order: its position from its entry, its pool
//                      length from the causal mode (D4, D5), the walk of window_walk.cuh from
//                      its place and, for W > k, the re-rank heap; writes int32 candidates
//                      (R, N, k).
// zeta_fused_window_group  the same for W = k (no re-rank) by a group of 8, 16 or 32 threads
//                      a query (window_walk.cuh's group_window): each step of the walks reads
//                      that many neighbouring pool entries at once.
#include "window_walk.cuh"

#define ZETA_TILE 1024
#define ZETA_MAX_LEVELS 48

// ---------------------------------------------------------------- stages 2-3 into sort entries
// Entries 0 .. RN-1 are the keys, RN .. 2RN-1 the queries; after the sort, row r's 2N entries
// (keys and queries mixed, in Z order) are sorted[2 r N .. 2 r N + 2N).
template <typename T>
__global__ void zeta_fused_keys(const T* __restrict__ k, const T* __restrict__ q, long long rows,
                                long long n, int d, int bits, double scale,
                                unsigned long long top, int method, double lo, double hi,
                                int code_bits, int pos_bits,
                                unsigned long long* __restrict__ keys) {
    Packing pk{code_bits, pos_bits};
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < 2 * rows * n;
         e += (long long)gridDim.x * blockDim.x) {
        int is_key = e < rows * n;
        long long at = is_key ? e : e - rows * n;  // r n + i
        const T* x = (is_key ? k : q) + at * d;
        unsigned long long code = 0;
        for (int j = 0; j < d; ++j)
            code |= spread_bits(cell_of_input(x[j], method, lo, hi, scale, top), j, d, bits);
        keys[e] = pk.entry(at / n, code, is_key, at % n);
    }
}

// ---------------------------------------------------------------- the prefix pools
__device__ __forceinline__ int level_of(long long p, int s0_bits) {
    unsigned long long b = (unsigned long long)(p >> s0_bits);
    return b == 0 ? 0 : 64 - __clzll(b);
}

// counts[(r * tiles + tile) * (T + 1) + t]: the tile's keys (not queries) whose level is
// exactly t, t = 0 .. T (n_levels = T; a position p < N <= S_T has a level <= T). The top
// level's count is the tile's keys less those of the levels below, so that the half of the
// keys that lie in the top level alone make no atomic on one shared counter.
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
        bool key = false;
        if (s < 2 * n) {
            unsigned long long e = sorted[r * 2 * n + s];
            key = pk.is_key(e);
            int lvl = key ? level_of(pk.pos(e), s0_bits) : n_levels;
            if (lvl < n_levels) atomicAdd(&hist[lvl], 1);  // integer counts: any order
        }
        int keys_here = __syncthreads_count(key);  // also the barrier after the atomics
        if (threadIdx.x == 0) {
            int* c = counts + (r * tiles + tile) * (n_levels + 1);
            int below = 0;
            for (int t = 0; t < n_levels; ++t) {
                c[t] = hist[t];
                below += hist[t];
            }
            c[n_levels] = keys_here - below;
        }
        __syncthreads();  // hist is cleared for the next row
    }
}

// offsets[(r, tile, t)] = the keys of level <= t in row r's tiles before `tile`, for n_levels
// levels (the launcher passes T + 1: the top one included). One warp per (row, level): 32
// tiles at a time, a shuffle scan of their counts (integers: exact in any order).
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

// Every key of the tile goes to each level t >= its own at rank offsets + (keys of level <= t
// before it in the tile); every query takes the same count at its pool's level (its place)
// and at the top level (its rank among the row's queries follows). Level t < T of row r
// starts at levels[level_start(t) + r S_t], the top level's row at levels[level_start(T) +
// r N]. Grid (tiles, min(rows, 65535)), ZETA_TILE threads, as zeta_level_counts.
// The count before an entry is the tile's offset, the counts of the warps before its own (a
// table of every level's warp counts, scanned once: two barriers a row, whatever the number
// of levels) and the lanes before it in its warp (a ballot).
extern "C" __global__ void zeta_level_scatter(const unsigned long long* __restrict__ sorted,
                                              long long rows, long long n, long long tiles,
                                              int n_levels, int s0_bits, int code_bits,
                                              int pos_bits, int causal, long long chunk,
                                              const long long* __restrict__ offsets,
                                              unsigned long long* __restrict__ levels,
                                              unsigned long long* __restrict__ queries,
                                              int* __restrict__ places) {
    Packing pk{code_bits, pos_bits};
    // before[t][w]: the entries of level <= t in the warps before w (a count per warp first)
    __shared__ int before[ZETA_MAX_LEVELS + 1][ZETA_TILE / 32];
    long long tile = blockIdx.x, s = tile * ZETA_TILE + threadIdx.x;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned lanes_below = (1u << lane) - 1;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        unsigned long long e = 0;
        int lvl = n_levels + 1;  // a key's level; past the top for a query or past the end
        int q_level = -1;        // a query's pool level; -1 for a key or past the end
        long long place = 0;
        if (s < 2 * n) {
            e = sorted[r * 2 * n + s];
            if (pk.is_key(e))
                lvl = level_of(pk.pos(e), s0_bits);
            else
                q_level = pool_level(pool_length(pk.pos(e), n, causal, chunk), n_levels,
                                     s0_bits);
        }
        for (int t = 0; t <= n_levels; ++t) {  // each warp's count of every level
            unsigned ballot = __ballot_sync(0xffffffffu, lvl <= t);
            if (lane == 0) before[t][warp] = __popc(ballot);
        }
        __syncthreads();
        for (int t = warp; t <= n_levels; t += ZETA_TILE / 32) {  // a warp scans a level's row
            int mine = before[t][lane], inc = mine;
            for (int m = 1; m < 32; m <<= 1) {
                int up = __shfl_up_sync(0xffffffffu, inc, m);
                if (lane >= m) inc += up;
            }
            before[t][lane] = inc - mine;
        }
        __syncthreads();
        for (int t = 0; t <= n_levels; ++t) {
            bool in = lvl <= t;
            unsigned ballot = __ballot_sync(0xffffffffu, in);
            bool query_counts = q_level >= 0 && (t == q_level || t == n_levels);
            if (in || query_counts) {  // the keys of level <= t before this entry
                long long rank = offsets[(r * tiles + tile) * (n_levels + 1) + t] +
                                 before[t][warp] + __popc(ballot & lanes_below);
                if (in) {
                    long long size = t < n_levels ? (long long)1 << (s0_bits + t) : n;
                    levels[level_start(t, rows, s0_bits) + r * size + rank] = e;
                } else {
                    if (t == q_level) place = rank;  // q_level <= T: set by the last round
                    if (t == n_levels) {
                        long long rank_q = s - rank;  // the row's queries before this one
                        queries[r * n + rank_q] = e;
                        places[r * n + rank_q] = (int)place;
                    }
                }
            }
        }
        __syncthreads();  // `before` is rewritten for the next row
    }
}

// Row r's prefix pool of level t (the top level, t = n_levels, holds all N keys), and the
// place in it of the query `task` (the row's queries in Z order, all rows one after another).
__device__ __forceinline__ PlacedPool placed_pool(const unsigned long long* levels,
                                                  const int* places, long long task,
                                                  long long rows, int n_levels, int s0_bits,
                                                  long long r, long long n, int t, Packing pk) {
    long long size = t < n_levels ? (long long)1 << (s0_bits + t) : n;
    return PlacedPool{levels + level_start(t, rows, s0_bits) + r * size, size,
                      (long long)places[task], pk};
}

template <typename T, int RERANK>
__global__ void zeta_fused_window(const unsigned long long* __restrict__ queries,
                                  const int* __restrict__ places,
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
        long long i = pk.pos(queries[task]), at = r * n + i;  // row r's queries in Z order
        long long L = pool_length(i, n, causal, chunk);
        int* out = cand + at * k_top;
        PlacedPool pool = placed_pool(levels, places, task, rows, n_levels, s0_bits, r, n,
                                      pool_level(L, n_levels, s0_bits), pk);
        if (RERANK) {
            NearestK<T> heap{heap_near + at * k_top, heap_pos + at * k_top,
                             heap_slot + at * k_top, k_top, 0, q + at * d, k + r * n * d, d,
                             softmax};
            if (L > 0) walk_window(pool, L, 0ULL, width, heap);
            emit_kept(heap, out);
        } else {
            long long found = 0;
            if (L > 0) {
                WriteSink<int> sink{out};
                found = walk_window(pool, L, 0ULL, width, sink);
            }
            for (long long s = found; s < width; ++s) out[s] = -1;  // D9
        }
    }
}

// The same without a re-rank (W = k), LANES threads a query (window_walk.cuh's group_window):
// the walks read LANES neighbouring entries a step instead of one. Launched with blocks of
// 256 threads (rt.THREADS); at most 40 registers a thread, so that 6 blocks fit an SM (2-5 %
// faster than 42 registers and 5 blocks, docs/benchmarks.md). Ix: the walks' index type, int
// where the launcher found N small enough (fused.py's WINDOW_INT), else long long.
template <int LANES, typename Ix>
__global__ void __launch_bounds__(256, 6)
zeta_fused_window_group(const unsigned long long* __restrict__ queries,
                        const int* __restrict__ places,
                        const unsigned long long* __restrict__ levels, int n_levels, int s0_bits,
                        int code_bits, int pos_bits, long long rows, long long n, int causal,
                        long long chunk, long long width, int* __restrict__ cand) {
    Packing pk{code_bits, pos_bits};
    Group<LANES> g;
    long long groups = ((long long)gridDim.x * blockDim.x) / LANES;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / LANES;
         task < rows * n; task += groups) {
        long long r = task / n;
        long long i = pk.pos(queries[task]), at = r * n + i;  // row r's queries in Z order
        long long L = pool_length(i, n, causal, chunk);
        int* out = cand + at * width;
        PlacedPool pool = placed_pool(levels, places, task, rows, n_levels, s0_bits, r, n,
                                      pool_level(L, n_levels, s0_bits), pk);
        Ix found = L > 0 ? group_window<LANES, Ix>(pool, (Ix)L, 0ULL, (Ix)width, g, out) : 0;
        for (Ix s = found + g.lane; s < (Ix)width; s += LANES) out[s] = -1;  // D9
    }
}
#define ZETA_WINDOW_GROUP(LANES, IX)                                                           \
    template __global__ void zeta_fused_window_group<LANES, IX>(                               \
        const unsigned long long*, const int*, const unsigned long long*, int, int, int, int,  \
        long long, long long, int, long long, long long, int*);
ZETA_WINDOW_GROUP(8, int)
ZETA_WINDOW_GROUP(8, long long)
ZETA_WINDOW_GROUP(16, int)
ZETA_WINDOW_GROUP(16, long long)
ZETA_WINDOW_GROUP(32, int)
ZETA_WINDOW_GROUP(32, long long)

#define ZETA_FUSED(T)                                                                          \
    template __global__ void zeta_fused_keys<T>(const T*, const T*, long long, long long, int,  \
                                                int, double, unsigned long long, int, double,  \
                                                double, int, int, unsigned long long*);        \
    template __global__ void zeta_fused_window<T, 0>(                                          \
        const unsigned long long*, const int*, const unsigned long long*, int, int, int, int,  \
        long long, long long, int, long long, long long, long long, const T*, const T*, int,   \
        int, T*, long long*, long long*, int*);                                                \
    template __global__ void zeta_fused_window<T, 1>(                                          \
        const unsigned long long*, const int*, const unsigned long long*, int, int, int, int,  \
        long long, long long, int, long long, long long, long long, const T*, const T*, int,   \
        int, T*, long long*, long long*, int*);
ZETA_FUSED(float)
ZETA_FUSED(double)
