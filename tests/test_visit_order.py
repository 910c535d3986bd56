"""The queries' visiting order (stages 5 and 6) and the Numba twins' output allocation.

The composer hands the window and top-k stages the queries in Z order. The order is a schedule:
it may change how fast a twin runs, never what it returns. These tests hold every backend to
that, check that a bad order is refused the same way everywhere (a Numba kernel writes a row
when it visits its query, so a skipped query would leave uninitialised memory), and check the
pieces the twins use for it: the galloping search and the huge-page-aligned outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from zeta_ref.stages import topk_softmax, window
from zeta_ref import zeta_attention, ZetaConfig

numba = pytest.importorskip("numba")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zeta_ref.numba import sort as sort_numba, topk_softmax as topk_softmax_numba, window as window_numba  # noqa: E402
from zeta_ref.numba.host_memory import HUGE_PAGE, POOLED_MIN_BYTES, empty_output  # noqa: E402
from zeta_ref.numba.window import _search_left_from  # noqa: E402

SEED = 31


def _inputs(rng, lead, n, n_codes=1 << 12):
    q = rng.standard_normal(lead + (n, 3)).astype(np.float32)
    k = rng.standard_normal(lead + (n, 3)).astype(np.float32)
    v = rng.standard_normal(lead + (n, 5)).astype(np.float32)
    q_codes = rng.integers(0, n_codes, size=lead + (n,), dtype=np.uint64)
    k_codes = rng.integers(0, n_codes, size=lead + (n,), dtype=np.uint64)
    perm, sorted_codes = sort_numba.sort_keys(k_codes)
    return q, k, v, q_codes, perm, sorted_codes


def _orders(rng, q_codes):
    n = q_codes.shape[-1]
    return {
        "position": None,
        "reversed": np.broadcast_to(np.arange(n)[::-1], q_codes.shape).copy(),
        "shuffled": np.argsort(rng.random(q_codes.shape), axis=-1),  # a different one per row
        "z": sort_numba.sort_keys(q_codes)[0],
    }


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
@pytest.mark.parametrize("n", (1, 5, 300, 3000))
def test_window_ignores_the_order(causal, n):
    rng = np.random.default_rng(SEED + n)
    _, _, _, qz, perm, kz = _inputs(rng, (2,), n)
    pool_len = window.pool_lengths(n, causal, max(1, n // 7))
    want = window.neighbour_window(qz, perm, kz, pool_len, 9)
    for name, order in _orders(rng, qz).items():
        for block in (None, 1, 5):
            got = window_numba.neighbour_window(qz, perm, kz, pool_len, 9, order=order,
                                                block=block)
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, block {block}")
        # the specification takes the argument and ignores it
        np.testing.assert_array_equal(
            window.neighbour_window(qz, perm, kz, pool_len, 9, order=order), want)


@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("with_mean", (False, True))
def test_topk_ignores_the_order(parallel, with_mean):
    rng = np.random.default_rng(SEED)
    n = 700  # several blocks of QUERY_BLOCK queries and a partial one
    q, k, v, qz, _, _ = _inputs(rng, (2, 1), n)
    cand = rng.integers(-1, n, size=(2, 1, n, 6))
    means = topk_softmax.history_means(k, v, "inclusive") if with_mean else (None, None)
    want = topk_softmax_numba.topk_attention(q, k, v, cand, "cauchy", 0.5, *means,
                                             parallel=parallel)
    for name, order in _orders(rng, qz).items():
        got = topk_softmax_numba.topk_attention(q, k, v, cand, "cauchy", 0.5, *means,
                                                order=order, parallel=parallel)
        for g, w in zip(got, want):  # bit for bit: each query's arithmetic is its own
            np.testing.assert_array_equal(g, w, err_msg=name)
        spec = topk_softmax.topk_attention(q, k, v, cand, "cauchy", 0.5, *means, order=order)
        for g, w in zip(spec, topk_softmax.topk_attention(q, k, v, cand, "cauchy", 0.5, *means)):
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_the_composer_visits_in_z_order_and_gets_position_order_results(monkeypatch):
    import dataclasses

    import zeta_ref.numba as numba_backend
    from zeta_ref.stages import morton, quantize, sort
    from zeta_ref.tolerances import assert_close

    rng = np.random.default_rng(SEED)
    n = 2000
    q, k, v = (rng.standard_normal((3, n, d)).astype(np.float32) for d in (3, 3, 16))
    cfg = ZetaConfig(squash="clip")
    # record the order the composer hands the two stages that take one
    orders = {}
    stages = numba_backend.STAGES

    def recording(name):
        stage = getattr(stages, name)

        def call(*args, order=None, **kwargs):
            orders[name] = order
            return stage(*args, order=order, **kwargs)

        return call

    monkeypatch.setattr(numba_backend, "STAGES", dataclasses.replace(
        stages, neighbour_window=recording("neighbour_window"),
        topk_attention=recording("topk_attention")))
    out, im = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
    # the order is the queries' Z order: the specification's codes, stably sorted
    coords = quantize.quantize(q, cfg.bits, cfg.squash, cfg.clip_range)
    z_order = sort.sort_keys(morton.morton_encode(coords, cfg.bits))[0]  # (3, N)
    assert (z_order != np.arange(n)).any()  # not position order, so the check below can tell
    for name in ("neighbour_window", "topk_attention"):
        np.testing.assert_array_equal(orders[name], z_order, err_msg=name)
    # ... and the rows of the results are in position order: row i is query i's, as the
    # specification's stages give them, called one by one here (not through the composer,
    # which every backend shares)
    perm, sorted_codes = sort.sort_keys(morton.morton_encode(
        quantize.quantize(k, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits))
    pool_len = window.pool_lengths(n, cfg.causal, cfg.chunk_size_for(n))
    window_idx = window.neighbour_window(morton.morton_encode(coords, cfg.bits), perm,
                                         sorted_codes, pool_len, cfg.window_width)
    np.testing.assert_array_equal(im.window_idx, window_idx)
    np.testing.assert_array_equal(im.candidates, window_idx)  # W = k: no re-rank
    means = topk_softmax.history_means(k, v, cfg.causal)
    want = topk_softmax.topk_attention(q, k, v, window_idx, cfg.score, cfg.gamma, *means)[0]
    assert_close(out, want)


def _stage_calls(order, n=6):
    rng = np.random.default_rng(SEED)
    q, k, v, qz, perm, kz = _inputs(rng, (2,), n)
    cand = rng.integers(0, n, size=(2, n, 3))
    pool_len = window.pool_lengths(n, "inclusive", 2)
    return {
        "window numpy": lambda: window.neighbour_window(qz, perm, kz, pool_len, 3, order=order),
        "window numba": lambda: window_numba.neighbour_window(qz, perm, kz, pool_len, 3,
                                                              order=order),
        "topk numpy": lambda: topk_softmax.topk_attention(q, k, v, cand, order=order),
        "topk numba": lambda: topk_softmax_numba.topk_attention(q, k, v, cand, order=order),
    }


@pytest.mark.parametrize("order, error, match", [
    (np.array([[0, 1, 2, 3, 4, 5]]), ValueError, r"order must have shape \(2, 6\)"),
    (np.zeros((2, 6)), TypeError, "order must be an integer array"),
    (np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4]]), ValueError, "every query index"),
    (np.array([[0, 1, 2, 3, 4, 6], [0, 1, 2, 3, 4, 5]]), ValueError, "every query index"),
    (np.array([[0, 1, 2, 3, 4, -1], [0, 1, 2, 3, 4, 5]]), ValueError, "every query index"),
])
def test_a_bad_order_is_refused_by_every_backend(order, error, match):
    for name, call in _stage_calls(order).items():
        with pytest.raises(error, match=match):
            call()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=40), st.integers(0, 21),
       st.integers(0, 40))
def test_galloping_search_is_searchsorted_left(values, x, guess):
    codes = np.array(sorted(values), dtype=np.uint64)
    m = codes.size
    got = _search_left_from(codes, m, np.uint64(x), min(guess, m))
    assert got == np.searchsorted(codes, np.uint64(x), side="left")


@pytest.mark.parametrize("shape, dtype", [((7,), np.int64), ((65536, 64), np.float32),
                                          ((3, 100_000), np.uint64), ((0, 5), np.float64)])
def test_empty_output(shape, dtype):
    a = empty_output(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.nbytes >= POOLED_MIN_BYTES:
        assert a.ctypes.data % HUGE_PAGE == 0  # starts on a huge-page boundary
    a[...] = 1  # the whole array is usable
    assert a.sum() == a.size


@pytest.mark.parametrize("score", ("cauchy", "softmax"))
def test_without_weights_the_rest_is_unchanged(score):
    rng = np.random.default_rng(SEED)
    n = 500
    q, k, v, _, _, _ = _inputs(rng, (2,), n)
    cand = rng.integers(-1, n, size=(2, n, 6))
    means = topk_softmax.history_means(k, v, "inclusive")
    for fn in (topk_softmax.topk_attention, topk_softmax_numba.topk_attention):
        out, w, w_mean = fn(q, k, v, cand, score, 0.5, *means)
        out2, w2, w_mean2 = fn(q, k, v, cand, score, 0.5, *means, with_weights=False)
        assert w.shape == (2, n, 6) and w2 is None
        np.testing.assert_array_equal(out2, out)
        np.testing.assert_array_equal(w_mean2, w_mean)
