// An experiment of docs/benchmarks.md, run by docs/data/window_merged_ab.py; not part of the
// library. Stages 4 and 5 of the fused pass (fused.cu) with every query's place in its prefix
// pool given by the sort, not found by a binary search.
//
// The library sorts the keys (rows 0 .. R-1) and the queries (rows R .. 2R-1) apart, builds
// the prefix pools from the sorted keys, and the window kernel's first step is a binary search
// of the query's pool: 5.3 rounds of dependent loads a query at N = 65536, against 6.5 for the
// walks and 6.0 for the output's (docs/data/window_rounds.py). Here each row's queries are
// sorted INTO its keys, with one more bit, below the code and above the position, that says
// which is which:
//
//     entry = row << (code_bits + 1 + pos_bits) | code << (1 + pos_bits) | is_key << pos_bits | i
//
// (as many bits as the library's packing: one row bit fewer, as there are R rows, not 2R).
// A query (is_key = 0) sorts after every key of a smaller code and before every key of its own
// code, so the keys of a pool that come before it in its row are exactly the pool's keys of a
// smaller code: their number is its place in that pool, the first entry not before its code
// (what group_find searches for). The scan that ranks every key in every level it belongs to
// counts the keys of each level before each entry anyway; a query takes that count at its
// own pool's level (its place) and at the top level (all keys before it: its rank among the
// row's queries is then its index in the row minus that count).
//
// zeta_merged_keys          zeta_fused_keys (fused.cu) with this packing; the same arguments.
// zeta_merged_counts        per tile of 1024 sorted entries of a row (2N entries), the keys of
//                           each level 0 .. T, the top level T (all N keys) included.
// zeta_level_offsets        fused.cu's, for T + 1 levels: the scan of the counts over the tiles.
// zeta_merged_scatter       every key into each level t >= its own, the top one included (the
//                           row's keys without its queries); every query's entry into
//                           `queries` (the row's queries in Z order, the visiting order of the
//                           attention kernel) and its place into `places`, at its rank.
// zeta_merged_window_group  zeta_fused_window_group with the place read, not searched:
//                           window_walk.cuh's group_window runs unchanged on a pool type whose
//                           group_find returns the place.
//
// The pools hold the same keys in the same order as the library's and the places are what its
// search finds, so the candidates must be the library's, bit for bit (the script checks that
// before it times anything).
#include "fused.cu"

// The packing above. is_key sits at bit pos_bits; the position below it, as in Packing.
struct MergedPacking {
    int code_bits, pos_bits;
    __device__ unsigned long long entry(long long r, unsigned long long code, int is_key,
                                        long long i) const {
        int row_shift = code_bits + 1 + pos_bits;  // 64 only where R = 1: no row bits
        unsigned long long row = row_shift < 64 ? (unsigned long long)r << row_shift : 0ULL;
        return row | (code << (1 + pos_bits)) | ((unsigned long long)is_key << pos_bits) |
               (unsigned long long)i;
    }
    __device__ bool is_key(unsigned long long e) const { return (e >> pos_bits) & 1ULL; }
};

// ---------------------------------------------------------------- stages 2-3 into sort entries
// Entries 0 .. RN-1 are the keys, RN .. 2RN-1 the queries; after the sort, row r's 2N entries
// (keys and queries mixed, in Z order) are sorted[2 r N .. 2 r N + 2N).
template <typename T>
__global__ void zeta_merged_keys(const T* __restrict__ k, const T* __restrict__ q,
                                 long long rows, long long n, int d, int bits, double scale,
                                 unsigned long long top, int method, double lo, double hi,
                                 int code_bits, int pos_bits,
                                 unsigned long long* __restrict__ keys) {
    MergedPacking mp{code_bits, pos_bits};
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < 2 * rows * n;
         e += (long long)gridDim.x * blockDim.x) {
        int is_key = e < rows * n;
        long long at = is_key ? e : e - rows * n;  // r n + i
        const T* x = (is_key ? k : q) + at * d;
        unsigned long long code = 0;
        for (int j = 0; j < d; ++j)
            code |= spread_bits(cell_of((double)x[j], method, lo, hi, scale, top), j, d, bits);
        keys[e] = mp.entry(at / n, code, is_key, at % n);
    }
}

// ---------------------------------------------------------------- the pools and the places
// counts[(r * tiles + tile) * (T + 1) + t]: the tile's keys (not queries) whose level is
// exactly t, t = 0 .. T (n_levels = T). A position p < N <= S_T has a level <= T. The top
// level's count is the tile's keys less those of the levels below, so that the half of the
// keys that lie in the top level alone make no atomic on one shared counter.
// Grid (tiles, min(rows, 65535)), ZETA_TILE threads, as fused.cu's zeta_level_counts.
extern "C" __global__ void zeta_merged_counts(const unsigned long long* __restrict__ sorted,
                                              long long rows, long long n, long long tiles,
                                              int n_levels, int s0_bits, int code_bits,
                                              int pos_bits, int* __restrict__ counts) {
    Packing pk{code_bits, pos_bits};
    MergedPacking mp{code_bits, pos_bits};
    __shared__ int hist[ZETA_MAX_LEVELS];
    long long tile = blockIdx.x, s = tile * ZETA_TILE + threadIdx.x;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int t = threadIdx.x; t < n_levels; t += blockDim.x) hist[t] = 0;
        __syncthreads();
        bool key = false;
        if (s < 2 * n) {
            unsigned long long e = sorted[r * 2 * n + s];
            key = mp.is_key(e);
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

// Every key of the tile goes to each level t >= its own at rank offsets + (keys of level <= t
// before it in the tile); every query takes the same count at its pool's level (its place)
// and at the top level. Level t < T of row r starts at levels[level_start(t) + r S_t], the top
// level's row at levels[level_start(T) + r N]. Grid (tiles, min(rows, 65535)), ZETA_TILE
// threads.
extern "C" __global__ void zeta_merged_scatter(const unsigned long long* __restrict__ sorted,
                                               long long rows, long long n, long long tiles,
                                               int n_levels, int s0_bits, int code_bits,
                                               int pos_bits, int causal, long long chunk,
                                               const long long* __restrict__ offsets,
                                               unsigned long long* __restrict__ levels,
                                               unsigned long long* __restrict__ queries,
                                               int* __restrict__ places) {
    Packing pk{code_bits, pos_bits};
    MergedPacking mp{code_bits, pos_bits};
    __shared__ int warp_total[ZETA_TILE / 32];
    long long tile = blockIdx.x, s = tile * ZETA_TILE + threadIdx.x;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        unsigned long long e = 0;
        int lvl = n_levels + 1;  // a key's level; past the top for a query or past the end
        int q_level = -1;        // a query's pool level; -1 for a key or past the end
        long long place = 0;
        if (s < 2 * n) {
            e = sorted[r * 2 * n + s];
            if (mp.is_key(e))
                lvl = level_of(pk.pos(e), s0_bits);
            else
                q_level = pool_level(pool_length(pk.pos(e), n, causal, chunk), n_levels,
                                     s0_bits);
        }
        for (int t = 0; t <= n_levels; ++t) {
            bool in = lvl <= t;
            unsigned ballot = __ballot_sync(0xffffffffu, in);
            if (lane == 0) warp_total[warp] = __popc(ballot);
            __syncthreads();
            bool query_counts = q_level >= 0 && (t == q_level || t == n_levels);
            if (in || query_counts) {  // the keys of level <= t before this entry
                long long rank = offsets[(r * tiles + tile) * (n_levels + 1) + t] +
                                 __popc(ballot & ((1u << lane) - 1));
                for (int w = 0; w < warp; ++w) rank += warp_total[w];
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
            __syncthreads();  // warp_total is rewritten for the next level
        }
    }
}

// ---------------------------------------------------------------- stage 5 per query
// A pool whose query's place is known; the walks read its entries as before.
struct PlacedPool {
    PackedPool pool;
    long long m, place;
    __device__ long long position(long long e) const { return pool.position(e); }
    __device__ bool before(long long e, unsigned long long) const { return e < place; }
};

// group_window's search, for a PlacedPool: the place, with no round at all. (group_window
// calls group_find(pool, qz, g) with its pool's type, so this overload, the more specialised,
// is the one it takes; with `before` above, the general group_find would find the same place
// in a few rounds of ballots on registers.)
template <int LANES>
__device__ long long group_find(const PlacedPool& pool, unsigned long long, const Group<LANES>&) {
    return pool.place;
}

// zeta_fused_window_group with the queries and their places from zeta_merged_scatter.
template <int LANES>
__global__ void __launch_bounds__(256, 6)
zeta_merged_window_group(const unsigned long long* __restrict__ queries,
                         const int* __restrict__ places,
                         const unsigned long long* __restrict__ levels, int n_levels,
                         int s0_bits, int code_bits, int pos_bits, long long rows, long long n,
                         int causal, long long chunk, long long width, int* __restrict__ cand) {
    Packing pk{code_bits, pos_bits};  // the position bits (a query's entry has is_key = 0)
    Group<LANES> g;
    long long groups = ((long long)gridDim.x * blockDim.x) / LANES;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / LANES;
         task < rows * n; task += groups) {
        long long r = task / n;
        long long i = pk.pos(queries[task]), at = r * n + i;
        long long L = pool_length(i, n, causal, chunk);
        int* out = cand + at * width;
        int t = pool_level(L, n_levels, s0_bits);
        long long size = t < n_levels ? (long long)1 << (s0_bits + t) : n;
        PlacedPool pool{PackedPool{levels + level_start(t, rows, s0_bits) + r * size, size,
                                   0ULL, pk},
                        size, (long long)places[task]};
        long long found = L > 0 ? group_window(pool, L, 0ULL, width, g, out) : 0;
        for (long long s = found + g.lane; s < width; s += LANES) out[s] = -1;  // D9
    }
}

template __global__ void zeta_merged_keys<float>(const float*, const float*, long long,
                                                 long long, int, int, double,
                                                 unsigned long long, int, double, double, int,
                                                 int, unsigned long long*);
template __global__ void zeta_merged_keys<double>(const double*, const double*, long long,
                                                  long long, int, int, double,
                                                  unsigned long long, int, double, double, int,
                                                  int, unsigned long long*);
#define ZETA_MERGED_WINDOW(LANES)                                                              \
    template __global__ void zeta_merged_window_group<LANES>(                                  \
        const unsigned long long*, const int*, const unsigned long long*, int, int, int, int,  \
        long long, long long, int, long long, long long, int*);
ZETA_MERGED_WINDOW(8)
ZETA_MERGED_WINDOW(16)
ZETA_MERGED_WINDOW(32)
