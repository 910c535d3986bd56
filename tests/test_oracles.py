"""Oracles: dense attention, exact top-k, recall@k."""

import math
import tracemalloc

import numpy as np
import pytest

from zeta_ref import oracles
from zeta_ref.tolerances import assert_close
from zeta_ref.stages.topk_softmax import INV_EUCLIDEAN_EPS

SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")


def test_dense_softmax_by_hand():
    # d_k = 1. q1 = 1; k0 = 0, k1 = ln 2: query 1's logits 0 and ln 2 -> weights 1/3, 2/3
    q = np.array([[5.0], [1.0]])
    k = np.array([[0.0], [math.log(2.0)]])
    v = np.array([[3.0, 1.0], [6.0, 1.0]])
    out = oracles.dense_attention(q, k, v, "softmax", "inclusive")
    assert out.dtype == np.float64 and out.shape == (2, 2)
    np.testing.assert_allclose(out[0], [3.0, 1.0], rtol=1e-15)  # sees only key 0
    np.testing.assert_allclose(out[1], [5.0, 1.0], rtol=1e-14)  # 1 + 4
    # non-causal: query 0 sees both, logits 0 and 5 ln 2 -> 1/33, 32/33
    out = oracles.dense_attention(q, k, v, "softmax", "none")
    np.testing.assert_allclose(out[0, 0], (3 + 32 * 6) / 33, rtol=1e-14)
    # strict, M = 1: query 0 sees nothing (0), query 1 sees key 0
    out = oracles.dense_attention(q, k, v, "softmax", "strict", chunk_size=1)
    np.testing.assert_array_equal(out[0], [0.0, 0.0])
    np.testing.assert_allclose(out[1], [3.0, 1.0], rtol=1e-15)


def test_dense_cauchy_by_hand():
    # N = 3, d_k = 1, queries all at 0; keys at 0, 1, 2; gamma = 0.5:
    # affinities 1/.25 = 4, 1/1.25 = .8, 1/4.25
    q = np.zeros((3, 1))
    k = np.array([[0.0], [1.0], [2.0]])
    v = np.array([[3.0], [6.0], [0.0]])
    out = oracles.dense_attention(q, k, v, "cauchy", "inclusive", gamma=0.5)
    np.testing.assert_allclose(out[:, 0], [3.0, 3.5, (12 + 4.8) / (4 + 0.8 + 1 / 4.25)],
                               rtol=1e-14)
    out = oracles.dense_attention(q, k, v, "cauchy", "inclusive", gamma=1.0)
    np.testing.assert_allclose(out[1, 0], 4.0, rtol=1e-14)  # weights 2/3, 1/3


def brute_dense(q, k, v, score, causal, gamma, m):
    n = q.shape[0]
    out = np.zeros((n, v.shape[1]))
    for i in range(n):
        seen = {"inclusive": range(i + 1), "strict": range((i // m) * m),
                "none": range(n)}[causal]
        a = []
        for j in seen:
            d2 = float(((q[i] - k[j]) ** 2).sum())
            if score == "cauchy":
                a.append(1 / (d2 + gamma ** 2))
            elif score == "inv_euclidean":
                a.append(1 / (d2 + INV_EUCLIDEAN_EPS))
            elif score == "neg_euclidean":
                a.append(math.exp(-d2))
            else:
                a.append(math.exp(float(q[i] @ k[j]) / math.sqrt(q.shape[1])))
        if a:
            out[i] = sum(w * v[j] for w, j in zip(a, seen)) / sum(a)
    return out


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_dense_matches_a_loop(rng, make_qkv, score, causal):
    q, k, v = make_qkv(rng, 9, 2, 3, lead=(2,))
    got = oracles.dense_attention(q, k, v, score, causal, gamma=0.8, chunk_size=3)
    for b in range(2):
        np.testing.assert_allclose(got[b], brute_dense(q[b], k[b], v[b], score, causal, 0.8, 3),
                                   rtol=1e-12, atol=1e-14)


def test_dense_is_float64_for_float32_input(rng, make_qkv):
    q, k, v = make_qkv(rng, 6, 3, 2, dtype=np.float32)
    got = oracles.dense_attention(q, k, v, "cauchy")
    assert got.dtype == np.float64
    want = oracles.dense_attention(*(x.astype(np.float64) for x in (q, k, v)), "cauchy")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("oracle", ["dense", "topk"])
def test_strict_pools_need_an_explicit_chunk_size(rng, make_qkv, oracle):
    # ZETA's M depends on its k (D5); an oracle guessing it could silently use other pools
    q, k, v = make_qkv(rng, 300, 3, 2)
    call = {"dense": lambda **kw: oracles.dense_attention(q, k, v, "softmax", "strict", **kw),
            "topk": lambda **kw: oracles.exact_topk(q, k, 4, "cauchy", "strict", **kw)}[oracle]
    with pytest.raises(ValueError, match="chunk_size must be given for causal='strict'"):
        call()
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        call(chunk_size=0)
    # inclusive and none do not depend on M at all
    for causal in ("inclusive", "none"):
        np.testing.assert_array_equal(oracles.exact_topk(q, k, 4, "cauchy", causal),
                                      oracles.exact_topk(q, k, 4, "cauchy", causal, chunk_size=7))


def loop_topk(q, k, k_top, score, causal, m):
    n = q.shape[0]
    out = np.full((n, k_top), -1, dtype=np.int64)
    for i in range(n):
        seen = {"inclusive": range(i + 1), "strict": range((i // m) * m),
                "none": range(n)}[causal]

        def near(j):
            if score == "softmax":
                return -float(q[i] @ k[j])
            return float(((q[i] - k[j]) ** 2).sum())

        best = sorted(seen, key=lambda j: (near(j), j))[:k_top]
        out[i, :len(best)] = best
    return out


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("k_top", [1, 3, 12])
@pytest.mark.parametrize("grid", [False, True])
def test_exact_topk_matches_a_loop(rng, score, causal, k_top, grid):
    n = 10
    if grid:  # exact ties: lower position first
        q = rng.integers(-1, 2, size=(2, n, 2)).astype(np.float64)
        k = rng.integers(-1, 2, size=(2, n, 2)).astype(np.float64)
    else:
        q, k = rng.standard_normal((2, n, 2)), rng.standard_normal((2, n, 2))
    got = oracles.exact_topk(q, k, k_top, score, causal, chunk_size=3)
    assert got.dtype == np.int64 and got.shape == (2, n, k_top)
    for b in range(2):
        np.testing.assert_array_equal(got[b], loop_topk(q[b], k[b], k_top, score, causal, 3))


def test_exact_topk_by_hand():
    q = np.zeros((3, 1))
    k = np.array([[2.0], [-1.0], [1.0]])
    got = oracles.exact_topk(q, k, 2, "cauchy", "inclusive")
    # q0 sees {0}; q1 sees {0: 4, 1: 1}; q2 sees {0: 4, 1: 1, 2: 1} -> tie 1, 2 by position
    assert got.tolist() == [[0, -1], [1, 0], [1, 2]]
    got = oracles.exact_topk(q, k, 5, "cauchy", "none")  # more than N: padded
    assert got.tolist() == [[1, 2, 0, -1, -1]] * 3


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, -1], [-1, -1, -1], [7, 8, 9]])
    found = np.array([[3, 1, 0], [-1, 5, 6], [-1, 2, 3], [-1, -1, -1]])
    per = oracles.recall_at_k(found, exact, per_query=True)
    assert per.dtype == np.float64 and per.shape == (4,)
    np.testing.assert_allclose(per[[0, 1, 3]], [2 / 3, 1 / 2, 0.0])
    assert np.isnan(per[2])  # no exact neighbour: NaN, not 0 or 1
    # the mean skips the NaN query
    assert oracles.recall_at_k(found, exact) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # -1 in found never matches -1 in exact
    assert oracles.recall_at_k(np.array([[-1, -1]]), np.array([[5, -1]])) == 0.0
    # different widths are fine; nothing to find at all -> NaN
    assert oracles.recall_at_k(np.array([[1, 2, 3, 4]]), np.array([[4, 1]])) == 1.0
    assert math.isnan(oracles.recall_at_k(np.array([[1]]), np.array([[-1]])))
    with pytest.raises(ValueError, match="found and exact"):
        oracles.recall_at_k(np.zeros((3, 2)), np.zeros((4, 2)))


def test_recall_against_itself_is_one(rng, make_qkv):
    q, k, _ = make_qkv(rng, 20, 3, 1, lead=(2,))
    ex = oracles.exact_topk(q, k, 4, "cauchy", "strict", chunk_size=5)
    per = oracles.recall_at_k(ex, ex, per_query=True)
    assert per.shape == (2, 20)
    assert np.isnan(per[:, :5]).all() and (per[:, 5:] == 1).all()
    assert oracles.recall_at_k(ex, ex) == 1.0


# --- the oracles' own nearness (issue 14) ------------------------------------------------------


def test_the_oracles_do_not_use_the_window_stage_nearness(rng, make_qkv, monkeypatch):
    # the nearness they check is not the one they compute with: a wrong window.nearness (and
    # one imported by name into the oracles) changes none of their answers
    from zeta_ref.stages import window

    q, k, v = make_qkv(rng, 40, 3, 4, lead=(2,))
    want = {score: (oracles.exact_topk(q, k, 5, score), oracles.dense_attention(q, k, v, score))
            for score in SCORES}

    def wrong(q, keys, score):
        raise AssertionError("an oracle called the window stage's nearness")

    monkeypatch.setattr(window, "nearness", wrong)
    monkeypatch.setattr(oracles, "nearness", wrong, raising=False)
    for score in SCORES:
        np.testing.assert_array_equal(oracles.exact_topk(q, k, 5, score), want[score][0])
        np.testing.assert_array_equal(oracles.dense_attention(q, k, v, score), want[score][1])


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("d_k", [1, 3, 8, 64])
def test_the_oracles_nearness_is_the_window_stage_nearness(rng, score, d_k):
    # the same quantity summed in another order: equal within float64 rounding, and equal bit
    # for bit on a coarse grid, where every sum is exact (so ties stay ties)
    from zeta_ref.stages import window

    q, k = rng.standard_normal((2, 7, d_k)), rng.standard_normal((2, 50, d_k))
    got = oracles._pairwise_nearness(q, k, score)  # (2, 7, 50)
    want = window.nearness(q, k[:, None], score)  # (2, 7, 50), coordinate by coordinate
    # each sum within d_k roundings of its d_k terms, each term at most `largest`
    largest = (np.abs(q).max() + np.abs(k).max()) ** 2
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=2 * d_k * d_k * np.finfo(np.float64).eps * largest)
    q, k = np.round(q * 4) / 4, np.round(k * 4) / 4
    np.testing.assert_array_equal(oracles._pairwise_nearness(q, k, score),
                                  window.nearness(q, k[:, None], score))


# --- blocks of queries (issue 13): O(N * block) memory, the same answers ------------------------

def unblocked_nearness(q, k, score):
    """(..., N, N) nearness of every key to every query, all at once, summed as the oracles sum
    it (einsum over the coordinates), so that blocks must give the same bits."""
    if score == "softmax":
        return -np.einsum("...id,...jd->...ij", q, k)
    diff = q[..., :, None, :] - k[..., None, :, :]  # (..., N, N, d_k)
    return np.einsum("...ijd,...ijd->...ij", diff, diff)


def unblocked_visible(n, causal, m):
    """(N, N): may query i see key j?"""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return {"inclusive": j <= i, "strict": j < (i // m) * m, "none": j < n}[causal]


def unblocked_dense_weights(q, k, score, causal, gamma, m):
    """(..., N, N) weights of dense attention, every query at once, in float64."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    seen = unblocked_visible(q.shape[-2], causal, m)
    near = unblocked_nearness(q, k, score)
    if score in ("cauchy", "inv_euclidean"):
        add = gamma * gamma if score == "cauchy" else INV_EUCLIDEAN_EPS
        a = np.where(seen, 1.0 / (near + add), 0.0)
    else:
        logits = np.where(seen, -near / np.sqrt(q.shape[-1]) if score == "softmax" else -near,
                          -np.inf)
        top = logits.max(axis=-1, keepdims=True)
        a = np.where(seen, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = a.sum(axis=-1, keepdims=True)
    return a / np.where(total > 0, total, 1.0)


def unblocked_topk(q, k, k_top, score, causal, m):
    """(..., N, k_top) exact top-k, every query at once: sort each whole row."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    n = q.shape[-2]
    seen = np.broadcast_to(unblocked_visible(n, causal, m), q.shape[:-1] + (n,))
    near = np.where(seen, unblocked_nearness(q, k, score), np.inf)
    order = np.argsort(near, axis=-1, kind="stable")  # ties keep position order
    found = np.take_along_axis(seen, order, axis=-1)
    idx = np.where(found, order, -1)[..., :k_top]
    return np.concatenate([idx, np.full(idx.shape[:-1] + (k_top - idx.shape[-1],), -1)], axis=-1)


AWKWARD_N = [1, 2, 3, 17, 257]
BLOCKS = [1, 2, 16, "N", "N+5", None]  # None: the default, one block at these sizes


def as_block(block, n):
    return {"N": n, "N+5": n + 5}.get(block, block)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", AWKWARD_N)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("score", SCORES)
def test_dense_in_blocks_matches_all_at_once(rng, make_qkv, score, causal, dtype, n, block):
    q, k, v = make_qkv(rng, n, 3, 5, lead=(2,), dtype=dtype)
    block = as_block(block, n)
    got = oracles.dense_attention(q, k, v, score, causal, gamma=0.8, chunk_size=2, block=block)
    w = unblocked_dense_weights(q, k, score, causal, 0.8, 2)  # (2, N, N)
    v64 = v.astype(np.float64)
    # every weight is the same, bit for bit; only w @ v is BLAS's, whose kernel (and so the
    # order of its sums) depends on the number of rows: the same blocks give the same bits...
    step = n if block is None else block
    by_block = np.concatenate([w[..., s:s + step, :] @ v64 for s in range(0, n, step)], axis=-2)
    np.testing.assert_array_equal(got, by_block)
    # ...and one block is the whole computation of before, bit for bit
    if step >= n:
        np.testing.assert_array_equal(got, w @ v64)
    # any blocks agree with all at once within float64's tolerance
    assert_close(got, w @ v64, scale=np.abs(v64).max())


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", AWKWARD_N)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("score", SCORES)
def test_exact_topk_in_blocks_matches_all_at_once(rng, score, causal, dtype, n, block):
    # grid points: many exact ties, which must still go to the lower position
    q = rng.integers(-1, 2, size=(2, n, 2)).astype(dtype)
    k = rng.integers(-1, 2, size=(2, n, 2)).astype(dtype)
    got = oracles.exact_topk(q, k, 4, score, causal, chunk_size=2, block=as_block(block, n))
    assert got.dtype == np.int64 and got.shape == (2, n, 4)
    np.testing.assert_array_equal(got, unblocked_topk(q, k, 4, score, causal, 2))


def test_blocks_keep_leading_dims_apart(rng, make_qkv):
    q, k, v = make_qkv(rng, 40, 3, 4, lead=(2, 3))
    dense = oracles.dense_attention(q, k, v, "cauchy", block=7)
    topk = oracles.exact_topk(q, k, 5, "cauchy", block=7)
    assert dense.shape == (2, 3, 40, 4) and topk.shape == (2, 3, 40, 5)
    for b in range(2):
        for h in range(3):
            assert_close(dense[b, h], oracles.dense_attention(q[b, h], k[b, h], v[b, h], "cauchy"))
            np.testing.assert_array_equal(topk[b, h], oracles.exact_topk(q[b, h], k[b, h], 5))


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "8"])
def test_block_must_be_a_positive_integer(rng, make_qkv, bad):
    q, k, v = make_qkv(rng, 5)
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        oracles.dense_attention(q, k, v, block=bad)
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        oracles.exact_topk(q, k, 2, block=bad)


@pytest.mark.parametrize("n, lead", [(1, ()), (4096, ()), (4096, (2, 8)), (10**6, ()),
                                     (10**6, (4, 16))])
@pytest.mark.parametrize("width", [1, 3, 64])  # numbers per (query, key) pair
def test_default_block_keeps_one_temporary_within_the_budget(n, lead, width):
    block = oracles._query_block(None, n, lead, width)
    row_bytes = 8 * n * width * math.prod(lead)  # one query's (..., 1, N, width) float64
    assert block >= 1
    assert block * row_bytes <= oracles.BLOCK_BYTES or block == 1
    assert (block + 1) * row_bytes > oracles.BLOCK_BYTES  # and no smaller than it need be


@pytest.mark.parametrize("lead, n", [((), 4096), ((2, 2), 2048)])
def test_memory_is_bounded(rng, make_qkv, lead, n):
    # Before issue 13 the oracles held several (..., N, N) float64 arrays at once: over 400 MiB
    # here. Now they hold about six (..., block, N) float64 arrays of at most BLOCK_BYTES
    # (4 MiB) each, some 25 MiB, whatever N. The bound asserted, a quarter of ONE (..., N, N)
    # float64 array (32 MiB for these sizes), holds with room to spare and fails at once if
    # anything of size (..., N, N) comes back. NumPy reports its allocations to tracemalloc.
    q, k, v = make_qkv(rng, n, 3, 4, lead=lead)
    one_square = 8 * n * n * math.prod(lead)
    bound = one_square // 4
    assert 7 * oracles.BLOCK_BYTES < bound  # the budget leaves room for the inputs and output
    for run in (lambda: oracles.dense_attention(q, k, v, "softmax"),
                lambda: oracles.exact_topk(q, k, 32, "cauchy")):
        tracemalloc.start()
        try:
            run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < bound, f"peak {peak / 2**20:.1f} MiB, bound {bound / 2**20:.0f} MiB"
