"""The pool of large output buffers behind the Numba backend (zeta_ref.numba.host_memory)."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import sys
import threading

import numba
import numpy as np
import pytest

from zeta_ref import ZetaConfig, zeta_attention
from zeta_ref.numba import host_memory
from zeta_ref.numba.host_memory import HUGE_PAGE, POOLED_MIN_BYTES, empty_output

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


@numba.njit
def _tail_in_numba(x):
    return x[1:]


# ways a user goes on holding a result (or part of it) after dropping the array itself
HOLDERS = {
    "the array": lambda a: a,
    "a view": lambda a: a.view(np.uint32),
    "a slice": lambda a: a[1000:],
    "a strided slice": lambda a: a[::7],
    "a reshape": lambda a: a.reshape(8, -1),
    "np.asarray": np.asarray,
    "a memoryview": memoryview,
    "an array on a memoryview": lambda a: np.frombuffer(memoryview(a)[5:], dtype=np.float32),
    "a list": lambda a: [a],
    "a dict": lambda a: {"out": a},
    "a view made in Numba": _tail_in_numba,
}


def _array_in(held):
    """The array that ``held`` (one of HOLDERS' results) keeps."""
    if isinstance(held, list):
        return held[0]
    if isinstance(held, dict):
        return held["out"]
    return np.asarray(held)


@pytest.mark.parametrize("hold", HOLDERS.values(), ids=HOLDERS.keys())
def test_a_result_still_held_is_never_reused(hold):
    a = empty_output(BIG, np.float32)
    where = a.ctypes.data
    a[...] = np.arange(BIG[0])
    held = hold(a)
    del a
    seen = np.array(_array_in(held))  # a copy of what the holder sees
    assert host_memory.stats()["free_bytes"] == 0
    b = empty_output(BIG, np.float32)
    assert b.ctypes.data != where  # the held buffer is not handed out again
    b[...] = -1.0
    np.testing.assert_array_equal(_array_in(held), seen)  # and nobody wrote into it
    del held, b
    c = empty_output(BIG, np.float32)
    assert c.ctypes.data == where  # all dropped: the pool takes the buffer again


@pytest.mark.parametrize("count", (1, 3, 1 << 30))
def test_reference_counts_play_no_part(monkeypatch, count):
    # a Python whose sys.getrefcount means nothing; 3 is what an exact count rule took as free
    monkeypatch.setattr(sys, "getrefcount", lambda obj: count)
    a = empty_output(BIG, np.float32)
    where = a.ctypes.data
    tail = a[10:]
    del a
    b = empty_output(BIG, np.float32)
    assert b.ctypes.data != where
    del tail, b
    c = empty_output(BIG, np.float32)
    assert c.ctypes.data == where


def test_a_result_in_a_reference_cycle_stays_busy_until_collected():
    # objects destroyed late (as some Pythons always do) only keep a buffer busy for longer
    enabled = gc.isenabled()
    gc.disable()
    try:
        a = empty_output(BIG, np.float32)
        where = a.ctypes.data
        cycle = [a]
        cycle.append(cycle)
        del a, cycle
        b = empty_output(BIG, np.float32)
        assert b.ctypes.data != where
        del b
        gc.collect()
        c = empty_output(BIG, np.float32)
        assert c.ctypes.data == where
    finally:
        if enabled:
            gc.enable()


def test_a_buffer_forgotten_while_in_use_stays_valid():
    a = empty_output(BIG, np.float32)
    a[...] = 1.0
    host_memory.limit(0)  # the pool forgets the buffer; the array keeps its memory
    assert host_memory.stats()["buffers"] == 0
    b = empty_output(BIG, np.float32)
    b[...] = 2.0
    assert (a == 1.0).all()


def test_copies_of_a_pooled_array_share_nothing_with_it():
    a = empty_output(BIG, np.float32)
    where = a.ctypes.data
    a[...] = np.arange(BIG[0])
    saved = io.BytesIO()
    np.save(saved, a)
    saved.seek(0)
    copies = [pickle.loads(pickle.dumps(a)), pickle.loads(pickle.dumps(a, protocol=5)),
              copy.deepcopy(a), copy.copy(a), np.load(saved)]
    for c in copies:
        assert not np.shares_memory(c, a)
        np.testing.assert_array_equal(c, a)
    del a
    b = empty_output(BIG, np.float32)
    assert b.ctypes.data == where  # the copies do not keep the buffer


def test_a_pooled_array_is_a_plain_writable_array():
    a = empty_output((3, BIG[0]), np.float64)
    assert type(a) is np.ndarray and a.shape == (3, BIG[0]) and a.dtype == np.float64
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % HUGE_PAGE == 0


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
            buffer.memory[...] = 0x7F
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


def test_threads_never_get_a_buffer_another_holds():
    wrong = []

    def work(tag):
        held = []
        for _ in range(40):
            a = empty_output(BIG, np.float32)
            a[...] = tag
            held.append(a)
            if len(held) > 2:
                held.pop(0)  # its buffer is free for any thread now
            wrong.extend(tag for h in held if not (h == tag).all())

    threads = [threading.Thread(target=work, args=(tag,)) for tag in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert host_memory.stats()["free_bytes"] == host_memory.stats()["bytes"] > 0
