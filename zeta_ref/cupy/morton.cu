// Stage 3 on the GPU: bit interleaving into Z-order codes (paper section 3.3, Eq. 4; D3).
//
// Mirrors zeta_ref/stages/morton.py:morton_encode. One thread per point (grid-stride loop):
//   reads  u[i * d + j]  (uint64 coordinates, each below 2^bits)
//   writes z[i]          (uint64) = the d coordinates' bits interleaved, dimension 0 highest
#include "zeta_common.cuh"

extern "C" __global__ void zeta_morton(const unsigned long long* __restrict__ u, long long n,
                                       int d, int bits, unsigned long long* __restrict__ z) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned long long code = 0;
        for (int j = 0; j < d; ++j) code |= spread_bits(u[i * d + j], j, d, bits);
        z[i] = code;
    }
}
