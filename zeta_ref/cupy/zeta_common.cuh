// Shared device code of the CuPy backend: arithmetic that rounds the specification's way.
//
// Included by every .cu file of zeta_ref/cupy. Two things live here:
//
// 1. Arithmetic helpers add/sub/mul/div_rn for float and double. They call the _rn intrinsics,
//    which the compiler never fuses into an FMA (an FMA rounds once where NumPy rounds twice).
//    The integer stages depend on it: the squash (D13) and the re-rank's nearness must give the
//    specification's bits, not merely close ones.
// 2. Stage 2 (quantisation, D1, D2, D13) and stage 3 (bit interleaving, D3) for one value,
//    line for line zeta_ref/stages/quantize.py and zeta_ref/stages/morton.py.
// 3. Stage 6's nearness of one slot and exp in T, shared by the forward (topk_softmax.cu) and
//    the backward pass (backward.cu).
#pragma once

// ---------------------------------------------------------------- rounding as NumPy rounds
// The float ones are PTX without .ftz: CuPy compiles every source with -ftz=true (widen's
// comment below), under which the intrinsics would flush subnormals to zero where NumPy keeps
// them (the re-rank's nearness of coordinates near 1e-20 makes such products). An instruction
// with an explicit rounding mode is never fused into an FMA. The CPU emulation (tests/cuda_host)
// takes the intrinsics, which it defines.
#ifdef __CUDA_ARCH__
#define ZETA_FLOAT_RN(name, ptx, intrinsic)                                                     \
    __device__ __forceinline__ float name(float a, float b) {                                  \
        float r;                                                                               \
        asm(ptx " %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));                                    \
        return r;                                                                              \
    }
#else
#define ZETA_FLOAT_RN(name, ptx, intrinsic)                                                     \
    __device__ __forceinline__ float name(float a, float b) { return intrinsic(a, b); }
#endif
ZETA_FLOAT_RN(add_rn, "add.rn.f32", __fadd_rn)
ZETA_FLOAT_RN(sub_rn, "sub.rn.f32", __fsub_rn)
ZETA_FLOAT_RN(mul_rn, "mul.rn.f32", __fmul_rn)
ZETA_FLOAT_RN(div_rn, "div.rn.f32", __fdiv_rn)
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// a > b and a == b as NumPy compares, a subnormal float not 0 (setp without .ftz): the order
// of the re-rank's nearness (window_walk.cuh's worse), whose values may be subnormal.
#ifdef __CUDA_ARCH__
#define ZETA_FLOAT_CMP(name, ptx, op)                                                          \
    __device__ __forceinline__ bool name(float a, float b) {                                   \
        unsigned r;                                                                            \
        asm("{\n\t.reg .pred p;\n\t" ptx " p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"            \
            : "=r"(r) : "f"(a), "f"(b));                                                       \
        return r != 0;                                                                         \
    }
#else
#define ZETA_FLOAT_CMP(name, ptx, op)                                                          \
    __device__ __forceinline__ bool name(float a, float b) { return a op b; }
#endif
ZETA_FLOAT_CMP(greater, "setp.gt.f32", >)
ZETA_FLOAT_CMP(equal, "setp.eq.f32", ==)
__device__ __forceinline__ bool greater(double a, double b) { return a > b; }
__device__ __forceinline__ bool equal(double a, double b) { return a == b; }

// Float to double and back with subnormals kept. CuPy compiles every source with -ftz=true (it
// appends the flag after ours, and the last one wins: cupy/cuda/compiler.py), so a plain cast
// of a float to double flushes a subnormal float to zero, and a cast back flushes a result
// that is subnormal as a float. The running means promise the double quotient of the double
// sum of the floats, rounded once (topk_softmax.cu), subnormals included, and a coordinate's
// cell is the specification's, subnormals included (cell_of_input): they convert here, in PTX
// without .ftz. The CPU emulation (tests/cuda_host) never flushes; it casts.
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ double widen(float x) {
#ifdef __CUDA_ARCH__
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(x));
    return r;
#else
    return (double)x;
#endif
}
template <typename T>
__device__ __forceinline__ T narrow(double x) { return x; }  // T = double
template <>
__device__ __forceinline__ float narrow<float>(double x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(x));
    return r;
#else
    return (float)x;
#endif
}

__device__ __forceinline__ double inf64() { return __longlong_as_double(0x7ff0000000000000LL); }

// ---------------------------------------------------------------- exp from IEEE operations (D13)
// The constants of zeta_ref/stages/quantize.py, digit for digit (tests/test_cupy_sources.py checks).
#define ZETA_LN2_HI 0.6931471803691238
#define ZETA_LN2_LO 1.9082149292705877e-10
#define ZETA_INV_LN2 1.4426950408889634
#define ZETA_EXP_MAX_ARG 709.782712893384
#define ZETA_EXP_MIN_ARG -745.1332191019412

__device__ __forceinline__ double exp_ieee(double t) {
    if (t > ZETA_EXP_MAX_ARG) return inf64();
    if (t < ZETA_EXP_MIN_ARG) return 0.0;
    // 1 / j!, j = 0 .. 13: EXP_TAYLOR of quantize.py
    const double taylor[14] = {1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664,
                               0.008333333333333333, 0.001388888888888889,
                               0.0001984126984126984, 2.48015873015873e-05,
                               2.7557319223985893e-06, 2.755731922398589e-07,
                               2.505210838544172e-08, 2.08767569878681e-09,
                               1.6059043836821613e-10};
    // step 1: n = floor(t / ln 2 + 1/2)
    double n = floor(add_rn(mul_rn(t, ZETA_INV_LN2), 0.5));
    // step 2: r = (t - n ln2_hi) - n ln2_lo
    double r = sub_rn(sub_rn(t, mul_rn(n, ZETA_LN2_HI)), mul_rn(n, ZETA_LN2_LO));
    // step 3: Horner's rule, highest degree first
    double p = taylor[13];
#pragma unroll
    for (int j = 12; j >= 0; --j) p = add_rn(mul_rn(p, r), taylor[j]);
    // step 4: times 2^n
    return ldexp(p, (int)n);
}

// ---------------------------------------------------------------- stage 2: one coordinate
// squash ids: 0 sigmoid, 1 tanh, 2 clip (zeta_ref/numba/quantize.py: _SQUASH_IDS)
__device__ __forceinline__ double squash(double x, int method, double lo, double hi) {
    if (method == 0) return div_rn(1.0, add_rn(1.0, exp_ieee(-x)));
    if (method == 1) return div_rn(1.0, add_rn(1.0, exp_ieee(mul_rn(-2.0, x))));
    return div_rn(sub_rn(fmin(fmax(x, lo), hi), lo), sub_rn(hi, lo));
}

// min(floor(squash(x) * 2^B), 2^B - 1): scale = 2^B (exact), top = 2^B - 1
__device__ __forceinline__ unsigned long long cell_of(double x, int method, double lo, double hi,
                                                      double scale, unsigned long long top) {
    double cell = floor(mul_rn(squash(x, method, lo, hi), scale));  // whole number in [0, 2^B]
    return cell >= scale ? top : (unsigned long long)cell;
}

// ---------------------------------------------------------------- stage 2 for a float32 input
// The same cell, most often without the double-precision squash. For a float32 coordinate,
// the sigmoid or tanh squash and B <= ZETA_GUESS_MAX_BITS, the cell is first guessed in float:
// y_f = 2^B / (1 + expf(t)), t = -x or -2x (exact in float). CUDA's expf is within 2 ulp of
// exp (CUDA C++ Programming Guide, the single-precision functions' table of maximum ulp errors;
// no fast-math option is given to NVRTC here), and the sum and the quotient round once each,
// so the float sigmoid is within 2^-20 of the exact one (relative error below 2 * 2^-23 +
// 2 * 2^-24, and the sigmoid is at most 1); exp_ieee's double sigmoid is within 2^-45 of it.
// So |y_f - y_d| < 2^(B - 19), y_d = 2^B times the double sigmoid of cell_of. Where y_f lies
// at least that far from both integers around it, y_d has the same floor, which is below 2^B
// (no clamp): that floor is the cell. Elsewhere (about 2^(B - 18) of the coordinates, and
// every one whose y_f is a whole number, such as 0 or 2^B where the float sigmoid saturates),
// cell_of decides, in double. The guess never changes a cell; it only skips work.
#define ZETA_GUESS_MAX_BITS 12

__device__ __forceinline__ unsigned long long cell_of_input(double x, int method, double lo,
                                                            double hi, double scale,
                                                            unsigned long long top) {
    return cell_of(x, method, lo, hi, scale, top);
}

__device__ __forceinline__ unsigned long long cell_of_input(float x, int method, double lo,
                                                            double hi, double scale,
                                                            unsigned long long top) {
    if (method <= 1 && scale <= (double)(1 << ZETA_GUESS_MAX_BITS)) {
        float t = method == 0 ? -x : __fmul_rn(-2.0f, x);
        float y = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(1.0f, expf(t))), (float)scale);
        float f = floorf(y), margin = __fmul_rn((float)scale, 0x1p-19f);
        if (y - f >= margin && (f + 1.0f) - y >= margin) return (unsigned long long)f;
    }
    // widen: a subnormal x kept (the clip squash of a range within about 1e-30 of 0 tells it
    // from 0; the sigmoid and tanh never do, and their guess above defers at 0)
    return cell_of(widen(x), method, lo, hi, scale, top);
}

// ---------------------------------------------------------------- the input checks' maxima
// |x| as the bits of a double. The bit patterns of non-negative doubles are ordered as the
// numbers are, +inf above every finite one and a NaN (its sign cleared by fabs) above +inf:
// the largest |x| is the largest pattern as an unsigned integer, whatever the order it is
// met in, and a NaN anywhere wins (checks.cu's zeta_max_abs, the mean term's block sums).
__device__ __forceinline__ unsigned long long abs_bits(double x) {
    return (unsigned long long)__double_as_longlong(fabs(x));
}

// The largest `bits` of the warp into *out: one atomic a warp. Every lane of the warp calls it.
__device__ __forceinline__ void warp_max_into(unsigned long long* out, unsigned long long bits) {
    for (int m = 16; m >= 1; m >>= 1) {
        unsigned long long other = __shfl_xor_sync(0xffffffffu, bits, m);
        bits = other > bits ? other : bits;
    }
    if ((threadIdx.x & 31) == 0 && bits) atomicMax(out, bits);
}

// ---------------------------------------------------------------- stage 3: interleaving (D3)
// Bit t of coordinate j goes to bit t * d + (d - 1 - j) of the code: from the top, the highest
// bit of every coordinate with dimension 0 first, then the next bits, and so on.
//
// For d = 3 (the default d_K) the bits move in five steps instead of one at a time: bit t of a
// coordinate (u < 2^21) goes to 3 t = t + 2 t, then up by 2 - j. Write t = 16 b4 + 8 b3 + 4 b2
// + 2 b1 + b0; the step for b_s ORs u with itself shifted up by 2 * 2^s (32, 16, 8, 4, 2) and
// keeps, by a mask, one copy of each bit: the moved one where b_s = 1, the one in place where
// b_s = 0. After step s bit t sits at t + 2 (t - t mod 2^s), and after the last at 3 t. The
// masks are those places for t = 0 .. 20 (all 2^21 inputs checked against the loop below).
__device__ __forceinline__ unsigned long long spread_by_three(unsigned long long u) {
    u &= 0x1fffffULL;                                     // bits 0 .. 20
    u = (u | (u << 32)) & 0x001f00000000ffffULL;          // t -> t + 32 b4
    u = (u | (u << 16)) & 0x001f0000ff0000ffULL;          // ... + 16 b3
    u = (u | (u << 8)) & 0x100f00f00f00f00fULL;           // ... + 8 b2
    u = (u | (u << 4)) & 0x10c30c30c30c30c3ULL;           // ... + 4 b1
    u = (u | (u << 2)) & 0x1249249249249249ULL;           // ... + 2 b0: bit t at 3 t
    return u;
}

__device__ __forceinline__ unsigned long long spread_bits(unsigned long long u, int j, int d,
                                                          int bits) {
    if (d == 3) return spread_by_three(u) << (2 - j);  // bits <= 21 here: 3 bits <= 63
    unsigned long long code = 0;
    for (int t = 0; t < bits; ++t)
        code |= ((u >> t) & 1ULL) << (t * d + (d - 1 - j));
    return code;
}

// ---------------------------------------------------------------- stage 6: one slot's nearness
// score ids: 0 cauchy, 1 softmax, 2 neg_euclidean, 3 inv_euclidean (as zeta_ref/numba)
// ||q - key||^2, or -<q, key> for "softmax", coordinate by coordinate without FMA, as
// zeta_ref.stages.window.nearness
template <typename T>
__device__ __forceinline__ T near_of(const T* q, const T* key, int d_k, int score) {
    T acc = (T)0;
    for (int e = 0; e < d_k; ++e) {
        if (score == 1) acc = sub_rn(acc, mul_rn(q[e], key[e]));
        else { T diff = sub_rn(q[e], key[e]); acc = add_rn(acc, mul_rn(diff, diff)); }
    }
    return acc;
}

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
