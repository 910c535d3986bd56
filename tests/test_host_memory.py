"""The pool of large output buffers behind the Numba backend (zeta_ref.host_memory)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from zeta_ref import ZetaConfig, host_memory, zeta_attention
from zeta_ref.host_memory import HUGE_PAGE, POOLED_MIN_BYTES, empty_output

BIG = (POOLED_MIN_BYTES // 4 + 1000,)  # float32 elements: just over the pooling threshold


@pytest.fixture(autouse=True)
def fresh_pool():
    saved = host_memory.limit()
    host_memory.release()
    yield
    host_memory.limit(saved)
    host_memory.release()


def test_a_dropped_buffer_is_reused_and_a_referenced_one_is_not():
    a = empty_output(BIG, np.float32)
    where = a.ctypes.data
    assert where % HUGE_PAGE == 0
    del a
    b = empty_output(BIG, np.float32)
    assert b.ctypes.data == where  # the same memory again
    tail = b[10:]  # a view keeps the buffer in use
    del b
    c = empty_output(BIG, np.float32)
    assert c.ctypes.data != where
    c[...] = 1.0
    tail[...] = 2.0
    assert (c == 1.0).all() and (tail == 2.0).all()  # no sharing


def test_size_classes_and_small_arrays():
    a = empty_output(BIG, np.float32)
    other = a.ctypes.data
    del a
    b = empty_output((BIG[0] + 3 * HUGE_PAGE,), np.float32)  # a larger class: new memory
    assert b.ctypes.data != other
    small = empty_output((10,), np.float64)
    assert small.base is None  # plain np.empty, not pooled


def test_limit_and_release():
    a = empty_output(BIG, np.float32)
    del a
    held = host_memory.stats()
    assert held["buffers"] == 1 and held["free_bytes"] == held["bytes"] > 0
    assert host_memory.release() == held["bytes"]
    assert host_memory.stats() == {"buffers": 0, "bytes": 0, "free_bytes": 0}
    host_memory.limit(0)  # reuse off: nothing is kept
    a = empty_output(BIG, np.float32)
    assert host_memory.stats()["buffers"] == 0
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="nbytes must be an integer >= 0"):
            host_memory.limit(bad)


def _inputs(seed, n=12000, d_v=64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3)).astype(np.float32),
            rng.standard_normal((n, 3)).astype(np.float32),
            rng.standard_normal((n, d_v)).astype(np.float32))


@pytest.mark.parametrize("causal", ("inclusive", "strict", "none"))
def test_reused_buffers_are_overwritten_completely(causal):
    # a pass whose outputs come from buffers full of junk must equal one on fresh memory
    cfg = ZetaConfig(causal=causal, window=40)
    x = _inputs(1)
    host_memory.limit(0)
    _, want = zeta_attention(*x, cfg, backend="numba", return_intermediates=True)
    host_memory.limit(256 << 20)
    for _ in range(2):
        zeta_attention(*x, cfg, backend="numba", return_intermediates=True)
        for buffer in host_memory._buffers:  # junk in every buffer (all free now)
            buffer[...] = 0x7F
        _, got = zeta_attention(*x, cfg, backend="numba", return_intermediates=True)
        assert host_memory.stats()["buffers"] > 0
        for name, w in want.arrays().items():
            np.testing.assert_array_equal(getattr(got, name), w, err_msg=name)
        del got


def test_threads_share_the_pool_safely():
    inputs = [_inputs(seed, n=9000) for seed in range(4)]
    host_memory.limit(0)
    want = [zeta_attention(*x, backend="numba") for x in inputs]
    host_memory.limit(256 << 20)
    got = [[] for _ in inputs]

    def work(i):
        for _ in range(3):
            got[i].append(zeta_attention(*inputs[i], backend="numba"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in enumerate(got):
        assert len(outs) == 3
        for out in outs:
            np.testing.assert_array_equal(out, want[i])


def test_without_exact_reference_counts_nothing_is_kept(monkeypatch):
    # what a free-threaded Python gets: aligned arrays, no reuse, nothing held
    monkeypatch.setattr(host_memory, "_COUNTS_ARE_EXACT", False)
    a = empty_output(BIG, np.float32)
    assert a.ctypes.data % HUGE_PAGE == 0
    assert host_memory.stats()["buffers"] == 0
