"""Stage 1: linear projection and the seeded Johnson-Lindenstrauss map."""

import numpy as np
import pytest

from zeta_ref.stages.projection import project, random_projection


def test_project_matches_a_loop(rng):
    x = rng.standard_normal((2, 5, 7))
    w = rng.standard_normal((7, 3))
    b = rng.standard_normal(3)
    got = project(x, w, b)
    assert got.shape == (2, 5, 3) and got.dtype == np.float64
    want = np.zeros((2, 5, 3))
    for i in range(2):
        for n in range(5):
            for o in range(3):
                want[i, n, o] = sum(x[i, n, j] * w[j, o] for j in range(7)) + b[o]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(project(x, w), want - b, rtol=1e-12, atol=1e-12)


def test_project_keeps_the_input_dtype(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2))  # float64 weight
    out = project(x, w, np.zeros(2))
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


def test_project_bad_shapes(rng):
    x = rng.standard_normal((4, 6))
    with pytest.raises(ValueError, match="weight"):
        project(x, rng.standard_normal((5, 2)))
    with pytest.raises(ValueError, match="weight"):
        project(x, rng.standard_normal(6))
    with pytest.raises(ValueError, match="bias"):
        project(x, rng.standard_normal((6, 2)), np.zeros(3))
    with pytest.raises(TypeError, match="x"):
        project(x.astype(np.int64), rng.standard_normal((6, 2)))
    with pytest.raises(ValueError, match="x"):
        project(np.full((2, 6), np.nan), rng.standard_normal((6, 2)))


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_project_refuses_nan_and_non_numbers_in_weight_and_bias(rng, name):
    x = rng.standard_normal((5, 4))
    args = {"weight": rng.standard_normal((4, 3)), "bias": rng.standard_normal(3)}
    bad = args[name].copy()
    bad.flat[1] = np.nan
    with pytest.raises(ValueError, match=rf"{name} contains NaN or Inf \(first at index"):
        project(x, **{**args, name: bad})
    with pytest.raises(TypeError, match=rf"{name} must be an array of real numbers"):
        project(x, **{**args, name: np.array(["a"] * args[name].size).reshape(args[name].shape)})
    # integers are numbers: cast to x's dtype
    ints = {**args, name: np.ones(args[name].shape, dtype=np.int64)}
    np.testing.assert_allclose(project(x, **ints),
                               x @ ints["weight"].astype(float) + ints["bias"].astype(float))


def test_random_projection_is_seeded_and_scaled():
    a = random_projection(20, 5, rng=7)
    b = random_projection(20, 5, rng=np.random.default_rng(7))
    c = random_projection(20, 5, rng=8)
    assert a.shape == (20, 5) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert random_projection(4, 3, rng=1, dtype=np.float32).dtype == np.float32


def test_random_projection_keeps_squared_norms_on_average(rng):
    # E ||x R||^2 = ||x||^2 with entries N(0, 1/d_out)
    x = rng.standard_normal((200, 64))
    r = random_projection(64, 256, rng=rng)
    ratio = (np.linalg.norm(x @ r, axis=1) ** 2) / (np.linalg.norm(x, axis=1) ** 2)
    assert abs(ratio.mean() - 1) < 0.05
    # and the entries have variance 1 / d_out
    big = random_projection(100, 400, rng=3)
    assert abs(big.var() * 400 - 1) < 0.05


@pytest.mark.parametrize("d_in, d_out", [(0, 3), (3, 0), (True, 3), (2.0, 3), (-1, 2)])
def test_random_projection_bad_sizes(d_in, d_out):
    with pytest.raises(ValueError, match="d_in|d_out"):
        random_projection(d_in, d_out, rng=0)
