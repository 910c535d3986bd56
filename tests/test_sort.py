"""Stage 4: stable sort of the key codes, ties by position (D10)."""

import numpy as np
import pytest

from zeta_ref.stages.sort import sort_keys


def check_sorted(codes, perm, sorted_codes):
    n = codes.shape[-1]
    assert perm.dtype == np.int64 and perm.shape == codes.shape
    assert sorted_codes.dtype == codes.dtype and sorted_codes.shape == codes.shape
    flat_c, flat_p, flat_s = codes.reshape(-1, n), perm.reshape(-1, n), sorted_codes.reshape(-1, n)
    for c, p, s in zip(flat_c, flat_p, flat_s):
        assert sorted(p.tolist()) == list(range(n))  # a permutation
        np.testing.assert_array_equal(s, c[p])
        assert (s[1:] >= s[:-1]).all()  # non-decreasing
        # D10: among equal codes, lower position first
        same = s[1:] == s[:-1]
        assert (p[1:][same] > p[:-1][same]).all()
        # the same as a sort by (code, position)
        want = sorted(range(n), key=lambda j: (int(c[j]), j))
        assert p.tolist() == want


@pytest.mark.parametrize("n", [1, 2, 3, 17, 100])
def test_random_codes_with_ties(rng, n):
    codes = rng.integers(0, 5, size=(3, n)).astype(np.uint64)  # many ties
    perm, sorted_codes = sort_keys(codes)
    check_sorted(codes, perm, sorted_codes)


def test_wide_codes_and_leading_dims(rng):
    codes = rng.integers(0, 1 << 62, size=(2, 3, 50), dtype=np.uint64)
    codes[..., 7] = codes[..., 3]
    codes[..., 0] = (1 << 63) - 1
    perm, sorted_codes = sort_keys(codes)
    check_sorted(codes, perm, sorted_codes)
    for b in range(2):
        for h in range(3):
            p1, s1 = sort_keys(codes[b, h])
            np.testing.assert_array_equal(p1, perm[b, h])
            np.testing.assert_array_equal(s1, sorted_codes[b, h])


def test_all_equal_and_decreasing():
    codes = np.full(9, 7, dtype=np.uint64)
    perm, s = sort_keys(codes)
    assert perm.tolist() == list(range(9))
    codes = np.arange(9, 0, -1).astype(np.uint64)
    perm, s = sort_keys(codes)
    assert perm.tolist() == list(range(8, -1, -1))
    codes = np.array([3, 1, 3, 1, 2], dtype=np.uint64)
    perm, s = sort_keys(codes)
    assert perm.tolist() == [1, 3, 4, 0, 2]
    assert s.tolist() == [1, 1, 2, 3, 3]


def test_non_contiguous_input(rng):
    codes = rng.integers(0, 4, size=(30, 4)).astype(np.uint64)
    view = codes.T  # (4, 30), not C-contiguous
    perm, s = sort_keys(view)
    p2, s2 = sort_keys(np.ascontiguousarray(view))
    np.testing.assert_array_equal(perm, p2)
    check_sorted(np.ascontiguousarray(view), perm, s)
