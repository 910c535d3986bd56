"""CuPy twin of stage 4, sorting the keys by Z code (paper section 3.3; D10).

Same signature and output dtypes as :func:`zeta_ref.stages.sort.sort_keys`, and the same permutation,
bit for bit. All (batch, head) rows are sorted by ONE call: each key is packed with its row
above and its position below the code (``sort.cu``), and one radix sort of the packed keys
(``cupy.sort``) orders them by row, code and position, which is the stable order of D10.
(Sorting a (rows, N) array along its last axis instead runs a comparison sort per row, several
times slower.) When row, code and position need more than 64 bits together, a stable argsort
of (row, code) takes over, and beyond that two stable argsorts of all rows (by code, then by
row).
"""

from __future__ import annotations

import numpy as np

import cupy as cp

from . import _runtime as rt

_NAMES = ("zeta_pack", "zeta_unpack")


def sort_keys(key_codes, *, code_bits: int | None = None):
    """Stable sort of the key codes along the last axis (CuPy twin).

    Parameters
    ----------
    key_codes : uint64 array (..., N), NumPy or CuPy
    code_bits : int, optional
        An upper bound on the codes' bit length (``d_k * bits``); read off the codes when
        omitted, which costs one synchronisation with the host.

    Returns
    -------
    perm : cupy int64 array (..., N)
    sorted_codes : cupy uint64 array (..., N)
    """
    codes = rt.device(key_codes, np.uint64)
    shape = codes.shape
    n = shape[-1]
    rows = codes.size // n if n else 0
    perm = rt.empty(shape, np.int64)
    sorted_codes = rt.empty(shape, np.uint64)
    if codes.size == 0:
        return perm, sorted_codes
    if code_bits is None:
        code_bits = int(codes.max()).bit_length()
    pos_bits = (n - 1).bit_length()
    row_bits = (rows - 1).bit_length()
    if row_bits + code_bits + pos_bits <= 64:
        keys = rt.empty(codes.size, np.uint64)  # (R * N,)
        rt.launch(rt.kernel("sort", "zeta_pack", _NAMES), codes.size,
                  (codes, rt.i64(rows), rt.i64(n), np.int32(code_bits), np.int32(pos_bits), keys))
        keys.sort()  # one radix sort for every row, in place
        rt.launch(rt.kernel("sort", "zeta_unpack", _NAMES), codes.size,
                  (keys, rt.i64(codes.size), np.int32(code_bits), np.int32(pos_bits), perm,
                   sorted_codes))
        return perm, sorted_codes
    flat = codes.reshape(rows, n)  # (R, N)
    if row_bits + code_bits <= 64:
        row = cp.arange(rows, dtype=np.uint64)[:, None]  # (R, 1)
        shift = np.uint64(code_bits) if rows > 1 else np.uint64(0)
        order = cp.argsort(((row << shift) | flat).ravel())  # stable: ties by position
    else:
        # two stable sorts of all rows at once, the last by the most significant field: by
        # code (ties in flat order: row, then position), then by row (ties in code order).
        # (One argsort per row took 94.8 ms for 2048 rows of 128 keys on an H200, these 0.70.)
        by_code = cp.argsort(flat.ravel())
        order = by_code[cp.argsort(by_code // n)]
    order = order.reshape(rows, n)
    perm[...] = (order - cp.arange(rows, dtype=np.int64)[:, None] * n).reshape(shape)
    sorted_codes[...] = cp.take_along_axis(flat, perm.reshape(rows, n), axis=-1).reshape(shape)
    return perm, sorted_codes
