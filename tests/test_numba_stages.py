"""Numba twins, stage by stage: each twin gets the specification's own inputs (issue 3).

Integer results (quantised coordinates, codes, permutations, windows, candidates) must be
equal to the NumPy specification; float results agree within zeta_ref.tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest

from zeta_ref.stages import morton, quantize, sort, topk_softmax, window
from zeta_ref.tolerances import assert_close as assert_within_tolerance

numba = pytest.importorskip("numba")

from zeta_ref.numba import (  # noqa: E402
    morton as morton_numba,
    quantize as quantize_numba,
    sort as sort_numba,
    topk_softmax as topk_softmax_numba,
    window as window_numba,
)

SEED = 20250414
AWKWARD_N = (1, 2, 3, 17, 257)
DTYPES = (np.float32, np.float64)
SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")


def assert_exact(actual, desired):
    assert actual.dtype == desired.dtype, (actual.dtype, desired.dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    np.testing.assert_array_equal(actual, desired)


def assert_close(actual, desired):
    assert actual.dtype == desired.dtype, (actual.dtype, desired.dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    assert_within_tolerance(actual, desired)


# ---------------------------------------------------------------- stage 2: quantisation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ("sigmoid", "tanh", "clip"))
def test_quantize_matches_spec(dtype, method):
    rng = np.random.default_rng(SEED)
    x = (rng.standard_normal((2, 3, 257, 3)) * 3).astype(dtype)
    x[0, 0, :6, 0] = [0.0, -4.0, 4.0, 1e6, -1e6, -800.0]  # clip ends, overflowing exp
    for bits in (1, 10, 21, 31, 63):
        got = quantize_numba.quantize(x, bits, method, (-4.0, 4.0))
        assert_exact(got, quantize.quantize(x, bits, method, (-4.0, 4.0)))


@pytest.mark.parametrize("bits", (1, 3, 10, 21))
def test_quantize_clip_cell_boundaries_exact(bits):
    # values exactly on cell boundaries of the clip squash, and the top value 1.0
    lo, hi = -1.0, 3.0
    cells = np.arange(0, (1 << bits) + 1, max(1, (1 << bits) // 64), dtype=np.float64)
    x = lo + cells / (1 << bits) * (hi - lo)
    x = np.concatenate([x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)])[:, None]
    got = quantize_numba.quantize(x, bits, "clip", (lo, hi))
    assert_exact(got, quantize.quantize(x, bits, "clip", (lo, hi)))
    assert got.max() == (1 << bits) - 1


# ---------------------------------------------------------------- stage 3: Morton codes


@pytest.mark.parametrize("d,bits", [(1, 10), (2, 10), (2, 31), (3, 1), (3, 10), (3, 21),
                                    (4, 15), (5, 12), (7, 9)])
@pytest.mark.parametrize("method", ("auto", "general"))
def test_morton_matches_spec(d, bits, method):
    rng = np.random.default_rng(SEED)
    u = rng.integers(0, 1 << bits, size=(2, 129, d), dtype=np.uint64)
    u[0, 0] = (1 << bits) - 1  # the top value in every coordinate: no wrap
    u[0, 1] = 0
    got = morton_numba.morton_encode(u, bits, method=method)
    assert_exact(got, morton.morton_encode(u, bits))


def test_morton_takes_spec_quantised_coords():
    rng = np.random.default_rng(SEED)
    u = quantize.quantize(rng.standard_normal((3, 257, 3)), 10)
    assert_exact(morton_numba.morton_encode(u, 10), morton.morton_encode(u, 10))


def test_morton_rejects_too_many_bits():
    with pytest.raises(ValueError, match="63"):
        morton_numba.morton_encode(np.zeros((4, 3), np.uint64), 22)


# ---------------------------------------------------------------- stage 4: sort


@pytest.mark.parametrize("n", AWKWARD_N + (1000,))
@pytest.mark.parametrize("n_codes", (1, 4, 1 << 20, 1 << 30, 1 << 62))  # 0, 1, 3, 4, 8 passes
def test_sort_matches_spec(n, n_codes):
    rng = np.random.default_rng(SEED)
    codes = rng.integers(0, n_codes, size=(2, 3, n), dtype=np.uint64)  # ties when n_codes small
    perm, sorted_codes = sort_numba.sort_keys(codes)
    want_perm, want_sorted = sort.sort_keys(codes)
    assert_exact(perm, want_perm)
    assert_exact(sorted_codes, want_sorted)


def test_sort_top_bit_codes():
    codes = np.array([[2**63 + 5, 3, 2**63 + 5, 0, 2**64 - 1, 3]], dtype=np.uint64)
    for got, want in zip(sort_numba.sort_keys(codes), sort.sort_keys(codes)):
        assert_exact(got, want)


# ---------------------------------------------------------------- stage 5: window


def _spec_window_inputs(rng, n, rows, n_codes, falling=False):
    k_codes = rng.integers(0, n_codes, size=(rows, n), dtype=np.uint64)
    if falling:  # codes that fall with position: the walk's worst case
        k_codes = np.sort(k_codes, axis=-1)[:, ::-1].copy()
    q_codes = rng.integers(0, n_codes, size=(rows, n), dtype=np.uint64)
    perm, sorted_codes = sort.sort_keys(k_codes)
    return q_codes, perm, sorted_codes


@pytest.mark.parametrize("n", AWKWARD_N)
@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
@pytest.mark.parametrize("width", (1, 2, 5, 8, 300))
def test_window_matches_spec(n, causal, width):
    rng = np.random.default_rng(SEED + n + width)
    for n_codes, falling in ((3, False), (1 << 30, False), (1 << 30, True)):
        qz, perm, kz = _spec_window_inputs(rng, n, 2, n_codes, falling)
        for chunk in sorted({1, 3, max(1, n // 4), n}):
            pool_len = window.pool_lengths(n, causal, chunk)
            want = window.neighbour_window(qz, perm, kz, pool_len, width)
            assert_exact(window_numba.neighbour_window(qz, perm, kz, pool_len, width), want)
            # any block size gives the same answer (only the cost moves)
            for block in (1, 2, 7):
                got = window_numba.neighbour_window(qz, perm, kz, pool_len, width, block=block)
                assert_exact(got, want)


def test_window_leading_dims_and_large_n():
    rng = np.random.default_rng(SEED)
    n = 3000
    qz, perm, kz = _spec_window_inputs(rng, n, 2, 1 << 12)
    shape = (2, 1, n)
    qz, perm, kz = qz.reshape(shape), perm.reshape(shape), kz.reshape(shape)
    for causal in ("inclusive", "strict", "none"):
        pool_len = window.pool_lengths(n, causal, 400)
        want = window.neighbour_window(qz, perm, kz, pool_len, 32)
        assert_exact(window_numba.neighbour_window(qz, perm, kz, pool_len, 32), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", SCORES)
def test_rerank_matches_spec(dtype, score):
    rng = np.random.default_rng(SEED)
    n, width, k_top = 257, 12, 5
    q = rng.standard_normal((2, n, 3)).astype(dtype)
    k = rng.standard_normal((2, n, 3)).astype(dtype)
    k = np.round(k * 2) / 2  # repeated keys: ties in nearness, broken by position
    q = np.round(q * 2) / 2
    codes = morton.morton_encode(quantize.quantize(k, 10), 10)
    perm, sorted_codes = sort.sort_keys(codes)
    q_codes = morton.morton_encode(quantize.quantize(q, 10), 10)
    for causal in ("inclusive", "strict", "none"):
        widx = window.neighbour_window(q_codes, perm, sorted_codes,
                                       window.pool_lengths(n, causal, 20), width)
        for top in (1, k_top, width):
            assert_exact(window_numba.rerank(q, k, widx, top, score),
                         window.rerank(q, k, widx, top, score))


# ---------------------------------------------------------------- stage 6: top-k softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", ("inclusive", "none"))
def test_history_means_match_spec(dtype, causal):
    rng = np.random.default_rng(SEED)
    k = rng.standard_normal((2, 257, 3)).astype(dtype)
    v = rng.standard_normal((2, 257, 37)).astype(dtype)
    for got, want in zip(topk_softmax_numba.history_means(k, v, causal),
                         topk_softmax.history_means(k, v, causal)):
        assert_close(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("with_mean", (True, False))
def test_topk_attention_matches_spec(dtype, score, with_mean):
    rng = np.random.default_rng(SEED)
    n, n_slots = 257, 6
    q = rng.standard_normal((2, n, 3)).astype(dtype)
    k = rng.standard_normal((2, n, 3)).astype(dtype)
    v = rng.standard_normal((2, n, 10)).astype(dtype)
    cand = rng.integers(-1, n, size=(2, n, n_slots))
    cand[0, :3] = -1  # queries with no candidate at all (D9)
    means = topk_softmax.history_means(k, v, "inclusive") if with_mean else (None, None)
    got = topk_softmax_numba.topk_attention(q, k, v, cand, score, 0.7, *means)
    want = topk_softmax.topk_attention(q, k, v, cand, score, 0.7, *means)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("n", AWKWARD_N)
@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_insertion_points_match_spec(n, causal):
    rng = np.random.default_rng(SEED + n)
    for n_codes, falling in ((3, False), (1 << 30, False), (1 << 30, True)):
        qz, perm, kz = _spec_window_inputs(rng, n, 2, n_codes, falling)
        for chunk in sorted({1, 3, max(1, n // 4), n}):
            pool_len = window.pool_lengths(n, causal, chunk)
            assert_exact(window_numba.insertion_points(qz, perm, kz, pool_len),
                         window.insertion_points(qz, perm, kz, pool_len))


# ---------------------------------------------------------------- serial and parallel kernels
# Each kernel body is compiled twice (zeta_ref/numba/_jit.py) and the twins pick one by the size
# of the work; the small inputs above run the serial ones. Which one ran is recorded by
# wrapping the module-level compilations the twins call.

KERNEL_PAIRS = {  # module: the names of its (serial, parallel) compilations
    quantize_numba: [("_quantize_serial", "_quantize_parallel")],
    morton_numba: [("_general_serial", "_general_parallel"),
                   ("_spread3_serial", "_spread3_parallel"),
                   ("_spread2_serial", "_spread2_parallel")],
    sort_numba: [("_sort_rows_serial", "_sort_rows_parallel")],
    topk_softmax_numba: [("_topk_serial", "_topk_parallel")],
}


def record_kernels(monkeypatch):
    """Wrap every serial and parallel compilation; returns the list that each call appends
    "serial" or "parallel" to."""
    calls = []
    for module, pairs in KERNEL_PAIRS.items():
        for pair in pairs:
            for name, kind in zip(pair, ("serial", "parallel")):
                kernel = getattr(module, name)

                def spy(*args, _kernel=kernel, _kind=kind):
                    calls.append(_kind)
                    return _kernel(*args)

                monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("parallel", (False, True))
def test_both_compilations_match_spec(monkeypatch, parallel):
    calls = record_kernels(monkeypatch)
    kind = "parallel" if parallel else "serial"
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 257, 3)).astype(np.float32)
    for method in ("clip", "sigmoid", "tanh"):
        assert_exact(quantize_numba.quantize(x, 10, method, (-4.0, 4.0), parallel=parallel),
                     quantize.quantize(x, 10, method, (-4.0, 4.0)))
    for d, bits in ((2, 10), (3, 10), (5, 12)):
        u = rng.integers(0, 1 << bits, size=(2, 129, d), dtype=np.uint64)
        for method in ("auto", "general"):
            assert_exact(morton_numba.morton_encode(u, bits, method=method, parallel=parallel),
                         morton.morton_encode(u, bits))
    codes = rng.integers(0, 5, size=(3, 257), dtype=np.uint64)
    for got, want in zip(sort_numba.sort_keys(codes, parallel=parallel), sort.sort_keys(codes)):
        assert_exact(got, want)
    n = 1000  # several blocks of queries (QUERY_BLOCK) and a partial last block
    q, k = (rng.standard_normal((2, n, 3)).astype(np.float64) for _ in range(2))
    v = rng.standard_normal((2, n, 37))
    cand = rng.integers(-1, n, size=(2, n, 7))
    for means in (topk_softmax.history_means(k, v, "inclusive"), (None, None)):
        for score in SCORES:
            got = topk_softmax_numba.topk_attention(q, k, v, cand, score, 0.5, *means,
                                                    parallel=parallel)
            want = topk_softmax.topk_attention(q, k, v, cand, score, 0.5, *means)
            for g, w in zip(got, want):
                assert_close(g, w)
    # every call above ran the compilation asked for: 3 quantize, 6 morton, 1 sort, 8 top-k
    assert calls == [kind] * 18


@pytest.mark.parametrize("above", (False, True))
def test_default_choice_takes_the_parallel_kernels_for_large_work(monkeypatch, above):
    # one below each threshold the default path runs the serial compilation, at the threshold
    # the parallel one; both agree with the specification
    from zeta_ref.numba._jit import parallel_from  # the thresholds of this threading layer

    calls = record_kernels(monkeypatch)
    kind = "parallel" if above else "serial"
    rng = np.random.default_rng(SEED)
    n_values = parallel_from(quantize_numba.PARALLEL_MIN_VALUES) - (not above)
    x = rng.standard_normal((n_values, 1))
    u = quantize_numba.quantize(x, 10, "clip")
    assert_exact(u, quantize.quantize(x, 10, "clip"))
    assert calls == [kind], "quantize"
    n_codes = parallel_from(morton_numba.PARALLEL_MIN_CODES) - (not above)
    u = rng.integers(0, 1 << 10, size=(n_codes, 3), dtype=np.uint64)
    assert_exact(morton_numba.morton_encode(u, 10), morton.morton_encode(u, 10))
    assert calls == [kind] * 2, "morton"
    m = topk_softmax_numba.PARALLEL_MIN_QUERIES - (not above)
    q = rng.standard_normal((1, m, 3)).astype(np.float32)
    v = rng.standard_normal((1, m, 8)).astype(np.float32)
    cand = rng.integers(-1, m, size=(1, m, 4))
    for g, w in zip(topk_softmax_numba.topk_attention(q, q, v, cand),
                    topk_softmax.topk_attention(q, q, v, cand)):
        assert_close(g, w)
    assert calls == [kind] * 3, "topk_attention"


# ---------------------------------------------------------------- one definition of the scores
# The kernel's _raw_score is compiled in the kernel's own file (a cached kernel is not compiled
# again when a function of another file changes); it must stay the specification's raw_score.


def _body_lines(fn):
    """The lines of ``fn`` after its docstring, stripped of indentation."""
    import inspect

    after_docstring = inspect.getsource(fn).split('"""', 2)[2]
    return [line.strip() for line in after_docstring.splitlines() if line.strip()]


def test_the_kernel_scores_with_the_specification_lines():
    twin = topk_softmax_numba._raw_score
    twin = getattr(twin, "py_func", twin)  # the Python function (itself under NUMBA_DISABLE_JIT)
    assert _body_lines(twin) == _body_lines(topk_softmax.raw_score)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", SCORES)
def test_the_kernel_score_is_the_specification_score(dtype, score):
    # the same bits on many nearness values: 0, tiny, subnormal, huge, inf, negative (dot)
    rng = np.random.default_rng(SEED)
    info = np.finfo(dtype)
    near = np.concatenate([
        [0.0, -0.0, info.tiny, info.smallest_subnormal, info.eps, 1.0, info.max, np.inf],
        rng.standard_normal(300) * 10.0 ** rng.integers(-30, 30, 300),
        rng.random(300) * 4,
    ]).astype(dtype)
    if score != "softmax":  # distances are >= 0
        near = np.abs(near)
    exp_score = score in topk_softmax.EXP_SCORES
    for gamma in (0.5, 0.1, 2.0, 1e-3):
        c = dtype(topk_softmax.score_constant(score, gamma, 3))
        with np.errstate(over="ignore"):
            want = topk_softmax.raw_score(near, exp_score, c, dtype(1))  # (n,)
        twin = topk_softmax_numba._raw_score
        got = np.array([twin(x, exp_score, c, dtype(1)) for x in near], dtype=dtype)
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # and in the input dtype, as in the kernel (Numba hands a float32 back as a Python float)
    if hasattr(twin, "overloads"):  # compiled (not under NUMBA_DISABLE_JIT)
        args = (near[0], exp_score, c, dtype(1))
        signature = twin.overloads[tuple(numba.typeof(a) for a in args)].signature
        assert signature.return_type == numba.from_dtype(np.dtype(dtype))


# ---------------------------------------------------------------- stage 5: issue 13
# The re-rank keeps the k best slots in a bounded heap instead of sorting the window; the
# validators of pool_len and k_top are the specification's own.


def _spec_error(fn):
    """(type, message) of the exception ``fn()`` raises."""
    with pytest.raises(Exception) as caught:
        fn()
    return caught.type, str(caught.value)


@pytest.mark.parametrize("pool_len", [
    [2, 1, 2], [0, 3, 2], [3, 3, 2],  # decreasing (the twin used to answer, wrongly)
    [-1, 0, 1], [1, 2, 4], [0, 0, 99],  # outside [0, N] (the twin used to clip)
    [1, 2], [[1, 2, 3]],  # wrong shape
    [1.0, 2.0, 3.0], [1.5, 2.0, 3.0], [True, True, True],  # not integers
])
def test_twins_reject_pool_len_like_spec(pool_len):
    codes = np.zeros((2, 3), np.uint64)
    perm = np.tile(np.arange(3), (2, 1))
    pool_len = np.array(pool_len)
    for name in ("insertion_points", "neighbour_window"):
        extra = () if name == "insertion_points" else (2,)

        def call(module):
            return lambda: getattr(module, name)(codes, perm, codes, pool_len, *extra)

        want = _spec_error(call(window))
        assert want[0] in (ValueError, TypeError) and "pool_len" in want[1]
        assert _spec_error(call(window_numba)) == want, name


@pytest.mark.parametrize("k_top", [0, -3, 5, 2.0, True])
def test_twin_rejects_k_top_like_spec(k_top):
    q = np.zeros((1, 2, 1))
    widx = np.array([[[0, 1, -1, -1], [1, 0, -1, -1]]])
    want = _spec_error(lambda: window.rerank(q, q, widx, k_top, "cauchy"))
    assert want[0] is ValueError and "k_top" in want[1]
    assert _spec_error(lambda: window_numba.rerank(q, q, widx, k_top, "cauchy")) == want


def _tops(width):
    return sorted({1, 2, width // 3, width // 2, width - 1, width} & set(range(1, width + 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("width", (1, 2, 3, 31, 64, 300, 1000))
def test_rerank_heap_matches_spec_on_any_window(dtype, score, width):
    # Windows as neighbour_window makes them cannot show every order of the heap; random
    # windows can: keys at any slot, -1 anywhere (not only at the end), repeated keys, and
    # coordinates on a coarse grid, so that many slots tie in nearness and position decides.
    rng = np.random.default_rng(SEED + width)
    n, rows = 97, 2
    q = rng.integers(-2, 3, size=(rows, n, 3)).astype(dtype)
    k = rng.integers(-2, 3, size=(rows, n, 3)).astype(dtype)
    widx = rng.integers(-1, n, size=(rows, n, width))
    widx[:, ::5] = np.where(rng.random((rows, widx[:, ::5].shape[1], width)) < 0.5, -1,
                            widx[:, ::5])  # every fifth query: about half its slots empty
    widx[0, 1] = -1  # a window with no key at all
    widx[0, 2, :] = np.arange(width) % n  # a window as neighbour_window makes it: no repeats
    for top in _tops(width):
        assert_exact(window_numba.rerank(q, k, widx, top, score),
                     window.rerank(q, k, widx, top, score))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rerank_heap_overflowing_nearness(dtype):
    # keys so far away that the squared distance is inf: still a key, ranked before the empty
    # slots (inf, too) and among themselves by position
    rng = np.random.default_rng(SEED)
    n, width = 40, 16
    big = np.sqrt(np.finfo(dtype).max)
    q = rng.standard_normal((1, n, 3)).astype(dtype)
    k = rng.standard_normal((1, n, 3)).astype(dtype)
    k[0, ::3] = big  # a third of the keys overflow
    widx = rng.integers(-1, n, size=(1, n, width))
    widx[0, 0, :4] = [-1, 3, -1, 1]  # key 3 overflows, key 1 does not
    with np.errstate(over="ignore"):
        for score in SCORES:
            for top in _tops(width):
                want = window.rerank(q, k, widx, top, score)
                assert_exact(window_numba.rerank(q, k, widx, top, score), want)
        assert window.rerank(q[:, :1], k, widx[:, :1, :4], 2, "cauchy")[0, 0].tolist() == [3, 1]


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_rerank_heap_matches_spec_on_wide_real_windows(causal):
    # the path of the composer at W >> k: windows of neighbour_window, leading dims, float32
    rng = np.random.default_rng(SEED)
    n, width = 600, 256
    q = (np.round(rng.standard_normal((2, 1, n, 3)) * 4) / 4).astype(np.float32)
    k = (np.round(rng.standard_normal((2, 1, n, 3)) * 4) / 4).astype(np.float32)
    q_codes = morton.morton_encode(quantize.quantize(q, 10), 10)
    perm, sorted_codes = sort.sort_keys(morton.morton_encode(quantize.quantize(k, 10), 10))
    widx = window_numba.neighbour_window(q_codes, perm, sorted_codes,
                                         window.pool_lengths(n, causal, 75), width)
    for top in (1, 32, width):
        for score in ("cauchy", "softmax"):
            assert_exact(window_numba.rerank(q, k, widx, top, score),
                         window.rerank(q, k, widx, top, score))
