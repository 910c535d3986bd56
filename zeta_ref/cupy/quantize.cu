// Stage 2 on the GPU: quantisation (paper section 3.3, Eq. 4; D1, D2, D12, D13).
//
// Mirrors zeta_ref/stages/quantize.py:quantize. One thread per coordinate (grid-stride loop):
//   reads  x[e]          (float or double, the flattened (..., N, d) input)
//   writes out[e]        (uint64) = min(floor(squash(x[e]) * 2^B), 2^B - 1)
// The squash runs in double whatever T is, with exp_ieee (zeta_common.cuh), so every
// coordinate lands in the specification's cell, bit for bit.
// (fused.cu does stages 2 and 3 in one kernel for the fast path, with the same functions.)
#include "zeta_common.cuh"

template <typename T>
__global__ void zeta_quantize(const T* __restrict__ x, long long n, double scale,
                              unsigned long long top, int method, double lo, double hi,
                              unsigned long long* __restrict__ out) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x)
        out[e] = cell_of_input(x[e], method, lo, hi, scale, top);
}

template __global__ void zeta_quantize<float>(const float*, long long, double,
                                              unsigned long long, int, double, double,
                                              unsigned long long*);
template __global__ void zeta_quantize<double>(const double*, long long, double,
                                               unsigned long long, int, double, double,
                                               unsigned long long*);
