// The backward pass of stage 6 on the GPU: gradients of Eq. 6 and of the mean term (D7-D9).
// Mirrors zeta_ref/stages/backward.py (which derives steps b1 to b5); the selection is fixed.
//
// Three steps. No float is added into memory another thread adds into (the one atomic counts
// integers), so every result is the same from run to run. A candidate outside 0 .. n - 1 is
// taken for an empty slot, so that no kernel reads past the end of k or v: the composer
// (zeta_ref/backward.py) refuses such a selection in its checks, which on the GPU run after
// these kernels are queued.
//
// zeta_bwd_query   one warp per query i (taken in `visit` order: Z order from the composer).
//   pass 1  lane s scores slot s (s, s + 32, ...): near_s, the logit or affinity, the maximum
//   pass 2  w_s = a_s / sum a                                     (a warp sum, fixed tree)
//   pass 3  dw_s = <g_i, v_s>, the lanes splitting d_v              (b2; a warp sum per slot)
//   pass 4  rho = sum w_s dw_s; dt_s = w_s (dw_s - rho); dnear_s     (b3, b4)
//   writes  dq_i (b5, complete), dmean_k_i and dmean_v_i (the mean term's slot), and for each
//           candidate slot two coefficients: coef_w = w_s (dv_j += w_s g_i) and coef_k
//           (dk_j += -coef_k (q_i - k_j) for the distances, coef_k q_i for "softmax"), and
//           dc_i = sum of dnear_s (for dgamma)
// zeta_bwd_query_half and zeta_bwd_query_fast compute the same with 16 lanes per query (two
//   queries a warp); the fast one, for float32, reads rows 16 bytes at a time and stages each
//   slot's key in shared memory (the launcher takes it wherever it can).
// zeta_bwd_pair_keys, then one stable cupy.argsort: the (query, slot) pairs ordered by the key
//   they selected, and each key's in (query, slot) order; zeta_bwd_key_counts counts each
//   key's pairs, whose running sum says where each key's begin.
// zeta_bwd_keys    one thread per (key j, column e) of [dk | dv], keys in the order given
//   (position order from the launcher): walks the (query, slot) pairs that selected key j, in
//   (query, slot) order, and sums their contributions in double, rounding once: the
//   specification's scatter_rows. zeta_bwd_values computes dv's columns the same way, four
//   columns a thread.
// zeta_bwd_mean_sums / zeta_scan_blocks (topk_softmax.cu) / zeta_bwd_mean_write: the mean
//   term's share, dk_j = sum_{i >= j} dmean_k_i / (i + 1) (causal) or sum_i dmean_k_i / N
//   ("none"): a blocked scan in double, from the end of the sequence backwards.
#include "zeta_common.cuh"


template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
    for (int m = 16; m >= 1; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;  // every lane holds the same sum, added in the same tree
}

template <typename T>
__device__ __forceinline__ T warp_max(T x) {
    for (int m = 16; m >= 1; m >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, m));
    return x;
}

// The slots a lane handles: s = lane, lane + 32, ... < n_slots (+ 1 with the mean term).
#define ZETA_MAX_SLOT_ROUNDS 8  // up to 256 slots: k <= 255 with the mean term

template <typename T, typename I>
__global__ void zeta_bwd_query(const T* __restrict__ q, const T* __restrict__ k,
                               const T* __restrict__ v, const I* __restrict__ cand,
                               const T* __restrict__ mean_k, const T* __restrict__ mean_v,
                               int with_mean, const T* __restrict__ grad,
                               const long long* __restrict__ visit, long long rows,
                               long long n, int d_k, int d_v, int n_slots, int score, T c,
                               T* __restrict__ dq, T* __restrict__ dmean_k,
                               T* __restrict__ dmean_v, T* __restrict__ coef_w,
                               T* __restrict__ coef_k, double* __restrict__ dc) {
    int lane = threadIdx.x & 31;
    long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool exp_score = score == 1 || score == 2;
    for (long long task = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
         task < rows * n; task += warps) {
        long long r = task / n, i = visit[task], at = r * n + i;
        const T* qi = q + at * d_k;
        const T* gi = grad + at * d_v;
        const I* ci = cand + at * n_slots;
        // pass 1: each lane's slots: nearness and the raw score (logit or affinity)
        T near[ZETA_MAX_SLOT_ROUNDS], raw[ZETA_MAX_SLOT_ROUNDS];
        bool valid[ZETA_MAX_SLOT_ROUNDS];
        T top = (T)0;
        bool any = false;
#pragma unroll
        for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) {
            int s = lane + 32 * u;
            valid[u] = s < slots && (s == n_slots || (ci[s] >= 0 && ci[s] < n));
            near[u] = raw[u] = (T)0;
            if (!valid[u]) continue;
            const T* key = s < n_slots ? k + (r * n + (long long)ci[s]) * d_k : mean_k + at * d_k;
            near[u] = near_of(qi, key, d_k, score);
            raw[u] = exp_score ? -near[u] / c : (T)1 / (near[u] + c);
            top = any ? fmax(top, raw[u]) : raw[u];
            any = true;
        }
        // the largest logit over the warp (exp scores); lanes without a slot offer -inf
        T big = exp_score ? warp_max(any ? top : -(T)inf64()) : (T)0;
        // pass 2: affinities and their sum
        T a[ZETA_MAX_SLOT_ROUNDS];
        T part = (T)0;
#pragma unroll
        for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) {
            a[u] = !valid[u] ? (T)0 : (exp_score ? exp_t(raw[u] - big) : raw[u]);
            part += a[u];
        }
        T total = warp_sum(part);
        if (!(total > (T)0)) total = (T)1;  // nothing valid: every weight and gradient is 0
        // pass 3: dw_s = <g_i, v_s>, the warp's lanes splitting the d_v columns
        T dw[ZETA_MAX_SLOT_ROUNDS];
        for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) dw[u] = (T)0;
        for (int s = 0; s < slots; ++s) {
            int owner = s & 31, u = s >> 5;
            bool ok = s == n_slots || (ci[s] >= 0 && ci[s] < n);  // the same for every lane
            if (!ok) continue;
            const T* row = s < n_slots ? v + (r * n + (long long)ci[s]) * d_v : mean_v + at * d_v;
            T acc = (T)0;
            for (int e = lane; e < d_v; e += 32) acc += gi[e] * row[e];
            acc = warp_sum(acc);
            if (lane == owner) {
#pragma unroll
                for (int uu = 0; uu < ZETA_MAX_SLOT_ROUNDS; ++uu)
                    if (uu == u) dw[uu] = acc;
            }
        }
        // pass 4: rho = sum_s w_s dw_s, then dt_s and dnear_s (b3, b4)
        T w[ZETA_MAX_SLOT_ROUNDS];
        T part_rho = (T)0;
#pragma unroll
        for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) {
            w[u] = a[u] / total;
            part_rho += w[u] * dw[u];
        }
        T rho = warp_sum(part_rho);
        T dq_lane[8];  // d_k <= 8 accumulated here; wider d_k loops below
        for (int e = 0; e < 8; ++e) dq_lane[e] = (T)0;
        double dc_lane = 0.0;
#pragma unroll
        for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) {
            int s = lane + 32 * u;
            if (!(s < slots)) continue;
            T dt = w[u] * (dw[u] - rho);
            T dnear = !valid[u] ? (T)0 : (exp_score ? -(dt / c) : -(dt * a[u]));
            T ck = score == 1 ? -dnear : dnear + dnear;  // see the header: coef_k
            if (valid[u]) dc_lane += (double)dnear;
            const T* key = s < n_slots && valid[u] ? k + (r * n + (long long)ci[s]) * d_k
                                                   : mean_k + at * d_k;
            if (valid[u]) {
                for (int e = 0; e < d_k && e < 8; ++e)
                    dq_lane[e] += score == 1 ? ck * key[e] : ck * (qi[e] - key[e]);
            }
            if (s < n_slots) {  // a candidate slot: its coefficients for the key pass
                coef_w[at * n_slots + s] = valid[u] ? w[u] : (T)0;
                coef_k[at * n_slots + s] = valid[u] ? ck : (T)0;
            } else {  // the mean term: its gradients, for history_means_backward
                for (int e = 0; e < d_k; ++e)
                    dmean_k[at * d_k + e] = score == 1 ? ck * qi[e] : -(ck * (qi[e] - key[e]));
                for (int e = 0; e < d_v; ++e) dmean_v[at * d_v + e] = w[u] * gi[e];
            }
        }
        // dq_i: the sum over the slots (a warp sum per column, fixed tree)
        for (int e = 0; e < d_k; ++e) {
            T mine = (T)0;
            if (e < 8) mine = dq_lane[e];
            else {  // d_k > 8: the lane's slots again, for this column
                for (int u = 0; u < ZETA_MAX_SLOT_ROUNDS; ++u) {
                    int s = lane + 32 * u;
                    if (!(s < slots) || !valid[u]) continue;
                    T dt = w[u] * (dw[u] - rho);
                    T dnear = exp_score ? -(dt / c) : -(dt * a[u]);
                    T ck = score == 1 ? -dnear : dnear + dnear;
                    const T* key = s < n_slots ? k + (r * n + (long long)ci[s]) * d_k
                                               : mean_k + at * d_k;
                    mine += score == 1 ? ck * key[e] : ck * (qi[e] - key[e]);
                }
            }
            T total_e = warp_sum(mine);
            if (lane == 0) dq[at * d_k + e] = total_e;
        }
        double dc_sum = warp_sum(dc_lane);
        if (lane == 0) dc[at] = dc_sum;
    }
}

// ---------------------------------------------------------------- 16 lanes per query
// The same computation as zeta_bwd_query for up to 128 slots and d_v <= 16 * COLS, with two
// queries per warp: lane l of a half-warp owns slots l, l + 16, ... and columns l, l + 16,
// ..., l + 16 (COLS - 1) of the value rows (COLS = 4 covers d_v <= 64). g_i stays in
// registers. The dot products <g_i, v_s>, where the time goes, are taken sixteen slots at a
// time: each lane multiplies its columns of the sixteen rows, then one transposing sum
// (half_transpose_sum: 15 shuffles for 16 sums) leaves slot 16 u + l's total in lane l, the
// lane that owns the slot.
#define ZETA_HALF_ROUNDS 8   // slots per lane: 8 x 16 = 128

template <typename T>
__device__ __forceinline__ T half_sum(T x) {
    for (int m = 8; m >= 1; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;  // the sum over the lane's 16-lane half, the same in each of its lanes
}

template <typename T>
__device__ __forceinline__ T half_max(T x) {
    for (int m = 8; m >= 1; m >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, m));
    return x;
}

// Sixteen sums at once over a 16-lane half: lane l holds p[0..15] (its shares of sixteen
// sums); on return lane l holds the total of sum l. Each round halves the values a lane keeps:
// it sends the half its partner (lane l ^ m) keeps and adds what the partner sends, so after
// the rounds m = 8, 4, 2, 1 lane l keeps only sum (l & 8) + (l & 4) + (l & 2) + (l & 1) = l.
// A fixed tree: the same bits on every run.
// One round of half_transpose_sum: the partner is lane l ^ M; of p[0 .. 2M - 1] the lane
// keeps one half (the upper one where bit M of l is set), and p[0 .. M - 1] become their sums.
template <int M, typename T>
__device__ __forceinline__ void transpose_round(T (&p)[16], int l) {
    bool upper = (l & M) != 0;
#pragma unroll
    for (int j = 0; j < M; ++j) {
        T send = upper ? p[j] : p[j + M];
        T keep = upper ? p[j + M] : p[j];
        p[j] = keep + __shfl_xor_sync(0xffffffffu, send, M);
    }
}

template <typename T>
__device__ __forceinline__ T half_transpose_sum(T (&p)[16], int l) {
    transpose_round<8>(p, l);
    transpose_round<4>(p, l);
    transpose_round<2>(p, l);
    transpose_round<1>(p, l);
    return p[0];
}

// One lane's share of <g_i, row>: its COLS columns (gl holds g_i's).
template <typename T, int COLS>
__device__ __forceinline__ T row_dot(const T (&gl)[COLS], const T* row, int l, int d_v) {
    T acc = (T)0;
#pragma unroll
    for (int m = 0; m < COLS; ++m) {
        int e = l + 16 * m;
        if (e < d_v) acc += gl[m] * row[e];
    }
    return acc;
}

// Pass 4 of the 16-lane kernels for one slot s of the lane (j: its key, -2 the mean term, -1
// empty), from its weight w, affinity a and dw = <g_i, v_s>: dt = w (dw - rho) and dnear (b3,
// b4), then coef_k (see the header). Adds the slot's share of dq_i and dc_i to the lane's sums;
// where `write`, stores the slot's two coefficients (a candidate) or dmean_k (the mean term).
template <typename T>
__device__ __forceinline__ void slot_backward(int s, int j, T w, T a, T dw, T rho,
                                              bool exp_score, int score, T c, const T* qi,
                                              const T* key, int d_k, int n_slots, long long at,
                                              bool write, T (&dq_lane)[8], double& dc_lane,
                                              T* coef_w, T* coef_k, T* dmean_k) {
    bool valid = j != -1;
    T dt = w * (dw - rho);
    T dnear = !valid ? (T)0 : (exp_score ? -(dt / c) : -(dt * a));
    T ck = score == 1 ? -dnear : dnear + dnear;
    if (valid) {
        dc_lane += (double)dnear;
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (e < d_k) dq_lane[e] += score == 1 ? ck * key[e] : ck * (qi[e] - key[e]);
    }
    if (!write) return;
    if (s < n_slots) {
        coef_w[at * n_slots + s] = valid ? w : (T)0;
        coef_k[at * n_slots + s] = valid ? ck : (T)0;
    } else {
        for (int e = 0; e < d_k; ++e)
            dmean_k[at * d_k + e] = score == 1 ? ck * qi[e] : -(ck * (qi[e] - key[e]));
    }
}

// dq_i and dc_i: the lanes' sums added over the 16 lanes (fixed trees), written by lane 0.
template <typename T>
__device__ __forceinline__ void write_dq_dc(T (&dq_lane)[8], double dc_lane, int d_k, int l,
                                            bool write, long long at, T* dq, double* dc) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        if (e >= d_k) break;
        T sum = half_sum(dq_lane[e]);
        if (write && l == 0) dq[at * d_k + e] = sum;
    }
    double dc_sum = half_sum(dc_lane);
    if (write && l == 0) dc[at] = dc_sum;
}

template <typename T, typename I, int COLS>
__global__ void zeta_bwd_query_half(const T* __restrict__ q, const T* __restrict__ k,
                                    const T* __restrict__ v, const I* __restrict__ cand,
                                    const T* __restrict__ mean_k, const T* __restrict__ mean_v,
                                    int with_mean, const T* __restrict__ grad,
                                    const long long* __restrict__ visit, long long rows,
                                    long long n, int d_k, int d_v, int n_slots, int score, T c,
                                    T* __restrict__ dq, T* __restrict__ dmean_k,
                                    T* __restrict__ dmean_v, T* __restrict__ coef_w,
                                    T* __restrict__ coef_k, double* __restrict__ dc) {
    int lane = threadIdx.x & 31, l = lane & 15, half = lane >> 4;
    long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool exp_score = score == 1 || score == 2;
    // both halves of a warp loop together (their shuffles must meet): a half past the end
    // computes on query 0 and writes nothing
    for (long long base = ((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5) * 2;
         base < rows * n; base += 2 * warps) {
        long long task = base + half;
        bool active = task < rows * n;
        long long r = active ? task / n : 0, i = active ? visit[task] : 0, at = r * n + i;
        const T* qi = q + at * d_k;
        const I* ci = cand + at * n_slots;
        // pass 1: the lane's slots: which key (jj: its position, -2 the mean term, -1 none),
        // nearness, raw score, the largest logit
        T near[ZETA_HALF_ROUNDS], a[ZETA_HALF_ROUNDS];
        int jj[ZETA_HALF_ROUNDS];
        T top = (T)0;
        bool any = false;
#pragma unroll
        for (int u = 0; u < ZETA_HALF_ROUNDS; ++u) {
            int s = l + 16 * u;
            jj[u] = s < n_slots ? (ci[s] >= 0 && ci[s] < n ? (int)ci[s] : -1)
                                : (s == n_slots && with_mean ? -2 : -1);
            near[u] = a[u] = (T)0;
            if (jj[u] == -1) continue;
            const T* key = jj[u] >= 0 ? k + (r * n + jj[u]) * d_k : mean_k + at * d_k;
            near[u] = near_of(qi, key, d_k, score);
            a[u] = exp_score ? -near[u] / c : (T)1 / (near[u] + c);
            top = any ? fmax(top, a[u]) : a[u];
            any = true;
        }
        T big = exp_score ? half_max(any ? top : -(T)inf64()) : (T)0;
        // pass 2: the affinities and their sum
        T part = (T)0;
#pragma unroll
        for (int u = 0; u < ZETA_HALF_ROUNDS; ++u) {
            bool valid = jj[u] != -1;
            if (valid && exp_score) a[u] = exp_t(a[u] - big);
            part += valid ? a[u] : (T)0;
        }
        T total = half_sum(part);
        if (!(total > (T)0)) total = (T)1;
        // pass 3: dw_s = <g_i, v_s>
        T gl[COLS];
#pragma unroll
        for (int m = 0; m < COLS; ++m) {
            int e = l + 16 * m;
            gl[m] = e < d_v ? grad[at * d_v + e] : (T)0;
        }
        T dw[ZETA_HALF_ROUNDS];
#pragma unroll
        for (int u = 0; u < ZETA_HALF_ROUNDS; ++u) {
            dw[u] = (T)0;
            int count = slots - 16 * u;  // slots of this round (the same in both halves)
            if (count <= 0) continue;
            if (count >= 4) {  // sixteen rows, one transposing sum
                T p[16];
#pragma unroll
                for (int t = 0; t < 16; ++t) {
                    int j = __shfl_sync(0xffffffffu, jj[u], t, 16);  // slot 16 u + t's key
                    p[t] = (T)0;
                    if (j == -1) continue;
                    const T* row = j >= 0 ? v + (r * n + j) * d_v : mean_v + at * d_v;
                    p[t] = row_dot(gl, row, l, d_v);
                }
                dw[u] = half_transpose_sum(p, l);
            } else {  // a short last round (the mean term's slot after 16 or 32 candidates)
                for (int t = 0; t < count; ++t) {
                    int j = __shfl_sync(0xffffffffu, jj[u], t, 16);
                    T dot = (T)0;
                    if (j != -1) {
                        const T* row = j >= 0 ? v + (r * n + j) * d_v : mean_v + at * d_v;
                        dot = row_dot(gl, row, l, d_v);
                    }
                    T sum = half_sum(dot);
                    if (l == t) dw[u] = sum;
                }
            }
        }
        // pass 4: rho, dt, dnear; the coefficients, dq, the mean term's gradients, dc
        T w[ZETA_HALF_ROUNDS];
        T part_rho = (T)0;
#pragma unroll
        for (int u = 0; u < ZETA_HALF_ROUNDS; ++u) {
            w[u] = jj[u] != -1 ? a[u] / total : (T)0;
            part_rho += w[u] * dw[u];
        }
        T rho = half_sum(part_rho);
        T dq_lane[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) dq_lane[e] = (T)0;
        double dc_lane = 0.0;
        T w_mean = (T)0;
#pragma unroll
        for (int u = 0; u < ZETA_HALF_ROUNDS; ++u) {
            int s = l + 16 * u;
            if (!(s < slots)) continue;
            const T* key = jj[u] >= 0 ? k + (r * n + jj[u]) * d_k : mean_k + at * d_k;
            slot_backward(s, jj[u], w[u], a[u], dw[u], rho, exp_score, score, c, qi, key, d_k,
                          n_slots, at, active, dq_lane, dc_lane, coef_w, coef_k, dmean_k);
            if (s == n_slots) w_mean = w[u];
        }
        if (with_mean) {  // dmean_v = w_mean g_i, each lane its columns
            w_mean = __shfl_sync(0xffffffffu, w_mean, n_slots & 15, 16);
#pragma unroll
            for (int m = 0; m < COLS; ++m) {
                int e = l + 16 * m;
                if (active && e < d_v) dmean_v[at * d_v + e] = w_mean * gl[m];
            }
        }
        write_dq_dc(dq_lane, dc_lane, d_k, l, active, at, dq, dc);
    }
}

// ---------------------------------------------------------------- 16 lanes, rows as float4
// zeta_bwd_query_fast<U, NX>: the computation of zeta_bwd_query_half, shaped as the forward
// pass's zeta_topk_fast, for float32, int32 candidates and d_v a multiple of 4 up to 256.
// U: slots per lane (k + 1 <= 16 U); NX: 64-column stripes of a row (d_v <= 64 NX); both
// template arguments, so that no lane keeps registers for slots or columns that are not
// there. Lane l holds columns 64 x + 4 l .. 64 x + 4 l + 3 of g_i (a float4 per stripe) and
// reads the same columns of each value row, 16 bytes a load (one 256-byte row per 16 lanes).
// The slot's key is staged in shared memory by the lane that owns the slot and read by all
// 16 lanes at once (a broadcast), instead of a shuffle per slot; an empty slot loads nothing
// and adds 0.
#define ZETA_BWD_FAST_THREADS 256  // threads per block (the launcher's FAST_THREADS)

// Registers: capped for 4 blocks an SM (64 a thread, a few bytes spilled) where U NX <= 4, and
// for 2 (128 a thread) above. Measured at 3 slots a lane and 1 stripe (B = 1, H = 8, N = 65536,
// the H200): 1.04 ms capped against 1.25 ms uncapped (79 registers), the same bits
// (docs/data/backward_query_ab.json); the cap of 2 for the larger instances is not measured.
template <int U, int NX>
__global__ void __launch_bounds__(ZETA_BWD_FAST_THREADS, U * NX <= 4 ? 4 : 2)
zeta_bwd_query_fast(const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, const int* __restrict__ cand,
                    const float* __restrict__ mean_k, const float* __restrict__ mean_v,
                    int with_mean, const float* __restrict__ grad,
                    const long long* __restrict__ visit, long long rows, long long n, int d_k,
                    int d_v, int n_slots, int score, float c, float* __restrict__ dq,
                    float* __restrict__ dmean_k, float* __restrict__ dmean_v,
                    float* __restrict__ coef_w, float* __restrict__ coef_k,
                    double* __restrict__ dc) {
    __shared__ int staged[ZETA_BWD_FAST_THREADS / 16][16 * U];
    int* mine = staged[threadIdx.x >> 4];  // this query's key per slot: -1 empty, -2 the mean
    int l = threadIdx.x & 15;
    long long group = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 4;
    long long n_groups = ((long long)gridDim.x * blockDim.x) >> 4;
    // every lane runs the same number of rounds (the shuffles need all 32); a half-warp past
    // the end computes on a copy of the last query and writes nothing
    long long total_q = rows * n;
    long long rounds = (total_q + n_groups - 1) / n_groups;
    bool exp_score = score == 1 || score == 2;
    int slots = n_slots + (with_mean ? 1 : 0);
    bool has[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) has[x] = 64 * x + 4 * l < d_v;
    for (long long round = 0; round < rounds; ++round) {
        long long task = group + round * n_groups;
        bool live = task < total_q;
        if (!live) task = total_q - 1;
        long long r = task / n, i = visit[task], at = r * n + i;
        const float* qi = q + at * d_k;
        const int* ci = cand + at * n_slots;
        const float* keys = k + r * n * d_k;
        const float* vals = v + r * n * d_v + 4 * l;
        const float* mean_row = mean_v + (with_mean ? at * d_v : 0) + 4 * l;
        // pass 1: the lane's slots l, l + 16, ...: which key (a candidate outside 0 .. n - 1
        // is taken for empty), nearness, raw score (logit or affinity), the largest logit
        float near[U], a[U];
        int jj[U];
        float top = -__int_as_float(0x7f800000);  // -inf
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int s = l + 16 * u;
            jj[u] = -1;
            near[u] = a[u] = 0.0f;
            if (s < n_slots) jj[u] = ci[s] >= 0 && ci[s] < n ? ci[s] : -1;
            else if (s == n_slots && with_mean) jj[u] = -2;
            mine[s] = jj[u];
            if (jj[u] == -1) continue;
            const float* key = jj[u] >= 0 ? keys + (long long)jj[u] * d_k : mean_k + at * d_k;
            near[u] = near_of(qi, key, d_k, score);
            a[u] = exp_score ? -near[u] / c : 1.0f / (near[u] + c);
            top = fmaxf(top, a[u]);
        }
        float big = exp_score ? half_max(top) : 0.0f;
        // pass 2: the affinities and their sum
        float part = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (jj[u] != -1 && exp_score) a[u] = expf(a[u] - big);
            part += jj[u] != -1 ? a[u] : 0.0f;
        }
        float total = half_sum(part);
        if (!(total > 0.0f)) total = 1.0f;  // nothing valid: every weight and gradient is 0
        __syncwarp();  // `mine` written before it is read
        // pass 3: dw_s = <g_i, v_s>, sixteen slots at a time: each lane its columns of the
        // sixteen rows, then one transposing sum leaves slot 16 u + l's total in lane l
        float4 gl[NX];
#pragma unroll
        for (int x = 0; x < NX; ++x) {
            gl[x] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (has[x])
                gl[x] = *reinterpret_cast<const float4*>(grad + at * d_v + 64 * x + 4 * l);
        }
        float dw[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            dw[u] = 0.0f;
            if (16 * u >= slots) continue;  // the same in every lane
            float p[16];
#pragma unroll
            for (int t = 0; t < 16; ++t) {
                int j = mine[16 * u + t];
                bool ok = j != -1;
                const float* row = j >= 0 ? vals + (long long)j * d_v : mean_row;
                float acc = 0.0f;
#pragma unroll
                for (int x = 0; x < NX; ++x) {
                    float4 y = make_float4(0.f, 0.f, 0.f, 0.f);
                    if (ok && has[x]) y = __ldg(reinterpret_cast<const float4*>(row + 64 * x));
                    acc += gl[x].x * y.x + gl[x].y * y.y + gl[x].z * y.z + gl[x].w * y.w;
                }
                p[t] = acc;
            }
            dw[u] = half_transpose_sum(p, l);
        }
        __syncwarp();  // every lane has read `mine` before the next round writes it
        // pass 4: rho = sum_s w_s dw_s; dt_s, dnear_s (b3, b4); the coefficients, dq, the
        // mean term's gradients, dc
        float w[U];
        float part_rho = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            w[u] = jj[u] != -1 ? a[u] / total : 0.0f;
            part_rho += w[u] * dw[u];
        }
        float rho = half_sum(part_rho);
        float dq_lane[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) dq_lane[e] = 0.0f;
        double dc_lane = 0.0;
        float w_mean = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int s = l + 16 * u;
            if (!(s < slots)) continue;
            const float* key = jj[u] >= 0 ? keys + (long long)jj[u] * d_k : mean_k + at * d_k;
            slot_backward(s, jj[u], w[u], a[u], dw[u], rho, exp_score, score, c, qi, key, d_k,
                          n_slots, at, live, dq_lane, dc_lane, coef_w, coef_k, dmean_k);
            if (s == n_slots) w_mean = w[u];
        }
        if (with_mean) {  // dmean_v = w_mean g_i, each lane its columns
            w_mean = __shfl_sync(0xffffffffu, w_mean, n_slots & 15, 16);
#pragma unroll
            for (int x = 0; x < NX; ++x) {
                float4 o = make_float4(w_mean * gl[x].x, w_mean * gl[x].y, w_mean * gl[x].z,
                                       w_mean * gl[x].w);
                if (live && has[x])
                    *reinterpret_cast<float4*>(dmean_v + at * d_v + 64 * x + 4 * l) = o;
            }
        }
        write_dq_dc(dq_lane, dc_lane, d_k, l, live, at, dq, dc);
    }
}

// The key each (query, slot) pair selected, for one stable argsort: thread per pair
// p = (r * n + i) * n_slots + s writes r * n + j, with j = cand[p], or rows * n (after every
// real key) for an empty slot. K: unsigned int where rows * n + 1 fits, else 64 bits.
template <typename I, typename K>
__global__ void zeta_bwd_pair_keys(const I* __restrict__ cand, long long rows, long long n,
                                   int n_slots, K* __restrict__ keys) {
    long long pairs = rows * n * n_slots;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < pairs;
         p += (long long)gridDim.x * blockDim.x) {
        long long r = p / (n * n_slots), j = (long long)cand[p];
        keys[p] = (K)(j >= 0 && j < n ? r * n + j : rows * n);
    }
}

// counts[key] += 1 for the key of every pair (integer atomics: the counts are exact whatever
// the order); their running sum gives where each key's pairs begin in the sorted list.
template <typename K>
__global__ void zeta_bwd_key_counts(const K* __restrict__ keys, long long pairs,
                                    unsigned long long* __restrict__ counts) {
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < pairs;
         p += (long long)gridDim.x * blockDim.x)
        atomicAdd(counts + keys[p], 1ull);
}

// One pair's share of dk_j[e] (x = q_i[e]: -coef_k (q_i - k_j)[e], or coef_k q_i[e] for
// "softmax") or of dv_j[e] (x = g_i[e]: coef_w g_i[e]), in T as the specification rounds it.
template <typename T>
__device__ __forceinline__ T pair_term(T coef, T x, T ke, bool key_column, int score) {
    // rounded products (mul_rn): the compiler may not fuse them into the double sums (an FMA
    // would skip a rounding the specification makes, and differ between the two kernels)
    if (!key_column) return mul_rn(coef, x);
    return score == 1 ? mul_rn(coef, x) : -mul_rn(coef, sub_rn(x, ke));
}

// One thread per (key j of row r, column e of [dk | dv]): the sum over the (query, slot) pairs
// that selected key j. pairs holds every pair p = (r * n + i) * n_slots + s, sorted by the key
// it selected and, for each key, in (query, slot) order; start[r * n + j] .. start[r * n + j +
// 1] are key j's. The keys are taken in `key_order` (rank t of row r is key
// key_order[r * n + t]), which changes which rows the cache holds, not the result.
template <typename T>
__global__ void zeta_bwd_keys(const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ grad, const T* __restrict__ coef_w,
                              const T* __restrict__ coef_k,
                              const long long* __restrict__ pairs,
                              const long long* __restrict__ start,
                              const long long* __restrict__ key_order,
                              long long rows, long long n, int d_k, int d_v, int n_slots,
                              int score, int d, T* __restrict__ dk, T* __restrict__ dv) {
    // d: the columns this launch takes, d_k + d_v, or only d_k when zeta_bwd_values takes dv
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n * d; task += (long long)gridDim.x * blockDim.x) {
        int e = (int)(task % d);
        long long t = task / d;  // rank t of row r
        long long key = (t / n) * n + key_order[t];  // r * n + j
        double acc = 0.0;
        long long at = start[key], end = start[key + 1];
        T ke = e < d_k ? k[key * d_k + e] : (T)0;
        // four pairs at a time: their loads go out together, then the sums in pair order
        for (; at + 4 <= end; at += 4) {
            T coef[4], x[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                long long p = pairs[at + u];
                long long query = p / n_slots;  // r * n + i
                coef[u] = e < d_k ? coef_k[p] : coef_w[p];
                x[u] = e < d_k ? q[query * d_k + e] : grad[query * d_v + (e - d_k)];
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
                acc += (double)pair_term(coef[u], x[u], ke, e < d_k, score);
        }
        for (; at < end; ++at) {
            long long p = pairs[at];
            long long query = p / n_slots;
            T coef = e < d_k ? coef_k[p] : coef_w[p];
            T x = e < d_k ? q[query * d_k + e] : grad[query * d_v + (e - d_k)];
            acc += (double)pair_term(coef, x, ke, e < d_k, score);
        }
        if (e < d_k) dk[key * d_k + e] = (T)acc;
        else dv[key * d_v + (e - d_k)] = (T)acc;
    }
}

// Four columns of load: grad's rows read as float4 (or two double2), 16 bytes at a time.
template <typename T> struct Quad;
template <> struct Quad<float> {
    __device__ static void load(const float* p, float x[4]) {
        float4 t = *reinterpret_cast<const float4*>(p);
        x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
    }
};
template <> struct Quad<double> {
    __device__ static void load(const double* p, double x[4]) {
        double2 a = reinterpret_cast<const double2*>(p)[0];
        double2 b = reinterpret_cast<const double2*>(p)[1];
        x[0] = a.x; x[1] = a.y; x[2] = b.x; x[3] = b.y;
    }
};

// dv alone, one thread per (key j, four columns e0 .. e0 + 3): zeta_bwd_keys's sums for these
// columns, in the same (query, slot) order and with the same roundings, so the same bits; each
// pair's index and coefficient are read once for four columns, and the row of grad 16 bytes at
// a time. Keys are taken in `key_order`, as in zeta_bwd_keys. The launcher takes this path
// when d_v is a multiple of 4 and grad is 16-byte aligned. (16 threads a key reading its pairs
// 16 at a time, and exchanging them by shuffles, ran 22 % slower at N = 65536: H200,
// 2026-12-03.)
template <typename T>
__global__ void zeta_bwd_values(const T* __restrict__ grad, const T* __restrict__ coef_w,
                                const long long* __restrict__ pairs,
                                const long long* __restrict__ start,
                                const long long* __restrict__ key_order,
                                long long rows, long long n, int d_v, int n_slots,
                                T* __restrict__ dv) {
    int quads = d_v / 4;
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n * quads; task += (long long)gridDim.x * blockDim.x) {
        int e0 = 4 * (int)(task % quads);
        long long t = task / quads;  // rank t of row r
        long long key = (t / n) * n + key_order[t];  // r * n + j
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        long long at = start[key], end = start[key + 1];
        // four pairs at a time: their indices, then their coefficients and rows of grad, are
        // asked for before any is added; the sums go in pair order (as one at a time)
        for (; at + 4 <= end; at += 4) {
            long long p[4];
            T coef[4], g[4][4];
#pragma unroll
            for (int s = 0; s < 4; ++s) p[s] = pairs[at + s];
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                coef[s] = coef_w[p[s]];
                Quad<T>::load(grad + (p[s] / n_slots) * d_v + e0, g[s]);
            }
#pragma unroll
            for (int s = 0; s < 4; ++s)
#pragma unroll
                for (int u = 0; u < 4; ++u) acc[u] += (double)mul_rn(coef[s], g[s][u]);
        }
        for (; at < end; ++at) {
            long long p = pairs[at];
            T coef = coef_w[p], g[4];
            Quad<T>::load(grad + (p / n_slots) * d_v + e0, g);
            // as pair_term: each product rounded, then added
#pragma unroll
            for (int u = 0; u < 4; ++u) acc[u] += (double)mul_rn(coef, g[u]);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) dv[key * d_v + e0 + u] = (T)acc[u];
    }
}

// ---------------------------------------------------------------- the mean term's share
// Column e of the (rows, n, D = d1 + d2) table [dmean_k | dmean_v]; causal: the share of
// position i is dmean_i / (i + 1), "none" (whole): dmean_i.

// sums[(r, b, e)] = the sum of column e's shares over block b's positions, from the block's
// last position to its first; eight positions loaded before they are added.
template <typename T>
__global__ void zeta_bwd_mean_sums(const T* __restrict__ x1, const T* __restrict__ x2,
                                   int whole, long long rows, long long n, int d1, int d2,
                                   long long block, double* __restrict__ sums) {
    int d = d1 + d2;
    long long n_blocks = (n + block - 1) / block;
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n_blocks * d; task += (long long)gridDim.x * blockDim.x) {
        int e = (int)(task % d);
        long long b = (task / d) % n_blocks, r = task / (d * n_blocks);
        long long i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
        int stride = e < d1 ? d1 : d2;
        const T* src = e < d1 ? x1 + r * n * d1 + e : x2 + r * n * d2 + (e - d1);
        double s = 0.0;
        long long i = i1;  // positions i - 1, i - 2, ... down to i0
        for (; i - 8 >= i0; i -= 8) {
            T x[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) x[u] = src[(i - 1 - u) * stride];
#pragma unroll
            for (int u = 0; u < 8; ++u) s += whole ? (double)x[u] : (double)x[u] / (double)(i - u);
        }
        for (; i > i0; --i) {
            double x = (double)src[(i - 1) * stride];
            s += whole ? x : x / (double)i;
        }
        sums[task] = s;
    }
}

// After zeta_scan_blocks made sums[r, b, e] the sum of the blocks before b (and totals the
// sum of all): the blocks after b hold totals - sums[r, b + 1] (0 for the last block). Each
// thread walks its block from the end: causal, out_j = after + sum_{i = j .. end} share_i;
// whole, out_j = totals / n. With `add`, out already holds the other share of dk and dv, and
// the mean term's, rounded to T, is added to it in T (what the composer's dk + share did, in
// the same pass). Eight positions are loaded before they are added, in the same order.
template <typename T>
__global__ void zeta_bwd_mean_write(const T* __restrict__ x1, const T* __restrict__ x2,
                                    const double* __restrict__ prefix,
                                    const double* __restrict__ totals, int whole,
                                    long long rows, long long n, int d1, int d2,
                                    long long block, int add, T* __restrict__ out1,
                                    T* __restrict__ out2) {
    int d = d1 + d2;
    long long n_blocks = (n + block - 1) / block;
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         task < rows * n_blocks * d; task += (long long)gridDim.x * blockDim.x) {
        int e = (int)(task % d);
        long long b = (task / d) % n_blocks, r = task / (d * n_blocks);
        long long i0 = b * block, i1 = i0 + block < n ? i0 + block : n;
        int stride = e < d1 ? d1 : d2;
        const T* src = e < d1 ? x1 + r * n * d1 + e : x2 + r * n * d2 + (e - d1);
        T* dst = e < d1 ? out1 + r * n * d1 + e : out2 + r * n * d2 + (e - d1);
        double total = totals[r * d + e];
        if (whole) {
            T g = (T)(total / (double)n);
            for (long long i = i0; i < i1; ++i) dst[i * stride] = add ? dst[i * stride] + g : g;
            continue;
        }
        double run = b + 1 < n_blocks ? total - prefix[task + d] : 0.0;  // the blocks after b
        long long i = i1;  // positions i - 1, i - 2, ... down to i0
        for (; i - 8 >= i0; i -= 8) {
            T x[8], o[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                x[u] = src[(i - 1 - u) * stride];
                o[u] = add ? dst[(i - 1 - u) * stride] : (T)0;
            }
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                run += (double)x[u] / (double)(i - u);  // share of position i - 1 - u
                T g = (T)run;
                dst[(i - 1 - u) * stride] = add ? o[u] + g : g;
            }
        }
        for (; i > i0; --i) {
            run += (double)src[(i - 1) * stride] / (double)i;
            T g = (T)run;
            dst[(i - 1) * stride] = add ? dst[(i - 1) * stride] + g : g;
        }
    }
}

#define ZETA_BWD_QUERY(T, I)                                                                   \
    template __global__ void zeta_bwd_query<T, I>(                                             \
        const T*, const T*, const T*, const I*, const T*, const T*, int, const T*,             \
        const long long*, long long, long long, int, int, int, int, T, T*, T*, T*, T*, T*,     \
        double*);
ZETA_BWD_QUERY(float, long long)
ZETA_BWD_QUERY(double, long long)
ZETA_BWD_QUERY(float, int)
ZETA_BWD_QUERY(double, int)
#define ZETA_BWD_HALF(T, I, COLS)                                                              \
    template __global__ void zeta_bwd_query_half<T, I, COLS>(                                  \
        const T*, const T*, const T*, const I*, const T*, const T*, int, const T*,             \
        const long long*, long long, long long, int, int, int, int, T, T*, T*, T*, T*, T*,     \
        double*);
ZETA_BWD_HALF(float, long long, 4)
ZETA_BWD_HALF(double, long long, 4)
ZETA_BWD_HALF(float, int, 4)
ZETA_BWD_HALF(double, int, 4)
ZETA_BWD_HALF(float, long long, 16)
ZETA_BWD_HALF(double, long long, 16)
ZETA_BWD_HALF(float, int, 16)
ZETA_BWD_HALF(double, int, 16)
#define ZETA_BWD_FAST(U, NX)                                                                   \
    template __global__ void zeta_bwd_query_fast<U, NX>(                                       \
        const float*, const float*, const float*, const int*, const float*, const float*, int, \
        const float*, const long long*, long long, long long, int, int, int, int, float,       \
        float*, float*, float*, float*, float*, double*);
#define ZETA_BWD_FAST_U(U) ZETA_BWD_FAST(U, 1) ZETA_BWD_FAST(U, 2) ZETA_BWD_FAST(U, 4)
ZETA_BWD_FAST_U(1)
ZETA_BWD_FAST_U(2)
ZETA_BWD_FAST_U(3)
ZETA_BWD_FAST_U(4)
ZETA_BWD_FAST_U(8)
#define ZETA_BWD_REST(T)                                                                       \
    template __global__ void zeta_bwd_keys<T>(const T*, const T*, const T*, const T*,          \
                                              const T*, const long long*, const long long*,    \
                                              const long long*, long long, long long, int,     \
                                              int, int, int, int,                              \
                                              T*, T*);                                         \
    template __global__ void zeta_bwd_values<T>(const T*, const T*, const long long*,          \
                                                const long long*, const long long*, long long, \
                                                long long, int, int, T*);                      \
    template __global__ void zeta_bwd_mean_sums<T>(const T*, const T*, int, long long,         \
                                                   long long, int, int, long long, double*);   \
    template __global__ void zeta_bwd_mean_write<T>(const T*, const T*, const double*,         \
                                                    const double*, int, long long, long long,  \
                                                    int, int, long long, int, T*, T*);
ZETA_BWD_REST(float)
ZETA_BWD_REST(double)
template __global__ void zeta_bwd_pair_keys<int, unsigned int>(const int*, long long, long long,
                                                               int, unsigned int*);
template __global__ void zeta_bwd_pair_keys<long long, unsigned int>(const long long*, long long,
                                                                     long long, int,
                                                                     unsigned int*);
template __global__ void zeta_bwd_pair_keys<int, unsigned long long>(const int*, long long,
                                                                     long long, int,
                                                                     unsigned long long*);
template __global__ void zeta_bwd_pair_keys<long long, unsigned long long>(
    const long long*, long long, long long, int, unsigned long long*);
template __global__ void zeta_bwd_key_counts<unsigned int>(const unsigned int*, long long,
                                                           unsigned long long*);
template __global__ void zeta_bwd_key_counts<unsigned long long>(const unsigned long long*,
                                                                 long long,
                                                                 unsigned long long*);
