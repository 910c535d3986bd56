"""The CuPy twin of the backward pass against the NumPy specification, on a GPU (issue 12).

Every test carries the ``gpu`` marker and is skipped cleanly where CuPy or a GPU is missing.
On the device machine: ``PYTHONPATH=$PWD python3 -m pytest -m gpu tests/test_cupy_backward.py``.

- the stage functions on the specification's own inputs: every score, causal mode, the mean
  term on and off, W > k, k >= N, empty slots, int32 and int64 candidates, both dtypes;
- through zeta_attention_backward: CuPy in, CuPy out; NumPy in, NumPy out; within tolerance of
  the specification; the intermediates of another backend accepted;
- deterministic: two runs, and two visiting orders, give the same bits; poisoned output
  buffers change nothing.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import zeta_ref
from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.backward import zeta_attention_backward

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
if "cupy" not in zeta_ref.backends():
    pytest.skip("no usable GPU for CuPy here", allow_module_level=True)

from zeta_ref.cupy import _runtime as rt  # noqa: E402
from zeta_ref.cupy import backward as cupy_backward  # noqa: E402
from zeta_ref.stages import backward as spec  # noqa: E402
from zeta_ref.stages.topk_softmax import history_means  # noqa: E402
from zeta_ref.tolerances import assert_close  # noqa: E402

SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")
CAUSAL = ("inclusive", "strict", "none")


def _inputs(seed, lead, n, d_k, d_v, dtype):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    k = rng.standard_normal(lead + (n, d_k)).astype(dtype)
    v = rng.standard_normal(lead + (n, d_v)).astype(dtype)
    g = rng.standard_normal(lead + (n, d_v)).astype(dtype)
    return q, k, v, g


def _close(got, want, name, scale=None):
    got = cp.asnumpy(got)
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert_close(got, want, scale=scale, err_msg=name)


def _scale(*arrays):
    """The size of the gradients in play: their largest magnitude (zeta_ref.tolerances)."""
    return max(float(np.abs(a).max()) for a in arrays if a is not None and a.size)


@pytest.mark.parametrize("causal", CAUSAL)
def test_the_twin_matches_where_the_gradients_terms_cancel(causal):
    """float32, "inv_euclidean", d_k = 1, one bit a coordinate: keys 1e-3 from their queries
    make terms hundreds of times the gradients they cancel to, and every entry is held
    against the size of its own terms (zeta_ref.crosscheck.gradients, as `zeta-ref compare`
    holds another implementation's; tests/test_backward.py's cases for the Numba twin)."""
    from zeta_ref.crosscheck.gradients import gradient_sizes
    from zeta_ref.tolerances import tolerance

    tol = tolerance(np.float32)
    rng = np.random.default_rng([20250414, 7, CAUSAL.index(causal)])
    for case in range(40):
        n, d_v, rows = int(rng.integers(2, 60)), int(rng.integers(1, 9)), int(rng.integers(1, 3))
        q, k, v, g = (rng.standard_normal((rows, n, d)).astype(np.float32)
                      for d in (1, 1, d_v, d_v))
        cfg = ZetaConfig(k=int(rng.integers(1, 10)), bits=1, score="inv_euclidean",
                         causal=causal, history_mean=bool(case % 2))
        _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
        want = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
        got = zeta_attention_backward(cp.asarray(q), cp.asarray(k), cp.asarray(v),
                                      cp.asarray(g), cfg, intermediates=inter, backend="cupy")
        means = history_means(k, v, causal) if cfg.history_mean else (None, None)
        sizes = gradient_sizes(q, k, v, inter.candidates, cfg.score, cfg.gamma, *means, g,
                               causal)
        for name, a, b, size in zip(("dq", "dk", "dv"), got[:3], want[:3], sizes):
            err = np.abs(cp.asnumpy(a).astype(np.float64) - b)
            allowed = tol["rtol"] * np.abs(b) + tol["atol"] * size
            assert (err <= allowed).all(), (name, case, float((err / allowed).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("score", SCORES)
def test_the_stage_twin_matches_the_specification(score, causal, mean, dtype):
    q, k, v, g = _inputs(1, (2, 3), 203, 3, 36, dtype)
    cfg = ZetaConfig(k=8, window=20, causal=causal, score=score, history_mean=mean,
                     gamma=0.7)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    mk, mv = history_means(k, v, causal) if mean else (None, None)
    want = spec.topk_attention_backward(q, k, v, inter.candidates, score, cfg.gamma, mk, mv, g)
    got = cupy_backward.topk_attention_backward(q, k, v, inter.candidates, score, cfg.gamma,
                                                mk, mv, g)
    for name, a, b in zip(("dq", "dk", "dv", "dmean_k", "dmean_v"), got[:5], want[:5]):
        if b is None:
            assert a is None, name
        else:
            _close(a, b, name, scale=_scale(*want[:5]))
    assert isinstance(got[5], cp.ndarray) and got[5].shape == ()  # dgamma stays on the device
    assert float(got[5]) == pytest.approx(want[5], rel=1e-4 if dtype == np.float32 else 1e-10,
                                          abs=1e-6 * _scale(*want[:5]))
    if mean:
        want_k, want_v = spec.history_means_backward(want[3], want[4], causal)
        got_k, got_v = cupy_backward.history_means_backward(want[3], want[4], causal)
        _close(got_k, want_k, "history dk")
        _close(got_v, want_v, "history dv")


@pytest.mark.parametrize("n", [1, 7, 9, 203, 5000])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mean_share_added_in_place_is_the_share_added_after(dtype, causal, n):
    """history_means_backward(..., add_to=(dk, dv)) adds the share in its last kernel: the
    same bits as the share computed alone and added after (as the composer did), at sizes
    that end inside the kernel's groups of eight positions; add_to's arrays are written."""
    rng = np.random.default_rng(n)
    dmk, dmv, dk, dv = (cp.asarray(rng.standard_normal((2, 3, n, d)).astype(dtype))
                        for d in (3, 36, 3, 36))
    share_k, share_v = cupy_backward.history_means_backward(dmk, dmv, causal)
    want_k, want_v = dk + share_k, dv + share_v
    got_k, got_v = cupy_backward.history_means_backward(dmk, dmv, causal,
                                                        add_to=(dk, dv))
    np.testing.assert_array_equal(got_k.get(), want_k.get())
    np.testing.assert_array_equal(got_v.get(), want_v.get())
    assert got_k.data.ptr == dk.data.ptr and got_v.data.ptr == dv.data.ptr  # in place
    spec_k, spec_v = spec.history_means_backward(dmk.get(), dmv.get(), causal)
    _close(share_k, spec_k, "history dk")
    _close(share_v, spec_v, "history dv")
    with pytest.raises(ValueError, match="add_to"):
        cupy_backward.history_means_backward(dmk, dmv, causal, add_to=(dk[:, :1], dv))


@pytest.mark.parametrize("n, k_top, window", [(1, 4, None), (2, 8, 16), (17, 5, None),
                                              (300, 64, 100), (300, 200, None),
                                              (5000, 32, 64)])
@pytest.mark.parametrize("index", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # float32: the float4 query kernel
def test_awkward_sizes_empty_slots_and_index_dtypes(n, k_top, window, index, dtype):
    q, k, v, g = _inputs(2, (2,), n, 3, 20, dtype)
    cfg = ZetaConfig(k=k_top, window=window, causal="strict", chunk_size=7)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    cand = inter.candidates.astype(index)
    mk, mv = history_means(k, v, cfg.causal)
    want = spec.topk_attention_backward(q, k, v, inter.candidates, "cauchy", 0.5, mk, mv, g)
    got = cupy_backward.topk_attention_backward(q, k, v, cand, "cauchy", 0.5, mk, mv, g)
    for name, a, b in zip(("dq", "dk", "dv", "dmean_k", "dmean_v"), got[:5], want[:5]):
        _close(a, b, name, scale=_scale(*want[:5]))


@pytest.mark.parametrize("d_k, d_v", [(1, 1), (9, 3), (3, 100)])
def test_other_widths(d_k, d_v):
    q, k, v, g = _inputs(3, (), 150, d_k, d_v, np.float64)
    cfg = ZetaConfig(k=6, bits=min(10, 63 // d_k))
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    mk, mv = history_means(k, v, cfg.causal)
    for score in ("cauchy", "softmax"):
        want = spec.topk_attention_backward(q, k, v, inter.candidates, score, 0.5, mk, mv, g)
        got = cupy_backward.topk_attention_backward(q, k, v, inter.candidates, score, 0.5, mk,
                                                    mv, g)
        for name, a, b in zip(("dq", "dk", "dv"), got[:3], want[:3]):
            _close(a, b, f"{score} {name}", scale=_scale(*want[:5]))


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype, kernel", [(np.float32, "half"), (np.float64, "half"),
                                           (np.float32, "fast")])
def test_the_query_kernels_agree(score, dtype, kernel):
    """The 16-lane kernels (float4 rows for float32, and the general one) and the
    warp-per-query kernel: the same results within tolerance (their sums over slots and
    columns run in other orders)."""
    q, k, v, g = _inputs(6, (3,), 500, 3, 40, dtype)
    cfg = ZetaConfig(k=12, window=24, score=score)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    mk, mv = (cp.asarray(x) for x in history_means(k, v, cfg.causal))
    args = [cp.asarray(x) for x in (q, k, v)] + [cp.asarray(inter.candidates), mk, mv, True,
                                                 cp.asarray(g)]
    visit = cp.tile(cp.arange(500, dtype=cp.int64), (3, 1))
    c = dtype(zeta_ref.stages.topk_softmax.score_constant(score, cfg.gamma, 3))
    got = cupy_backward.query_pass(*args, visit, score, c, kernel=kernel)
    warp = cupy_backward.query_pass(*args, visit, score, c, kernel="warp")
    names = ("dq", "dmean_k", "dmean_v", "coef_w", "coef_k", "dc")
    for name, a, b in zip(names, got, warp):
        if name == "dc" and score != "cauchy":
            continue  # only "cauchy" uses it; for the exp scores it is 0 up to cancellation
        assert_close(a.get(), b.get(), scale=float(cp.abs(b).max()), dtype=dtype, err_msg=name)


def _forced(kernel):
    """query_pass with ``kernel`` forced (it raises where that kernel cannot take the sizes)."""
    real = cupy_backward.query_pass

    def query_pass(*args, **kwargs):
        return real(*args, **{**kwargs, "kernel": kernel})
    return query_pass


@pytest.mark.parametrize("d_v", (4, 64, 100, 128, 192, 256))
@pytest.mark.parametrize("k_top", (15, 20, 32, 50, 127))
def test_fast_query_kernel_every_instance(monkeypatch, d_v, k_top):
    """Every template instance of zeta_bwd_query_fast (1, 2, 3, 4 or 8 slots per lane; 1, 2 or
    4 stripes of 64 columns, the last one partial or not) with empty slots (strict causality:
    query 0 sees no key), int64 and int32 candidates, against the specification; and without
    the mean term at 16 and 32 slots (whole rounds of 16)."""
    q, k, v, g = _inputs(21, (2,), 300, 3, d_v, np.float32)
    monkeypatch.setattr(cupy_backward, "query_pass", _forced("fast"))
    for k_use, mean in ((k_top, True), (16 if k_top < 32 else 32, False)):
        cfg = ZetaConfig(k=k_use, causal="strict", history_mean=mean)
        _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
        assert (im.candidates == -1).any()
        mk, mv = history_means(k, v, cfg.causal) if mean else (None, None)
        want = spec.topk_attention_backward(q, k, v, im.candidates, cfg.score, cfg.gamma, mk,
                                            mv, g)
        for cand in (im.candidates, im.candidates.astype(np.int32)):
            got = cupy_backward.topk_attention_backward(q, k, v, cand, cfg.score, cfg.gamma,
                                                        mk, mv, g)
            for name, a, b in zip(("dq", "dk", "dv", "dmean_k", "dmean_v"), got[:5], want[:5]):
                if b is None:
                    assert a is None, name
                else:
                    _close(a, b, f"{name} k={k_use} mean={mean}", scale=_scale(*want[:5]))
            assert float(got[5]) == pytest.approx(want[5], rel=1e-4,
                                                  abs=1e-6 * _scale(*want[:5]))


@pytest.mark.parametrize("k_top", [10, 40])
@pytest.mark.parametrize("d_v", [4, 36, 64, 100, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_two_value_kernels_give_the_same_bits(dtype, d_v, k_top):
    """zeta_bwd_values (four columns a thread, four pairs loaded ahead) adds the same terms in
    the same order as zeta_bwd_keys's dv columns: bit for bit the same dv, and the same dk;
    with lists that end inside a group of four pairs and lists longer than 16 (k = 10, 40)."""
    q, k, v, g = _inputs(7, (2,), 900, 3, d_v, dtype)
    cfg = ZetaConfig(k=k_top, window=2 * k_top)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    q, k, v, g = (cp.asarray(x) for x in (q, k, v, g))
    cand = cp.asarray(inter.candidates)
    visit = cp.tile(cp.arange(900, dtype=cp.int64), (2, 1))
    c = dtype(zeta_ref.stages.topk_softmax.score_constant("cauchy", cfg.gamma, 3))
    _, _, _, coef_w, coef_k, _ = cupy_backward.query_pass(
        q, k, v, cand, q, v, False, g, visit, "cauchy", c)
    pairs, starts = cupy_backward.pair_lists(cand, 2, 900)
    runs = [cupy_backward.key_pass(q, k, g, coef_w, coef_k, pairs, starts, visit, "cauchy",
                                   kernel=kind) for kind in ("values", "plain")]
    for a, b, name in zip(runs[0], runs[1], ("dk", "dv")):
        np.testing.assert_array_equal(a.get(), b.get(), err_msg=name)
    assert float(cp.abs(runs[0][1]).max()) > 0  # not two empty results
    misaligned = cp.empty(g.size + 1, dtype)[1:].reshape(g.shape)
    misaligned[...] = g
    with pytest.raises(ValueError, match="aligned"):
        cupy_backward.key_pass(q, k, misaligned, coef_w, coef_k, pairs, starts, visit,
                               "cauchy", kernel="values")
    # a visiting order other than position order: the same bits
    shuffled = cp.stack([cp.random.RandomState(r).permutation(900) for r in range(2)])
    again = cupy_backward.key_pass(q, k, g, coef_w, coef_k, pairs, starts, shuffled, "cauchy")
    for a, b, name in zip(again, runs[1], ("dk", "dv")):
        np.testing.assert_array_equal(a.get(), b.get(), err_msg=name)


def test_max_abs_on_the_gpu_agrees_with_the_host():
    """checks.cu's one-pass max |x - y - c|: NaN and inf kept, offsets, mixed dtypes, ints."""
    from zeta_ref._checks import max_abs

    rng = np.random.default_rng(3)
    a32 = rng.standard_normal(100_003).astype(np.float32)
    b64 = rng.standard_normal(100_003)
    with_nan = a32.copy()
    with_nan[77_777] = np.nan
    ints = rng.integers(-1, 500, size=(40, 7))
    pairs = [(a32, None), (a32, b64), (b64, a32), (a32, 0.5), (with_nan, None),
             (np.array([0.0, -np.inf]), None), (np.zeros(0), None), (ints, 249.0),
             (ints.astype(np.uint64), ints.astype(np.uint64)),
             (ints.astype(np.int16), 3.0)]  # a dtype without an instance: as doubles
    want = max_abs(pairs)
    got = max_abs([(cp.asarray(a), b if b is None or np.isscalar(b) else cp.asarray(b))
                   for a, b in pairs], cp)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[4]) and got[5] == np.inf and got[6] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_through_the_composer(dtype):
    q, k, v, g = _inputs(4, (2, 2), 700, 3, 16, dtype)
    cfg = ZetaConfig(k=16, window=32)
    want = zeta_attention_backward(q, k, v, g, cfg)  # the specification
    got = zeta_attention_backward(q, k, v, g, cfg, backend="cupy")  # NumPy in: NumPy out
    scale = _scale(want.dq, want.dk, want.dv)
    for name in ("dq", "dk", "dv"):
        assert isinstance(getattr(got, name), np.ndarray)
        assert_close(getattr(got, name), getattr(want, name), scale=scale, err_msg=name)
    assert got.dgamma == pytest.approx(want.dgamma, rel=1e-4)
    dev = zeta_attention_backward(*(cp.asarray(x) for x in (q, k, v, g)), cfg,
                                  backend="cupy")  # CuPy in: CuPy out
    assert all(isinstance(getattr(dev, n), cp.ndarray) for n in ("dq", "dk", "dv"))
    np.testing.assert_array_equal(dev.dk.get(), got.dk)
    # the selection of another backend is accepted
    _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
    again = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter, backend="cupy")
    np.testing.assert_array_equal(again.dv, got.dv)


def _with(x, index, value):
    x = x.copy()
    x[index] = value
    return x


#: Bad inputs of the backward pass: each makes (q, k, v, grad_output, intermediates) from good
#: ones. On the GPU the checks of values run after the kernels are queued (one transfer); the
#: error must be the specification's, word for word, and no kernel may read out of bounds.
REFUSED = {
    "q NaN": lambda q, k, v, g, im: (_with(q, (1, 7, 2), np.nan), k, v, g, im),
    "k too large": lambda q, k, v, g, im: (q, _with(k, (0, 3, 0), 1e30), v, g, im),
    "v inf": lambda q, k, v, g, im: (q, k, _with(v, (1, 0, 4), np.inf), g, im),
    "grad NaN": lambda q, k, v, g, im: (q, k, v, _with(g, (0, 299, 7), np.nan), im),
    "another q": lambda q, k, v, g, im: (q + 0.5, k, v, g, im),
    "another v": lambda q, k, v, g, im: (q, k, _with(v, (1, 20, 0), 9.0), g, im),
    "gradients overflow": lambda q, k, v, g, im: (q, k, v, np.full_like(g, 3e38), im),
    **{f"candidate {bad}": (lambda bad: lambda q, k, v, g, im: (
        q, k, v, g, replace(im, candidates=_with(im.candidates, (1, 299, 0), bad))))(bad)
       for bad in (-2, 300, 2**40)},
}


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("on_device", [False, True])
def test_what_is_refused_is_refused_as_by_the_specification(name, on_device):
    q, k, v, g = _inputs(6, (2,), 300, 3, 8, np.float32)
    cfg = ZetaConfig(k=8)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    *arrays, im = REFUSED[name](q, k, v, g, inter)
    with pytest.raises(ValueError) as want:
        zeta_attention_backward(*arrays, cfg, intermediates=im)
    if on_device:
        arrays = [cp.asarray(x) for x in arrays]
    with pytest.raises(ValueError) as got:
        zeta_attention_backward(*arrays, cfg, intermediates=im, backend="cupy")
    assert str(got.value) == str(want.value)
    cp.cuda.Device().synchronize()  # and the device is still well (no fault was raised)


def test_deterministic_whatever_the_visiting_order(monkeypatch):
    q, k, v, g = _inputs(5, (2, 4), 4000, 3, 64, np.float32)
    cfg = ZetaConfig(k=32)
    _, inter = zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    mk, mv = history_means(k, v, cfg.causal)
    args = (q, k, v, inter.candidates, "cauchy", 0.5, mk, mv, g)
    a = cupy_backward.topk_attention_backward(*args)
    b = cupy_backward.topk_attention_backward(*args)
    order = np.argsort(inter.q_codes, axis=-1, kind="stable")
    c = cupy_backward.topk_attention_backward(*args, order=order)
    for x, y, z in zip(a[:5], b[:5], c[:5]):
        np.testing.assert_array_equal(x.get(), y.get())
        np.testing.assert_array_equal(x.get(), z.get())
    assert float(a[5]) == float(b[5]) == float(c[5])
    # poisoned output buffers change nothing: every entry is written
    def poisoned(real):
        def empty(shape, dtype):
            out = real(shape, dtype)
            out.fill(np.nan) if np.dtype(dtype).kind == "f" else out.view(np.uint8).fill(255)
            return out
        return empty
    monkeypatch.setattr(rt, "empty", poisoned(rt.empty))
    d = cupy_backward.topk_attention_backward(*args)
    for x, y in zip(a[:5], d[:5]):
        np.testing.assert_array_equal(x.get(), y.get())
    e = cupy_backward.history_means_backward(a[3], a[4], "inclusive")
    monkeypatch.undo()
    f = cupy_backward.history_means_backward(a[3], a[4], "inclusive")
    for x, y in zip(e, f):
        np.testing.assert_array_equal(x.get(), y.get())


def test_the_torch_adapter_on_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from zeta_ref.torch import zeta_attention as torch_zeta

    q, k, v, g = _inputs(7, (2,), 300, 3, 16, np.float64)
    cfg = ZetaConfig(k=8, window=16)
    grads = {}
    for device, backend in (("cpu", "numba"), ("cuda", "cupy")):
        tq, tk, tv = (torch.tensor(x, device=device, requires_grad=True) for x in (q, k, v))
        gamma = torch.tensor(0.6, dtype=torch.float64, device=device, requires_grad=True)
        out = torch_zeta(tq, tk, tv, cfg, gamma=gamma, backend=backend)
        assert out.device.type == device
        out.backward(torch.tensor(g, device=device))
        grads[device] = [t.grad.cpu().numpy() for t in (tq, tk, tv, gamma)]
        grads[device + " out"] = out.detach().cpu().numpy()
    assert_close(grads["cuda out"], grads["cpu out"])
    for name, a, b in zip(("dq", "dk", "dv"), grads["cuda"][:3], grads["cpu"][:3]):
        assert_close(a, b, scale=_scale(*grads["cpu"][:3]), err_msg=name)
    assert float(grads["cuda"][3]) == pytest.approx(float(grads["cpu"][3]), rel=1e-9)
