// An experiment of docs/benchmarks.md ("the mean term in one pass"), timed by
// docs/data/means_one_pass_ab.py; not part of the library. The causal means of topk_softmax.cu
// (zeta_block_sums, zeta_scan_blocks, zeta_means_write: k and v read twice) in one kernel that
// reads them once. Its first form (commit 39450ba, run 2026-12-05 on an H100) was 1.16x and
// 1.07x the scan's time at 1 x 8 x 65536 and 16 x 8 x 65536, bound by each tile's chain of
// steps, and its blocks of up to 1024 threads asked for more registers than a block may have.
// This form changes three things: a thread issues all its loads of the earlier tiles' sums
// before it stores any (one round trip to L2 instead of up to eight); a wait reads the flag
// 64 times before it starts to sleep between reads (32 ns, not 100); and the instances carry
// launch bounds, MAX_THREADS = 512 (no register limit below 128) or 1024 (at most 64
// registers: the launcher takes it for blocks over 512 threads). Variants of the default
// shape's instance (float, 16 bytes a thread, 288 threads): MIN_BLOCKS = 3 or 4 at 320
// threads (registers capped at 64 or 48, with spills: three or four blocks an SM instead of
// two), and KEEP = 0, the run's values read again in the last step (from L2, where the first
// read left them) instead of kept in registers through the waits.
//
// How it works. A block of threads takes a tile of `segments` runs of ZETA_ONE_PASS_RUN
// positions of a row, all of its columns (thread = a key column or 16 bytes of a value row,
// of one run), and keeps the tile's values in registers while it learns the sum of everything
// before the tile from the tiles before it. The order of the additions is fixed by the shapes
// alone, never by which tile finishes first, so the means are the same bits from call to call:
//   a run's sum: its positions in order, from 0.0; the runs' prefixes inside the tile: their
//   sums in order, from 0.0; the tile's aggregate: all of its runs' sums, in order;
//   a link: `link` tiles in a row (the last one shorter); a tile's sum of the tiles of its
//   link before it: their aggregates in order, from 0.0; a link's prefix: the previous link's
//   prefix + (its last tile's sum of the link before it + that tile's aggregate), from 0.0;
//   a run's start: (its link's prefix + the tile's sum of the link before it) + the run's
//   prefix inside the tile; then position after position, as running_means.
// A tile publishes its aggregate, then waits for the aggregates of the tiles of its link
// before it, and for its link's prefix, which the last tile of the previous link publishes.
// Tiles are numbered in the order blocks take them (one atomic counter), the row fastest, so
// that every tile a block waits for belongs to a block that has already started: no block
// waits for one that cannot run. A flag is set (release) after its values are written and
// made visible (a barrier, then one thread's fence, as a grid-wide barrier does); a reader
// waits for the flag (acquire), the block meets at a barrier, and reads through L2 (ld.cg).
#include "topk_softmax.cu"

#define ZETA_ONE_PASS_RUN 8
// The aggregates a thread loads before it stores any (31 tiles of d = 67 over 288 threads: 8).
#define ZETA_ONE_PASS_LOADS 8
// The doubles of the block's shared array: the runs' sums (segments d), the tile's prefix (d)
// and the aggregates of the link's tiles before it ((link - 1) d); topk_softmax.py's
// ONE_PASS_SHARED, from which it picks `segments` and `link`.
#define ZETA_ONE_PASS_SHARED 4096
// How long a block waits for a flag before it stops the kernel with a trap (about 17 s at
// 2 GHz): a flag that never comes is a bug, and a hung GPU helps no one find it.
#define ZETA_ONE_PASS_PATIENCE (1LL << 35)

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
#ifdef __CUDA_ARCH__
    unsigned v;
    asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#else
    return *p;
#endif
}

__device__ __forceinline__ void store_release(unsigned* p, unsigned v) {
#ifdef __CUDA_ARCH__
    asm volatile("st.release.gpu.u32 [%0], %1;" : : "l"(p), "r"(v) : "memory");
#else
    *p = v;
#endif
}

__device__ __forceinline__ double load_l2(const double* p) {
#ifdef __CUDA_ARCH__
    return __ldcg(p);
#else
    return *p;
#endif
}

__device__ __forceinline__ void fence_gpu() {
#ifdef __CUDA_ARCH__
    __threadfence();
#endif
}

// Waits until *flag is set: reads it again at once ZETA_ONE_PASS_SPINS times, then with a
// 32 ns sleep between reads. In the CPU emulation blocks run one after another, in the order
// they take tiles, so a flag is either set already or never will be.
#define ZETA_ONE_PASS_SPINS 64
__device__ __forceinline__ void wait_for(const unsigned* flag) {
    if (load_acquire(flag)) return;
#ifdef __CUDA_ARCH__
    long long start = clock64();
    for (int spin = 0; !load_acquire(flag); ++spin) {
        if (spin >= ZETA_ONE_PASS_SPINS) __nanosleep(32);
        if (clock64() - start > ZETA_ONE_PASS_PATIENCE) __trap();
    }
#else
    __trap();
#endif
}

// Causal means, tasks as the block sums' inside a tile: thread t is group t % groups (a key
// column, or V value columns) of run t / groups; the block has a multiple of 32 threads, at
// least groups * segments, and segments * d <= 1024. status: a 64-bit counter of the tiles
// taken, then a flag for each tile (rows, n_tiles), then one for each link (rows, n_links),
// all zero at the launch. aggregates: (rows, n_tiles, d); prefixes: (rows, n_links, d), the
// first link's never read. `largest` as zeta_block_sums'.
template <typename T, int V, int MAX_THREADS, int MIN_BLOCKS, int KEEP>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS)
    zeta_means_one_pass(const T* __restrict__ x1, const T* __restrict__ x2, long long rows,
                        long long n, int d1, int d2, int segments, int link,
                        unsigned* __restrict__ status, double* __restrict__ aggregates,
                        double* __restrict__ prefixes, int track,
                        unsigned long long* __restrict__ largest, T* __restrict__ out1,
                        T* __restrict__ out2) {
    __shared__ double space[ZETA_ONE_PASS_SHARED];
    __shared__ long long taken;
    const int U = ZETA_ONE_PASS_RUN;
    int d = d1 + d2, groups = d1 + d2 / V, t = threadIdx.x;
    long long span = (long long)segments * U, n_tiles = (n + span - 1) / span;
    long long n_links = (n_tiles + link - 1) / link, tiles = rows * n_tiles;
    unsigned long long* counter = reinterpret_cast<unsigned long long*>(status);
    unsigned* tile_flags = status + 2;
    unsigned* link_flags = tile_flags + tiles;
    double* run_sums = space;                    // (segments, d): a run's sum, then its prefix
    double* tile_before = space + segments * d;  // (d): the sum of everything before the tile
    double* link_sums = tile_before + d;         // (link - 1, d): the link's tiles before it
    int g = t % groups, s = t / groups;
    bool live = s < segments;
    ColumnGroup<T, V> grp(g, d1, d2, 0, n);  // row 0; the row's offset is added per tile
    bool key = grp.e < d1;
    unsigned long long best = 0ULL;  // the bits of +0.0
    for (;;) {
        if (t == 0) taken = (long long)atomicAdd(counter, 1ULL);
        __syncthreads();
        long long id = taken;
        if (id >= tiles) break;  // the same on every thread
        long long r = id % rows, b = id / rows;
        long long row_base = r * n * (key ? d1 : d2);
        long long i0 = b * span + (long long)s * U;  // the run's first position
        int m = live && i0 < n ? (int)(n - i0 < U ? n - i0 : U) : 0;
        const T* src = (key ? x1 : x2) + row_base + grp.base;
        Pack<T, V> x[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u >= m) continue;
            if (grp.width == 1) x[u].x[0] = src[(i0 + u) * grp.stride];
            else x[u] = *reinterpret_cast<const Pack<T, V>*>(src + (i0 + u) * grp.stride);
        }
        double sum[V];
#pragma unroll
        for (int c = 0; c < V; ++c) sum[c] = 0.0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u >= m) continue;
#pragma unroll
            for (int c = 0; c < V; ++c) {
                if (c >= grp.width) continue;
                double xc = widen(x[u].x[c]);
                sum[c] += xc;
                if (track && !key) best = max(best, abs_bits(xc));
            }
        }
        if (live) {
#pragma unroll
            for (int c = 0; c < V; ++c)
                if (c < grp.width) run_sums[s * d + grp.e + c] = sum[c];
        }
        __syncthreads();
        // the runs' prefixes inside the tile, and the tile's aggregate, published
        double* row_aggregates = aggregates + r * n_tiles * d;
        for (int e = t; e < d; e += blockDim.x) {
            double acc = 0.0;
            for (int q = 0; q < segments; ++q) {
                double y = run_sums[q * d + e];
                run_sums[q * d + e] = acc;
                acc += y;
            }
            row_aggregates[b * d + e] = acc;
        }
        __syncthreads();
        if (t == 0) {
            fence_gpu();
            store_release(tile_flags + r * n_tiles + b, 1u);
        }
        // the aggregates of the link's tiles before this one, and the link's prefix
        long long first = b - b % link, which = b / link;
        int before = (int)(b - first);
        if (t < 32) {
            for (int p = t; p < before; p += 32) wait_for(tile_flags + r * n_tiles + first + p);
            if (t == 0 && which > 0) wait_for(link_flags + r * n_links + which);
            fence_gpu();
        }
        __syncthreads();
        // every thread's loads first, then its stores: one round trip to L2, not eight
        const double* earlier = row_aggregates + first * d;
        for (int w0 = 0; w0 < before * d; w0 += ZETA_ONE_PASS_LOADS * blockDim.x) {
            double a[ZETA_ONE_PASS_LOADS];
#pragma unroll
            for (int j = 0; j < ZETA_ONE_PASS_LOADS; ++j) {
                int w = w0 + j * blockDim.x + t;
                a[j] = w < before * d ? load_l2(earlier + w) : 0.0;
            }
#pragma unroll
            for (int j = 0; j < ZETA_ONE_PASS_LOADS; ++j) {
                int w = w0 + j * blockDim.x + t;
                if (w < before * d) link_sums[w] = a[j];
            }
        }
        __syncthreads();
        bool closes = b % link == link - 1 && which + 1 < n_links;
        double* row_prefixes = prefixes + r * n_links * d;
        for (int e = t; e < d; e += blockDim.x) {
            double in_link = 0.0;
            for (int p = 0; p < before; ++p) in_link += link_sums[p * d + e];
            double start = which > 0 ? load_l2(row_prefixes + which * d + e) : 0.0;
            tile_before[e] = start + in_link;
            if (closes)
                row_prefixes[(which + 1) * d + e] = start + (in_link + row_aggregates[b * d + e]);
        }
        __syncthreads();
        if (t == 0 && closes) {
            fence_gpu();
            store_release(link_flags + r * n_links + which + 1, 1u);
        }
        // the running sums through the run, each divided by its count, written in T (without
        // KEEP the run's values are read again, from L2 where the first reads left them: no
        // registers hold them through the waits)
        if (!KEEP) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (u >= m) continue;
                if (grp.width == 1) x[u].x[0] = src[(i0 + u) * grp.stride];
                else x[u] = *reinterpret_cast<const Pack<T, V>*>(src + (i0 + u) * grp.stride);
            }
        }
        if (m > 0) {
            double run[V];
#pragma unroll
            for (int c = 0; c < V; ++c)
                run[c] = c < grp.width ? tile_before[grp.e + c] + run_sums[s * d + grp.e + c] : 0.0;
            T* dst = (key ? out1 : out2) + row_base + grp.base;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (u >= m) continue;
                double places = (double)(i0 + u + 1), y = Quotient<T>::inverse(places);
                Pack<T, V> mean;
#pragma unroll
                for (int c = 0; c < V; ++c) {
                    if (c >= grp.width) continue;
                    run[c] += widen(x[u].x[c]);
                    mean.x[c] = narrow<T>(Quotient<T>::of(run[c], places, y));
                }
                if (grp.width == 1) dst[(i0 + u) * grp.stride] = mean.x[0];
                else *reinterpret_cast<Pack<T, V>*>(dst + (i0 + u) * grp.stride) = mean;
            }
        }
        __syncthreads();  // before the next tile's number and sums overwrite these
    }
    if (track) warp_max_into(largest, best);
}

#define ZETA_MEANS_ONE_PASS(T, V, M, B, K)                                                     \
    template __global__ void zeta_means_one_pass<T, V, M, B, K>(                               \
        const T*, const T*, long long, long long, int, int, int, int, unsigned*, double*,      \
        double*, int, unsigned long long*, T*, T*);
#define ZETA_MEANS_ONE_PASS_ALL(T, V, K) \
    ZETA_MEANS_ONE_PASS(T, V, 512, 1, K) ZETA_MEANS_ONE_PASS(T, V, 1024, 1, K)
ZETA_MEANS_ONE_PASS_ALL(float, 1, 1)
ZETA_MEANS_ONE_PASS_ALL(float, 4, 1)
ZETA_MEANS_ONE_PASS_ALL(double, 1, 1)
ZETA_MEANS_ONE_PASS_ALL(double, 2, 1)
// the default shape's variants: three or four blocks an SM (registers capped: spills), and
// the run's values read again from L2 instead of kept in registers (KEEP = 0)
ZETA_MEANS_ONE_PASS(float, 4, 320, 3, 1)
ZETA_MEANS_ONE_PASS(float, 4, 512, 1, 0)
ZETA_MEANS_ONE_PASS(float, 4, 320, 4, 0)
