"""Numba twin of stage 4, sorting the keys by Z code (paper section 3.3; D10).

Same signature and output dtypes as :func:`zeta_ref.stages.sort.sort_keys`: a *stable* sort, so equal
codes keep position order (D10) and the permutation is the specification's, bit for bit.

Method: a least-significant-digit radix sort, 8 bits per pass, one row per thread (prange over
the batch*head rows). LSD radix sort is stable by construction: each pass is a counting sort
that keeps the order of equal digits. Only as many passes as the row's largest code needs are
run (4 for the default 30-bit codes). It does O(passes * N) work and needs two (N,) buffers
per row. docs/benchmarks.md compares it with NumPy's stable argsort (a merge sort for 64-bit
integers) on this machine.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._jit import serial_and_parallel
from .host_memory import empty_output

_DIGIT_BITS = 8
_BUCKETS = 1 << _DIGIT_BITS


@nb.njit(cache=True)
def _radix_sort_row(codes, perm_out, codes_out, perm_tmp, codes_tmp):
    """Stable LSD radix sort of one row; writes the permutation and the sorted codes.

    Each pass moves (permutation, code) pairs from one pair of buffers to the other: the
    outputs and two scratch rows of the same length."""
    n = codes.shape[0]
    # pass 0: how many 8-bit digits the largest code has
    top = np.uint64(0)
    for i in range(n):
        if codes[i] > top:
            top = codes[i]
    passes = 0
    while top > 0:
        passes += 1
        top >>= np.uint64(_DIGIT_BITS)
    # start from the identity order, in the buffers that an even number of passes ends in
    if passes % 2 == 0:
        perm_a, code_a, perm_b, code_b = perm_out, codes_out, perm_tmp, codes_tmp
    else:
        perm_a, code_a, perm_b, code_b = perm_tmp, codes_tmp, perm_out, codes_out
    for i in range(n):
        perm_a[i] = i
        code_a[i] = codes[i]
    count = np.empty(_BUCKETS, dtype=np.int64)
    mask = np.uint64(_BUCKETS - 1)
    for p in range(passes):
        shift = np.uint64(p * _DIGIT_BITS)
        # step 1: histogram of this digit
        count[:] = 0
        for i in range(n):
            count[(code_a[i] >> shift) & mask] += 1
        # step 2: exclusive prefix sum = first output slot of each digit
        run = 0
        for b in range(_BUCKETS):
            c = count[b]
            count[b] = run
            run += c
        # step 3: scatter in input order (stable)
        for i in range(n):
            b = (code_a[i] >> shift) & mask
            slot = count[b]
            count[b] = slot + 1
            perm_b[slot] = perm_a[i]
            code_b[slot] = code_a[i]
        perm_a, perm_b = perm_b, perm_a
        code_a, code_b = code_b, code_a
    # the result is now in perm_out, codes_out


def _sort_rows_body(codes, perm, sorted_codes, perm_tmp, codes_tmp):
    """codes: (R, N) uint64 contiguous; writes perm int64 (R, N), sorted codes uint64 (R, N);
    perm_tmp, codes_tmp: scratch of the same shapes."""
    for r in nb.prange(codes.shape[0]):
        _radix_sort_row(codes[r], perm[r], sorted_codes[r], perm_tmp[r], codes_tmp[r])


_sort_rows_serial, _sort_rows_parallel = serial_and_parallel(_sort_rows_body)


def sort_keys(key_codes, *, parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of the key codes along the last axis (Numba twin).

    Parameters
    ----------
    key_codes : uint64 array (..., N)
    parallel : bool, optional
        One row per thread (True) or all rows on the calling thread (False); by default in
        parallel when there are at least two rows. Both give the same result (for tests).

    Returns
    -------
    perm : int64 array (..., N)
        The key positions in Z order, equal codes by position (D10).
    sorted_codes : uint64 array (..., N)
    """
    key_codes = np.asarray(key_codes)
    shape = key_codes.shape
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    rows = np.ascontiguousarray(key_codes.reshape(n_rows, shape[-1]), dtype=np.uint64)  # (R, N)
    if parallel is None:
        parallel = n_rows >= 2
    perm = empty_output(rows.shape, np.int64)  # (R, N)
    sorted_codes = empty_output(rows.shape, np.uint64)  # (R, N)
    (_sort_rows_parallel if parallel else _sort_rows_serial)(
        rows, perm, sorted_codes, empty_output(rows.shape, np.int64),
        empty_output(rows.shape, np.uint64))
    return perm.reshape(shape), sorted_codes.reshape(shape)
