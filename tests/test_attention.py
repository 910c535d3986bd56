"""The composed forward pass: causality, equivalences with the oracles, awkward sizes,
intermediates (stages 2-6 together)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeta_ref import Intermediates, ZetaConfig, backends, morton_encode, oracles, zeta_attention
from zeta_ref._checks import magnitude_limit, value_limit
from zeta_ref.tolerances import assert_close
from zeta_ref.stages.quantize import quantize

SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")
CAUSAL_CHUNKS = [(c, m) for c in ("inclusive", "strict") for m in (1, 3, 16, None)]


def run(queries, keys, values, **cfg):
    return zeta_attention(queries, keys, values, ZetaConfig(**cfg), return_intermediates=True)


def expected_pool_len(n, causal, m):
    i = np.arange(n)
    return {"inclusive": i + 1, "strict": (i // m) * m, "none": np.full(n, n)}[causal]


# ----------------------------------------------------------------------------- causality


def perturbations(rng, q, k, v, p):
    """Ways of changing q, k, v at positions >= p."""
    n = q.shape[-2]
    a = [x.copy() for x in (q, k, v)]
    for x in a:  # fresh random values
        x[..., p:, :] = rng.standard_normal(x[..., p:, :].shape).astype(x.dtype)
    yield a
    b = [x.copy() for x in (q, k, v)]
    # later keys placed exactly on earlier queries, later queries on earlier keys: they would
    # land in earlier windows if the window were cut before masking
    src = np.arange(p, n) % max(p, 1)
    b[1][..., p:, :] = q[..., src, :]
    b[0][..., p:, :] = k[..., src, :]
    b[2][..., p:, :] *= -3.0
    yield b


@pytest.mark.parametrize("causal, chunk", CAUSAL_CHUNKS)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("history_mean", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_future_never_changes_the_past(rng, make_qkv, causal, chunk, score, history_mean, dtype):
    n = 24
    q, k, v = make_qkv(rng, n, 3, 3, lead=(2,), scale=2.0, dtype=dtype)
    for window in (None, 9):  # W = k, and W > k with a re-rank
        cfg = dict(k=4, window=window, causal=causal, chunk_size=chunk, score=score,
                   gamma=0.6, history_mean=history_mean)
        out, inter = run(q, k, v, **cfg)
        pool_len = inter.pool_len
        for p in (1, 3, 5, 13, 16, 23):
            for q2, k2, v2 in perturbations(rng, q, k, v, p):
                out2, inter2 = run(q2, k2, v2, **cfg)
                past = slice(0, p)
                assert np.array_equal(out2[..., past, :], out[..., past, :])
                assert np.array_equal(inter2.weights[..., past, :], inter.weights[..., past, :])
                assert np.array_equal(inter2.mean_weight[..., past], inter.mean_weight[..., past])
                assert np.array_equal(inter2.candidates[..., past, :],
                                      inter.candidates[..., past, :])
                assert np.array_equal(inter2.window_idx[..., past, :],
                                      inter.window_idx[..., past, :])
                # the selection of query i depends on q_i and the keys before L_i only: keys
                # changed at >= p cannot move the window of any query with L_i <= p
                same_q = [q, k2, v2]
                out3, inter3 = run(*same_q, **cfg)
                sel = pool_len <= p
                assert np.array_equal(inter3.candidates[..., sel, :], inter.candidates[..., sel, :])
                if not history_mean:
                    # without the mean term the output too sees only keys/values before L_i
                    assert np.array_equal(out3[..., sel, :], out[..., sel, :])


@settings(max_examples=40, deadline=None, database=None)
@given(
    n=st.integers(1, 40),
    k_top=st.integers(1, 8),
    extra=st.sampled_from([0, 3]),
    causal=st.sampled_from(["inclusive", "strict"]),
    chunk=st.sampled_from([None, 1, 2, 3, 7, 16]),
    score=st.sampled_from(SCORES),
    history_mean=st.booleans(),
    bits=st.sampled_from([2, 10]),
    p_frac=st.floats(0, 1),
    seed=st.integers(0, 2 ** 32 - 1),
)
def test_future_never_changes_the_past_random(n, k_top, extra, causal, chunk, score,
                                              history_mean, bits, p_frac, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, d)) for d in (2, 2, 3))
    cfg = ZetaConfig(k=k_top, window=k_top + extra, causal=causal, chunk_size=chunk,
                     score=score, history_mean=history_mean, bits=bits)
    out, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    p = int(round(p_frac * n))
    for q2, k2, v2 in perturbations(rng, q, k, v, p):
        out2, inter2 = zeta_attention(q2, k2, v2, cfg, return_intermediates=True)
        assert np.array_equal(out2[:p], out[:p])
        assert np.array_equal(inter2.candidates[:p], inter.candidates[:p])
        assert np.array_equal(inter2.weights[:p], inter.weights[:p])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("causal, chunk", [("inclusive", None), ("inclusive", 5),
                                           ("strict", 8), ("strict", 1)])
@pytest.mark.parametrize("score, window", [("cauchy", None), ("softmax", 48)])
@pytest.mark.parametrize("n_real", [1, 5, 20, 32, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_right_padding_leaves_the_real_positions_unchanged(make_qkv, backend, causal, chunk,
                                                           score, window, n_real, dtype):
    """A sequence padded on the right with anything gives, at its real positions, the outputs
    of the sequence alone (the causal modes; in "strict" mode with a chunk size given, as the
    automatic one depends on N): how sequences of different lengths share a batch today, and
    what a decoder's output at step t is checked against (the pass over positions 0 .. t;
    docs/roadmap.md). Padding must pass the input checks like the rest (finite, in range):
    here standard normal draws. Bit for bit once the real length reaches k, when both passes
    have k slots a query (whatever W); below k the specification's sums over the slots
    (NumPy's pairwise sums) may group their terms differently, so there it agrees within the
    tolerances; the Numba twin, which adds the slots one after the other, stays bit for bit."""
    k_top, n_pad = 32, 64  # the default k; a window of 48 takes the re-rank's path
    cfg = ZetaConfig(k=k_top, window=window, causal=causal, chunk_size=chunk, score=score)
    q, k, v = make_qkv(np.random.default_rng(n_real), n_pad, 3, 8, lead=(2,), dtype=dtype)
    padded = zeta_attention(q, k, v, cfg, backend=backend)
    alone = zeta_attention(q[:, :n_real], k[:, :n_real], v[:, :n_real], cfg, backend=backend)
    if n_real >= k_top or backend == "numba":
        np.testing.assert_array_equal(padded[:, :n_real], alone)
    else:
        assert_close(padded[:, :n_real], alone)


def test_strict_mode_with_the_automatic_chunk_size_depends_on_n(make_qkv):
    """The automatic chunk size M = max(k, ceil(N / 8)) (D5) changes with N, and "strict"
    pools with M: padding a sequence, or growing it step by step, then changes its past
    outputs unless the chunk size is given (the test above)."""
    q, k, v = make_qkv(np.random.default_rng(5), 64, 3, 8)
    cfg = ZetaConfig(k=4, causal="strict")  # M = 5 for N = 40, 8 for N = 64
    assert (cfg.chunk_size_for(40), cfg.chunk_size_for(64)) == (5, 8)
    padded = zeta_attention(q, k, v, cfg)
    alone = zeta_attention(q[:40], k[:40], v[:40], cfg)
    assert not np.allclose(padded[:40], alone)
    given = ZetaConfig(k=4, causal="strict", chunk_size=5)
    np.testing.assert_array_equal(zeta_attention(q, k, v, given)[:40],
                                  zeta_attention(q[:40], k[:40], v[:40], given))


@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("chunk", [1, 3, 5, 16, None])
@pytest.mark.parametrize("window", [None, 7])
def test_candidates_stay_inside_the_pool(rng, make_qkv, causal, chunk, window):
    n, k_top = 30, 3
    q, k, v = make_qkv(rng, n, 2, 2, lead=(3,))
    _, inter = run(q, k, v, k=k_top, window=window, causal=causal, chunk_size=chunk)
    m = ZetaConfig(k=k_top, chunk_size=chunk).chunk_size_for(n)
    assert inter.chunk_size == m
    want_len = expected_pool_len(n, causal, m)
    np.testing.assert_array_equal(inter.pool_len, want_len)
    for idx in (inter.candidates, inter.window_idx):
        for i in range(n):
            row = idx[..., i, :]
            assert (row < want_len[i]).all()  # <= i inclusive, < chunk start strict
            if causal == "inclusive":
                assert (row <= i).all()
            assert ((row >= 0).sum(-1) == min(idx.shape[-1], want_len[i])).all()


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("window", [None, 6])
def test_inclusive_does_not_depend_on_chunk_size(rng, make_qkv, score, window):
    q, k, v = make_qkv(rng, 40, 3, 3, lead=(2,))
    base = zeta_attention(q, k, v, ZetaConfig(k=3, window=window, score=score, chunk_size=1))
    for m in (2, 3, 16, 40, 1000, None):
        got = zeta_attention(q, k, v, ZetaConfig(k=3, window=window, score=score, chunk_size=m))
        assert np.array_equal(got, base)


# ----------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("causal, chunk", [("inclusive", None), ("inclusive", 4),
                                           ("strict", 1), ("strict", 4), ("strict", 7),
                                           ("none", None)])
@pytest.mark.parametrize("extra", [0, 5])  # window = k (= N) or wider (the re-rank path)
def test_full_window_equals_dense_attention(rng, make_qkv, relative_error, score, causal, chunk,
                                            extra):
    n = 21
    q, k, v = make_qkv(rng, n, 3, 4, lead=(2,))
    cfg = ZetaConfig(k=n, window=n + extra, causal=causal, chunk_size=chunk, score=score,
                     gamma=0.7, history_mean=False)
    got = zeta_attention(q, k, v, cfg)
    m = cfg.chunk_size_for(n)
    want = oracles.dense_attention(q, k, v, score, causal, gamma=0.7, chunk_size=m)
    assert got.dtype == np.float64
    assert relative_error(got, want) <= 1e-10
    # row by row, too (small rows must not hide behind big ones)
    for i in range(n):
        scale = max(np.abs(want[..., i, :]).max(), 1e-300)
        assert np.abs(got[..., i, :] - want[..., i, :]).max() <= 1e-10 * scale


def test_full_window_equals_dense_with_larger_k(rng, make_qkv, relative_error):
    # k > N: slots beyond N stay empty
    q, k, v = make_qkv(rng, 9, 2, 3)
    got = zeta_attention(q, k, v, ZetaConfig(k=15, history_mean=False, score="softmax"))
    want = oracles.dense_attention(q, k, v, "softmax", "inclusive")
    assert relative_error(got, want) <= 1e-10


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("causal, chunk", [("inclusive", None), ("strict", 5), ("none", None)])
@pytest.mark.parametrize("k_top", [1, 4, 10])
@pytest.mark.parametrize("grid", [False, True])
def test_rerank_of_the_whole_pool_is_the_exact_topk(rng, score, causal, chunk, k_top, grid):
    n = 30
    if grid:  # many exactly tied distances
        q = rng.integers(-2, 3, size=(2, n, 3)).astype(np.float64)
        k = rng.integers(-2, 3, size=(2, n, 3)).astype(np.float64)
    else:
        q, k = rng.standard_normal((2, n, 3)), rng.standard_normal((2, n, 3))
    v = rng.standard_normal((2, n, 2))
    cfg = ZetaConfig(k=k_top, window=n, causal=causal, chunk_size=chunk, score=score)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    exact = oracles.exact_topk(q, k, k_top, score, causal, chunk_size=cfg.chunk_size_for(n))
    np.testing.assert_array_equal(np.sort(inter.candidates, -1), np.sort(exact, -1))
    assert oracles.recall_at_k(inter.candidates, exact) == 1.0


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("window", [None, 8])
def test_output_is_the_weighted_sum_of_the_selection(rng, make_qkv, brute_weights,
                                                     cumulative_means, score, causal, window):
    n = 19
    q, k, v = make_qkv(rng, n, 3, 5, lead=(2,))
    out, inter = run(q, k, v, k=3, window=window, causal=causal, chunk_size=4, score=score,
                     gamma=0.9)
    # the mean term: cumulative means over j <= i (all N for "none")
    np.testing.assert_allclose(inter.mean_k, cumulative_means(k, causal), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(inter.mean_v, cumulative_means(v, causal), rtol=1e-13, atol=1e-15)
    for b in range(2):
        o2, w2, wm2 = brute_weights(q[b], k[b], v[b], inter.candidates[b], score, 0.9,
                                    inter.mean_k[b], inter.mean_v[b])
        np.testing.assert_allclose(out[b], o2, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(inter.weights[b], w2, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(inter.mean_weight[b], wm2, rtol=1e-12, atol=1e-13)
    # normalised over the candidates and the mean term
    np.testing.assert_allclose(inter.weights.sum(-1) + inter.mean_weight, 1.0, rtol=1e-14)


@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_window_is_the_brute_force_window_of_the_codes(rng, make_qkv, brute_window, causal):
    n = 33
    q, k, v = make_qkv(rng, n, 2, 2, lead=(2,))
    _, inter = run(q, k, v, k=4, window=6, causal=causal, chunk_size=5, bits=3)  # coarse: ties
    for b in range(2):
        want = brute_window(inter.q_codes[b], inter.k_codes[b], inter.pool_len, 6)
        np.testing.assert_array_equal(inter.window_idx[b], want)


def test_strict_first_chunk_gets_the_mean_or_zeros(rng, make_qkv):
    q, k, v = make_qkv(rng, 12, 3, 2)
    out, inter = run(q, k, v, k=2, causal="strict", chunk_size=4)
    assert (inter.candidates[:4] == -1).all() and (inter.weights[:4] == 0).all()
    assert (inter.mean_weight[:4] == 1).all()
    np.testing.assert_allclose(out[:4], np.cumsum(v, 0)[:4] / np.arange(1, 5)[:, None],
                               rtol=1e-14)
    out, inter = run(q, k, v, k=2, causal="strict", chunk_size=4, history_mean=False)
    assert (out[:4] == 0).all() and (inter.mean_weight == 0).all()
    np.testing.assert_allclose(inter.weights[4:].sum(-1), 1.0, rtol=1e-14)


# ----------------------------------------------------------------------------- intermediates


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("history_mean", [True, False])
def test_intermediates_shapes_dtypes_and_stages(rng, make_qkv, dtype, window, history_mean):
    lead, n, d_k, d_v, k_top = (2, 3), 14, 3, 5, 4
    q, k, v = make_qkv(rng, n, d_k, d_v, lead=lead, dtype=dtype)
    cfg = ZetaConfig(k=k_top, window=window, history_mean=history_mean, bits=8, chunk_size=5)
    out, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    w = cfg.window_width
    assert isinstance(inter, Intermediates)
    assert inter.config == cfg and inter.backend == "numpy" and inter.chunk_size == 5
    expect = {
        "q_coords": (lead + (n, d_k), np.uint64), "k_coords": (lead + (n, d_k), np.uint64),
        "q_codes": (lead + (n,), np.uint64), "k_codes": (lead + (n,), np.uint64),
        "key_perm": (lead + (n,), np.int64), "sorted_key_codes": (lead + (n,), np.uint64),
        "pool_len": ((n,), np.int64), "insertion": (lead + (n,), np.int64),
        "window_idx": (lead + (n, w), np.int64), "candidates": (lead + (n, k_top), np.int64), "weights": (lead + (n, k_top), dtype),
        "mean_weight": (lead + (n,), dtype), "output": (lead + (n, d_v), dtype),
    }
    if history_mean:
        expect["mean_k"] = (lead + (n, d_k), dtype)
        expect["mean_v"] = (lead + (n, d_v), dtype)
    else:
        assert inter.mean_k is None and inter.mean_v is None
    arrays = inter.arrays()
    assert set(arrays) == set(expect)
    for name, (shape, dt) in expect.items():
        assert arrays[name].shape == shape, name
        assert arrays[name].dtype == dt, name
    assert out.dtype == dtype and np.array_equal(out, inter.output)
    # the stages, recomputed
    np.testing.assert_array_equal(inter.q_coords, quantize(q, 8))
    np.testing.assert_array_equal(inter.k_coords, quantize(k, 8))
    np.testing.assert_array_equal(inter.q_codes, morton_encode(inter.q_coords, 8))
    np.testing.assert_array_equal(inter.k_codes, morton_encode(inter.k_coords, 8))
    flat_codes = inter.k_codes.reshape(-1, n)
    for r, p in enumerate(inter.key_perm.reshape(-1, n)):
        assert p.tolist() == sorted(range(n), key=lambda j: (int(flat_codes[r, j]), j))
    np.testing.assert_array_equal(inter.sorted_key_codes,
                                  np.take_along_axis(inter.k_codes, inter.key_perm, -1))
    # p_i counts the keys j < L_i with a smaller code
    smaller = inter.k_codes[..., None, :] < inter.q_codes[..., :, None]  # (..., N, N)
    seen = np.arange(n)[None, :] < inter.pool_len[:, None]  # (N, N)
    np.testing.assert_array_equal(inter.insertion, (smaller & seen).sum(-1))
    if window is None:
        assert np.array_equal(inter.candidates, inter.window_idx)
    else:  # the candidates are a subset of the window
        for idx in np.ndindex(*lead, n):
            cand = set(inter.candidates[idx][inter.candidates[idx] >= 0].tolist())
            assert cand <= set(inter.window_idx[idx].tolist())
    assert (inter.weights[inter.candidates < 0] == 0).all()
    if not history_mean:
        assert (inter.mean_weight == 0).all()


def test_queries_use_the_key_pipeline(rng, make_qkv):
    # D12: a query equal to a key gets the key's coordinates and code
    q, k, v = make_qkv(rng, 10, 3, 2)
    _, inter = run(q, q.copy(), v, k=2)
    np.testing.assert_array_equal(inter.q_coords, inter.k_coords)
    np.testing.assert_array_equal(inter.q_codes, inter.k_codes)


@pytest.mark.parametrize("squash", ["sigmoid", "tanh", "clip"])
def test_float32_and_float64_select_the_same_keys(rng, make_qkv, squash):
    q, k, v = make_qkv(rng, 50, 3, 4, lead=(2,), dtype=np.float32)
    cfg = ZetaConfig(k=5, squash=squash, clip_range=(-3, 3))
    o32, i32 = zeta_attention(q, k, v, cfg, return_intermediates=True)
    o64, i64 = zeta_attention(*(x.astype(np.float64) for x in (q, k, v)), cfg,
                              return_intermediates=True)
    for name in ("q_coords", "k_coords", "q_codes", "k_codes", "key_perm", "window_idx",
                 "candidates"):
        np.testing.assert_array_equal(getattr(i32, name), getattr(i64, name), err_msg=name)
    assert o32.dtype == np.float32 and o64.dtype == np.float64
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-5)


def test_default_config(rng, make_qkv):
    q, k, v = make_qkv(rng, 100, 3, 8)
    out = zeta_attention(q, k, v)
    assert np.array_equal(out, zeta_attention(q, k, v, ZetaConfig()))
    assert np.array_equal(out, zeta_attention(q, k, v, ZetaConfig(), backend="numpy"))
    assert out.shape == (100, 8) and np.isfinite(out).all()


def test_inputs_are_not_modified(rng, make_qkv):
    q, k, v = make_qkv(rng, 20, 3, 3)
    copies = [x.copy() for x in (q, k, v)]
    zeta_attention(q, k, v, ZetaConfig(k=3, window=6))
    for x, c in zip((q, k, v), copies):
        assert np.array_equal(x, c)


# ----------------------------------------------------------------------------- awkward sizes


def check_invariants(q, k, v, cfg, out, inter, brute_window):
    n = q.shape[-2]
    assert out.dtype == q.dtype and out.shape == v.shape
    assert np.isfinite(out).all()
    pool_len = expected_pool_len(n, cfg.causal, cfg.chunk_size_for(n))
    np.testing.assert_array_equal(inter.pool_len, pool_len)
    cand = inter.candidates
    n_valid = (cand >= 0).sum(-1)
    np.testing.assert_array_equal(n_valid, np.broadcast_to(np.minimum(cfg.k, pool_len),
                                                           n_valid.shape))
    assert (cand < pool_len[:, None]).all()
    assert (inter.weights[cand < 0] == 0).all()
    has_any = (n_valid > 0) | cfg.history_mean
    total = inter.weights.astype(np.float64).sum(-1) + inter.mean_weight
    tol = 1e-5 if q.dtype == np.float32 else 1e-12
    assert (np.abs(total[has_any] - 1) <= tol).all()
    assert (total[~has_any] == 0).all()
    flat_q = inter.q_codes.reshape(-1, n)
    flat_k = inter.k_codes.reshape(-1, n)
    flat_w = inter.window_idx.reshape(-1, n, cfg.window_for(n))
    for r in range(min(flat_q.shape[0], 2)):
        np.testing.assert_array_equal(
            flat_w[r], brute_window(flat_q[r], flat_k[r], pool_len, cfg.window_for(n)))
        for row in cand.reshape(-1, n, cfg.k_for(n))[r]:  # no duplicates
            valid = row[row >= 0]
            assert len(set(valid.tolist())) == len(valid)


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.sampled_from([1, 2, 3, 17, 257]),
    d_k=st.sampled_from([1, 2, 3, 5]),
    d_v=st.sampled_from([1, 3, 5, 7]),
    k_top=st.integers(1, 40),
    extra=st.sampled_from([0, 0, 1, 7]),
    causal=st.sampled_from(["inclusive", "strict", "none"]),
    chunk=st.sampled_from([None, 1, 3, 16]),
    score=st.sampled_from(SCORES),
    history_mean=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    lead=st.sampled_from([(), (1,), (2,), (2, 1, 2)]),
    bits=st.integers(1, 12),
    seed=st.integers(0, 2 ** 32 - 1),
)
def test_awkward_sizes(brute_window, n, d_k, d_v, k_top, extra, causal, chunk, score,
                       history_mean, dtype, lead, bits, seed):
    if n == 257 and len(lead) > 1:
        lead = (2,)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    k = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    v = rng.standard_normal(lead + (n, d_v)).astype(dtype)
    cfg = ZetaConfig(k=k_top, window=k_top + extra, causal=causal, chunk_size=chunk,
                     score=score, history_mean=history_mean, bits=bits)
    out, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    check_invariants(q, k, v, cfg, out, inter, brute_window)
    # every leading slice is independent: running it alone gives the same bits
    if lead:
        for idx in list(np.ndindex(*lead))[:3]:
            alone = zeta_attention(q[idx], k[idx], v[idx], cfg)
            assert np.array_equal(alone, out[idx])
    # non-contiguous views give the same bits as contiguous copies
    qt = np.swapaxes(np.ascontiguousarray(np.swapaxes(q, -1, -2)), -1, -2)
    vs = np.repeat(v, 2, axis=-1)[..., ::2]  # strided view with v's values
    assert not qt.flags.c_contiguous or d_k == 1 or n == 1
    assert np.array_equal(zeta_attention(qt, k, vs, cfg), out)


def test_non_contiguous_inputs(rng, make_qkv):
    q, k, v = make_qkv(rng, 30, 3, 4, lead=(2,))
    cfg = ZetaConfig(k=4, window=8, causal="strict", chunk_size=5)
    want = zeta_attention(q, k, v, cfg)
    big = rng.standard_normal((2, 60, 7))
    big[:, ::2, 1:4] = k
    ks = big[:, ::2, 1:4]  # strided view
    assert not ks.flags.c_contiguous
    assert np.array_equal(zeta_attention(q, ks, v, cfg), want)
    qf = np.asfortranarray(q)
    vt = np.ascontiguousarray(v.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert np.array_equal(zeta_attention(qf, k, vt, cfg), want)
    # reversed view
    rev = k[:, ::-1][:, ::-1]
    assert np.array_equal(zeta_attention(q, rev, v, cfg), want)


def test_heads_are_independent(rng, make_qkv):
    q, k, v = make_qkv(rng, 40, 3, 6, lead=(3, 2))
    cfg = ZetaConfig(k=5, window=10, score="softmax")
    out = zeta_attention(q, k, v, cfg)
    for b in range(3):
        for h in range(2):
            assert np.array_equal(zeta_attention(q[b, h], k[b, h], v[b, h], cfg), out[b, h])
    # a change in one head leaves the others alone
    k2 = k.copy()
    k2[1, 0] += 1.0
    out2 = zeta_attention(q, k2, v, cfg)
    mask = np.ones((3, 2), bool)
    mask[1, 0] = False
    assert np.array_equal(out2[mask], out[mask])


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_tiny_sequences(rng, make_qkv, n, causal):
    q, k, v = make_qkv(rng, n, 3, 3)
    out, inter = run(q, k, v, k=5, causal=causal, chunk_size=1)
    assert out.shape == (n, 3) and np.isfinite(out).all()
    if causal == "inclusive":
        # everything visible fits in k slots: the selection is the whole prefix
        for i in range(n):
            assert sorted(inter.candidates[i][inter.candidates[i] >= 0]) == list(range(i + 1))


# ----------------------------------------------------------------------------- known limits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["q", "k"])
def test_inputs_too_large_for_the_scores_are_refused(make_qkv, dtype, name):
    # |x| ~ 1e19 (float32) or 1e154 (float64) would overflow the squared distances
    q, k, v = make_qkv(np.random.default_rng(0), 8, 3, 2, dtype=dtype)
    big = {"q": q, "k": k}[name]
    big[3, 1] = 10 * magnitude_limit(dtype, 3)
    with pytest.raises(ValueError, match=f"^{name} holds values up to"):
        zeta_attention(q, k, v, ZetaConfig(k=3))


@pytest.mark.parametrize("huge", [dict(k=4, window=2**26), dict(k=2**25),
                                  dict(k=2**62, window=2**63 - 1, chunk_size=2**63 - 1),
                                  dict(k=3, chunk_size=2**40, causal="strict")])
def test_k_and_window_beyond_n_are_capped_at_n(make_qkv, huge):
    """k, W > N only add slots that are always empty: they act as N, in N-sized memory."""
    import tracemalloc

    n = 6
    q, k, v = make_qkv(np.random.default_rng(3), n, 3, 5)
    cfg = ZetaConfig(**huge)
    capped = ZetaConfig(**{**huge, "k": min(cfg.k, n), "window": min(cfg.window_width, n),
                           **({"chunk_size": n} if cfg.chunk_size else {})})
    for name in backends():
        want_out, want = zeta_attention(q, k, v, capped, backend=name, return_intermediates=True)
        tracemalloc.start()  # after the first call: loading compiled kernels allocates too
        out, im = zeta_attention(q, k, v, cfg, backend=name, return_intermediates=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20, (name, peak)
        assert im.candidates.shape == (n, min(cfg.k, n))
        assert im.window_idx.shape == (n, min(cfg.window_width, n))
        np.testing.assert_array_equal(im.candidates, want.candidates)
        np.testing.assert_array_equal(out, want_out)


@pytest.mark.parametrize("dtype, n", [(np.float32, 8), (np.float64, 8), (np.float64, 5000)])
def test_values_too_large_for_the_output_or_the_means_are_refused(make_qkv, dtype, n):
    q, k, v = make_qkv(np.random.default_rng(0), n, 3, 2, dtype=dtype)
    lim = value_limit(dtype, n)
    v[3, 1] = dtype(-1.01 * lim) if dtype == np.float32 else -1.01 * lim
    with pytest.raises(ValueError, match=r"^v holds values up to .* over N = "):
        zeta_attention(q, k, v, ZetaConfig(k=3))
    if dtype == np.float64:  # the case: a finite float64 v near 1e308
        v[3, 1] = 1e308
        with pytest.raises(ValueError, match=r"^v holds values"):
            zeta_attention(q, k, v, ZetaConfig(k=3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("history_mean", [True, False])
def test_values_at_the_limit_give_finite_outputs_on_every_backend(make_qkv, dtype, history_mean):
    n = 300
    q, k, _ = make_qkv(np.random.default_rng(1), n, 3, 2, dtype=dtype)
    lim = np.nextafter(dtype(value_limit(dtype, n)), dtype(0))
    v = np.where(np.random.default_rng(2).random((n, 4)) < 0.5, -lim, lim).astype(dtype)
    cfg = ZetaConfig(k=8, history_mean=history_mean)
    for name in backends():
        out, im = zeta_attention(q, k, v, cfg, backend=name, return_intermediates=True)
        assert np.isfinite(out).all(), name
        if history_mean:
            assert np.isfinite(im.mean_v).all(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("score", ["cauchy", "softmax", "neg_euclidean", "inv_euclidean"])
def test_inputs_just_inside_the_limit_give_a_normalised_answer(dtype, score):
    # the farthest pairs allowed: every coordinate at +limit or -limit
    lim = np.nextafter(dtype(magnitude_limit(dtype, 3)), dtype(0))
    signs = np.array([[1, 1, 1], [-1, -1, -1], [1, -1, 1], [-1, 1, -1], [1, 1, -1]], dtype)
    q, k = signs * lim, signs[::-1].copy() * lim
    v = np.arange(15, dtype=dtype).reshape(5, 3)
    cfg = ZetaConfig(k=3, score=score, history_mean=False, gamma=1.0)
    out, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    assert np.isfinite(out).all() and np.isfinite(inter.weights).all()
    np.testing.assert_allclose(inter.weights.astype(np.float64).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype, gamma", [(np.float32, 1e-20), (np.float64, 1e-170),
                                          (np.float32, 1e20), (np.float64, 1e160)])
def test_gamma_outside_the_dtype_range_is_refused(make_qkv, dtype, gamma):
    # 1 / gamma^2 overflows (tiny gamma; NaN with a key on the query) or gamma^2 does (huge)
    q, _, v = make_qkv(np.random.default_rng(0), 5, 3, 2, dtype=dtype)
    with pytest.raises(ValueError, match="^gamma must lie in"):
        zeta_attention(q, q.copy(), v, ZetaConfig(k=2, gamma=gamma))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_allowed_gamma_with_exact_match_is_finite(make_qkv, dtype):
    q, _, v = make_qkv(np.random.default_rng(0), 5, 3, 2, dtype=dtype)
    cfg = ZetaConfig(k=2)
    low = float(np.sqrt((cfg.k + 2) / np.finfo(dtype).max)) * 1.01
    out, inter = zeta_attention(q, q.copy(), v, ZetaConfig(k=2, gamma=low),
                                return_intermediates=True)
    assert np.isfinite(out).all()
    total = inter.weights.astype(np.float64).sum(-1) + inter.mean_weight
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [255, 1000])
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_awkward_longer_sequences(n, causal):
    # the awkward sizes beyond hypothesis's: one below a power of two, and about a thousand
    rng = np.random.default_rng(n)
    q, k = rng.standard_normal((2, n, 3))
    v = rng.standard_normal((n, 5))
    m = 37
    # (a) k and W cover every pool: dense attention exactly
    full = ZetaConfig(k=n, window=n, causal=causal, chunk_size=m, history_mean=False)
    want = oracles.dense_attention(q, k, v, "cauchy", causal, chunk_size=m)
    got = zeta_attention(q, k, v, full)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # (b) a window over the whole pool re-ranked to k: the exact top-k
    cfg = ZetaConfig(k=16, window=n, causal=causal, chunk_size=m)
    _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
    exact = oracles.exact_topk(q, k, 16, "cauchy", causal, chunk_size=m)
    np.testing.assert_array_equal(np.sort(im.candidates, -1), np.sort(exact, -1))
    # (c) the default window: the past does not move when the future changes
    cfg = ZetaConfig(k=16, causal=causal, chunk_size=m)
    out = zeta_attention(q, k, v, cfg)
    t = n // 2
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    q2[t + 1:], k2[t + 1:], v2[t + 1:] = q[:t:-1], k[:t:-1], v[:t:-1]
    out2 = zeta_attention(q2, k2, v2, cfg)
    if causal != "none":
        assert np.array_equal(out[:t + 1], out2[:t + 1])
    # (d) the Numba twin agrees
    if "numba" in backends():
        assert_close(zeta_attention(q, k, v, cfg, backend="numba"), out)
