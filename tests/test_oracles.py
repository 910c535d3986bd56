"""Oracles: dense attention, exact top-k, recall@k."""

import math

import numpy as np
import pytest

from zeta_ref import oracles
from zeta_ref.topk_softmax import INV_EUCLIDEAN_EPS

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
