"""ZetaConfig: defaults, validation, derived values (D2, D4, D5, D6, D7, D8)."""

import dataclasses

import numpy as np
import pytest

from zeta_ref import ZetaConfig


def test_defaults_are_the_documented_ones():
    c = ZetaConfig()
    assert (c.k, c.bits, c.chunk_size, c.causal, c.window, c.score, c.gamma, c.history_mean,
            c.squash, c.clip_range) == (32, 10, None, "inclusive", None, "cauchy", 0.5, True,
                                        "sigmoid", (-4.0, 4.0))


def test_frozen():
    c = ZetaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.k = 3


def test_window_width():
    assert ZetaConfig(k=5).window_width == 5
    assert ZetaConfig(k=5, window=5).window_width == 5
    assert ZetaConfig(k=5, window=12).window_width == 12


@pytest.mark.parametrize("k, n, want", [
    (32, 1, 32), (32, 256, 32), (32, 257, 33), (32, 1000, 125), (4, 17, 4), (1, 17, 3),
    (1, 8, 1), (1, 9, 2), (2, 1, 2),
])
def test_automatic_chunk_size_rule(k, n, want):
    # D5: max(k, ceil(N / 8))
    assert ZetaConfig(k=k).chunk_size_for(n) == want


def test_explicit_chunk_size_wins():
    assert ZetaConfig(k=32, chunk_size=3).chunk_size_for(1000) == 3
    assert ZetaConfig(k=1, chunk_size=100).chunk_size_for(5) == 100


def test_equal_configs_compare_equal_and_values_are_normalised():
    a = ZetaConfig(gamma=1, clip_range=[-2, 2])
    b = ZetaConfig(gamma=1.0, clip_range=(-2.0, 2.0))
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.gamma, float) and a.clip_range == (-2.0, 2.0)


def test_numpy_integers_are_accepted():
    c = ZetaConfig(k=np.int64(4), bits=np.int32(8), chunk_size=np.int64(3), window=np.int64(6))
    assert c.window_width == 6 and c.chunk_size_for(50) == 3


def test_gamma_only_needs_to_be_positive_for_cauchy():
    for score in ("softmax", "neg_euclidean", "inv_euclidean"):
        ZetaConfig(score=score, gamma=0.0)
        ZetaConfig(score=score, gamma=-1.0)


@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
@pytest.mark.parametrize("score", ["cauchy", "softmax", "neg_euclidean", "inv_euclidean"])
@pytest.mark.parametrize("squash", ["sigmoid", "tanh", "clip"])
def test_every_option_string_is_accepted(causal, score, squash):
    c = ZetaConfig(causal=causal, score=score, squash=squash)
    assert (c.causal, c.score, c.squash) == (causal, score, squash)


def test_bits_bounds():
    ZetaConfig(bits=1)
    ZetaConfig(bits=63)  # d_k = 1 can use all of it; checked against d_k at the call


@pytest.mark.parametrize("int_type", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32])
def test_numpy_integer_fields_are_stored_as_python_ints(int_type):
    # 1 << np.int32(31) overflows under NumPy 2's promotion rules: a numpy integer `bits`
    # reaching the quantiser would saturate every coordinate. The config stores plain ints.
    bits = 31 if np.iinfo(int_type).max > 31 * 2 else 7
    c = ZetaConfig(k=int_type(3), bits=int_type(bits), chunk_size=int_type(5),
                   window=int_type(6))
    for name in ("k", "bits", "chunk_size", "window"):
        assert type(getattr(c, name)) is int, name
    assert c == ZetaConfig(k=3, bits=bits, chunk_size=5, window=6)
    assert repr(c) == repr(ZetaConfig(k=3, bits=bits, chunk_size=5, window=6))


@pytest.mark.parametrize("int_type", [np.int8, np.int32, np.int64])
def test_numpy_integer_bits_give_the_same_answer(rng, make_qkv, int_type):
    from zeta_ref import zeta_attention

    q, k, v = make_qkv(rng, 20, 2, 3)
    bits = 31 if int_type is not np.int8 else 10
    want = zeta_attention(q, k, v, ZetaConfig(k=3, bits=bits), return_intermediates=True)[1]
    got = zeta_attention(q, k, v, ZetaConfig(k=3, bits=int_type(bits)),
                         return_intermediates=True)[1]
    np.testing.assert_array_equal(got.q_coords, want.q_coords)
    np.testing.assert_array_equal(got.candidates, want.candidates)
    np.testing.assert_array_equal(got.output, want.output)


@pytest.mark.parametrize("flag", [np.True_, np.False_])
def test_numpy_bools_are_accepted_for_history_mean(flag):
    # a NumPy bool (what `array.any()` gives) is a bool; stored as a Python one
    c = ZetaConfig(history_mean=flag)
    assert type(c.history_mean) is bool and c.history_mean == bool(flag)
    assert c == ZetaConfig(history_mean=bool(flag))
    assert repr(c) == repr(ZetaConfig(history_mean=bool(flag)))
