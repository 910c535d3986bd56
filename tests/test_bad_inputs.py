"""Bad input (issue 2, section 4): a clear ValueError or TypeError that names the argument,
never a wrong answer."""

import os
import subprocess
import sys

import numpy as np
import pytest

from zeta_ref import ZetaConfig, backends, morton_decode, morton_encode, oracles, zeta_attention
from zeta_ref.stages.quantize import squash


def qkv(n=6, d_k=3, d_v=4, lead=(), dtype=np.float64):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal(lead + (n, d)).astype(dtype) for d in (d_k, d_k, d_v))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("which, bad, match", [
    ("q", np.zeros(3), r"\bq\b.*dimensions"),  # rank 1
    ("k", np.zeros(3), r"\bk\b.*dimensions"),
    ("v", np.zeros(4), r"\bv\b.*dimensions"),
    ("q", np.zeros((7, 3)), r"q and k.*same shape"),  # N differs
    ("k", np.zeros((6, 2)), r"q and k.*same shape"),  # d_k differs
    ("v", np.zeros((5, 4)), r"\bv\b.*shape"),  # N of v differs
    ("q", np.zeros((2, 6, 3)), r"q and k.*same shape"),  # leading dims differ
    ("v", np.zeros((2, 6, 4)), r"\bv\b.*shape"),
])
def test_wrong_ranks_and_shapes(which, bad, match):
    args = dict(zip("qkv", qkv()))
    args[which] = bad
    with pytest.raises(ValueError, match=match):
        zeta_attention(args["q"], args["k"], args["v"])


def test_mismatched_leading_dims():
    q, k, v = qkv(lead=(2, 3))
    with pytest.raises(ValueError, match=r"q and k"):
        zeta_attention(q, k[:, :2], v)
    with pytest.raises(ValueError, match=r"\bv\b"):
        zeta_attention(q, k, v[:1])
    with pytest.raises(ValueError, match=r"\bv\b"):
        zeta_attention(q, k, v[None])


def test_empty_sequence_and_empty_dims():
    q, k, v = qkv(n=0)
    with pytest.raises(ValueError, match=r"\bN\b"):
        zeta_attention(q, k, v)
    q, k, v = qkv(d_k=0)
    with pytest.raises(ValueError, match=r"d_k"):
        zeta_attention(q, k, v)
    q, k, v = qkv(d_v=0)
    with pytest.raises(ValueError, match=r"d_v"):
        zeta_attention(q, k, v)
    q, k, v = qkv(lead=(0,))
    with pytest.raises(ValueError, match=r"leading"):
        zeta_attention(q, k, v)


# ----------------------------------------------------------------------------- values, dtypes


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_or_inf(which, value, dtype):
    args = dict(zip("qkv", qkv(lead=(2,), dtype=dtype)))
    args[which][1, 4, 0] = value
    with pytest.raises(ValueError, match=rf"^{which} contains NaN or Inf.*\(1, 4, 0\)"):
        zeta_attention(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool, np.complex128,
                                   np.float16, object])
def test_non_float_arrays(which, dtype):
    args = dict(zip("qkv", qkv()))
    args[which] = args[which].astype(dtype)
    with pytest.raises(TypeError, match=rf"^{which} must be a float32 or float64 array"):
        zeta_attention(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f8", "<f4"])
def test_either_byte_order_is_accepted(backend, dtype):
    # a big-endian '>f8' is a float64 too: the same numbers, in the other byte order; the
    # result is native and the same as for native inputs, bit for bit
    q, k, v = qkv(n=9, lead=(2,))
    native = tuple(x.astype(np.dtype(dtype).newbyteorder("=")) for x in (q, k, v))
    stored = tuple(x.astype(dtype) for x in (q, k, v))
    cfg = ZetaConfig(k=3, window=5)
    want = zeta_attention(*native, cfg, backend=backend)
    got = zeta_attention(*stored, cfg, backend=backend)
    assert got.dtype == want.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, want)
    # non-contiguous too
    got = zeta_attention(*(x[:, ::2] for x in stored), cfg, backend=backend)
    np.testing.assert_array_equal(got, zeta_attention(*(x[:, ::2] for x in native), cfg,
                                                      backend=backend))
    if backend == "numpy":  # the oracles take the same inputs
        np.testing.assert_array_equal(oracles.dense_attention(*stored),
                                      oracles.dense_attention(*native))
        np.testing.assert_array_equal(oracles.exact_topk(*stored[:2], 3),
                                      oracles.exact_topk(*native[:2], 3))


def test_other_byte_order_of_other_dtypes_is_refused_by_dtype():
    q, k, v = qkv()
    # the message names the dtype, not its byte order
    with pytest.raises(TypeError, match=r"^q must be a float32 or float64 .*; got dtype float16$"):
        zeta_attention(q.astype(">f2"), k, v)
    with pytest.raises(TypeError, match=r"^k must be a float32 or float64 .*; got dtype int64$"):
        zeta_attention(q, k.astype(">i8"), v)


def test_python_lists_of_ints_are_not_floats():
    with pytest.raises(TypeError, match=r"^q must be"):
        zeta_attention([[1, 2, 3]], [[1.0, 2.0, 3.0]], [[1.0]])


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64, np.float64),
                                    (np.float64, np.float32, np.float64),
                                    (np.float64, np.float64, np.float32)])
def test_mixed_dtypes(dtypes):
    q, k, v = (x.astype(d) for x, d in zip(qkv(), dtypes))
    with pytest.raises(TypeError, match=r"q, k and v must share one dtype"):
        zeta_attention(q, k, v)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_ragged_lists_are_named(which):
    """Nested lists that do not make a rectangular array: an error that names the argument."""
    args = [qkv(n=2)[i].tolist() for i in range(3)]
    args[which] = [[1.0, 2.0, 3.0], [1.0]]
    with pytest.raises(ValueError, match=rf"^{'qkv'[which]} cannot be read as an array"):
        zeta_attention(*args)


def test_a_clip_range_of_finite_width_near_the_largest_works():
    """A width near the largest float is fine: the clip squash maps the range onto [0, 1], so
    values near 0 land in the middle cell (a width that overflowed put every cell at 0)."""
    cfg = ZetaConfig(squash="clip", clip_range=(-8e307, 8e307), k=2, causal="none")
    x = np.array([[-1.0], [0.0], [1.0]])
    _, inter = zeta_attention(x, x, np.ones((3, 1)), cfg, return_intermediates=True)
    assert inter.q_coords.ravel().tolist() == [512, 512, 512]


def test_lists_of_floats_work():
    q, k, v = qkv(n=3)
    out = zeta_attention(q.tolist(), k.tolist(), v.tolist(), ZetaConfig(k=2))
    assert np.array_equal(out, zeta_attention(q, k, v, ZetaConfig(k=2)))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(k=0), ValueError, r"^k must"),
    (dict(k=-3), ValueError, r"^k must"),
    (dict(k=2.0), ValueError, r"^k must"),
    (dict(k=True), ValueError, r"^k must"),
    (dict(k="4"), ValueError, r"^k must"),
    (dict(bits=0), ValueError, r"^bits must"),
    (dict(bits=64), ValueError, r"^bits must"),
    (dict(bits=True), ValueError, r"^bits must"),
    (dict(bits=10.0), ValueError, r"^bits must"),
    (dict(chunk_size=0), ValueError, r"^chunk_size must"),
    (dict(chunk_size=-1), ValueError, r"^chunk_size must"),
    (dict(chunk_size=True), ValueError, r"^chunk_size must"),
    (dict(chunk_size=2.5), ValueError, r"^chunk_size must"),
    (dict(k=4, window=3), ValueError, r"^window must"),
    (dict(k=1, window=True), ValueError, r"^window must"),
    (dict(k=4, window=0), ValueError, r"^window must"),
    (dict(k=4, window=6.0), ValueError, r"^window must"),
    (dict(gamma=0.0), ValueError, r"^gamma must be > 0"),
    (dict(gamma=-0.5), ValueError, r"^gamma must be > 0"),
    (dict(gamma=0, score="cauchy"), ValueError, r"^gamma"),
    (dict(gamma=float("nan")), ValueError, r"^gamma"),
    (dict(gamma=float("inf"), score="softmax"), ValueError, r"^gamma"),
    (dict(gamma=True), ValueError, r"^gamma"),
    (dict(gamma="0.5"), ValueError, r"^gamma"),
    (dict(causal="causal"), ValueError, r"^causal must be one of 'inclusive', 'strict', 'none'"),
    (dict(causal="Inclusive"), ValueError, r"^causal must"),
    (dict(causal=None), ValueError, r"^causal must"),
    (dict(score="dot"), ValueError, r"^score must be one of 'cauchy'"),
    (dict(squash="minmax"), ValueError, r"^squash must be one of 'sigmoid'"),
    (dict(history_mean=1), TypeError, r"^history_mean must"),
    (dict(history_mean="yes"), TypeError, r"^history_mean must"),
    (dict(history_mean=np.int64(1)), TypeError, r"^history_mean must"),  # np.True_ is fine
    (dict(clip_range=(1.0, 1.0)), ValueError, r"^clip_range"),
    (dict(clip_range=(2.0, -2.0)), ValueError, r"^clip_range"),
    (dict(clip_range=3.0), ValueError, r"^clip_range"),
    (dict(clip_range=(0.0, float("inf"))), ValueError, r"^clip_range"),
    (dict(clip_range=(0.0, 1.0, 2.0)), ValueError, r"^clip_range"),
    (dict(clip_range=(0, 10**400)), ValueError, r"^clip_range must be finite"),
    (dict(clip_range=(-1e308, 1e308)), ValueError, r"^clip_range must have a finite width"),
    # distinct as given, one float64 number once converted: the squash would divide by 0
    (dict(clip_range=(2**53, 2**53 + 1)), ValueError, r"^clip_range must have lo < hi as float64"),
    (dict(gamma=10**400), ValueError, r"^gamma must be a finite real number"),
    (dict(gamma=np.longdouble("1e-4000")), ValueError, r"^gamma must be > 0"),
    (dict(k=2**70), ValueError, r"^k must be at most 2\*\*63 - 1"),
    (dict(k=2**63), ValueError, r"^k must be at most"),
    (dict(k=4, window=2**64), ValueError, r"^window must be at most"),
    (dict(chunk_size=2**70), ValueError, r"^chunk_size must be at most"),
])
def test_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ZetaConfig(**kwargs)


@pytest.mark.parametrize("d_k, bits", [(7, 10), (2, 32), (3, 22), (64, 1), (1, 63 + 1)])
def test_code_wider_than_63_bits(d_k, bits):
    if bits > 63:
        with pytest.raises(ValueError, match=r"^bits"):
            ZetaConfig(bits=bits)
        return
    q, k, v = qkv(d_k=d_k)
    with pytest.raises(ValueError, match=r"config\.bits.*63"):
        zeta_attention(q, k, v, ZetaConfig(k=2, bits=bits))


def test_no_bits_fit_beyond_63_dimensions():
    q, k, v = qkv(d_k=64)
    with pytest.raises(ValueError, match=r"no config\.bits fits: project to at most 63"):
        zeta_attention(q, k, v, ZetaConfig(k=2, bits=1))


@pytest.mark.parametrize("d_k, bits", [(7, 9), (3, 21), (1, 63), (2, 31)])
def test_largest_code_widths_work(d_k, bits):
    q, k, v = qkv(d_k=d_k)
    assert np.isfinite(zeta_attention(q, k, v, ZetaConfig(k=2, bits=bits))).all()


def test_config_must_be_a_zeta_config():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"^config must be a ZetaConfig"):
        zeta_attention(q, k, v, {"k": 2})
    with pytest.raises(TypeError, match=r"^return_intermediates"):
        zeta_attention(q, k, v, return_intermediates=1)


@pytest.mark.parametrize("name", ["cuda", "NumPy", "", None, 3])
def test_unknown_backend_lists_the_available_ones(name):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"^backend must be one of") as info:
        zeta_attention(q, k, v, backend=name)
    for available in backends():
        assert repr(available) in str(info.value)
    assert "'numpy'" in str(info.value)


def test_every_backend_is_described():
    from zeta_ref.backends import REGISTRY, describe_backends

    lines = describe_backends().splitlines()
    assert len(lines) == len(REGISTRY)
    for line, (name, entry) in zip(lines, REGISTRY.items()):
        assert line.startswith(name + " ") and entry.description in line
        assert ("(runs here)" in line) == (name in backends()), line
        if name not in backends():  # and why not
            assert f"(not here: {entry.problem()})" in line


def test_unknown_option_strings_in_the_stage_functions_and_oracles():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"^squash must be one of"):
        squash(q, "minmax")
    with pytest.raises(ValueError, match=r"^score must be one of"):
        oracles.dense_attention(q, k, v, score="dot")
    with pytest.raises(ValueError, match=r"^causal must be one of"):
        oracles.dense_attention(q, k, v, causal="future")
    with pytest.raises(ValueError, match=r"^score must be one of"):
        oracles.exact_topk(q, k, 2, score="dot")
    with pytest.raises(ValueError, match=r"^causal must be one of"):
        oracles.exact_topk(q, k, 2, causal="future")
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"^k_top must"):
            oracles.exact_topk(q, k, bad)


def test_oracles_validate_their_arrays():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"^q contains NaN"):
        oracles.dense_attention(np.full_like(q, np.nan), k, v)
    with pytest.raises(TypeError, match=r"^k must be a float"):
        oracles.exact_topk(q, k.astype(int), 2)
    with pytest.raises(ValueError, match=r"q and k"):
        oracles.exact_topk(q, k[:3], 2)


# ----------------------------------------------------------------------------- morton


@pytest.mark.parametrize("u, bits, exc, match", [
    (np.array([4, 0]), 2, ValueError, r"^u must hold values in \[0, 2\^bits\)"),  # 2^bits
    (np.array([0, 1 << 10]), 10, ValueError, r"^u must hold values"),
    (np.array([-1, 0]), 2, ValueError, r"^u must hold values"),
    (np.array([[0, 1], [2, -5]]), 4, ValueError, r"^u must hold values"),
    (np.array([2 ** 64 - 1], dtype=np.uint64), 63, ValueError, r"^u must hold values"),
    (np.array([1.0, 2.0]), 4, TypeError, r"^u must be an array of integers"),
    (np.array([1.5, 2.0]), 4, TypeError, r"^u must be an array of integers"),
    (np.array([True, False]), 4, TypeError, r"^u must be an array of integers"),
    (np.array([1 + 0j]), 4, TypeError, r"^u must be an array of integers"),
    (np.zeros(8, dtype=np.int64), 8, ValueError, r"^bits \* d must be <= 63.*d=8"),
    (np.zeros(3, dtype=np.int64), 22, ValueError, r"^bits \* d must be <= 63"),
    (np.zeros(1, dtype=np.int64), 64, ValueError, r"^bits \* d must be <= 63"),
    (np.zeros(2, dtype=np.int64), 0, ValueError, r"^bits must be an integer >= 1"),
    (np.zeros(2, dtype=np.int64), True, ValueError, r"^bits must be an integer"),
    (np.zeros(2, dtype=np.int64), 2.0, ValueError, r"^bits must be an integer"),
    (np.int64(3), 4, ValueError, r"^u must have shape \(\.\.\., d\)"),
    (np.zeros((3, 0), dtype=np.int64), 4, ValueError, r"^u must have shape"),
])
def test_morton_encode_bad_input(u, bits, exc, match):
    with pytest.raises(exc, match=match):
        morton_encode(u, bits)


@pytest.mark.parametrize("z, d, bits, exc, match", [
    (np.array([16]), 2, 2, ValueError, r"^z must hold codes in \[0, 2\^\(d\*bits\)\)"),
    (np.array([-1]), 2, 2, ValueError, r"^z must hold codes"),
    (np.array([1 << 63], dtype=np.uint64), 3, 21, ValueError, r"^z must hold codes"),
    (np.array([1.0]), 2, 2, TypeError, r"^z must be an array of integers"),
    (np.array([True]), 2, 2, TypeError, r"^z must be an array of integers"),
    (np.array([1]), 3, 22, ValueError, r"^bits \* d must be <= 63"),
    (np.array([1]), 0, 2, ValueError, r"^d must be an integer >= 1"),
    (np.array([1]), True, 2, ValueError, r"^d must be an integer"),
    (np.array([1]), 2.0, 2, ValueError, r"^d must be an integer"),
    (np.array([1]), 2, 0, ValueError, r"^bits must be an integer"),
    (np.array([1]), 2, False, ValueError, r"^bits must be an integer"),
])
def test_morton_decode_bad_input(z, d, bits, exc, match):
    with pytest.raises(exc, match=match):
        morton_decode(z, d, bits)


def test_morton_edges_that_are_fine():
    assert int(morton_encode(np.array([(1 << 63) - 1], dtype=np.uint64), 63)) == (1 << 63) - 1
    assert int(morton_encode(np.array([3, 3]), 2)) == 15
    assert morton_encode(np.zeros((0, 3), dtype=np.int64), 4).shape == (0,)
    assert morton_decode(np.array([(1 << 63) - 1], dtype=np.uint64), 1, 63).tolist() == [
        [(1 << 63) - 1]]


def _memory_error_held_to_1_5_gib(body: str) -> str:
    """Run ``body`` (Python that prints a MemoryError's message) in a process whose address
    space is held to 1.5 GiB; its output. Skips where the system does not hold the limit."""
    script = (
        "import resource, sys, numpy as np\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
        "    np.empty(1 << 31, np.uint8)  # 2 GiB: refused where the limit holds\n"
        "    print('unenforced'); sys.exit(0)\n"
        "except (ValueError, OSError):\n"
        "    print('unenforced'); sys.exit(0)\n"
        "except MemoryError:\n"
        "    pass\n"
        "from zeta_ref import ZetaConfig, zeta_attention\n"
        "rng = np.random.default_rng(0)\n" + body)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")  # small reserves
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    if done.stdout.strip() == "unenforced":
        pytest.skip("this system does not hold a process to RLIMIT_AS")
    return done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_a_window_too_large_for_memory_names_window_and_k():
    """W near N makes the window (N, N): where that does not fit, the MemoryError names the
    window and k and the memory they need, not an anonymous buffer (a CPU audit's find,
    2026-12-05). Run in a process whose address space is held to 1.5 GiB."""
    out = _memory_error_held_to_1_5_gib(
        "q, k = (rng.standard_normal((1, 16384, 3)) for _ in range(2))\n"
        "v = rng.standard_normal((1, 16384, 4))\n"
        "try:\n"
        "    zeta_attention(q, k, v, ZetaConfig(k=4, window=2**26, causal='none'))\n"
        "except MemoryError as err:\n"
        "    print(err)\n")
    assert out.startswith("the window of W = 16384 keys for each of the 16384 queries"
                          " of 1 rows (config.window = 67108864, config.k = 4, each "
                          "capped at N) needs 2 GiB as int64 alone"), out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_a_weighted_sum_too_large_for_memory_names_k_and_d_v():
    """k near N makes the specification's stage 6 gather (N, k, d_v) value rows: where that
    does not fit, the MemoryError names k, d_v and the memory they need (the window fits).
    Run in a process whose address space is held to 1.5 GiB."""
    out = _memory_error_held_to_1_5_gib(
        "q, k = (rng.standard_normal((1, 4096, 3)) for _ in range(2))\n"
        "v = rng.standard_normal((1, 4096, 64))\n"
        "try:\n"
        "    zeta_attention(q, k, v, ZetaConfig(k=4096, causal='none'))\n"
        "except MemoryError as err:\n"
        "    print(err)\n")
    assert out.startswith("the weighted sum over k = 4096 candidates for each of the 4096 "
                          "queries of 1 rows (config.k = 4096, capped at N) with d_v = 64 "
                          "needs 8 GiB for the gathered value rows alone on the numpy "
                          "backend"), out
