"""Stage 3: Morton encode/decode (D3: dimension 0 most significant within each bit group)."""

import numpy as np
import pytest

from zeta_ref import morton_decode, morton_encode


def interleave_by_strings(u, bits):
    """Independent reference: write each coordinate in binary, read the columns off.

    For u = (u_0, ..., u_{d-1}) the code's bits from the top are
    u_0[B-1] u_1[B-1] ... u_{d-1}[B-1] u_0[B-2] ... : take the t-th character of every
    coordinate's B-character binary string, dimension 0 first.
    """
    strings = [format(int(x), f"0{bits}b") for x in u]
    return int("".join(s[t] for t in range(bits) for s in strings), 2)


# Codes worked out by hand.
HAND_CODES = [
    # d = 2, B = 2: u = (x, y), x = x1 x0, y = y1 y0, code = x1 y1 x0 y0
    ((3, 0), 2, 0b1010),  # x = 11, y = 00 -> 1 0 1 0 = 10
    ((0, 3), 2, 0b0101),  # x = 00, y = 11 -> 0 1 0 1 = 5
    ((1, 2), 2, 0b0110),  # x = 01, y = 10 -> 0 1 1 0 = 6
    ((2, 1), 2, 0b1001),  # x = 10, y = 01 -> 1 0 0 1 = 9
    ((1, 0), 2, 0b0010),  # x = 01 -> only x0 set: 0 0 1 0 = 2 (x above y in the group)
    ((0, 1), 2, 0b0001),  # y = 01 -> only y0 set: 0 0 0 1 = 1
    ((3, 3), 2, 0b1111),  # the top value in every coordinate: all ones = 15, no wrap
    ((0, 0), 2, 0),
    # d = 3, B = 2: code = x1 y1 z1 x0 y0 z0
    ((1, 0, 0), 2, 0b000100),  # 4
    ((0, 1, 0), 2, 0b000010),  # 2
    ((0, 0, 1), 2, 0b000001),  # 1
    ((2, 0, 0), 2, 0b100000),  # 32
    ((3, 2, 1), 2, 0b110101),  # x = 11, y = 10, z = 01 -> 1 1 0 | 1 0 1 = 53
    # d = 1: the code is the coordinate itself
    ((5,), 5, 5),
    ((31,), 5, 31),
    # d = 5, B = 1: one group, dimension 0 on top
    ((1, 0, 0, 0, 0), 1, 0b10000),
    ((0, 0, 0, 0, 1), 1, 0b00001),
    ((1, 0, 1, 0, 1), 1, 0b10101),
    # d = 2, B = 3: x = 101, y = 011 -> 1 0 | 0 1 | 1 1 = 0b100111 = 39
    ((5, 3), 3, 0b100111),
]


@pytest.mark.parametrize("u, bits, code", HAND_CODES)
def test_hand_computed_codes(u, bits, code):
    got = morton_encode(np.array(u), bits)
    assert got.dtype == np.uint64
    assert got.shape == ()
    assert int(got) == code
    assert interleave_by_strings(u, bits) == code  # the reference agrees with the hand
    assert morton_decode(np.uint64(code), len(u), bits).tolist() == list(u)


def test_docstring_example():
    assert int(morton_encode([3, 0], bits=2)) == 10


DIM_BITS = [(d, b) for d in (1, 2, 3, 5) for b in sorted({1, 2, 7, 10, 63 // d})]


@pytest.mark.parametrize("d, bits", DIM_BITS)
def test_random_codes_match_string_reference_and_round_trip(rng, d, bits):
    top = (1 << bits) - 1
    u = rng.integers(0, top, size=(40, d), endpoint=True, dtype=np.uint64)
    u[0] = top  # the top value everywhere
    u[1] = 0
    u[2, 0] = top  # one coordinate at the top
    z = morton_encode(u, bits)
    assert z.dtype == np.uint64 and z.shape == (40,)
    assert [int(c) for c in z] == [interleave_by_strings(row, bits) for row in u]
    back = morton_decode(z, d, bits)
    assert back.dtype == np.uint64 and back.shape == (40, d)
    np.testing.assert_array_equal(back, u)


@pytest.mark.parametrize("d, bits", DIM_BITS)
def test_top_value_gives_all_ones_never_zero(d, bits):
    top = (1 << bits) - 1
    z = morton_encode(np.full(d, top, dtype=np.uint64), bits)
    assert int(z) == (1 << (d * bits)) - 1
    assert int(z) != 0
    np.testing.assert_array_equal(morton_decode(z, d, bits), np.full(d, top))


@pytest.mark.parametrize("d, bits", DIM_BITS)
def test_nonzero_input_never_gives_code_zero(rng, d, bits):
    top = (1 << bits) - 1
    u = rng.integers(0, top, size=(50, d), endpoint=True, dtype=np.uint64)
    # a single bit set anywhere must survive
    for j in range(d):
        for t in (0, bits - 1):
            one = np.zeros(d, dtype=np.uint64)
            one[j] = np.uint64(1) << np.uint64(t)
            assert int(morton_encode(one, bits)) == 1 << (t * d + (d - 1 - j))
    nonzero = u.any(axis=-1)
    assert (morton_encode(u, bits)[nonzero] != 0).all()


@pytest.mark.parametrize("d, bits", [(2, 3), (3, 2), (1, 6), (5, 1)])
def test_small_grids_are_a_bijection(d, bits):
    side = 1 << bits
    grid = np.stack(np.meshgrid(*[np.arange(side)] * d, indexing="ij"), axis=-1).reshape(-1, d)
    z = morton_encode(grid, bits)
    assert sorted(int(c) for c in z) == list(range(side ** d))


@pytest.mark.parametrize("d, bits", [(1, 10), (2, 10), (3, 10), (5, 12), (3, 21)])
def test_order_along_each_axis_is_preserved(rng, d, bits):
    top = (1 << bits) - 1
    u = rng.integers(0, top, size=(200, d), dtype=np.uint64)  # strictly below top
    for j in range(d):
        step = rng.integers(1, top - u[:, j] + 1, dtype=np.uint64, endpoint=False)
        step = np.maximum(step, 1)
        w = u.copy()
        w[:, j] = np.minimum(u[:, j] + step, top)
        assert (w[:, j] > u[:, j]).all()
        assert (morton_encode(w, bits) > morton_encode(u, bits)).all()


def test_dimension_zero_is_most_significant_in_each_group():
    # D3: the same bit set in dimension 0 outweighs it in any other dimension
    for d in (2, 3, 5):
        for t in range(3):
            codes = []
            for j in range(d):
                u = np.zeros(d, dtype=np.int64)
                u[j] = 1 << t
                codes.append(int(morton_encode(u, 3)))
            assert codes == sorted(codes, reverse=True)


def test_leading_shape_and_input_dtypes(rng):
    u = rng.integers(0, 1 << 10, size=(2, 3, 4, 3))
    want = morton_encode(u.reshape(-1, 3), 10).reshape(2, 3, 4)
    for dt in (np.int64, np.int32, np.uint16, np.uint64, np.int16):
        got = morton_encode(u.astype(dt), 10)
        assert got.shape == (2, 3, 4) and got.dtype == np.uint64
        np.testing.assert_array_equal(got, want)
    # non-contiguous input
    ut = np.ascontiguousarray(u.reshape(-1, 3).T).T
    assert not ut.flags.c_contiguous
    np.testing.assert_array_equal(morton_encode(ut, 10), want.reshape(-1))
    np.testing.assert_array_equal(morton_decode(want, 3, 10), u)


def test_decode_accepts_signed_codes(rng):
    z = rng.integers(0, 1 << 30, size=17)  # int64
    np.testing.assert_array_equal(morton_encode(morton_decode(z, 3, 10), 10), z.astype(np.uint64))


def test_docstring_examples():
    import doctest

    import zeta_ref.stages.morton

    result = doctest.testmod(zeta_ref.stages.morton)
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.parametrize("u, bits, exc", [
    (np.array([[4, 0, 0]]), 2, ValueError),       # a coordinate of 3 bits
    (np.array([[-1, 0, 0]]), 2, ValueError),      # negative
    (np.array([[2**21, 0, 0]]), 21, ValueError),  # one past the top at the widest 3-D code
    (np.array([[0.5, 0, 0]]), 2, TypeError),      # not integers
    (np.zeros((2, 22), dtype=np.int64), 3, ValueError),  # 66 bits
])
def test_every_backend_refuses_what_the_specification_refuses(u, bits, exc):
    """A twin that encoded out-of-range coordinates would return wrong codes, not an error."""
    from zeta_ref import backends, get_backend

    with pytest.raises(exc) as want:
        morton_encode(u, bits)
    for name in backends():
        with pytest.raises(exc) as got:
            get_backend(name).stages().morton_encode(u, bits)
        assert str(got.value) == str(want.value), name
