"""Stage 6: weights over the candidates, the mean term, the output (Eq. 6; D7, D8, D9)."""

import numpy as np
import pytest

from zeta_ref.stages import topk_softmax
from zeta_ref.stages.topk_softmax import INV_EUCLIDEAN_EPS, history_means, topk_attention

SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")


@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_history_means_are_cumulative_means(rng, make_qkv, cumulative_means, causal, dtype):
    _, k, v = make_qkv(rng, 13, 3, 5, lead=(2,), dtype=dtype)
    mk, mv = history_means(k, v, causal)
    assert mk.dtype == dtype and mv.dtype == dtype
    assert mk.shape == k.shape and mv.shape == v.shape
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(mk, cumulative_means(k, causal), **tol)
    np.testing.assert_allclose(mv, cumulative_means(v, causal), **tol)


def test_history_means_by_hand():
    k = np.array([[1.0], [3.0], [8.0]])
    v = np.array([[2.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    mk, mv = history_means(k, v, "inclusive")
    assert mk[:, 0].tolist() == [1.0, 2.0, 4.0]
    np.testing.assert_allclose(mv, [[2, 0], [1, 1], [2, 2]])
    mk, mv = history_means(k, v, "none")
    assert mk[:, 0].tolist() == [4.0, 4.0, 4.0]


def random_candidates(rng, n, k_slots, lead=()):
    """Distinct key positions per query, some -1 at the end, some rows all -1."""
    cand = np.full(lead + (n, k_slots), -1, dtype=np.int64)
    for idx in np.ndindex(*lead, n):
        m = int(rng.integers(0, min(k_slots, n) + 1))
        cand[idx][:m] = rng.choice(n, size=m, replace=False)
    return cand


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("with_mean", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_and_output_match_brute_force(rng, make_qkv, brute_weights, score, with_mean,
                                              dtype):
    n, k_slots = 11, 4
    q, k, v = make_qkv(rng, n, 3, 5, lead=(2,), dtype=dtype)
    cand = random_candidates(rng, n, k_slots, lead=(2,))
    cand[0, 3] = -1  # one query with no candidate at all
    mk, mv = history_means(k, v, "inclusive") if with_mean else (None, None)
    out, w, wm = topk_attention(q, k, v, cand, score, 0.7, mk, mv)
    assert out.dtype == dtype and w.dtype == dtype and wm.dtype == dtype
    assert out.shape == (2, n, 5) and w.shape == (2, n, k_slots) and wm.shape == (2, n)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for b in range(2):
        args = (q[b], k[b], v[b], cand[b], score, 0.7)
        if with_mean:
            args += (mk[b], mv[b])
        o2, w2, wm2 = brute_weights(*args)
        np.testing.assert_allclose(w[b], w2, **tol)
        np.testing.assert_allclose(wm[b], wm2, **tol)
        np.testing.assert_allclose(out[b], o2, **tol)
    # D9: empty slots weigh 0; normalised over slots + mean term
    assert (w[cand < 0] == 0).all()
    has_any = (cand >= 0).any(-1) | with_mean
    total = w.astype(np.float64).sum(-1) + wm
    np.testing.assert_allclose(total[has_any], 1.0, rtol=1e-6 if dtype == np.float32 else 1e-14)
    if not with_mean:
        assert (wm == 0).all()
        assert (total[~has_any] == 0).all()
        assert (out[~has_any] == 0).all()  # nothing at all: output 0 (D9)
    else:
        # no candidate: the mean term alone
        np.testing.assert_allclose(out[0, 3], mv[0, 3], **tol)
        assert wm[0, 3] == 1


def test_cauchy_by_hand():
    # query at 0; keys at distance^2 0 and 1; gamma = 0.5: 1/(0+.25) = 4, 1/(1+.25) = 0.8
    q = np.zeros((1, 1))
    k = np.array([[0.0], [1.0]])
    v = np.array([[3.0], [6.0]])
    cand = np.array([[[0, 1]]])[0]
    out, w, wm = topk_attention(q, k, v, cand, "cauchy", 0.5)
    np.testing.assert_allclose(w, [[4 / 4.8, 0.8 / 4.8]], rtol=1e-15)
    np.testing.assert_allclose(out, [[3.5]], rtol=1e-15)  # 5/6 * 3 + 1/6 * 6
    # gamma matters: gamma = 1: 1/1 and 1/2 -> 2/3, 1/3 -> 2 + 2 = 4
    out, w, _ = topk_attention(q, k, v, cand, "cauchy", 1.0)
    np.testing.assert_allclose(out, [[4.0]], rtol=1e-15)
    # empty slot in the middle is ignored
    out2, w2, _ = topk_attention(q, k, v, np.array([[0, -1, 1]]), "cauchy", 1.0)
    np.testing.assert_allclose(out2, [[4.0]], rtol=1e-15)
    assert w2[0, 1] == 0


def test_softmax_scales_by_sqrt_dk_and_does_not_overflow():
    # d_k = 4: logits <q, k> / 2. q = (1,1,1,1), k0 = 0, k1 = (ln 2) * (.5, .5, .5, .5) * 2
    q = np.ones((1, 4))
    k = np.vstack([np.zeros(4), np.full(4, np.log(2.0))])
    v = np.array([[3.0], [6.0]])
    out, w, _ = topk_attention(q, k, v, np.array([[0, 1]]), "softmax", 0.5)
    # logits 0 and 4 ln2 / 2 = 2 ln 2 -> weights 1/5, 4/5
    np.testing.assert_allclose(w, [[0.2, 0.8]], rtol=1e-14)
    # huge logits: max-subtracted, finite
    out, w, _ = topk_attention(q * 1e3, k * 1e3, v, np.array([[0, 1]]), "softmax", 0.5)
    assert np.isfinite(out).all() and w[0, 1] == 1.0


def test_neg_euclidean_and_inv_euclidean_by_hand():
    q = np.zeros((1, 1))
    k = np.array([[1.0], [2.0], [0.0]])
    v = np.array([[1.0], [0.0], [5.0]])
    _, w, _ = topk_attention(q, k, v, np.array([[0, 1]]), "neg_euclidean", 0.5)
    e = np.exp([-1.0, -4.0])
    np.testing.assert_allclose(w, [e / e.sum()], rtol=1e-14)
    _, w, _ = topk_attention(q, k, v, np.array([[0, 1]]), "inv_euclidean", 0.5)
    a = np.array([1 / (1 + INV_EUCLIDEAN_EPS), 1 / (4 + INV_EUCLIDEAN_EPS)])
    np.testing.assert_allclose(w, [a / a.sum()], rtol=1e-14)
    # distance exactly 0 is guarded: finite, and dominates
    out, w, _ = topk_attention(q, k, v, np.array([[0, 2]]), "inv_euclidean", 0.5)
    assert np.isfinite(w).all() and w[0, 1] > 0.999
    np.testing.assert_allclose(out, [[5.0]], rtol=1e-5)


def test_mean_term_is_scored_like_a_candidate():
    # one candidate at distance^2 1, mean key at distance^2 0 (cauchy, gamma 1): 1/2 vs 1
    q = np.zeros((1, 1))
    k = np.array([[1.0]])
    v = np.array([[3.0]])
    mk, mv = np.array([[0.0]]), np.array([[9.0]])
    out, w, wm = topk_attention(q, k, v, np.array([[0]]), "cauchy", 1.0, mk, mv)
    np.testing.assert_allclose(w, [[1 / 3]], rtol=1e-15)
    np.testing.assert_allclose(wm, [2 / 3], rtol=1e-15)
    np.testing.assert_allclose(out, [[1.0 + 6.0]], rtol=1e-15)


# --- one definition of each score (issue 14) ------------------------------------------------------


def test_the_score_table():
    # the table of the module docstring, entry by entry
    assert topk_softmax.score_constant("cauchy", 0.5, 3) == 0.25
    assert topk_softmax.score_constant("inv_euclidean", 0.5, 3) == INV_EUCLIDEAN_EPS
    assert topk_softmax.score_constant("softmax", 0.5, 4) == 2.0
    assert topk_softmax.score_constant("neg_euclidean", 0.5, 4) == 1.0
    with pytest.raises(ValueError, match="score must be one of"):
        topk_softmax.score_constant("dot", 0.5, 3)
    near = np.array([0.0, 1.0, 4.0])
    valid = np.array([True, True, False])
    np.testing.assert_array_equal(topk_softmax.affinity(near, "cauchy", 0.5, 3, valid),
                                  [4.0, 0.8, 0.0])  # 1 / (d^2 + gamma^2); invalid: 0
    np.testing.assert_allclose(topk_softmax.affinity(near, "inv_euclidean", 0.5, 3, valid),
                               [1e6, 1 / (1 + 1e-6), 0.0], rtol=1e-15)
    # logits -near / c, minus the largest valid one, then exp
    np.testing.assert_allclose(topk_softmax.affinity(near, "neg_euclidean", 0.5, 3, valid),
                               [1.0, np.exp(-1.0), 0.0], rtol=1e-15)
    np.testing.assert_allclose(topk_softmax.affinity(-near, "softmax", 0.5, 4, valid),
                               [np.exp(-0.5), 1.0, 0.0], rtol=1e-15)  # <q, k> / sqrt(4)
    # a row with nothing valid: all 0, no NaN
    assert (topk_softmax.affinity(near, "softmax", 0.5, 3, np.zeros(3, bool)) == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_constant_is_rounded_once_to_the_input_dtype(dtype):
    # gamma^2 is squared in float64, then rounded: not rounded gamma, then squared
    gamma = 0.1
    near = np.array([0.0], dtype=dtype)
    a = topk_softmax.affinity(near, "cauchy", gamma, 3, np.array([True]))
    assert a.dtype == dtype and a[0] == dtype(1) / dtype(gamma * gamma)


def test_the_specification_and_the_oracles_score_through_one_definition(rng, make_qkv,
                                                                          monkeypatch):
    # change the one definition and both change with it: the stage's top-k over every visible
    # key and the dense oracle both weigh by gamma = 1 when score_constant says 1
    from zeta_ref import oracles

    n = 9
    q, k, v = make_qkv(rng, n, 3, 2)
    positions = np.arange(n)
    every_visible = np.where(positions[None, :] <= positions[:, None], positions[None, :], -1)

    def both(gamma):
        return (topk_attention(q, k, v, every_visible, "cauchy", gamma)[0],
                oracles.dense_attention(q, k, v, "cauchy", "inclusive", gamma=gamma))

    want = both(1.0)
    assert not np.allclose(both(0.5)[0], want[0])  # gamma matters
    monkeypatch.setattr(topk_softmax, "score_constant", lambda score, gamma, d_k: 1.0)
    for got, w in zip(both(0.5), want):
        np.testing.assert_array_equal(got, w)
