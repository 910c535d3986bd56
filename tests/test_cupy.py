"""The CuPy backend against the NumPy specification, on a GPU (issue 10).

Every test here carries the ``gpu`` marker and is skipped cleanly where CuPy or a GPU is
missing (CI has neither). On the device machine: ``PYTHONPATH=$PWD python3 -m pytest -m gpu``.
Without a GPU they run on the CPU's emulation of the kernels, tests/cuda_host (CI does so in
tests/test_cuda_host.py), except those marked ``gpu_only``.

- each stage twin on the specification's own inputs, for hypothesis-drawn shapes and configs
  (every causal mode and score, the mean term on and off, W > k, awkward N, both dtypes);
- end to end, stage by stage: integer intermediates bit-identical (D13 makes the squash exact),
  floats within zeta_ref.tolerances;
- the fused fast pass: the same candidates as the stage path, bit for bit, and the same output
  within tolerance;
- no causal leak; poisoned output buffers change nothing; two runs are bit-identical;
- CuPy in, CuPy out on the same device; NumPy in, NumPy out.
"""

from __future__ import annotations

import numpy as np
import pytest

import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
if "cupy" not in zeta_ref.backends():
    pytest.skip("no usable GPU for CuPy here", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zeta_ref.cupy import _runtime as rt  # noqa: E402
from zeta_ref.cupy import fused, topk_softmax  # noqa: E402
from zeta_ref.tolerances import assert_close  # noqa: E402

INTEGER_FIELDS = ("q_coords", "k_coords", "q_codes", "k_codes", "key_perm", "sorted_key_codes",
                  "pool_len", "insertion", "window_idx", "candidates")
FLOAT_FIELDS = ("mean_k", "mean_v", "weights", "mean_weight", "output")


def _inputs(seed, lead, n, d_k, d_v, dtype, coarse=False, v_scale=1.0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + (n, d_k))
    k = rng.standard_normal(lead + (n, d_k))
    if coarse:  # many equal codes and equal distances
        q, k = np.round(q * 2) / 2, np.round(k * 2) / 2
    v = rng.standard_normal(lead + (n, d_v)) * v_scale
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _compare(got, want, name):
    got = cp.asnumpy(got) if isinstance(got, cp.ndarray) else got
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        assert_close(got, want, err_msg=name)


@st.composite
def cases(draw):
    n = draw(st.sampled_from((1, 2, 3, 17, 64, 255, 257, 1000)))
    lead = draw(st.sampled_from(((), (1,), (2,), (2, 3))))
    d_k = draw(st.sampled_from((3, 3, 1, 2, 5)))
    d_v = draw(st.sampled_from((1, 3, 4, 8, 64, 68)))
    k = draw(st.integers(1, 12))
    cfg = ZetaConfig(
        k=k,
        bits=draw(st.one_of(st.integers(1, 12), st.just(63 // d_k))),
        chunk_size=draw(st.one_of(st.none(), st.integers(1, max(1, n + 3)))),
        causal=draw(st.sampled_from(("inclusive", "strict", "none"))),
        window=draw(st.one_of(st.none(), st.integers(k, k + 40))),
        score=draw(st.sampled_from(("cauchy", "softmax", "neg_euclidean", "inv_euclidean"))),
        gamma=draw(st.sampled_from((0.5, 0.1, 2.0))),
        history_mean=draw(st.booleans()),
        squash=draw(st.sampled_from(("sigmoid", "tanh", "clip"))),
    )
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    inputs = _inputs(draw(st.integers(0, 2**32 - 1)), lead, n, d_k, d_v, dtype,
                     coarse=draw(st.booleans()), v_scale=draw(st.sampled_from((1.0, 1e3))))
    return (cfg,) + inputs


def _stage_by_stage(im, q, k, v, cfg):
    """Every CuPy stage on the specification's own intermediates."""
    s = zeta_ref.get_backend("cupy").stages()
    n = q.shape[-2]
    _compare(s.quantize(q, cfg.bits, cfg.squash, cfg.clip_range), im.q_coords, "q_coords")
    _compare(s.quantize(k, cfg.bits, cfg.squash, cfg.clip_range), im.k_coords, "k_coords")
    _compare(s.morton_encode(im.q_coords, cfg.bits), im.q_codes, "q_codes")
    perm, sorted_codes = s.sort_keys(im.k_codes)
    _compare(perm, im.key_perm, "key_perm")
    _compare(sorted_codes, im.sorted_key_codes, "sorted_key_codes")
    _compare(s.insertion_points(im.q_codes, im.key_perm, im.sorted_key_codes, im.pool_len),
             im.insertion, "insertion")
    shuffled = np.argsort(np.random.default_rng(0).random(im.q_codes.shape), axis=-1)
    for order in (None, shuffled):
        _compare(s.neighbour_window(im.q_codes, im.key_perm, im.sorted_key_codes, im.pool_len,
                                    im.window_idx.shape[-1], order=order),
                 im.window_idx, "window_idx")
    if cfg.window_for(n) > cfg.k_for(n):
        _compare(s.rerank(q, k, im.window_idx, cfg.k_for(n), cfg.score), im.candidates,
                 "candidates")
    if cfg.history_mean:
        mean_k, mean_v = s.history_means(k, v, cfg.causal)
        _compare(mean_k, im.mean_k, "mean_k")
        _compare(mean_v, im.mean_v, "mean_v")
    fast_ok = (v.dtype == np.float32 and v.shape[-1] % 4 == 0
               and v.shape[-1] <= topk_softmax.FAST_MAX_DV
               and im.candidates.shape[-1] + 1 <= topk_softmax.FAST_MAX_SLOTS)
    kernels = ("plain", "fast") if fast_ok else ("plain",)
    for kernel in kernels:
        for order in (None, shuffled):
            out, w, w_mean = s.topk_attention(q, k, v, im.candidates, cfg.score, cfg.gamma,
                                              im.mean_k, im.mean_v, order=order, kernel=kernel)
            _compare(out, im.output, f"output ({kernel})")
            _compare(w, im.weights, f"weights ({kernel})")
            _compare(w_mean, im.mean_weight, f"mean_weight ({kernel})")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_cupy_matches_numpy(case):
    cfg, q, k, v = case
    _, im_np = zeta_attention(q, k, v, cfg, backend="numpy", return_intermediates=True)
    out_cp, im_cp = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    assert isinstance(out_cp, np.ndarray)  # NumPy in, NumPy out
    for name in INTEGER_FIELDS + FLOAT_FIELDS:
        want, got = getattr(im_np, name), getattr(im_cp, name)
        if want is None:
            assert got is None, name
        else:
            _compare(got, want, name)
    _stage_by_stage(im_np, q, k, v, cfg)
    # the fused pass: the same candidates, bit for bit, and the same output
    fast = zeta_attention(q, k, v, cfg, backend="cupy")
    assert_close(fast, im_np.output, err_msg="fused output")
    out_f, cand_f = fused.forward(*(cp.asarray(x) for x in (q, k, v)), cfg,
                                  return_candidates=True)
    np.testing.assert_array_equal(cp.asnumpy(cand_f), im_np.candidates)
    assert_close(cp.asnumpy(out_f), im_np.output, err_msg="fused.forward output")


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
@pytest.mark.parametrize("window", (None, 48))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_long_rows_exact_and_fused(causal, window, dtype):
    """Longer rows than hypothesis draws: several prefix-pool levels (N > 4 * MIN_LEVEL)."""
    q, k, v = _inputs(11, (2, 3), 3000, 3, 64, dtype)
    cfg = ZetaConfig(k=16, window=window, causal=causal)
    _, im_np = zeta_attention(q, k, v, cfg, return_intermediates=True)
    _, im_cp = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    for name in INTEGER_FIELDS:
        _compare(getattr(im_cp, name), getattr(im_np, name), name)
    _, cand = fused.forward(*(cp.asarray(x) for x in (q, k, v)), cfg, return_candidates=True)
    np.testing.assert_array_equal(cp.asnumpy(cand), im_np.candidates)
    assert_close(zeta_attention(q, k, v, cfg, backend="cupy"), im_np.output)


@pytest.mark.parametrize("lanes, wide", [(0, False), (8, False), (8, True), (16, False),
                                         (16, True), (32, False), (32, True)])
@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_every_window_kernel_gives_the_specification_candidates(monkeypatch, lanes, wide,
                                                                causal):
    """The fused pass's window without a re-rank, one thread a query (0) or a group of 8, 16
    or 32, the groups' walks counting in int (as for every N up to fused.WINDOW_INT_MAX_N) or
    in long long (wide): the candidates of the specification, bit for bit, at N = 1, 2, 33
    (k >= N), 700 (ties) and 3000 (several pool levels), k = 1, 2, 7 and 32 (odd halves, D11
    at the pool's ends)."""
    monkeypatch.setattr(fused, "WINDOW_LANES", lanes)
    monkeypatch.setattr(fused, "WINDOW_INT", not wide)
    for n, k_top in ((1, 32), (2, 1), (33, 32), (700, 7), (700, 2), (3000, 32), (3000, 1)):
        q, k, v = _inputs(31 + n, (2,), n, 3, 8, np.float32, coarse=n == 700)  # ties at 700
        cfg = ZetaConfig(k=k_top, causal=causal, chunk_size=max(1, n // 5))
        _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
        _, cand = fused.forward(*(cp.asarray(x) for x in (q, k, v)), cfg, return_candidates=True)
        np.testing.assert_array_equal(cp.asnumpy(cand), im.candidates, err_msg=f"N={n} k={k_top}")


@pytest.mark.gpu_only  # 65537 rows
def test_more_rows_than_a_grid_has_y(monkeypatch):
    """The prefix pools' kernels take a row per y of their grid, and a grid's y is at most
    65535: with 65537 rows (N = 300: one pool below the top) the blocks of y = 0 and 1 take a
    second row. Each row's candidates are those of the row passed alone, bit for bit, and so
    (within the tolerances) its output; rows 0, 1 and the last three; buffers poisoned."""
    rows, n = fused.MAX_GRID_Y + 2, 300
    rng = np.random.default_rng(5)
    q, k = (cp.asarray(rng.standard_normal((rows, n, 3), dtype=np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((rows, n, 4), dtype=np.float32))
    cfg = ZetaConfig(k=4)
    assert fused.packing(rows, n, 3 * cfg.bits)[1] and fused.level_count(n) == 1  # fused, pools
    monkeypatch.setattr(rt, "empty", _poisoned_empty(rt.empty))
    out, cand = fused.forward(q, k, v, cfg, return_candidates=True)
    for r in (0, 1, rows - 3, rows - 2, rows - 1):
        one = slice(r, r + 1)
        out_r, cand_r = fused.forward(q[one], k[one], v[one], cfg, return_candidates=True)
        np.testing.assert_array_equal(cp.asnumpy(cand[one]), cp.asnumpy(cand_r), err_msg=f"{r}")
        assert_close(cp.asnumpy(out[one]), cp.asnumpy(out_r), err_msg=f"row {r}")


def test_rows_too_long_or_too_wide_are_refused_on_every_path(monkeypatch):
    """The kernels keep positions in int32 candidates and row widths in 32-bit ints: N past
    window.MAX_N (2^31 - 1) and d_k + d_v past rt.MAX_WIDTH are refused with an error naming
    them by the fused pass as by the stage path and the backward (until 2026-12-05 the fused
    pass took N > 2^31 and dropped the keys past 2^31 as empty slots: an overflow audit's
    find). The limits are lowered here to reach them."""
    from zeta_ref.backward import zeta_attention_backward
    from zeta_ref.cupy import window as cupy_window

    rng = np.random.default_rng(9)
    q, k = (cp.asarray(rng.standard_normal((2, 301, 3))) for _ in range(2))
    v, g = (cp.asarray(rng.standard_normal((2, 301, 8))) for _ in range(2))
    monkeypatch.setattr(cupy_window, "MAX_N", 300)
    for intermediates in (False, True):
        with pytest.raises(ValueError, match=r"2\^31 - 1 positions; got N = 301"):
            zeta_attention(q, k, v, backend="cupy", return_intermediates=intermediates)
    monkeypatch.setattr(cupy_window, "MAX_N", (1 << 31) - 1)
    monkeypatch.setattr(rt, "MAX_WIDTH", 10)
    words = r"got d_v = 8 \(v's last dimension\) with d_k = 3"
    for intermediates in (False, True):
        with pytest.raises(ValueError, match=words):
            zeta_attention(q, k, v, backend="cupy", return_intermediates=intermediates)
    with pytest.raises(ValueError, match=words):
        zeta_attention_backward(q, k, v, g, backend="cupy")
    with pytest.raises(ValueError, match=words):
        topk_softmax.history_means(k, v, "inclusive")
    # the stage functions' own checks, which the composers' forward passes come before
    from zeta_ref.cupy import backward as cupy_backward

    cand = cp.zeros((2, 301, 4), dtype=cp.int64)
    with pytest.raises(ValueError, match=words):
        topk_softmax.topk_attention(q, k, v, cand)
    with pytest.raises(ValueError, match=words):
        cupy_backward.topk_attention_backward(q, k, v, cand, "cauchy", 0.5, None, None, g)
    with pytest.raises(ValueError, match=words):
        cupy_backward.history_means_backward(k, v, "inclusive")


@pytest.mark.parametrize("k_top, window, d_v", [(150, None, 64), (127, 300, 64), (40, 90, 260),
                                                 (20, 20, 6)])
def test_wide_selections_and_odd_widths(k_top, window, d_v):
    """k + 1 beyond the fast kernel's 128 slots, W > k with a large heap, d_v beyond 256 or not
    a multiple of 4: the plain attention kernel takes over, with the same results."""
    q, k, v = _inputs(12, (2,), 1500, 3, d_v, np.float32)
    cfg = ZetaConfig(k=k_top, window=window)
    _, im_np = zeta_attention(q, k, v, cfg, return_intermediates=True)
    out, cand = fused.forward(*(cp.asarray(x) for x in (q, k, v)), cfg, return_candidates=True)
    np.testing.assert_array_equal(cp.asnumpy(cand), im_np.candidates)
    assert_close(cp.asnumpy(out), im_np.output)


@pytest.mark.parametrize("d_v", (4, 64, 100, 128, 192, 256))
@pytest.mark.parametrize("k_top", (15, 20, 32, 50, 127))
def test_fast_kernel_every_instance(d_v, k_top):
    """Every template instance of the fast attention kernel (1, 2, 3, 4 or 8 slots per lane;
    1, 2 or 4 stripes of 64 columns, the last one partial or not) with empty slots (strict
    causality: query 0 sees no key, the first k queries fewer than k), for int64 and int32
    candidates, against the specification."""
    q, k, v = _inputs(21, (2,), 300, 3, d_v, np.float32)
    cfg = ZetaConfig(k=k_top, causal="strict")
    _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
    assert (im.candidates == -1).any()
    s = zeta_ref.get_backend("cupy").stages()
    for cand in (im.candidates, im.candidates.astype(np.int32)):
        out, w, w_mean = s.topk_attention(q, k, v, cand, cfg.score, cfg.gamma, im.mean_k,
                                          im.mean_v, kernel="fast")
        _compare(out, im.output, "output")
        _compare(w, im.weights, "weights")
        _compare(w_mean, im.mean_weight, "mean_weight")


def _fused_configs(history_mean):
    """Configurations of the fused call: the default (W = k), W > k (the re-rank), and codes
    too wide to pack (63 bits: fused._by_stages), with the mean term on or off."""
    return (ZetaConfig(history_mean=history_mean),
            ZetaConfig(k=16, window=48, history_mean=history_mean),
            ZetaConfig(bits=21, history_mean=history_mean))


def _too_large(name, dtype, n, d):
    """-2 times the largest magnitude the checks allow in q or k (width d) or v (N = n)."""
    from zeta_ref._checks import magnitude_limit, value_limit

    return -2 * (value_limit(dtype, n) if name == "v" else magnitude_limit(dtype, d))


@pytest.mark.parametrize("bad", ("nan", "inf", "-inf", "too large"))
@pytest.mark.parametrize("name", ("q", "k", "v"))
@pytest.mark.parametrize("history_mean", (True, False))
def test_fused_pass_refuses_bad_values_as_the_specification_does(bad, name, history_mean):
    """The fused pass checks the values of q, k and v after queuing its kernels: the same
    error, word for word, as the specification's check before any work, naming the array. A
    NaN, an inf or a too large value in each of q, k and v, at the first element, in the
    second row, and at the very last element; host and device inputs; W = k, W > k and codes
    too wide to pack; the mean term on and off."""
    n, d_v = 500, 32
    clean = dict(zip("qkv", _inputs(6, (2,), n, 3, d_v, np.float32)))
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf,
             "too large": _too_large(name, np.float32, n, 3)}[bad]
    words = "contains NaN or Inf" if bad != "too large" else "holds values up to"
    assert not fused.packing(2, n, 63)[1]  # bits=21 takes the stage functions
    for where in ((0, 0, 0), (1, 17, 1), (1, n - 1, clean[name].shape[-1] - 1)):
        x = {key: a.copy() for key, a in clean.items()}
        x[name][where] = value
        with pytest.raises(ValueError, match=f"^{name} {words}") as want:
            zeta_attention(x["q"], x["k"], x["v"], backend="numpy")
        for on_gpu in (False, True):
            inputs = [cp.asarray(x[key]) if on_gpu else x[key] for key in "qkv"]
            for cfg in _fused_configs(history_mean):
                with pytest.raises(ValueError) as got:
                    zeta_attention(*inputs, cfg, backend="cupy")
                assert str(got.value) == str(want.value), (where, on_gpu, cfg)
    if name == "v":  # v's check comes from the mean term's kernels: each of their forms
        for d_v, dtype in ((7, np.float32), (6, np.float64), (64, np.float64)):
            x = dict(zip("qkv", _inputs(8, (2,), n, 3, d_v, dtype)))
            x["v"][1, n // 2, d_v - 1] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf,
                                          "too large": _too_large("v", dtype, n, 3)}[bad]
            with pytest.raises(ValueError, match=f"^v {words}") as want:
                zeta_attention(x["q"], x["k"], x["v"], backend="numpy")
            with pytest.raises(ValueError) as got:
                zeta_attention(*(cp.asarray(x[key]) for key in "qkv"),
                               ZetaConfig(history_mean=history_mean), backend="cupy")
            assert str(got.value) == str(want.value), (d_v, dtype)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("history_mean", (True, False))
def test_fused_pass_finds_the_checks_maxima_exactly(dtype, history_mean):
    """The maxima the fused pass gives the call's checks (max |v| from the mean term's first
    kernel, one atomic a warp) are max_abs's own, bit for bit, and leave the output as it
    was: d_v of 64 (16-byte groups) and 7 (one column a thread), the largest |v| at the
    first, a middle and the last element, and with codes too wide to pack."""
    for d_v, bits in ((64, 10), (7, 10), (64, 21)):
        q, k, v = (cp.asarray(x) for x in _inputs(3 + d_v, (2, 3), 777, 3, d_v, dtype))
        k[1, 0, 9, 2] = -1e5  # larger than any |v|: key columns must not count as values
        for where in ((0, 0, 0, 0), (1, 1, 400, 3), (1, 2, 776, d_v - 1)):
            v[where] = 1e4 + where[2]
            cfg = ZetaConfig(k=8, bits=bits, history_mean=history_mean)
            largest = cp.zeros(3, dtype=np.uint64)
            out = fused.forward(q, k, v, cfg, largest=largest)
            want = rt.max_abs_all([(x, None) for x in (q, k, v)]).view(np.uint64)
            np.testing.assert_array_equal(cp.asnumpy(largest), cp.asnumpy(want),
                                          err_msg=f"d_v={d_v} bits={bits} {where}")
            np.testing.assert_array_equal(cp.asnumpy(out),
                                          cp.asnumpy(fused.forward(q, k, v, cfg)))


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_the_mean_term_beside_the_other_stages_gives_the_same_bits(monkeypatch, causal):
    """fused.MEANS_STREAM_MIN: the mean term on a second stream beside the sort, the pools and
    the window, the attention waiting for it, gives the one-stream pass's output bit for bit,
    call after call, and the same max |q|, |k|, |v| for the checks (the backend's new arrays
    are poisoned in the tests, so an attention that read means not yet written would differ);
    the current stream's later work sees the means done, and a pass with `marks` runs on one
    stream."""
    q, k, v = (cp.asarray(x) for x in _inputs(21, (4, 3), 3000, 3, 64, np.float32))
    cfg = ZetaConfig(k=16, causal=causal, chunk_size=100)
    monkeypatch.setattr(fused, "MEANS_STREAM_MIN", 1 << 62)  # never
    want_largest = cp.zeros(3, np.uint64)
    want = cp.asnumpy(fused.forward(q, k, v, cfg, largest=want_largest))
    monkeypatch.setattr(fused, "MEANS_STREAM_MIN", 0)  # always
    for _ in range(3):
        largest = cp.zeros(3, np.uint64)
        got = fused.forward(q, k, v, cfg, largest=largest)
        np.testing.assert_array_equal(cp.asnumpy(got), want)
        np.testing.assert_array_equal(cp.asnumpy(largest), cp.asnumpy(want_largest))
    marks = []
    np.testing.assert_array_equal(cp.asnumpy(fused.forward(q, k, v, cfg, marks=marks)), want)
    assert len(marks) == len(fused.STAGE_NAMES) + 1


@pytest.mark.parametrize("failing, waits", (("history_means", False), ("prefix_levels", True)))
def test_an_error_beside_the_other_stages_leaves_the_current_stream_waiting(
        monkeypatch, failing, waits):
    """If the pass fails after work was queued on the second stream (the mean term, which
    also writes the caller's max |v|; here: the pools fail after the sort), the current
    stream waits for the second before the error leaves: the caller's array of maxima, and
    the mean term's arrays, must not be handed out again while a kernel of the second stream
    may still write them. If it fails before (the mean term's allocation), nothing is waited
    for."""
    q, k, v = (cp.asarray(x) for x in _inputs(22, (2,), 500, 3, 16, np.float32))
    monkeypatch.setattr(fused, "MEANS_STREAM_MIN", 0)
    side = fused.rt.side_stream()
    recorded = []
    event_now = fused.rt.event_now

    def spy(stream=None):
        recorded.append(stream)
        return event_now(stream)

    def fail(*args, **kwargs):
        raise MemoryError("out of device memory (a test)")

    monkeypatch.setattr(fused.rt, "event_now", spy)
    monkeypatch.setattr(fused, failing, fail)
    with pytest.raises(MemoryError, match="a test"):
        fused.forward(q, k, v, ZetaConfig(k=8), largest=cp.zeros(3, np.uint64))
    # the fork after q, k and v (which the second stream waits for), then the second
    # stream's tail at the end (which the current one waits for, in the mean term's join)
    assert recorded == ([None, side] if waits else [])


def test_cupy_in_gives_cupy_out_on_the_same_device():
    q, k, v = (cp.asarray(x) for x in _inputs(3, (2,), 300, 3, 16, np.float32))
    out = zeta_attention(q, k, v, backend="cupy")
    assert isinstance(out, cp.ndarray) and out.device == q.device
    out2, im = zeta_attention(q, k, v, backend="cupy", return_intermediates=True)
    assert all(isinstance(a, cp.ndarray) for a in im.arrays().values())
    assert_close(cp.asnumpy(out), cp.asnumpy(out2))


@pytest.mark.parametrize("causal", ("inclusive", "strict"))
@pytest.mark.parametrize("intermediates", (False, True))
def test_no_causal_leak(causal, intermediates):
    q, k, v = _inputs(5, (2,), 2000, 3, 32, np.float32)
    cfg = ZetaConfig(k=16, window=40, causal=causal, chunk_size=100)
    t = 1234
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    rng = np.random.default_rng(9)
    for x in (q2, k2, v2):
        x[:, t + 1:] = rng.standard_normal(x[:, t + 1:].shape) * 3
    run = (lambda *a: zeta_attention(*a, cfg, backend="cupy", return_intermediates=True)[0]) \
        if intermediates else (lambda *a: zeta_attention(*a, cfg, backend="cupy"))
    np.testing.assert_array_equal(run(q, k, v)[:, :t + 1], run(q2, k2, v2)[:, :t + 1])


def _poisoned_empty(real):
    def empty(shape, dtype):
        a = real(shape, dtype)
        if np.dtype(dtype).kind == "f":
            a.fill(np.nan)
        else:
            a.view(np.uint8).fill(0xFF)  # all bits set
        return a
    return empty


@pytest.mark.parametrize("cfg", [ZetaConfig(k=8), ZetaConfig(k=8, window=30, causal="strict"),
                                 ZetaConfig(k=5, score="softmax", history_mean=False,
                                            causal="none")])
def test_poisoned_buffers_change_nothing(monkeypatch, cfg):
    q, k, v = _inputs(8, (3,), 777, 3, 36, np.float32)
    clean_out, clean = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    clean_fast = zeta_attention(q, k, v, cfg, backend="cupy")
    monkeypatch.setattr(rt, "empty", _poisoned_empty(rt.empty))
    out, im = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    for name, a in clean.arrays().items():
        np.testing.assert_array_equal(getattr(im, name), a, err_msg=name)
    np.testing.assert_array_equal(zeta_attention(q, k, v, cfg, backend="cupy"), clean_fast)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_two_runs_are_bit_identical(dtype):
    q, k, v = _inputs(4, (2, 4), 5000, 3, 64, dtype)
    cfg = ZetaConfig(k=32, window=64)
    a = zeta_attention(q, k, v, cfg, backend="cupy")
    b = zeta_attention(q, k, v, cfg, backend="cupy")
    np.testing.assert_array_equal(a, b)
    _, ia = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    _, ib = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    for name, x in ia.arrays().items():
        np.testing.assert_array_equal(getattr(ib, name), x, err_msg=name)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_mean_term_wide_and_narrow_kernels_agree_bit_for_bit(monkeypatch, dtype, causal):
    """The mean term's kernels carry 16 bytes of a value row a thread where the rows allow it
    (d_v a multiple of 4 floats or 2 doubles, v aligned), one column otherwise: the same sums
    in the same order, so the same bits; and the specification's means within tolerance. N = 1,
    a partial last block, several blocks, and 2^19 positions (2048 blocks: the block sums'
    scan reads them in several rounds); d_v odd, 4 and 64; v a view 4 bytes off alignment."""
    from zeta_ref.stages.topk_softmax import history_means as spec_means

    cases = [((2,), 1, 64), ((2, 3), 777, 64), ((1,), 5000, 4), ((3,), 300, 7),
             ((1,), 1 << 19, 4)]
    for lead, n, d_v in cases:
        _, k, v = _inputs(n + d_v, lead, n, 3, d_v, dtype)
        got = {}
        for wide in (True, False):
            monkeypatch.setattr(topk_softmax, "MEANS_WIDE", wide)
            got[wide] = [cp.asnumpy(x) for x in topk_softmax.history_means(k, v, causal)]
        for a, b in zip(got[True], got[False]):
            np.testing.assert_array_equal(a, b, err_msg=f"{lead} N={n} d_v={d_v}")
        want = spec_means(k, v, causal)
        for a, b, name in zip(got[True], want, ("mean_k", "mean_v")):
            assert_close(a, b, err_msg=f"{name} {lead} N={n} d_v={d_v}")
    # a view whose rows begin 4 bytes past a 16-byte boundary takes the one-column kernels
    _, k, v = _inputs(5, (2,), 500, 3, 65, dtype)
    v_dev = cp.asarray(v)[..., 1:]  # not contiguous: made so, aligned, by the launcher
    monkeypatch.setattr(topk_softmax, "MEANS_WIDE", True)
    got = topk_softmax.history_means(cp.asarray(k), v_dev, causal)
    want = spec_means(k, v[..., 1:], causal)
    assert_close(cp.asnumpy(got[1]), want[1], err_msg="mean_v of a view")
    flat = cp.asarray(v.reshape(-1))[1:1 + 2 * 500 * 64].reshape(2, 500, 64)  # 4 bytes off
    assert flat.data.ptr % 16 != 0 and flat.flags.c_contiguous
    got = topk_softmax.history_means(cp.asarray(k), flat, causal)
    assert_close(cp.asnumpy(got[1]), spec_means(k, cp.asnumpy(flat), causal)[1],
                 err_msg="mean_v of an unaligned contiguous view")


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_float_means_are_the_double_means_rounded(causal):
    """The float kernels sum in double exactly as the double ones (the same columns, positions
    and blocks, in the same order) and take each quotient from a reciprocal
    (topk_softmax.cu's Quotient<float>), which must be the correctly rounded double quotient:
    so the float means are the double kernels' means of the same values, rounded to float, bit
    for bit. Normal values, and columns of extremes: zeros, the smallest subnormal float,
    values near the largest float, and sums that cancel to zero and back; N = 1, a partial
    last block, several blocks; d_v = 64 (16 bytes a thread) and 7 (one column)."""
    rng = np.random.default_rng(11)
    tiny, big = np.float32(2.0 ** -149), np.float32(3.0e38)
    for lead, n, d_v in (((2,), 1, 64), ((2, 3), 777, 64), ((1,), 5000, 7), ((1,), 70000, 64)):
        k = rng.standard_normal(lead + (n, 3)).astype(np.float32)
        v = rng.standard_normal(lead + (n, d_v)).astype(np.float32)
        v[..., 0] = 0.0
        v[..., 1] = tiny * rng.integers(-3, 4, size=v.shape[:-1])
        v[..., 2] = big * np.where(rng.random(v.shape[:-1]) < 0.5, -1, 1)
        v[..., 3] = np.where(np.arange(n) % 2 == 0, 1.5, -1.5)  # the running sum 1.5, 0, ...
        k[..., 0] = rng.standard_normal(lead + (n,)).astype(np.float32) * 1e-30
        got = [cp.asnumpy(x) for x in topk_softmax.history_means(k, v, causal)]
        want = [cp.asnumpy(x) for x in topk_softmax.history_means(k.astype(np.float64),
                                                                   v.astype(np.float64), causal)]
        for a, b, name in zip(got, want, ("mean_k", "mean_v")):
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a.view(np.uint32), b.astype(np.float32).view(np.uint32),
                                          err_msg=f"{name} {lead} N={n} d_v={d_v}")


@pytest.mark.parametrize("causal", ("inclusive", "none"))
def test_subnormal_coordinates_give_the_specifications_integers(causal):
    """CuPy compiles every kernel with -ftz=true, which flushes subnormal floats to zero in
    float operations and conversions; NumPy keeps them. The integer stages must not see the
    difference: the cells of a clip squash whose range is within 1e-38 of 0 (where subnormal
    coordinates fall in different cells from 0 and from each other), and the re-rank of
    coordinates near 1e-20 (whose squared differences are subnormal floats), bit for bit as
    the specification's, on the stage path and the fused one."""
    rng = np.random.default_rng(5)
    lead, n = (2, 3), 700
    mant = rng.integers(-(2 ** 23) + 1, 2 ** 23, size=lead + (2 * n, 3)).astype(np.int64)
    sub = (np.abs(mant).astype(np.uint32).view(np.float32) * np.sign(mant)).astype(np.float32)
    q, k = sub[..., :n, :].copy(), sub[..., n:, :].copy()
    q[..., ::7, 0] = 0.0
    k[..., ::5, 1] = np.float32(2.0 ** -149)
    assert np.count_nonzero(np.abs(q) < np.float32(2.0 ** -126)) > 0.9 * q.size
    v = rng.standard_normal(lead + (n, 8)).astype(np.float32)
    q2, k2 = (rng.standard_normal(lead + (n, 3)) * 1e-20 for _ in range(2))
    cases = [(q, k, ZetaConfig(k=8, window=24, bits=10, squash="clip", causal=causal,
                               clip_range=(-1.2e-38, 1.2e-38))),
             (q2.astype(np.float32), k2.astype(np.float32),
              ZetaConfig(k=8, window=24, bits=10, squash="clip", causal=causal,
                         clip_range=(-4e-20, 4e-20)))]
    for qq, kk, cfg in cases:
        assert np.all(np.isfinite(qq)) and np.all(np.isfinite(kk))
        _, im_np = zeta_attention(qq, kk, v, cfg, return_intermediates=True)
        assert len(np.unique(im_np.q_coords)) > 100  # the cells tell the values apart
        _, im_cp = zeta_attention(qq, kk, v, cfg, backend="cupy", return_intermediates=True)
        for name in INTEGER_FIELDS:
            _compare(getattr(im_cp, name), getattr(im_np, name), name)
        _, cand = fused.forward(*(cp.asarray(x) for x in (qq, kk, v)), cfg,
                                return_candidates=True)
        np.testing.assert_array_equal(cp.asnumpy(cand), im_np.candidates)


def test_morton_codes_of_three_coordinates_at_every_width():
    """d_K = 3 interleaves in five shifts and masks (zeta_common.cuh's spread_by_three), other
    widths bit by bit: both the specification's codes, at every width 1 .. 21 bits, and at 21
    bits for every value a coordinate can take, in each of the three coordinates."""
    from zeta_ref.stages.morton import morton_encode as spec_morton

    s = zeta_ref.get_backend("cupy").stages()
    rng = np.random.default_rng(3)
    for bits in range(1, 22):
        u = rng.integers(0, 2 ** bits, size=(4, 1000, 3), dtype=np.uint64)
        u[0, :3] = [[0, 0, 0], [2 ** bits - 1] * 3, [2 ** bits - 1, 0, 1]]
        np.testing.assert_array_equal(cp.asnumpy(s.morton_encode(u, bits)),
                                      spec_morton(u, bits), err_msg=f"bits={bits}")
    every = np.arange(2 ** 21, dtype=np.uint64)
    u = np.stack([every, every[::-1], rng.permutation(every)], axis=-1)
    for j in range(3):
        v = np.roll(u, j, axis=-1)
        np.testing.assert_array_equal(cp.asnumpy(s.morton_encode(v, 21)), spec_morton(v, 21),
                                      err_msg=f"every value in coordinate {j}")
    for d in (2, 4):  # the loop's widths
        u = rng.integers(0, 2 ** (63 // d), size=(1000, d), dtype=np.uint64)
        np.testing.assert_array_equal(cp.asnumpy(s.morton_encode(u, 63 // d)),
                                      spec_morton(u, 63 // d), err_msg=f"d={d}")


@pytest.mark.parametrize("score", ("cauchy", "softmax", "neg_euclidean", "inv_euclidean"))
def test_attention_kernels_of_the_default_instance_agree_bit_for_bit(monkeypatch, score):
    """The default instance of the fast attention kernel (k + 1 in 33 .. 48 slots, d_v <= 64)
    has three forms that make the same additions in the same order: 16 threads a query, 8
    threads a query, and 8 compiled for d_k = 3 (its step 1 loads every slot's coordinates
    before scoring any). Their outputs, weights and mean weights must be the same bits, with
    empty slots (strict causality), the mean term on and off, d_v = 64 and 20, and the
    specification's within tolerance; d_k = 2 takes the general form."""
    s = zeta_ref.get_backend("cupy").stages()
    for d_k, d_v, history_mean in ((3, 64, True), (3, 20, False), (2, 64, True)):
        q, k, v = _inputs(7 + d_v + d_k, (2,), 700, d_k, d_v, np.float32)
        cfg = ZetaConfig(k=32, causal="strict", score=score, history_mean=history_mean)
        _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
        assert (im.candidates == -1).any()
        got = {}
        for narrow, dk in ((False, 3), (True, 0), (True, 3)):
            monkeypatch.setattr(topk_softmax, "NARROW", narrow)
            monkeypatch.setattr(topk_softmax, "NARROW_DK", dk)
            got[narrow, dk] = [cp.asnumpy(x) for x in s.topk_attention(
                q, k, v, im.candidates, cfg.score, cfg.gamma, im.mean_k, im.mean_v,
                kernel="fast")]
        case = f"d_k={d_k} d_v={d_v} mean={history_mean}"
        for form in ((True, 0), (True, 3)):
            for a, b, name in zip(got[form], got[False, 3], ("output", "weights", "mean")):
                np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32),
                                              err_msg=f"{name} {form} {case}")
        for x, name in zip(got[True, 3], ("output", "weights", "mean_weight")):
            _compare(x, getattr(im, name), f"{name} {case}")


@pytest.mark.parametrize("squash", ("sigmoid", "tanh"))
def test_float_guess_of_the_cell_is_never_wrong(squash):
    """float32 coordinates take a float guess of their cell (zeta_common.cuh, at up to 12
    bits) that must give the specification's cell, bit for bit: here coordinates placed on
    and just beside every cell boundary of several bit widths, where the guess must leave the
    choice to the double-precision squash, and 2^18 standard normal ones, through the
    stage twin and the fused pass's codes (as candidates)."""
    from zeta_ref.stages.quantize import quantize as spec_quantize

    rng = np.random.default_rng(7)
    for bits in (1, 2, 5, 10, 12, 13):
        edges = (np.arange(1, 1 << bits) / (1 << bits)).astype(np.float64)
        x = np.log(edges / (1 - edges))  # the sigmoid's boundaries
        if squash == "tanh":
            x = x / 2
        near = np.concatenate([x, np.nextafter(x.astype(np.float32), np.inf).astype(np.float64),
                               np.nextafter(x.astype(np.float32), -np.inf).astype(np.float64),
                               x + 1e-6, x - 1e-6, x + 1e-4, x - 1e-4])
        x32 = np.concatenate([near.astype(np.float32),
                              rng.standard_normal(1 << 18).astype(np.float32),
                              np.float32([0.0, -0.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0,
                                          1e30, -1e30])])
        got = cp.asnumpy(zeta_ref.get_backend("cupy").stages().quantize(x32, bits, squash))
        want = spec_quantize(x32, bits, squash)
        np.testing.assert_array_equal(got, want, err_msg=f"bits={bits}")
    # the fused pass's own codes, through its candidates, at 10 bits (the default)
    q, k, v = _inputs(9, (2,), 4000, 3, 8, np.float32)
    cfg = ZetaConfig(k=8, squash=squash)
    _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
    _, cand = fused.forward(*(cp.asarray(x) for x in (q, k, v)), cfg, return_candidates=True)
    np.testing.assert_array_equal(cp.asnumpy(cand), im.candidates)


_GUESS_CHECK = r"""
#include "zeta_common.cuh"
// Every float32 bit pattern: the guessed cell against the double path's, counted.
extern "C" __global__ void guess_mismatches(int method, double lo, double hi, double scale,
                                            unsigned long long top,
                                            unsigned long long* __restrict__ count) {
    unsigned long long wrong = 0;
    for (unsigned long long u = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         u < (1ULL << 32); u += (unsigned long long)gridDim.x * blockDim.x) {
        float x = __uint_as_float((unsigned)u);
        wrong += cell_of_input(x, method, lo, hi, scale, top) !=
                 cell_of((double)x, method, lo, hi, scale, top);
    }
    atomicAdd(count, wrong);
}
"""


@pytest.mark.gpu_only  # 2^32 values; and the host's expf is not the GPU's
def test_float_guess_of_the_cell_is_right_for_every_float32():
    """The float guess of zeta_common.cuh's cell_of_input, on every one of the 2^32 float32
    values (NaN, inf and subnormals among them), at every bit width it is used for (1 to 12)
    and both squashes it is used for: the double path's cell every time. (The margin rests on
    CUDA's documented expf error; this checks the GPU's own expf against it.)"""
    module = cp.RawModule(code=_GUESS_CHECK, options=rt.OPTIONS)
    fn = module.get_function("guess_mismatches")
    for method in (0, 1):  # sigmoid, tanh
        for bits in range(1, 13):
            count = cp.zeros(1, dtype=np.uint64)
            fn((132 * 16,), (256,), (np.int32(method), np.float64(-4.0), np.float64(4.0),
                                     np.float64(2.0 ** bits), np.uint64(2 ** bits - 1), count))
            assert int(count[0]) == 0, (method, bits, int(count[0]))


@pytest.mark.gpu_only  # 8 x 262144 queries
def test_fused_memory_is_linear_in_n():
    """The fused pass holds nothing of size N x N or N x W: its peak device memory, at two
    sizes, grows in proportion to N (within 10 %)."""
    pool = cp.get_default_memory_pool()
    peaks = []
    for n in (1 << 16, 1 << 18):
        q, k, v = (cp.asarray(x) for x in _inputs(2, (1, 8), n, 3, 64, np.float32))
        zeta_attention(q, k, v, ZetaConfig(k=32, window=128), backend="cupy")  # compile, warm
        del q, k, v
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        q, k, v = (cp.asarray(x) for x in _inputs(2, (1, 8), n, 3, 64, np.float32))
        base = pool.total_bytes()
        out = zeta_attention(q, k, v, ZetaConfig(k=32, window=128), backend="cupy")
        cp.cuda.Device().synchronize()
        peaks.append((pool.total_bytes() - base) / n)
        del q, k, v, out
        pool.free_all_blocks()
    assert peaks[1] <= 1.1 * peaks[0], peaks


@pytest.mark.parametrize("shape, code_bits", [
    ((4, 1000), 30),      # row, code and position packed: one radix sort
    ((2, 3, 300), 55),    # (row, code) packed, the position left to the stable argsort
    ((1024, 128), 56),    # two stable argsorts: d_K = 8 at 7 bits, as the MQAR ablation
    ((3, 5, 17), 63),     # the widest codes, several rows
    ((2, 1), 63),         # one key a row
])
def test_sort_keys_every_path_gives_the_specifications_order(shape, code_bits):
    """Each of sort_keys's three ways of sorting (all rows in one call) gives the
    specification's permutation, with many equal codes (ties by position, D10)."""
    from zeta_ref.cupy.sort import sort_keys
    from zeta_ref.stages.sort import sort_keys as spec_sort_keys

    rng = np.random.default_rng(code_bits)
    codes = rng.integers(0, 2**code_bits, size=shape, dtype=np.uint64)
    codes[..., ::3] = codes[..., :1]  # a third of every row shares one code
    want_perm, want_sorted = spec_sort_keys(codes)
    for given_bits in (code_bits, None):  # the bound given, or read off the codes
        perm, sorted_codes = sort_keys(codes, code_bits=given_bits)
        _compare(perm, want_perm, "perm")
        _compare(sorted_codes, want_sorted, "sorted_codes")
