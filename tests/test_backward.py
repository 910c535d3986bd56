"""The backward pass (issue 12): the specification against finite differences, the Numba twin
against the specification, determinism, and the refusals of zeta_attention_backward.

Finite differences: central differences in float64 of the forward pass with the candidates held
fixed (stage 6 alone: :func:`history_means` and :func:`topk_attention` of the specification),
every perturbed copy of the inputs evaluated at once as a leading batch dimension.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.backward import Gradients, zeta_attention_backward
from zeta_ref.stages import backward as spec
from zeta_ref.stages import topk_softmax
from zeta_ref.tolerances import assert_close

SEED = 20250414
SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")
CAUSAL = ("inclusive", "strict", "none")
SMALL = os.environ.get("NUMBA_DISABLE_JIT") == "1"  # kernels run as Python: keep it small
FD_RTOL = 1e-6  # the bound on the relative error against finite differences


def _inputs(rng, lead, n, d_k=3, d_v=4, dtype=np.float64):
    q = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    k = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    v = rng.standard_normal(lead + (n, d_v)).astype(dtype)
    g = rng.standard_normal(lead + (n, d_v)).astype(dtype)  # dL/do for L = sum(g * o)
    return q, k, v, g


# ---------------------------------------------------------------- finite differences


def _loss(q, k, v, gamma, cand, score, causal, mean, g):
    """L = sum(g * o) per leading batch entry, o the forward pass with ``cand`` fixed."""
    mean_k = mean_v = None
    if mean:
        mean_k, mean_v = topk_softmax.history_means(k, v, causal)
    out = topk_softmax.topk_attention(q, k, v, cand, score, gamma, mean_k, mean_v)[0]
    extra = out.ndim - g.ndim
    return (out * g).reshape(out.shape[:extra] + (-1,)).sum(axis=-1)


def finite_differences(q, k, v, gamma, cand, score, causal, mean, g, eps=1e-6):
    """Central differences of L with respect to every element of q, k, v, and to gamma."""
    out = []
    for which, x in enumerate((q, k, v)):
        m = x.size
        step = (np.eye(m) * eps).reshape((m,) + x.shape)  # (m, ..., N, d)
        batch = [np.broadcast_to(y, (m,) + y.shape) for y in (q, k, v)]
        cands = np.broadcast_to(cand, (m,) + cand.shape).copy()
        plus, minus = list(batch), list(batch)
        plus[which], minus[which] = x + step, x - step
        diff = (_loss(*plus, gamma, cands, score, causal, mean, g)
                - _loss(*minus, gamma, cands, score, causal, mean, g))  # (m,)
        out.append((diff / (2 * eps)).reshape(x.shape))
    dgamma = (_loss(q, k, v, gamma + eps, cand, score, causal, mean, g)
              - _loss(q, k, v, gamma - eps, cand, score, causal, mean, g)) / (2 * eps)
    return out + [float(dgamma)]


def assert_matches_finite_differences(grads, numeric, score):
    for name, got, want in zip(("dq", "dk", "dv"), grads[:3], numeric[:3]):
        scale = np.abs(want).max()
        if scale < 1e-9:  # N = 1: one key and its own mean, no q in the weights
            assert np.abs(got).max() < 1e-12, name
            continue
        err = np.abs(got - want).max() / scale
        assert err <= FD_RTOL, f"{name}: relative error {err:.2e} against finite differences"
    if score == "cauchy":
        # (with N = 1 both slots hold the same key: gamma changes nothing)
        assert abs(grads[3] - numeric[3]) <= FD_RTOL * max(abs(numeric[3]), 1e-6), (
            grads[3], numeric[3])
    else:
        assert grads[3] == 0.0 and abs(numeric[3]) < 1e-12  # gamma is not used


# N, k, W, chunk size: one position; two; W > k (re-rank) with small chunks (in "strict" mode
# the first chunk has no candidate); k >= N (every slot of the early queries empty)
SHAPES = [(1, 4, None, None), (2, 4, None, None), (17, 4, 9, 4), (17, 32, None, None)]


@pytest.mark.parametrize("n, k_top, window, chunk", SHAPES)
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("score", SCORES)
def test_gradients_match_finite_differences(score, causal, mean, n, k_top, window, chunk):
    rng = np.random.default_rng([SEED, n, k_top])
    q, k, v, g = _inputs(rng, (2,), n)
    cfg = ZetaConfig(k=k_top, window=window, chunk_size=chunk, causal=causal, score=score,
                     gamma=0.7, history_mean=mean)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    grads = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
    numeric = finite_differences(q, k, v, cfg.gamma, inter.candidates, score, causal, mean, g)
    assert_matches_finite_differences(grads, numeric, score)
    # without the intermediates the selection is made again: the same gradients
    again = zeta_attention_backward(q, k, v, g, cfg)
    for a, b in zip(grads, again):
        np.testing.assert_array_equal(a, b)
    if causal == "strict" and not mean:  # no candidate and no mean term: output 0, gradient 0
        np.testing.assert_array_equal(grads.dq[:, inter.pool_len == 0], 0.0)


@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("score", SCORES)
def test_stage_gradients_with_awkward_candidates(score, causal, mean):
    """Stage 6 alone, with candidates no window would give: -1 anywhere, a query with no
    candidate, keys that many queries selected, and keys no query selected."""
    rng = np.random.default_rng([SEED, 7])
    lead, n, n_slots = (2, 3), 9, 5
    q, k, v, g = _inputs(rng, lead, n, d_k=2, d_v=3)
    cand = rng.integers(-1, n, size=lead + (n, n_slots))  # (2, 3, N, k)
    cand[..., 0, :] = -1  # a query with no candidate
    cand[0, 0, 1:4] = [2, 2, -1, 2, 2]  # key 2 selected by several queries, -1 between
    cand[cand == 7] = 8  # key 7: selected by no query, reached only by the mean term
    gamma = 0.9
    mean_k = mean_v = None
    if mean:
        mean_k, mean_v = topk_softmax.history_means(k, v, causal)
    dq, dk, dv, dmk, dmv, dgamma = spec.topk_attention_backward(
        q, k, v, cand, score, gamma, mean_k, mean_v, g)
    assert (dmk is None) == (dmv is None) == (not mean)
    if mean:
        dk_mean, dv_mean = spec.history_means_backward(dmk, dmv, causal)
        dk, dv = dk + dk_mean, dv + dv_mean
    else:  # no mean term: the query without candidates gets nothing, key 7 gets nothing
        np.testing.assert_array_equal(dq[..., 0, :], 0.0)
        np.testing.assert_array_equal(dk[..., 7, :], 0.0)
        np.testing.assert_array_equal(dv[..., 7, :], 0.0)
    numeric = finite_differences(q, k, v, gamma, cand, score, causal, mean, g)
    assert_matches_finite_differences((dq, dk, dv, dgamma), numeric, score)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("causal, chunk", [("inclusive", None), ("inclusive", 5),
                                           ("strict", 8), ("strict", 1)])
@pytest.mark.parametrize("score, window", [("cauchy", None), ("softmax", 48),
                                           ("neg_euclidean", None)])
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("n_real", [1, 5, 20, 32, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_right_padding_with_zero_output_gradients_leaves_the_real_gradients(
        make_qkv, backend, causal, chunk, score, window, mean, n_real, dtype):
    """The backward pass of a sequence padded on the right (docs/roadmap.md), with zero output
    gradients at the padding: the padding's gradients are exactly zero (a padded query's output
    reaches no loss; a padded key is seen by padded queries only, in the causal modes), and
    the real positions' dq, dk, dv are those of the sequence alone, bit for bit once the real
    length reaches k. Below k, and for dgamma (one sum over every (query, slot), the padded
    ones included), the pairwise sums group their terms by how many there are: within the
    tolerances. (In "strict" mode with a chunk size given: the automatic one depends on N.)"""
    k_top, n_pad = 32, 64
    cfg = ZetaConfig(k=k_top, window=window, causal=causal, chunk_size=chunk, score=score,
                     history_mean=mean)
    q, k, v = make_qkv(np.random.default_rng(n_real), n_pad, 3, 8, lead=(2,), dtype=dtype)
    grad = np.random.default_rng(100 + n_real).standard_normal(v.shape).astype(dtype)
    grad[:, n_real:] = 0
    padded = zeta_attention_backward(q, k, v, grad, cfg, backend=backend)
    real = slice(0, n_real)
    alone = zeta_attention_backward(q[:, real], k[:, real], v[:, real], grad[:, real], cfg,
                                    backend=backend)
    for name, got, want in zip(("dq", "dk", "dv"), padded[:3], alone[:3]):
        assert not np.any(got[:, n_real:]), f"{name} at the padding"
        if n_real >= k_top:
            np.testing.assert_array_equal(got[:, real], want, err_msg=name)
        else:
            assert_close(got[:, real], want, err_msg=name)
    assert_close(np.float64(padded.dgamma), np.float64(alone.dgamma), dtype=dtype)


def test_history_means_backward_is_the_adjoint_of_history_means():
    # <d mean, dm> = <dx, x> for the linear map x -> mean(x): the adjoint, exactly in exact
    # arithmetic, to rounding here
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 40, 5))
    dm = rng.standard_normal((2, 40, 5))
    for causal in CAUSAL:
        mean, _ = topk_softmax.history_means(x, x, causal)
        dx, _ = spec.history_means_backward(dm, dm, causal)
        assert np.isclose((mean * dm).sum(), (x * dx).sum(), rtol=1e-13, atol=0)


def test_keys_selected_by_several_queries_add_their_contributions_in_float64():
    # scatter_rows adds (query, slot) contributions in float64, in (query, slot) order, and
    # rounds once: 1 + 2^-24 * 4 in float32 is not 1 + 2^-24 + 2^-24 + ... rounded each time
    tiny = np.float32(2.0 ** -24)
    x = np.array([[[[1.0]], [[tiny]], [[tiny]], [[tiny]], [[tiny]]]], dtype=np.float32)
    idx = np.zeros((1, 5, 1), dtype=np.int64)  # five queries, all selecting key 0
    got = spec.scatter_rows(x, idx, 2)  # (1, 2, 1)
    assert got.dtype == np.float32
    assert got[0, 0, 0] == np.float32(1 + 4 * 2.0 ** -24) and got[0, 1, 0] == 0
    idx[0, 2, 0] = -1  # an empty slot adds nothing
    assert spec.scatter_rows(x, idx, 2)[0, 0, 0] == np.float32(1 + 3 * 2.0 ** -24)


def test_gradients_have_the_shapes_and_dtypes_of_the_inputs():
    rng = np.random.default_rng(SEED)
    for dtype in (np.float32, np.float64):
        q, k, v, g = _inputs(rng, (2, 3), 20, d_k=3, d_v=5, dtype=dtype)
        grads = zeta_attention_backward(q, k, v, g, ZetaConfig(k=4))
        assert isinstance(grads, Gradients) and isinstance(grads.dgamma, float)
        dq, dk, dv, dgamma = grads  # a named tuple
        for got, x in ((dq, q), (dk, k), (dv, v)):
            assert got.shape == x.shape and got.dtype == dtype
        assert dgamma == grads.dgamma != 0.0
        other = zeta_attention_backward(q, k, v, g, ZetaConfig(k=4, score="softmax"))
        assert other.dgamma == 0.0


# ---------------------------------------------------------------- the Numba twin

numba = pytest.importorskip("numba")
from zeta_ref.numba import backward as twin  # noqa: E402
from zeta_ref.numba import topk_softmax as forward_twin  # noqa: E402

NUMBA_N = (1, 3, 17) if SMALL else (1, 3, 17, 257)


def assert_dgamma_close(got, want, exact, dtype):
    """The twin's dgamma against the specification's ``want``, ``exact`` the specification's on
    float64 copies of the inputs.

    In float64, within the tolerance. In float32 dgamma is a sum over every (query, slot) whose
    terms cancel: the twin's error against ``exact`` may be at most four times the
    specification's own float32 error, or the tolerance of the result (FlashAttention's rule
    for a fast kernel is twice; but here the yardstick is one scalar, one sample of a rounding
    error: on a 2-core VM on 2026-12-03 the twin's other summation order came out 2.1 times
    the specification's, 1.25e-5 against 5.9e-6 on a value of 0.17).
    """
    if dtype == np.float64:
        assert_close(np.float64(got), np.float64(want))
    else:
        allowed = max(4 * abs(want - exact), 2e-5 * abs(exact))
        assert abs(got - exact) <= allowed, (got, want, exact)


def _exact_dgamma(q, k, v, cand, score, gamma, causal, mean, g):
    """The specification's dgamma on the float64 copies of the inputs."""
    q, k, v, g = (x.astype(np.float64) for x in (q, k, v, g))
    means = topk_softmax.history_means(k, v, causal) if mean else (None, None)
    return spec.topk_attention_backward(q, k, v, cand, score, gamma, *means, g)[5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("score", SCORES)
def test_numba_matches_numpy(score, causal, mean, dtype):
    rng = np.random.default_rng([SEED, SCORES.index(score), CAUSAL.index(causal)])
    for n in NUMBA_N:
        q, k, v, g = _inputs(rng, (2,), n, d_v=9, dtype=dtype)
        cfg = ZetaConfig(k=8, window=12, chunk_size=5, causal=causal, score=score, gamma=0.6,
                         history_mean=mean)
        _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
        want = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
        got = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="numba")
        for name, a, b in zip(("dq", "dk", "dv"), got[:3], want[:3]):
            assert a.dtype == b.dtype == dtype and a.shape == b.shape
            assert_close(a, b, err_msg=f"{name} N={n}")
        exact = _exact_dgamma(q, k, v, inter.candidates, score, cfg.gamma, causal, mean, g)
        assert_dgamma_close(got.dgamma, want.dgamma, exact, dtype)


@pytest.mark.parametrize("score", ["cauchy", "softmax"])
def test_numba_stage_matches_spec_with_awkward_candidates(score):
    # float32: the parallel kernels' compilation the determinism test needs anyway (each
    # compilation costs CI seconds); the float64 kernels are checked serial, above
    rng = np.random.default_rng([SEED, 3])
    lead, n = (3,), 40
    q, k, v, g = _inputs(rng, lead, n, d_v=300 if not SMALL else 9,  # d_v > 128: split sums
                         dtype=np.float32)
    cand = rng.integers(-1, n, size=lead + (n, 6))
    cand[..., :3, :] = -1
    mean_k, mean_v = topk_softmax.history_means(k, v, "inclusive")
    for means in ((mean_k, mean_v), (None, None)):
        want = spec.topk_attention_backward(q, k, v, cand, score, 0.5, *means, g)
        for parallel in (False, True):
            got = twin.topk_attention_backward(q, k, v, cand, score, 0.5, *means, g,
                                               parallel=parallel)
            for a, b in zip(got[:3], want[:3]):
                assert_close(a, b)
            for a, b in zip(got[3:5], want[3:5]):
                if b is None:
                    assert a is None
                else:
                    assert_close(a, b)
            exact = _exact_dgamma(q, k, v, cand, score, 0.5, "inclusive", means[0] is not None,
                                  g)
            assert_dgamma_close(got[5], want[5], exact, q.dtype)


@pytest.mark.parametrize("causal", CAUSAL)
def test_numba_matches_numpy_where_the_terms_cancel(causal, gradient_sizes):
    """float32 with "inv_euclidean", d_k = 1 and one bit a coordinate: many queries have a
    key within 1e-3 of them in their window, a term of dq or dk is then of order 1e6 and the
    sum of order 1, and the two backends' float32 gradients differ from each other (and from
    float64) by far more than the tolerance of ``max |dq|`` (a fuzzing review saw 1 case in
    100 fail so). They must agree within the tolerance of the size of the terms each
    gradient sums (conftest's ``gradient_sizes``), which any wrong term still exceeds."""
    rng = np.random.default_rng([SEED, 7, CAUSAL.index(causal)])
    largest_cancellation = 0.0
    for case in range(6 if SMALL else 60):
        n, d_v, rows = int(rng.integers(2, 60)), int(rng.integers(1, 9)), int(rng.integers(1, 3))
        q, k, v, g = _inputs(rng, (rows,), n, d_k=1, d_v=d_v, dtype=np.float32)
        cfg = ZetaConfig(k=int(rng.integers(1, 10)), bits=1, score="inv_euclidean",
                         causal=causal, history_mean=bool(case % 2))
        _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
        want = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
        got = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="numba")
        sizes = [np.stack(per_row) for per_row in zip(*(
            gradient_sizes(q[r], k[r], v[r], g[r], inter.candidates[r], cfg.score, cfg.gamma,
                           causal, cfg.history_mean) for r in range(rows)))]
        for name, a, b, size in zip(("dq", "dk", "dv"), got[:3], want[:3], sizes):
            assert np.max(size) >= np.max(np.abs(b)) * (1 - 1e-5), name  # |sum| <= sum |.|
            assert_close(a, b, scale=float(np.max(size)), err_msg=f"{name} case {case}")
        if np.max(np.abs(want.dq)) > 0:
            largest_cancellation = max(largest_cancellation,
                                       float(np.max(sizes[0]) / np.max(np.abs(want.dq))))
    if not SMALL:  # the cases reach the regime they are for
        assert largest_cancellation > 100


def test_numba_backward_positions_in_int64_give_the_same_bits(monkeypatch):
    """Pass 2 keeps query positions in int32 up to N = 2^31 and in int64 past it, where int32
    would wrap to negative positions (a CPU audit's find, 2026-12-05: it was int32 at every
    N). The int64 kernels, forced here at a small N, give the same bits."""
    assert twin.position_dtype(2**31) == np.int32 and twin.position_dtype(2**31 + 1) == np.int64
    rng = np.random.default_rng([SEED, 11])
    q, k, v, g = _inputs(rng, (2,), 40, d_v=5, dtype=np.float32)
    cfg = ZetaConfig(k=6, score="softmax")
    _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
    want = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="numba")
    monkeypatch.setattr(twin, "position_dtype", lambda n: np.int64)
    got = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="numba")
    for name, a, b in zip(("dq", "dk", "dv"), got[:3], want[:3]):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("causal", CAUSAL)
def test_numba_history_means_backward_matches_spec(causal):
    rng = np.random.default_rng(SEED)
    for dtype in (np.float32, np.float64):
        dmk = rng.standard_normal((2, 300, 3)).astype(dtype)
        dmv = rng.standard_normal((2, 300, 1)).astype(dtype)  # d = 1
        for a, b in zip(twin.history_means_backward(dmk, dmv, causal),
                        spec.history_means_backward(dmk, dmv, causal)):
            assert a.dtype == dtype
            if causal == "none":
                assert_close(a, b)
            else:  # the same float64 operations in the same order: the same bits
                np.testing.assert_array_equal(a, b)
        # add_to: the shares rounded to the dtype, then added in it (the composer's sum)
        others = (rng.standard_normal(dmk.shape).astype(dtype),
                  rng.standard_normal(dmv.shape).astype(dtype))
        shares = spec.history_means_backward(dmk, dmv, causal)
        for name, backend in (("spec", spec), ("twin", twin)):
            summed = backend.history_means_backward(dmk, dmv, causal, add_to=others)
            for a, b, other in zip(summed, shares, others):
                assert a.dtype == dtype, name
                if name == "spec" or causal != "none":
                    np.testing.assert_array_equal(a, other + b, err_msg=name)
                else:
                    assert_close(a, other + b)


@pytest.mark.skipif(SMALL, reason="timing-free but large: not as plain Python")
def test_numba_is_deterministic_run_to_run_and_across_thread_counts():
    """No race in the accumulation: the same bits with 1 and 2 threads, run after run, serial
    kernels or parallel ones (pass 2 cuts one row into as many chunks as there are threads)."""
    rng = np.random.default_rng(SEED)
    most = min(2, numba.config.NUMBA_NUM_THREADS)
    saved = numba.get_num_threads()
    for lead in ((1,), (3,)):
        q, k, v, g = _inputs(rng, lead, 3000, d_v=16, dtype=np.float32)
        cand = zeta_attention(q, k, v, ZetaConfig(k=16), return_intermediates=True)[1].candidates
        mean_k, mean_v = topk_softmax.history_means(k, v, "inclusive")
        results = []
        try:
            for threads, parallel in ((1, True), (most, True), (most, True), (most, False)):
                numba.set_num_threads(threads)
                results.append(twin.topk_attention_backward(
                    q, k, v, cand, "cauchy", 0.5, mean_k, mean_v, g, parallel=parallel,
                    order=np.argsort(-q[..., 0], axis=-1)))  # any visiting order
        finally:
            numba.set_num_threads(saved)
        first = results[0]
        for other in results[1:]:
            for a, b in zip(first, other):
                if isinstance(a, np.ndarray):
                    assert a.tobytes() == b.tobytes()
                else:
                    assert a == b
    cfg = ZetaConfig(k=16)
    one = zeta_attention_backward(q, k, v, g, cfg, backend="numba")
    two = zeta_attention_backward(q, k, v, g, cfg, backend="numba")
    assert all(np.array_equal(a, b) for a, b in zip(one[:3], two[:3])) and one[3] == two[3]


def test_the_pairwise_sums_are_numpys():
    # the twin's normaliser and rho add in NumPy's pairwise order: the same bits as np.sum
    fn = twin._pairwise_dot
    rng = np.random.default_rng(SEED)
    for dtype in (np.float32, np.float64):
        for n in (1, 5, 7, 8, 9, 33, 128, 129, 300, 1000):
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(dtype)
            y = rng.standard_normal(n).astype(dtype)
            assert fn(x, y, n) == (x * y).sum(), (dtype, n)


def _body_lines(fn):
    import inspect

    fn = getattr(fn, "py_func", fn)
    after_docstring = inspect.getsource(fn).split('"""', 2)[2]
    return [line.strip() for line in after_docstring.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["_raw_score", "_nearness", "_score_slots", "_affinities",
                                  "_normalise"])
def test_the_backward_kernel_repeats_the_forward_lines(name):
    # copies (a cached kernel calls no compiled code of another file): they must stay copies
    assert _body_lines(getattr(twin, name)) == _body_lines(getattr(forward_twin, name))


@pytest.mark.skipif(SMALL, reason="already running without the JIT")
def test_kernel_bodies_as_python():
    """A small subset of these tests with NUMBA_DISABLE_JIT=1 (plain Python kernels)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           os.path.join(here, "test_backward.py"),
           "-k", "numba_matches_numpy and (cauchy-inclusive-True or softmax-strict-False)"
                 " or numba_history_means or pairwise_sums or awkward_candidates and numba"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(here))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


# ---------------------------------------------------------------- what is refused


@pytest.fixture
def case():
    rng = np.random.default_rng(SEED)
    q, k, v, g = _inputs(rng, (2,), 30, d_v=5, dtype=np.float32)
    cfg = ZetaConfig(k=4)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    return q, k, v, g, cfg, inter


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("make, kind, words", [
    (lambda g: g[..., :-1], ValueError, "grad_output must have the shape of the output"),
    (lambda g: g[None], ValueError, "grad_output must have the shape of the output"),
    (lambda g: g.astype(np.float64), TypeError, "grad_output must have the dtype of q"),
    (lambda g: g.astype(np.int64), TypeError, "grad_output must be a float32 or float64"),
    (lambda g: g[0, 0], ValueError, "grad_output must have at least 2 dimensions"),
    (lambda g: np.where(np.arange(5) == 3, np.float32(np.nan), g), ValueError,
     "grad_output contains NaN or Inf"),
    (lambda g: "not an array", TypeError, "grad_output"),
])
def test_bad_grad_output_is_named(case, make, kind, words):
    q, k, v, g, cfg, inter = case
    with pytest.raises(kind) as err:
        zeta_attention_backward(q, k, v, make(g), cfg, intermediates=inter)
    assert words in _one_line(err)


def test_intermediates_of_another_config_are_refused(case):
    q, k, v, g, cfg, inter = case
    for other in (replace(cfg, k=5), replace(cfg, gamma=0.3), replace(cfg, history_mean=False)):
        with pytest.raises(ValueError) as err:
            zeta_attention_backward(q, k, v, g, other, intermediates=inter)
        text = _one_line(err)
        assert text.startswith("intermediates were computed with another config"), text
        field = next(f for f in ("k", "gamma", "history_mean")
                     if getattr(other, f) != getattr(cfg, f))
        assert f"{field}={getattr(cfg, field)!r} there, {getattr(other, field)!r} here" in text


def test_intermediates_of_another_input_are_refused(case):
    q, k, v, g, cfg, inter = case
    rng = np.random.default_rng(1)
    with pytest.raises(TypeError) as err:
        zeta_attention_backward(q, k, v, g, cfg, intermediates=inter.arrays())
    assert _one_line(err).startswith("intermediates must be the Intermediates")
    # another shape
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q[:, :20], k[:, :20], v[:, :20], g[:, :20], cfg,
                                intermediates=inter)
    assert "intermediates come from inputs of another shape" in _one_line(err)
    # another q, another k: their coordinates differ
    for name, x in (("q", q), ("k", k)):
        other = {"q": q, "k": k}
        other[name] = rng.standard_normal(x.shape).astype(x.dtype)
        with pytest.raises(ValueError) as err:
            zeta_attention_backward(other["q"], other["k"], v, g, cfg, intermediates=inter)
        assert f"quantised coordinates of {name} differ" in _one_line(err)
    # another v, with the mean term on and off
    v2 = v.copy()
    v2[1, 20] += 1.0
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q, k, v2, g, cfg, intermediates=inter)
    assert "the mean term of v differs" in _one_line(err)
    off = replace(cfg, history_mean=False)
    _, inter_off = zeta_attention(q, k, v, off, return_intermediates=True)
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q, k, v * 2, g, off, intermediates=inter_off)
    assert "not those of these values v" in _one_line(err)


@pytest.mark.parametrize("bad", [-2, "n"])
def test_a_candidate_out_of_range_is_refused(case, bad):
    """A candidate must be -1 or a position: a GPU kernel would read past the end for N."""
    q, k, v, g, cfg, inter = case
    n = q.shape[-2]
    cand = inter.candidates.copy()
    cand[0, n - 1, 0] = n if bad == "n" else bad
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q, k, v, g, cfg, intermediates=replace(inter, candidates=cand))
    assert "neither -1 (an empty slot) nor a position 0 .. N - 1" in _one_line(err)


def test_max_abs_propagates_nan_and_inf_and_takes_offsets():
    from zeta_ref._checks import max_abs

    a = np.array([1.0, -3.0, 2.0])
    got = max_abs([(a, None), (a, a[::-1].copy()), (a, 1.0), (np.array([1.0, np.nan]), None),
                   (np.array([-np.inf, 0.0]), 0.0), (np.zeros((0, 3)), None),
                   (np.array([-1, 4], dtype=np.int64), 1.5)])
    assert got[:3] == [3.0, 1.0, 4.0]
    assert np.isnan(got[3]) and got[4] == np.inf and got[5] == 0.0 and got[6] == 2.5


def test_intermediates_of_another_backend_are_accepted(case):
    q, k, v, g, cfg, _ = case
    _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
    with_them = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
    without = zeta_attention_backward(q, k, v, g, cfg)
    for a, b in zip(with_them, without):
        np.testing.assert_array_equal(a, b)


def test_a_backend_without_backward_is_named(case, monkeypatch):
    import types

    from zeta_ref.backends import REGISTRY, Backend, get_backend

    q, k, v, g, cfg, _ = case
    module = types.ModuleType("forward_only_test_backend")  # a backend of the forward alone
    module.STAGES = replace(get_backend("numpy").stages(),
                            topk_attention_backward=None, history_means_backward=None)
    module.available = lambda: True
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(REGISTRY, "forward-only",
                        Backend("forward-only", module.__name__, False, "a test"))
    zeta_attention(q, k, v, cfg, backend="forward-only")  # the forward pass runs
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q, k, v, g, cfg, backend="forward-only")
    text = _one_line(err)
    assert text.startswith("backend 'forward-only' has no backward pass"), text
    assert "'numpy'" in text and "'numba'" in text  # and which ones have one


def test_other_bad_arguments_are_named(case):
    q, k, v, g, cfg, inter = case
    with pytest.raises(TypeError, match="config must be a ZetaConfig"):
        zeta_attention_backward(q, k, v, g, {"k": 4})
    with pytest.raises(ValueError, match="backend must be one of"):
        zeta_attention_backward(q, k, v, g, cfg, backend="nope")
    with pytest.raises(ValueError, match="^v must have shape"):
        zeta_attention_backward(q, k, v[:, :-1], g, cfg)
    with pytest.raises(ValueError, match="^gamma must lie in"):
        zeta_attention_backward(q, k, v, g, replace(cfg, gamma=1e30))


def test_gradients_that_overflow_are_refused(case):
    q, k, v, g, cfg, inter = case
    huge = np.full_like(g, 3e38)
    with pytest.raises(ValueError) as err:
        zeta_attention_backward(q, k, v, huge, cfg, intermediates=inter)
    assert _one_line(err).startswith("the gradients overflow float32")
