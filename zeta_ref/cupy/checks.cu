// The checks of zeta_ref._checks.max_abs on the GPU: max |x_i - y_i - c| (no y: max |x_i - c|)
// over an array, in double, in one pass, NaN-propagating.
//
// Each thread keeps the largest |d| of its elements as the bits of a double (zeta_common.cuh's
// abs_bits: for non-negative doubles the unsigned bit order is the numeric order, with +inf
// above every finite value and a NaN above +inf); block_max_into takes the block's largest and
// makes one atomicMax into *out. The result is the same on every run, and a NaN anywhere wins.
// The fused pass's kernels use the same helper to find max |q|, |k| and |v| as they read them
// (fused.cu, topk_softmax.cu).
#include "zeta_common.cuh"

template <typename T, typename U>
__global__ void zeta_max_abs(const T* __restrict__ x, const U* __restrict__ y, int has_y,
                             double c, long long size, unsigned long long* __restrict__ out) {
    unsigned long long best = 0ULL;  // the bits of +0.0
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x)
        best = max_bits(best, abs_bits((double)x[i] - (has_y ? (double)y[i] : 0.0) - c));
    // the block's largest, then one atomic per block: the launcher also caps the grid at a few
    // blocks per SM (rt.MAX_ABS_BLOCKS)
    block_max_into(best, out);
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
