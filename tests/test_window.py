"""Stage 5: causal pools, binary search, neighbour window, re-rank (D4, D5, D6, D9, D11)."""

import warnings

import numpy as np
import pytest

from zeta_ref.stages import window
from zeta_ref.stages.window import (SlowSpecificationWarning, check_k_top, check_pool_len,
                             gather_rows, insertion_points, nearness, neighbour_window,
                             pool_lengths, rerank)

MODES = ("inclusive", "strict", "none")
SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize("n, causal, m, want", [
    (8, "inclusive", 3, [1, 2, 3, 4, 5, 6, 7, 8]),
    (8, "inclusive", 100, [1, 2, 3, 4, 5, 6, 7, 8]),
    (8, "strict", 3, [0, 0, 0, 3, 3, 3, 6, 6]),
    (8, "strict", 1, [0, 1, 2, 3, 4, 5, 6, 7]),  # M = 1: exact prefixes without the query
    (8, "strict", 4, [0, 0, 0, 0, 4, 4, 4, 4]),
    (8, "strict", 8, [0] * 8),
    (8, "strict", 50, [0] * 8),
    (8, "none", 3, [8] * 8),
    (1, "inclusive", 1, [1]),
    (1, "strict", 1, [0]),
    (1, "none", 5, [1]),
])
def test_pool_lengths_by_hand(n, causal, m, want):
    got = pool_lengths(n, causal, m)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert got.tolist() == want


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 1000])
def test_pool_lengths_general(causal, m):
    n = 37
    got = pool_lengths(n, causal, m)
    for i in range(n):
        if causal == "inclusive":
            assert got[i] == i + 1
        elif causal == "strict":
            start = (i // m) * m  # first position of i's chunk
            assert got[i] == start and got[i] <= i
        else:
            assert got[i] == n
    assert (np.diff(got) >= 0).all()


def test_pool_lengths_unknown_mode():
    with pytest.raises(ValueError, match="causal"):
        pool_lengths(5, "causal", 2)


# ----------------------------------------------------------------------------- window


def own_sort(codes):
    """perm and sorted codes by (code, position), without zeta_ref.stages.sort."""
    n = codes.shape[-1]
    perm = np.stack([np.lexsort((np.arange(n), c)) for c in codes.reshape(-1, n)])
    perm = perm.reshape(codes.shape).astype(np.int64)
    return perm, np.take_along_axis(codes, perm, axis=-1)


def adversarial_codes(kind, rng, rows, n):
    if kind == "random":
        q = rng.integers(0, 1 << 30, size=(rows, n))
        k = rng.integers(0, 1 << 30, size=(rows, n))
    elif kind == "few_values":  # many ties, among keys and between queries and keys
        q = rng.integers(0, 4, size=(rows, n))
        k = rng.integers(0, 4, size=(rows, n))
    elif kind == "decreasing":  # key codes fall with position; queries in between
        k = np.tile(np.arange(n, 0, -1) * 10, (rows, 1))
        q = rng.integers(0, n * 10 + 20, size=(rows, n))
    elif kind == "increasing":
        k = np.tile(np.arange(n) * 10, (rows, 1))
        q = rng.integers(0, n * 10 + 20, size=(rows, n))
    elif kind == "all_equal":
        k = np.full((rows, n), 5)
        q = rng.choice([4, 5, 6], size=(rows, n))
    elif kind == "query_extremes":  # queries below and above every key
        k = rng.integers(100, 200, size=(rows, n))
        q = rng.choice([0, 1000], size=(rows, n))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return q.astype(np.uint64), k.astype(np.uint64)


KINDS = ("random", "few_values", "decreasing", "increasing", "all_equal", "query_extremes")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal, m", [("inclusive", 4), ("strict", 1), ("strict", 3),
                                       ("strict", 16), ("none", 4)])
@pytest.mark.parametrize("width", [1, 2, 3, 4, 7, 40])
def test_window_matches_brute_force(rng, brute_window, kind, causal, m, width):
    n, rows = 23, 2
    q_codes, k_codes = adversarial_codes(kind, rng, rows, n)
    perm, sorted_codes = own_sort(k_codes)
    pool_len = pool_lengths(n, causal, m)
    got = neighbour_window(q_codes, perm, sorted_codes, pool_len, width)
    assert got.dtype == np.int64 and got.shape == (rows, n, width)
    for r in range(rows):
        want = brute_window(q_codes[r], k_codes[r], pool_len, width)
        np.testing.assert_array_equal(got[r], want, err_msg=f"row {r}")
        for i in range(n):
            row = got[r, i]
            valid = row[row >= 0]
            # never a key outside the pool: < L_i, so <= i (inclusive) or < chunk start (strict)
            assert (valid < pool_len[i]).all()
            assert len(set(valid.tolist())) == len(valid)  # no duplicates
            assert len(valid) == min(width, pool_len[i])  # D9: -1 only when the pool is short
            assert (row[len(valid):] == -1).all()  # empty slots at the end
            # listed in Z order, ties by position
            keys = [(int(k_codes[r, j]), int(j)) for j in valid]
            assert keys == sorted(keys)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal, m", [("inclusive", 4), ("strict", 3), ("none", 4)])
def test_insertion_points_count_the_smaller_codes_of_the_pool(rng, kind, causal, m):
    n, rows = 23, 2
    q_codes, k_codes = adversarial_codes(kind, rng, rows, n)
    perm, sorted_codes = own_sort(k_codes)
    pool_len = pool_lengths(n, causal, m)
    got = insertion_points(q_codes, perm, sorted_codes, pool_len)
    assert got.dtype == np.int64 and got.shape == (rows, n)
    for r in range(rows):
        for i in range(n):
            want = sum(int(k_codes[r, j]) < int(q_codes[r, i]) for j in range(pool_len[i]))
            assert got[r, i] == want, (r, i)


def test_window_starts_half_a_window_below_the_insertion_point(rng):
    # away from the pool's ends the window is exactly ranks p - W//2 ... p - W//2 + W - 1
    n, width = 200, 6
    q_codes, k_codes = adversarial_codes("random", rng, 1, n)
    perm, sorted_codes = own_sort(k_codes)
    pool_len = pool_lengths(n, "none", 1)
    ins = insertion_points(q_codes, perm, sorted_codes, pool_len)[0]
    win = neighbour_window(q_codes, perm, sorted_codes, pool_len, width)[0]
    inner = (ins >= width // 2) & (ins <= n - (width - width // 2))
    assert inner.sum() > 150
    for i in np.flatnonzero(inner):
        np.testing.assert_array_equal(win[i], perm[0, ins[i] - width // 2:][:width])


# What check_pool_len rejects, and the error's type and message. Both backends call this one
# check; tests/test_numba_stages.py holds the Numba twin to the same errors.
BAD_POOL_LEN = [
    ([2, 1, 2], ValueError,
     r"pool_len must be non-decreasing.*pool_len\[0\] = 2 > pool_len\[1\] = 1"),
    ([0, 3, 2], ValueError, r"non-decreasing.*pool_len\[1\] = 3 > pool_len\[2\] = 2"),
    ([-1, 0, 1], ValueError, r"pool_len must hold values in \[0, 3\].*from -1 to 1"),
    ([1, 2, 4], ValueError, r"pool_len must hold values in \[0, 3\].*from 1 to 4"),
    ([1, 2], ValueError, r"pool_len must have shape \(3,\).*got shape \(2,\)"),
    ([[1, 2, 3]], ValueError, r"pool_len must have shape \(3,\).*got shape \(1, 3\)"),
    ([1.0, 2.0, 3.0], TypeError, r"pool_len must be an integer array; got dtype float64"),
    ([True, True, True], TypeError, r"pool_len must be an integer array; got dtype bool"),
    (np.array([1, 2, 2**63 + 1], dtype=np.uint64), ValueError, r"values in \[0, 3\]"),
]


@pytest.mark.parametrize("pool_len, error, match", BAD_POOL_LEN)
def test_bad_pool_len_is_rejected(pool_len, error, match):
    codes = np.zeros((1, 3), np.uint64)
    perm = np.arange(3)[None]
    with pytest.raises(error, match=match):
        check_pool_len(np.array(pool_len), 3)
    for fn in (insertion_points, lambda *a: neighbour_window(*a, 2)):
        with pytest.raises(error, match=match):
            fn(codes, perm, codes, np.array(pool_len))


@pytest.mark.parametrize("pool_len", [
    [0, 0, 0], [3, 3, 3], [0, 1, 3], np.array([0, 2, 3], np.int32), np.array([0, 2, 3], np.uint8),
    np.array([1, 9, 2, 9, 3])[::2],  # not contiguous
])
def test_good_pool_len_is_int64_and_contiguous(pool_len):
    got = check_pool_len(pool_len, 3)
    assert got.dtype == np.int64 and got.flags.c_contiguous
    assert got.tolist() == np.asarray(pool_len).tolist()


def test_empty_sequence_pool_len():
    assert check_pool_len(np.zeros(0, np.int64), 0).shape == (0,)


@pytest.mark.parametrize("k_top", [0, -1, 5, 2.0, True, None])
def test_bad_k_top_is_rejected(k_top):
    window_idx = np.array([[0, 1, -1, -1]])
    with pytest.raises(ValueError, match=r"k_top must be an integer in \[1, W\] = \[1, 4\]"):
        rerank(np.zeros((1, 1)), np.zeros((2, 1)), window_idx, k_top, "cauchy")


def test_good_k_top_is_a_python_int():
    for k_top in (1, 4, np.int32(4), np.uint8(2)):
        got = check_k_top(k_top, 4)
        assert type(got) is int and got == k_top


def test_window_by_hand():
    # keys 0..5 with codes 50 10 40 20 30 60; query codes all 35; inclusive, W = 2
    k_codes = np.array([[50, 10, 40, 20, 30, 60]], dtype=np.uint64)
    q_codes = np.full((1, 6), 35, dtype=np.uint64)
    perm, sorted_codes = own_sort(k_codes)
    got = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(6, "inclusive", 2), 2)
    # query 0 sees {0:50}: one key, one empty slot
    # query 1 sees 10(1) 50(0); insertion point 1; window ranks 0,1 -> [1, 0]
    # query 2 sees 10(1) 40(2) 50(0); p = 1 -> ranks 0,1 -> [1, 2]
    # query 3 sees 10(1) 20(3) 40(2) 50(0); p = 2 -> ranks 1,2 -> [3, 2]
    # query 4 sees 10 20 30(4) 40 50; p = 3 -> ranks 2,3 -> [4, 2]
    # query 5 sees 10 20 30 40 50 60(5); p = 3 -> ranks 2,3 -> [4, 2]
    assert got[0].tolist() == [[0, -1], [1, 0], [1, 2], [3, 2], [4, 2], [4, 2]]
    # W = 3: W//2 = 1 below the insertion point, two at or above; slide at the ends (D11)
    got = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(6, "inclusive", 2), 3)
    # q3: p = 2 -> ranks 1..3 -> [3, 2, 0]; q1: pool of 2 -> [1, 0, -1]
    assert got[0, 1].tolist() == [1, 0, -1]
    assert got[0, 3].tolist() == [3, 2, 0]
    # a query above every key slides down: code 99 at q5, pool of 6, W = 3 -> ranks 3..5
    q_codes[0, 5] = 99
    got = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(6, "inclusive", 2), 3)
    assert got[0, 5].tolist() == [2, 0, 5]
    # and below every key slides up
    q_codes[0, 5] = 0
    got = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(6, "inclusive", 2), 3)
    assert got[0, 5].tolist() == [1, 3, 4]


def test_all_equal_codes_take_the_lowest_positions():
    # every code equal: insertion point 0, the pool in position order: the first W positions
    n = 12
    codes = np.full((1, n), 7, dtype=np.uint64)
    perm, sorted_codes = own_sort(codes)
    got = neighbour_window(codes, perm, sorted_codes, pool_lengths(n, "inclusive", 3), 3)
    assert got[0, 10].tolist() == [0, 1, 2]
    assert got[0, 1].tolist() == [0, 1, -1]
    got = neighbour_window(codes, perm, sorted_codes, pool_lengths(n, "strict", 4), 3)
    assert got[0, :4].tolist() == [[-1, -1, -1]] * 4
    assert got[0, 5].tolist() == [0, 1, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_inclusive_window_does_not_depend_on_chunk_size(rng, kind):
    n = 30
    q_codes, k_codes = adversarial_codes(kind, rng, 2, n)
    perm, sorted_codes = own_sort(k_codes)
    base = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(n, "inclusive", 1), 5)
    for m in (2, 3, 16, 30, 100):
        got = neighbour_window(q_codes, perm, sorted_codes, pool_lengths(n, "inclusive", m), 5)
        np.testing.assert_array_equal(got, base)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal, m", [("inclusive", 5), ("strict", 5), ("strict", 1)])
def test_window_of_the_past_ignores_later_keys(rng, kind, causal, m):
    # The trap of section 5: later keys (of the same chunk or later) must not push earlier
    # keys out of a query's window. Replace every key from position t on.
    n = 25
    q_codes, k_codes = adversarial_codes(kind, rng, 1, n)
    pool_len = pool_lengths(n, causal, m)
    base = neighbour_window(q_codes, *own_sort(k_codes), pool_len, 4)
    for t in (1, 7, 12, 24):
        other = k_codes.copy()
        other[:, t:] = q_codes[:, t:]  # keys sitting right on the later queries' codes
        got = neighbour_window(q_codes, *own_sort(other), pool_len, 4)
        unaffected = pool_len <= t
        np.testing.assert_array_equal(got[:, unaffected], base[:, unaffected])


def test_leading_dims_are_independent(rng, brute_window):
    n = 15
    q_codes, k_codes = adversarial_codes("few_values", rng, 6, n)
    q_codes, k_codes = q_codes.reshape(2, 3, n), k_codes.reshape(2, 3, n)
    perm, sorted_codes = own_sort(k_codes)
    pool_len = pool_lengths(n, "strict", 4)
    got = neighbour_window(q_codes, perm, sorted_codes, pool_len, 3)
    assert got.shape == (2, 3, n, 3)
    for b in range(2):
        for h in range(3):
            np.testing.assert_array_equal(
                got[b, h], brute_window(q_codes[b, h], k_codes[b, h], pool_len, 3))


# ----------------------------------------------------------------------------- re-rank


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("width, k_top", [(4, 1), (8, 3), (8, 8), (30, 5), (30, 30)])
@pytest.mark.parametrize("integer_grid", [False, True])
def test_rerank_matches_brute_force(rng, brute_window, brute_rerank, score, width, k_top,
                                    integer_grid):
    n = 20
    if integer_grid:  # small integer coordinates: many exactly tied distances
        q = rng.integers(-2, 3, size=(n, 3)).astype(np.float64)
        k = rng.integers(-2, 3, size=(n, 3)).astype(np.float64)
    else:
        q, k = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    q_codes = rng.integers(0, 50, size=n).astype(np.uint64)
    k_codes = rng.integers(0, 50, size=n).astype(np.uint64)
    pool_len = pool_lengths(n, "inclusive", 4)
    window_idx = brute_window(q_codes, k_codes, pool_len, width)
    got = rerank(q, k, window_idx, k_top, score)
    assert got.dtype == np.int64 and got.shape == (n, k_top)
    np.testing.assert_array_equal(got, brute_rerank(q, k, window_idx, k_top, score))


def test_rerank_ties_go_to_the_lower_position():
    # four keys at the same distance from the query; keep 2: the two lowest positions
    q = np.zeros((5, 2))
    k = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [3.0, 3.0]])
    window_idx = np.tile(np.array([[4, 2, 3, 0, 1]]), (5, 1))  # some window order
    got = rerank(q, k, window_idx, 2, "cauchy")
    # kept {0, 1}, listed in window order: 0 comes before 1 in the window
    assert got[0].tolist() == [0, 1]
    window_idx = np.tile(np.array([[1, 4, 3, 2, 0]]), (5, 1))
    assert rerank(q, k, window_idx, 2, "cauchy")[0].tolist() == [1, 0]
    assert rerank(q, k, window_idx, 3, "neg_euclidean")[0].tolist() == [1, 2, 0]


def test_rerank_with_empty_slots():
    q = np.zeros((2, 1))
    k = np.array([[5.0], [1.0]])
    window_idx = np.array([[0, -1, -1, -1], [0, 1, -1, -1]])
    got = rerank(q, k, window_idx, 3, "cauchy")
    assert got.tolist() == [[0, -1, -1], [0, 1, -1]]
    assert rerank(q, k, window_idx, 1, "cauchy").tolist() == [[0], [1]]
    # "softmax" nearness is -<q, k>: the largest dot product is nearest
    q = np.ones((2, 1))
    assert rerank(q, k, window_idx, 1, "softmax").tolist() == [[0], [0]]


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearness(rng, dtype):
    q = rng.standard_normal((4, 3)).astype(dtype)
    keys = rng.standard_normal((4, 6, 3)).astype(dtype)
    d2 = nearness(q, keys, "cauchy")
    assert d2.dtype == dtype and d2.shape == (4, 6)
    want = ((q[:, None, :].astype(np.float64) - keys) ** 2).sum(-1)
    np.testing.assert_allclose(d2, want, rtol=1e-5 if dtype == np.float32 else 1e-13)
    for s in ("neg_euclidean", "inv_euclidean"):
        np.testing.assert_array_equal(nearness(q, keys, s), d2)
    dot = nearness(q, keys, "softmax")
    np.testing.assert_allclose(dot, -np.einsum("nd,nmd->nm", q.astype(np.float64), keys),
                               rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


def test_gather_rows(rng):
    x = rng.standard_normal((2, 5, 3))
    idx = rng.integers(-1, 5, size=(2, 5, 4))
    got = gather_rows(x, idx)
    assert got.shape == (2, 5, 4, 3)
    for b in range(2):
        for i in range(5):
            for s in range(4):
                np.testing.assert_array_equal(got[b, i, s], x[b, max(idx[b, i, s], 0)])


# ----------------------------------------------------------------------------- slow warning


@pytest.fixture
def fresh_slow_warning(monkeypatch):
    """As if no SlowSpecificationWarning had been issued yet in this process."""
    monkeypatch.setattr(window, "_slow_warned", False)


def _window_inputs(rng, n, rows=1):
    q_codes, k_codes = adversarial_codes("random", rng, rows, n)
    return (q_codes, *own_sort(k_codes))


def test_slow_warning_fires_once_above_the_threshold(rng, monkeypatch, fresh_slow_warning):
    n = 40
    args = _window_inputs(rng, n, rows=2)
    pool_len = pool_lengths(n, "inclusive", 4)  # 40 distinct lengths: 2 x 40 x 40 = 3200 visits
    monkeypatch.setattr(window, "SLOW_WORK", 3199)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-place filter is not the test
        neighbour_window(*args, pool_len, 3)
        neighbour_window(*args, pool_len, 3)
        insertion_points(*args, pool_len)
    slow = [w for w in caught if issubclass(w.category, SlowSpecificationWarning)]
    assert len(slow) == 1
    message = str(slow[0].message)
    assert "2 row(s) x 40 pool lengths x N = 40 is 3.2e+03 key visits" in message
    assert 'backend="numba"' in message and "O(N sqrt N)" in message
    assert slow[0].filename == __file__  # points at the caller, not into zeta_ref


def test_slow_warning_from_insertion_points_too(rng, monkeypatch, fresh_slow_warning):
    n = 40
    args = _window_inputs(rng, n)
    monkeypatch.setattr(window, "SLOW_WORK", 40 * 40 - 1)
    with pytest.warns(SlowSpecificationWarning, match="1 row"):
        insertion_points(*args, pool_lengths(n, "inclusive", 4))


def test_slow_warning_not_at_or_below_the_threshold(rng, monkeypatch, fresh_slow_warning):
    n = 40
    args = _window_inputs(rng, n)
    monkeypatch.setattr(window, "SLOW_WORK", 40 * 40)  # exactly the work: not above it
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowSpecificationWarning)
        neighbour_window(*args, pool_lengths(n, "inclusive", 4), 3)
        insertion_points(*args, pool_lengths(n, "inclusive", 4))


@pytest.mark.parametrize("causal, n", [("inclusive", 4096), ("strict", 16384), ("none", 16384)])
def test_no_slow_warning_at_the_default_threshold(rng, fresh_slow_warning, causal, n):
    # "inclusive" at a small N, "strict" (8 pools with the D5 chunk rule) and "none" (one
    # pool) at a moderate one: far below SLOW_WORK, and fast
    args = _window_inputs(rng, n)
    pool_len = pool_lengths(n, causal, -(-n // 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowSpecificationWarning)
        neighbour_window(*args, pool_len, 4)
        insertion_points(*args, pool_len)


def test_slow_threshold_is_the_inclusive_mode_near_23k():
    # the documented calibration: one row in "inclusive" mode crosses it between 16384 and 32768
    assert 16384 ** 2 < window.SLOW_WORK < 32768 ** 2


def test_int64_codes_give_the_uint64_answers():
    """Codes of 62 bits that differ below float64's resolution: NumPy compares uint64 with
    int64 through float64, which would make them all equal (every insertion point 0). The
    stage functions take the codes as uint64, as the Numba twins do (a CPU audit's find,
    2026-12-05)."""
    n = 4
    codes = (np.uint64(2**62) + np.arange(1, n + 1, dtype=np.uint64))  # sorted, distinct
    perm = np.arange(n, dtype=np.int64)
    q = np.full(n, 2**62 + 3, dtype=np.uint64)
    pool_len = window.pool_lengths(n, "none", n)
    want = window.insertion_points(q, perm, codes, pool_len)
    assert want.tolist() == [2] * n
    want_window = window.neighbour_window(q, perm, codes, pool_len, 1)
    assert want_window[:, 0].tolist() == [2] * n
    for q_as, keys_as in ((np.int64, np.uint64), (np.uint64, np.int64), (np.int64, np.int64)):
        np.testing.assert_array_equal(
            window.insertion_points(q.astype(q_as), perm, codes.astype(keys_as), pool_len), want)
        np.testing.assert_array_equal(
            window.neighbour_window(q.astype(q_as), perm, codes.astype(keys_as), pool_len, 1),
            want_window)
