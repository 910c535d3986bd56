// Stage 5's per-query steps, shared by window.cu (stage by stage) and fused.cu (fast path):
// the binary search, the window walk (D6, D9, D11) and the re-rank's bounded heap (D6).
// Comments on the algorithm: window.cu.
#pragma once
#include "zeta_common.cuh"

__device__ __forceinline__ long long lower_bound(const unsigned long long* codes, long long m,
                                                 unsigned long long x) {
    long long lo = 0, hi = m;
    while (lo < hi) {
        long long mid = (lo + hi) >> 1;
        if (codes[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// The smallest level whose size is at least L (the top level has size N >= L).
__device__ __forceinline__ int level_for(const long long* level_size, int n_levels, long long L) {
    int t = 0;
    while (t < n_levels - 1 && level_size[t] < L) ++t;
    return t;
}

// A pool in Z order, two layouts. SplitPool: positions and codes in two arrays (the stage by
// stage path, any code width); its query's place is found by a binary search. PlacedPool:
// packed sort entries (fused.cu), its query's place already known from the sort.
struct SplitPool {
    const long long* pos;
    const unsigned long long* codes;
    long long m;
    __device__ long long position(long long e) const { return pos[e]; }
    __device__ long long find(unsigned long long qz) const { return lower_bound(codes, m, qz); }
    __device__ bool before(long long e, unsigned long long qz) const { return codes[e] < qz; }
};

// A packed sort entry of fused.cu, from the top bit down: row | code | is_key | position.
// Sorted, a row's keys and queries are in Z order together, ties by position, and a query
// (is_key = 0) comes before the keys of its own code.
struct Packing {
    int code_bits, pos_bits;
    __device__ unsigned long long entry(long long r, unsigned long long code, int is_key,
                                        long long i) const {
        int row_shift = code_bits + 1 + pos_bits;  // 64 only where R = 1: no row bits
        unsigned long long row = row_shift < 64 ? (unsigned long long)r << row_shift : 0ULL;
        return row | (code << (1 + pos_bits)) | ((unsigned long long)is_key << pos_bits) |
               (unsigned long long)i;
    }
    __device__ long long pos(unsigned long long e) const {
        return (long long)(e & ((1ULL << pos_bits) - 1));
    }
    __device__ bool is_key(unsigned long long e) const { return (e >> pos_bits) & 1ULL; }
};

// A prefix pool of packed entries (keys only) and its query's place in it: the number of the
// pool's keys before the query in Z order, which is what a binary search for the query's code
// would find (fused.cu's zeta_level_scatter counts it while building the pools).
struct PlacedPool {
    const unsigned long long* keys;
    long long m, place;
    Packing pk;
    __device__ long long position(long long e) const { return pk.pos(keys[e]); }
    __device__ long long position(int e) const { return pk.pos(keys[e]); }
    __device__ long long find(unsigned long long) const { return place; }
    __device__ bool before(long long e, unsigned long long) const { return e < place; }
};

// Steps 2 and 3 for one query: calls sink(slot, position) for each window key in Z order and
// returns how many there were (at most `width`).
template <typename Pool, typename Sink>
__device__ long long walk_window(const Pool& pool, long long L, unsigned long long qz,
                                 long long width, Sink& sink) {
    long long ip = pool.find(qz);
    long long half = width / 2, n_left = 0, n_right = 0;
    long long a = ip - 1, b = ip;
    while (n_left < half && a >= 0) { n_left += pool.position(a) < L; --a; }
    long long want_right = width - n_left;  // more on the right when the left ran out
    while (n_right < want_right && b < pool.m) { n_right += pool.position(b) < L; ++b; }
    while (n_left + n_right < width && a >= 0) { n_left += pool.position(a) < L; --a; }  // D11
    // the window: every visible key strictly between a and b, in Z order
    long long slot = 0;
    for (long long e = a + 1; e < b; ++e) {
        long long j = pool.position(e);
        if (j < L) sink(slot++, j);
    }
    return slot;
}

template <typename I>
struct WriteSink {
    I* row;
    __device__ void operator()(long long slot, long long j) { row[slot] = (I)j; }
};

// ---------------------------------------------------------------- the k nearest of a window
// "a is worse than b": farther, or as near and at a higher position (ties to the lower one).
template <typename T>
__device__ __forceinline__ bool worse(T na, long long pa, T nb, long long pb) {
    return greater(na, nb) || (equal(na, nb) && pa > pb);  // zeta_common.cuh: no flush
}

template <typename T>
__device__ __forceinline__ T nearness(const T* q, const T* k, int d, int softmax) {
    T acc = (T)0;
    for (int e = 0; e < d; ++e) {
        if (softmax) acc = sub_rn(acc, mul_rn(q[e], k[e]));
        else { T diff = sub_rn(q[e], k[e]); acc = add_rn(acc, mul_rn(diff, diff)); }
    }
    return acc;
}

// A max-heap (worst on top) of at most k (nearness, position, slot) entries, in scratch rows.
template <typename T>
struct NearestK {
    T* near; long long* pos; long long* slot; long long k, size;
    const T* q; const T* keys; int d, softmax;

    __device__ void swap(long long a, long long b) {
        T n = near[a]; near[a] = near[b]; near[b] = n;
        long long p = pos[a]; pos[a] = pos[b]; pos[b] = p;
        long long s = slot[a]; slot[a] = slot[b]; slot[b] = s;
    }
    __device__ void sift_down(long long h) {
        while (true) {
            long long c = 2 * h + 1;
            if (c >= size) return;
            if (c + 1 < size && worse(near[c + 1], pos[c + 1], near[c], pos[c])) ++c;
            if (!worse(near[c], pos[c], near[h], pos[h])) return;
            swap(c, h); h = c;
        }
    }
    __device__ void operator()(long long s, long long j) {  // the window key j in slot s
        T n = nearness(q, keys + j * d, d, softmax);
        if (size < k) {  // push, sift up
            long long h = size++;
            near[h] = n; pos[h] = j; slot[h] = s;
            while (h > 0 && worse(near[h], pos[h], near[(h - 1) / 2], pos[(h - 1) / 2])) {
                swap(h, (h - 1) / 2); h = (h - 1) / 2;
            }
        } else if (worse(near[0], pos[0], n, j)) {  // replace the worst
            near[0] = n; pos[0] = j; slot[0] = s;
            sift_down(0);
        }
    }
};

// Sift a[h] down a max-heap a[0 .. n).
__device__ void sift_max(long long* a, long long h, long long n) {
    while (true) {
        long long c = 2 * h + 1;
        if (c >= n) return;
        if (c + 1 < n && a[c + 1] > a[c]) ++c;
        if (a[c] <= a[h]) return;
        long long t = a[c]; a[c] = a[h]; a[h] = t; h = c;
    }
}

// Sort a[0 .. n) ascending in place (heapsort: O(n log n), no scratch).
__device__ void sort_ascending(long long* a, long long n) {
    for (long long h = n / 2 - 1; h >= 0; --h) sift_max(a, h, n);
    for (long long end = n - 1; end > 0; --end) {
        long long t = a[0]; a[0] = a[end]; a[end] = t;
        sift_max(a, 0, end);
    }
}

// The kept keys in window order into out[0 .. k), then -1 (D9). Each heap entry is a (slot,
// position) pair; packed as slot * 2^32 + position (both below 2^31: the launchers refuse
// N >= 2^31, window.py's and fused.py's alike), one sort by slot puts the positions in window
// order.
template <typename T, typename I>
__device__ void emit_kept(NearestK<T>& heap, I* out) {
    for (long long h = 0; h < heap.size; ++h) heap.slot[h] = (heap.slot[h] << 32) | heap.pos[h];
    sort_ascending(heap.slot, heap.size);
    for (long long h = 0; h < heap.size; ++h) out[h] = (I)(heap.slot[h] & 0xFFFFFFFFLL);
    for (long long h = heap.size; h < heap.k; ++h) out[h] = (I)-1;
}


// ---------------------------------------------------------------- the same, LANES threads a query
// walk_window's steps done by a group of LANES threads (8, 16 or 32 of one warp) for one query,
// with the same result. Every lane of the group runs every step (the group's bits of a ballot
// say which lanes' entries pass), so each step reads LANES neighbouring pool entries at once:
//   the search:  LANES probes spread over [lo, hi); the ones before qz are a prefix of the
//                lanes, and the answer lies between the last of them and the next, so the
//                range shrinks LANES-fold a round (4 rounds for 2^16 keys at 32 lanes);
//   the walks:   LANES entries a step outward from the query's place, counting visible keys
//                until the walk has as many as it wants (the order of walk_window: left up to
//                W / 2, right up to W - left, left again up to W - right: D11);
//   the output:  the visible keys between the farthest left and right ones taken, in Z order,
//                each lane's slot its rank among the group's visible entries of the step.
template <int LANES>
struct Group {
    int lane, base;     // the lane in the group; the group's first lane in the warp
    unsigned mask;      // the group's lanes, for the *_sync intrinsics
    __device__ Group() {
        int w = threadIdx.x & 31;
        lane = w & (LANES - 1);
        base = w - lane;
        mask = LANES == 32 ? 0xffffffffu : ((1u << LANES) - 1) << base;
    }
    // the group's votes, lane 0 in bit 0
    __device__ unsigned vote(bool p) const {
        unsigned b = __ballot_sync(mask, p) >> base;
        return LANES == 32 ? b : b & ((1u << LANES) - 1);
    }
};

// The first entry of `pool` not before qz (pool.find), by the whole group.
template <int LANES, typename Pool>
__device__ long long group_find(const Pool& pool, unsigned long long qz, const Group<LANES>& g) {
    long long lo = 0, hi = pool.m;  // the answer is in [lo, hi]
    while (lo < hi) {
        long long step = (hi - lo + LANES - 1) / LANES;
        long long p = lo + g.lane * step;
        int before = __popc(g.vote(p < hi && pool.before(p, qz)));  // probes 0 .. before-1
        if (before == 0) {
            hi = lo;
        } else {
            long long cap = lo + before * step;  // the first probe not before, or past hi
            lo += (long long)(before - 1) * step + 1;
            hi = cap < hi ? cap : hi;
        }
    }
    return lo;
}

// The same for a pool whose place is known: no round at all (the overload the more
// specialised, so group_window takes it for a PlacedPool).
template <int LANES>
__device__ long long group_find(const PlacedPool& pool, unsigned long long, const Group<LANES>&) {
    return pool.place;
}

// Where a walk writes the visible entries it takes, nearest first: out[first + step * rank]
// (rank 0, 1, ...); nowhere when out is null.
template <typename I, typename Ix>
struct Slots {
    I* out;
    Ix first;
    int step;
};

// The walks' indices (pool entries, positions, counts) are of type Ix: int where the launcher
// knows that every one of them, and the walk's step past a pool's end, is below 2^31 (fewer
// 64-bit operations, and registers, in a kernel bound by its instructions), else long long.

// From entry `from` outward (dir +1 or -1) to the pool's end, the first `want` visible entries
// (position < L), each written to its slot. Returns how many it found; *last is the index of
// the farthest of them (left as it was when none). Every lane returns the same.
template <int LANES, typename Ix, typename Pool, typename I>
__device__ Ix group_walk(const Pool& pool, Ix from, int dir, Ix L, Ix want,
                         const Group<LANES>& g, Ix* last, Slots<I, Ix> slots) {
    Ix got = 0, m = (Ix)pool.m;
    for (Ix e0 = from; got < want; e0 += dir * LANES) {
        if (dir > 0 ? e0 >= m : e0 < 0) break;
        Ix e = e0 + dir * g.lane;
        Ix j = (dir > 0 ? e < m : e >= 0) ? (Ix)pool.position(e) : L;
        unsigned seen = g.vote(j < L);
        if (slots.out && j < L) {  // its rank among the visible entries of the walk so far
            Ix rank = got + __popc(seen & ((1u << g.lane) - 1));
            if (rank < want) slots.out[slots.first + slots.step * rank] = (I)j;
        }
        int c = __popc(seen);
        if (got + c >= want) {  // the (want - got)-th visible entry of this step is the last
            for (Ix s = got + 1; s < want; ++s) seen &= seen - 1;
            *last = e0 + dir * (__ffs(seen) - 1);
            return want;
        }
        if (c) *last = e0 + dir * (31 - __clz(seen));
        got += c;
    }
    return got;
}

// walk_window by a group: writes the window's positions to out[0 .. found) and returns found.
// The walks write their keys as they find them: the right walk's at n_left + rank, the left
// walk's at W/2 - 1 - rank, which is their slot when the left walk found its W/2 keys and the
// right walk the rest. Otherwise (the left walk ran out of keys, or went on for D11) the
// window's keys are written again, in Z order, from the entries between the farthest ones.
template <int LANES, typename Ix, typename Pool, typename I>
__device__ Ix group_window(const Pool& pool, Ix L, unsigned long long qz, Ix width,
                           const Group<LANES>& g, I* out) {
    Ix ip = (Ix)group_find(pool, qz, g);
    Ix half = width / 2;
    Ix left_end = ip, right_end = ip - 1;  // the farthest keys taken (none yet)
    Ix n_left = group_walk<LANES, Ix>(pool, ip - 1, -1, L, half, g, &left_end,
                                      Slots<I, Ix>{out, half - 1, -1});
    Ix n_right = group_walk<LANES, Ix>(pool, ip, +1, L, width - n_left, g, &right_end,
                                       Slots<I, Ix>{out, n_left, +1});
    if (n_left == half && n_left + n_right == width) return width;  // every slot written
    if (n_left == half)  // D11: more on the left
        n_left += group_walk<LANES, Ix>(pool, n_left ? left_end - 1 : ip - 1, -1, L,
                                        width - n_left - n_right, g, &left_end,
                                        Slots<I, Ix>{nullptr, 0, 0});
    __syncwarp(g.mask);  // the walks' writes come before the ones below, lane to lane
    Ix slot = 0;
    for (Ix e0 = left_end; e0 <= right_end; e0 += LANES) {
        Ix e = e0 + g.lane;
        Ix j = e <= right_end ? (Ix)pool.position(e) : L;
        unsigned seen = g.vote(j < L);
        if (j < L) out[slot + __popc(seen & ((1u << g.lane) - 1))] = (I)j;
        slot += __popc(seen);
    }
    return slot;
}
