"""Stage 2: squash to [0, 1] and keep B bits per coordinate (D1, D2, D12)."""

import numpy as np
import pytest

from zeta_ref import backends, get_backend, zeta_attention
from zeta_ref.stages.quantize import exp_ieee, quantize, squash
from zeta_ref.tolerances import assert_close

METHODS = ("sigmoid", "tanh", "clip")


@pytest.mark.parametrize("bits", [1, 3, 10, 21])
@pytest.mark.parametrize("method", METHODS)
def test_top_of_range_is_all_ones_and_bottom_is_zero(method, bits):
    top = (1 << bits) - 1
    huge = np.array([1e300, 1e30, 1e4, 50.0, np.finfo(np.float64).max])
    hi = quantize(huge, bits, method)
    assert hi.dtype == np.uint64
    assert (hi == top).all(), hi  # never 2^B (which would wrap to 0 in the code)
    lo = quantize(-huge, bits, method)
    assert (lo == 0).all(), lo


@pytest.mark.parametrize("bits", [1, 4, 10])
def test_clip_at_hi_and_above_is_top_at_lo_and_below_is_zero(bits):
    top = (1 << bits) - 1
    x = np.array([4.0, 4.0 + 1e-12, 5.0, 1e10])
    assert (quantize(x, bits, "clip", (-4.0, 4.0)) == top).all()
    x = np.array([-4.0, -4.0 - 1e-12, -5.0, -1e10])
    assert (quantize(x, bits, "clip", (-4.0, 4.0)) == 0).all()
    # another range
    assert int(quantize(np.array(3.0), bits, "clip", (-1.0, 3.0))) == top
    assert int(quantize(np.array(-1.0), bits, "clip", (-1.0, 3.0))) == 0


@pytest.mark.parametrize("lo, hi, bits", [(-4.0, 4.0, 3), (-4.0, 4.0, 10), (0.0, 1.0, 5),
                                          (-2.0, 6.0, 4)])
def test_clip_cell_boundaries_are_exact(lo, hi, bits):
    # cell u is [lo + u * w, lo + (u + 1) * w) with w = (hi - lo) / 2^B (exact for these ranges)
    n_cells = 1 << bits
    w = (hi - lo) / n_cells
    u = np.arange(n_cells)
    left = lo + u * w
    np.testing.assert_array_equal(quantize(left, bits, "clip", (lo, hi)), u)
    mid = left + w / 2
    np.testing.assert_array_equal(quantize(mid, bits, "clip", (lo, hi)), u)
    just_below = left[1:] - w * 1e-6
    np.testing.assert_array_equal(quantize(just_below, bits, "clip", (lo, hi)), u[:-1])
    nextafter_below = np.nextafter(left[1:], -np.inf)
    got = quantize(nextafter_below, bits, "clip", (lo, hi)).astype(np.int64)
    # one ulp below a boundary is in the cell below unless rounding in x - lo lands it on it
    assert ((got == u[:-1]) | (got == u[1:])).all()


def test_clip_by_hand():
    # range (-4, 4), 2 bits: cells of width 2: [-4,-2) -> 0, [-2,0) -> 1, [0,2) -> 2, [2,4] -> 3
    x = np.array([-4.0, -3.0, -2.0, -0.5, 0.0, 1.999, 2.0, 3.5, 4.0])
    assert quantize(x, 2, "clip").tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_sigmoid_and_tanh_by_hand():
    # sigmoid(0) = 0.5 -> 0.5 * 2^B exactly = the first cell of the upper half
    assert int(quantize(np.array(0.0), 4, "sigmoid")) == 8
    assert int(quantize(np.array(0.0), 4, "tanh")) == 8
    # sigmoid(x) = 0.75 at x = ln 3; 0.75 * 16 = 12 (within rounding either 11 or 12)
    assert int(quantize(np.array(np.log(3.0) + 1e-9), 4, "sigmoid")) == 12
    assert int(quantize(np.array(np.log(3.0) - 1e-9), 4, "sigmoid")) == 11
    # (tanh(x) + 1) / 2 = 0.25 at x = atanh(-0.5)
    assert int(quantize(np.array(np.arctanh(-0.5) + 1e-9), 3, "tanh")) == 2
    assert int(quantize(np.array(np.arctanh(-0.5) - 1e-9), 3, "tanh")) == 1


@pytest.mark.parametrize("method", METHODS)
def test_squash_range_and_monotone(rng, method):
    x = np.sort(np.concatenate([rng.standard_normal(500) * 5, [-1e300, 0.0, 1e300]]))
    s = squash(x, method)
    assert s.dtype == np.float64
    assert (s >= 0).all() and (s <= 1).all()
    assert (np.diff(s) >= 0).all()


@pytest.mark.parametrize("bits", [1, 5, 10, 16])
@pytest.mark.parametrize("method", METHODS)
def test_quantize_is_monotone_and_in_range(rng, method, bits):
    x = np.sort(rng.standard_normal(2000) * 4)
    c = quantize(x, bits, method)
    assert c.dtype == np.uint64 and c.shape == x.shape
    assert (np.diff(c.astype(np.int64)) >= 0).all()
    assert int(c.max()) <= (1 << bits) - 1


@pytest.mark.parametrize("method", METHODS)
def test_float32_and_float64_with_equal_values_give_equal_coordinates(rng, method):
    x32 = (rng.standard_normal((7, 50, 3)) * 3).astype(np.float32)
    x64 = x32.astype(np.float64)
    for bits in (4, 10, 21):
        np.testing.assert_array_equal(quantize(x32, bits, method), quantize(x64, bits, method))


def test_elementwise_and_shape_preserving(rng):
    # D1: fixed elementwise map, no statistics across positions
    x = rng.standard_normal((2, 3, 11, 3))
    c = quantize(x, 10)
    assert c.shape == x.shape
    y = x.copy()
    y[..., 5:, :] += 100.0  # change later positions
    np.testing.assert_array_equal(quantize(y, 10)[..., :5, :], c[..., :5, :])
    np.testing.assert_array_equal(quantize(x[1, 2], 10), c[1, 2])


def test_sigmoid_default(rng):
    x = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(quantize(x, 10), quantize(x, 10, "sigmoid"))
    want = np.minimum(np.floor(squash(x) * 1024), 1023)
    np.testing.assert_array_equal(quantize(x, 10), want)


# ---------------------------------------------------------------- D13: exp from IEEE operations


def test_exp_ieee_is_exp_within_two_ulp(rng):
    t = np.concatenate([rng.uniform(-744.0, 709.0, 200_000), rng.uniform(-3.0, 3.0, 200_000),
                        np.linspace(-40.0, 40.0, 8001)])
    got, want = exp_ieee(t), np.exp(t)
    normal = want > np.finfo(np.float64).tiny
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want[normal])
    assert ulps.max() <= 2.0, ulps.max()


def test_exp_ieee_special_values():
    assert exp_ieee(0.0) == 1.0
    assert exp_ieee(710.0) == np.inf and exp_ieee(1e308) == np.inf
    assert exp_ieee(-746.0) == 0.0 and exp_ieee(-1e308) == 0.0
    assert 0.0 < exp_ieee(-745.0) < 1e-320  # the subnormal range is reached
    assert np.isfinite(exp_ieee(709.7))


def test_squash_is_the_library_function_to_a_few_ulp(rng):
    x = rng.standard_normal(100_000) * 6
    np.testing.assert_allclose(squash(x, "sigmoid"), 1.0 / (1.0 + np.exp(-x)), rtol=5e-16)
    np.testing.assert_allclose(squash(x, "tanh"), (np.tanh(x) + 1.0) * 0.5, rtol=5e-15,
                               atol=1e-16)


def _edge_inputs(bits, method, rng):
    """Inputs on and one or two ulps around the cell edges x_j with squash(x_j) = j / 2^B."""
    if bits <= 12:
        j = np.arange(1, 1 << bits, dtype=np.float64)
    else:
        j = np.floor(rng.random(4096) * 2.0**bits)
        j = j[(j > 0) & (j < 2.0**bits)]
    frac = j / 2.0**bits
    edge = np.log(frac) - np.log1p(-frac)  # logit, the sigmoid's edges
    if method == "tanh":
        edge = edge / 2
    elif method == "clip":
        edge = -4.0 + frac * 8.0
    down1, up1 = np.nextafter(edge, -np.inf), np.nextafter(edge, np.inf)
    down2, up2 = np.nextafter(down1, -np.inf), np.nextafter(up1, np.inf)
    return np.concatenate([down2, down1, edge, up1, up2])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d_k, bits", [(3, 1), (3, 10), (3, 21), (2, 31), (1, 52), (1, 63)])
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_every_backend_puts_cell_edges_in_the_same_cell(rng, method, d_k, bits, dtype):
    """D13: on the cell edges themselves, where one ulp decides, every backend agrees."""
    x = _edge_inputs(bits, method, rng).astype(dtype)
    x = x[: len(x) // d_k * d_k].reshape(-1, d_k)  # (n, d_k)
    want = quantize(x, bits, method)
    for name in backends():
        got = get_backend(name).stages().quantize(x, bits, method, (-4.0, 4.0))
        got = got.get() if hasattr(got, "get") else got  # a GPU twin returns device arrays
        assert got.dtype == np.uint64 and got.shape == x.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_the_reported_cell_edge_case_agrees_on_every_backend():
    """The repro of issue 13: sigmoid(x) * 2^10 on the edge of cells 70 and 71."""
    rng = np.random.default_rng(0)
    n = 64
    x = -2.5969350266128868
    q = np.tile([x, 0.3, -0.2], (n, 1))
    k = q + np.c_[rng.choice([-0.01, 0.01], n), np.zeros((n, 2))]
    v = rng.standard_normal((n, 8))
    _, want = zeta_attention(q, k, v, return_intermediates=True)
    assert want.q_coords[0].tolist() == [70, 588, 460]
    for name in backends():
        out, got = zeta_attention(q, k, v, backend=name, return_intermediates=True)
        for field in ("q_coords", "k_coords", "q_codes", "k_codes", "candidates"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field),
                                          err_msg=f"{name}: {field}")
        assert_close(out, want.output, err_msg=name)
