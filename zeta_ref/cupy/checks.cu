// The checks of zeta_ref._checks.max_abs on the GPU: max |x_i - y_i - c| (no y: max |x_i - c|)
// over an array, in double, in one pass, NaN-propagating.
//
// |d| is never negative, and the bit patterns of non-negative doubles are ordered as the
// numbers are, with +inf above every finite one and a NaN (its sign cleared by fabs) above
// +inf. So the largest |d| is the largest bit pattern as an unsigned integer, which atomicMax
// finds whatever order the threads come in: the answer is the same on every run, and a NaN
// anywhere wins.
#include "zeta_common.cuh"

template <typename T, typename U>
__global__ void zeta_max_abs(const T* __restrict__ x, const U* __restrict__ y, int has_y,
                             double c, long long size, unsigned long long* __restrict__ out) {
    unsigned long long best = 0ULL;  // the bits of +0.0
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned long long bits = abs_bits((double)x[i] - (has_y ? (double)y[i] : 0.0) - c);
        best = bits > best ? bits : best;
    }
    // the block's largest, then one atomic per block: the launcher caps the grid at a few
    // blocks per SM, as thousands of atomics on one address would queue behind each other
    __shared__ unsigned long long warp_best[32];
    for (int m = 16; m >= 1; m >>= 1) {
        unsigned long long other = __shfl_xor_sync(0xffffffffu, best, m);
        best = other > best ? other : best;
    }
    if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            best = warp_best[w] > best ? warp_best[w] : best;
        atomicMax(out, best);
    }
}

#define ZETA_MAX_ABS(T, U)                                                                     \
    template __global__ void zeta_max_abs<T, U>(const T*, const U*, int, double, long long,    \
                                                unsigned long long*);
ZETA_MAX_ABS(float, float)
ZETA_MAX_ABS(double, double)
ZETA_MAX_ABS(float, double)
ZETA_MAX_ABS(double, float)
ZETA_MAX_ABS(long long, long long)
ZETA_MAX_ABS(unsigned long long, unsigned long long)
ZETA_MAX_ABS(int, int)
