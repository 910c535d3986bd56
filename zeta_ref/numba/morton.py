"""Numba twin of stage 3, bit interleaving into Z-order codes (paper section 3.3, Eq. 4; D3).

Same signature, output dtype and bit order as :func:`zeta_ref.stages.morton.morton_encode`: from the
most significant end, the top bit of every coordinate (dimension 0 first, D3), then the next
bits, and so on.

Two ways to build the same code:

- the general kernel runs the specification's double loop (bit groups from the top, dimensions
  inside a group) for any d and B with d * B <= 63;
- for d = 3 and d = 2, the fast kernel "spreads" each coordinate first (bit t moves to bit
  t * d, by the classic mask-and-shift steps, about 5 operations per coordinate instead of B)
  and then ORs the spread coordinates together, dimension 0 shifted highest. It computes the
  same bits; the tests compare both kernels with the specification.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..stages.morton import check_coordinates
from ._jit import parallel_from, serial_and_parallel
from .host_memory import empty_output


def _encode_general_body(u, bits, z):
    """u: (n, d) uint64 contiguous; writes the codes, uint64 (n,), into ``z``."""
    n, d = u.shape
    one = np.uint64(1)
    for e in nb.prange(n):
        code = np.uint64(0)
        for t in range(bits - 1, -1, -1):  # bit groups, most significant first
            for j in range(d):  # within a group, dimension 0 first (D3)
                code = (code << one) | ((np.uint64(u[e, j]) >> np.uint64(t)) & one)
        z[e] = code


@nb.njit(cache=True, inline="always")
def _spread3(x):
    """Move bit t of a value below 2^21 to bit 3t (zeros in between)."""
    x = x & np.uint64(0x1FFFFF)
    x = (x | (x << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    x = (x | (x << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    x = (x | (x << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    x = (x | (x << np.uint64(2))) & np.uint64(0x1249249249249249)
    return x


@nb.njit(cache=True, inline="always")
def _spread2(x):
    """Move bit t of a value below 2^32 to bit 2t (zeros in between)."""
    x = x & np.uint64(0xFFFFFFFF)
    x = (x | (x << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x | (x << np.uint64(2))) & np.uint64(0x3333333333333333)
    x = (x | (x << np.uint64(1))) & np.uint64(0x5555555555555555)
    return x


def _encode_spread3_body(u, z):
    """u: (n, 3) uint64 contiguous, values below 2^21; writes uint64 (n,) into ``z``."""
    n = u.shape[0]
    for e in nb.prange(n):
        # dimension 0 is most significant in every group of 3 bits (D3)
        z[e] = ((_spread3(u[e, 0]) << np.uint64(2)) | (_spread3(u[e, 1]) << np.uint64(1))
                | _spread3(u[e, 2]))


def _encode_spread2_body(u, z):
    """u: (n, 2) uint64 contiguous, values below 2^32; writes uint64 (n,) into ``z``."""
    n = u.shape[0]
    for e in nb.prange(n):
        z[e] = (_spread2(u[e, 0]) << np.uint64(1)) | _spread2(u[e, 1])


_general_serial, _general_parallel = serial_and_parallel(_encode_general_body)
_spread3_serial, _spread3_parallel = serial_and_parallel(_encode_spread3_body)
_spread2_serial, _spread2_parallel = serial_and_parallel(_encode_spread2_body)
#: From this many codes on the parallel kernels run, below it the serial ones: 2^15 under OpenMP
#: and TBB, 16 times that (2^19) under "workqueue" (``_jit.parallel_from``, whose parallel call
#: costs far more). Measured on the 2-core VM of docs/benchmarks.md (2026-12-02, d = 3, medians
#: of 61 interleaved calls, ranges over runs): under OpenMP the parallel kernel is as fast
#: from 2^10 codes on and 1.6-1.9x faster from 2^13, so 2^15 leaves a margin for a wake-up that
#: waits while the other core is busy (numba/_jit.py); under "workqueue" it was slower up to
#: 2^20 in three runs of four (0.6-0.9x; 1.3-1.4x at 2^18-2^19 in the fourth) and faster from
#: about 2^21 (1.1x): one pass over memory gains less from a second core than quantize's
#: polynomial, so 2^19 lies below this kernel's break-even on that layer.
PARALLEL_MIN_CODES = 1 << 15


def morton_encode(u, bits: int, *, check: bool = True, method: str = "auto",
                  parallel: bool | None = None) -> np.ndarray:
    """Interleave the bits of d integer coordinates into one Z-order code (Numba twin).

    Parameters
    ----------
    u : integer array (..., d)
        Quantised coordinates, each in [0, 2^bits).
    bits : int
        B, bits per coordinate; ``d * bits <= 63``.
    check : bool, default True
        Check ``u`` as the specification does (the composer, whose coordinates are in range by
        construction, passes False).
    method : {"auto", "general"}
        "auto" takes the spreading kernel for d = 2, 3 and the general loop otherwise;
        "general" always runs the loop (for tests).
    parallel : bool, optional
        Parallel (True) or serial (False) kernel; by default parallel from PARALLEL_MIN_CODES
        codes on (16 times that under the "workqueue" threading layer: ``_jit.parallel_from``).
        Both give the same codes (for tests).

    Returns
    -------
    uint64 array (...): the codes.
    """
    if check:
        u, bits = check_coordinates(u, bits)  # the specification's own check
    u = np.asarray(u)
    d = u.shape[-1]
    rows = np.ascontiguousarray(u.reshape(-1, d), dtype=np.uint64)  # (n, d)
    if parallel is None:
        parallel = rows.shape[0] >= parallel_from(PARALLEL_MIN_CODES)
    z = empty_output(rows.shape[0], np.uint64)  # (n,)
    if method == "auto" and d == 3:
        (_spread3_parallel if parallel else _spread3_serial)(rows, z)
    elif method == "auto" and d == 2:
        (_spread2_parallel if parallel else _spread2_serial)(rows, z)
    else:
        (_general_parallel if parallel else _general_serial)(rows, np.int64(bits), z)
    return z.reshape(u.shape[:-1])
