// Stage 4 on the GPU: sorting the keys by Z code, stable (paper section 3.3; D10).
// Mirrors zeta_ref/stages/sort.py:sort_keys, with one sort call for all (batch, head) rows.
//
// The rows are sorted together by packing (row, code, position) into one uint64 sort key,
//     key = row << (code_bits + pos_bits) | code << pos_bits | position,
// so that one radix sort (cupy.sort) orders by row, then code, then position: ties in the
// code go to the lower position (D10) without needing a stable sort, and nothing but the keys
// moves. zeta_pack writes the keys (one thread per key); zeta_unpack reads the sorted keys back
// into the permutation and the sorted codes (one thread per key).
extern "C" __global__ void zeta_pack(const unsigned long long* __restrict__ codes, long long rows,
                                     long long n, int code_bits, int pos_bits,
                                     unsigned long long* __restrict__ keys) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < rows * n;
         e += (long long)gridDim.x * blockDim.x) {
        unsigned long long r = (unsigned long long)(e / n), i = (unsigned long long)(e % n);
        unsigned long long row = code_bits + pos_bits < 64 ? r << (code_bits + pos_bits) : 0;
        keys[e] = row | (codes[e] << pos_bits) | i;  // (row = 0 when there is one row)
    }
}

extern "C" __global__ void zeta_unpack(const unsigned long long* __restrict__ keys, long long total,
                                       int code_bits, int pos_bits,
                                       long long* __restrict__ perm,
                                       unsigned long long* __restrict__ sorted_codes) {
    unsigned long long pos_mask = (1ULL << pos_bits) - 1;
    unsigned long long code_mask = code_bits == 64 ? ~0ULL : (1ULL << code_bits) - 1;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        unsigned long long key = keys[e];
        perm[e] = (long long)(key & pos_mask);
        if (sorted_codes) sorted_codes[e] = (key >> pos_bits) & code_mask;
    }
}
