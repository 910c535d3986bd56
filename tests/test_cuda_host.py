"""The GPU backend's CUDA kernels, run on the CPU by tests/cuda_host (no GPU needed).

1. The emulation itself: warp shuffles, ballots and the block barrier's count as CUDA defines
   them, against the same operations written in NumPy; the mistakes it must stop on (a lane
   that exits before a full-mask shuffle, a shuffle that reads outside its mask, an access
   past the end of an array or of a thread's stack); a result that depends on the threads'
   order; a changed header recompiled; the wall between its device arrays and NumPy.
2. The GPU tests (every ``gpu`` test of GPU_TEST_FILES) in a
   subprocess whose ``import cupy`` finds the emulation: every kernel against the NumPy
   specification on a machine without a GPU, CI's included; and the GPU benchmark's code
   (``zeta-ref bench --backends cupy``) end to end at small shapes.
3. The checks of an experiment whose blocks wait for each other (the mean term in one pass,
   docs/data/means_one_pass_ab.py --check-only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "tests" / "cuda_host"

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                reason="no C++ compiler (g++) for the CUDA emulation")


@pytest.fixture(scope="module")
def emu():
    """tests/cuda_host/cupy, imported under a name of its own (not as ``cupy``)."""
    spec = importlib.util.spec_from_file_location("cuda_host_cupy", HOST / "cupy" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LANES = r"""
extern "C" __global__ void lanes(const int* __restrict__ in, int width, int* __restrict__ out) {
    int t = threadIdx.x, v = in[t];
    out[7 * t + 0] = __shfl_sync(0xffffffffu, v, 5, width);
    out[7 * t + 1] = __shfl_xor_sync(0xffffffffu, v, 3, width);
    out[7 * t + 2] = __shfl_up_sync(0xffffffffu, v, 2, width);
    out[7 * t + 3] = __shfl_down_sync(0xffffffffu, v, 2, width);
    out[7 * t + 4] = (int)__ballot_sync(0xffffffffu, v & 1);
    out[7 * t + 5] = __syncthreads_count(v > 50);
    __shared__ int total[1];
    if (t == 0) total[0] = 0;
    __syncthreads();
    atomicAdd(total, v);
    __syncthreads();
    out[7 * t + 6] = total[0];
}

extern "C" __global__ void early_exit(int* out) {
    if (threadIdx.x == 7) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
}

// lane 1 reads what lane 0 wrote with no __syncwarp between: a race
extern "C" __global__ void missing_barrier(int* out) {
    __shared__ int slot[1];
    if (threadIdx.x == 0) slot[0] = 42;
    if (threadIdx.x == 1) out[blockIdx.x] = slot[0];
}

extern "C" __global__ void past_the_end(const float* x, long long n, float* out, int write) {
    if (write) out[n + threadIdx.x] = 1.0f;
    else out[threadIdx.x] = x[n + threadIdx.x];
}

extern "C" __global__ void deep_stack(int* out) {
    volatile char big[256 * 1024];
    big[threadIdx.x] = 1;
    out[threadIdx.x] = big[threadIdx.x];
}

extern "C" __global__ void outside_mask(int* out) {
    if (threadIdx.x < 16)
        out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 20);
}
"""


def _lanes_in_numpy(v, width):
    """What CUDA's warp operations give lane by lane, for one block of 64 threads."""
    lane = np.arange(64) % 32
    warp = np.arange(64) // 32
    seg = lane - lane % width
    src = {0: seg + 5 % width, 1: np.where((lane ^ 3) < seg + width, lane ^ 3, lane),
           2: np.where(lane - 2 >= seg, lane - 2, lane),
           3: np.where(lane + 2 < seg + width, lane + 2, lane)}
    out = np.zeros((64, 7), np.int64)
    for col, s in src.items():
        out[:, col] = v[warp * 32 + s]
    for w in (0, 1):
        bits = (v[w * 32:(w + 1) * 32] & 1).astype(np.int64)
        out[w * 32:(w + 1) * 32, 4] = np.int32(np.uint32(int((bits << np.arange(32)).sum()))
                                               .view(np.int32))
    out[:, 5] = (v > 50).sum()
    out[:, 6] = v.sum()
    return out


@pytest.mark.parametrize("width", (32, 16, 8, 4, 2, 1))
def test_warp_operations_are_cudas(emu, width):
    module = emu.RawModule(code=_LANES)
    v = np.random.default_rng(width).integers(0, 100, 64).astype(np.int32)
    out = emu.zeros(64 * 7, dtype=np.int32)
    module.get_function("lanes")((1,), (64,), (emu.asarray(v), np.int32(width), out))
    np.testing.assert_array_equal(emu.asnumpy(out).reshape(64, 7), _lanes_in_numpy(v, width))


def test_the_mistakes_a_gpu_hides_are_stopped(emu):
    module = emu.RawModule(code=_LANES)
    out = emu.zeros(32, dtype=np.int32)
    with pytest.raises(RuntimeError, match="exited"):
        module.get_function("early_exit")((1,), (32,), (out,))
    with pytest.raises(RuntimeError, match="outside the mask"):
        module.get_function("outside_mask")((1,), (32,), (out,))


@pytest.mark.parametrize("order, seen", [("forward", [42, 42]), ("reverse", [-1, -1]),
                                         ("alternate", [42, -1])])
def test_an_order_dependent_result_shows(emu, monkeypatch, order, seen):
    """A missing barrier: lane 1 sees lane 0's write when lane 0 takes its turn first, and
    the poison of unwritten shared memory (all bits set: -1) when the order is reversed; by
    default the blocks (and the launches) take the two orders by turns. Each block finds the
    poison again, not the block before's write."""
    monkeypatch.setenv("ZETA_REF_CUDA_HOST_ORDER", order)
    fn = emu.RawModule(code=_LANES).get_function("missing_barrier")
    out = emu.zeros(2, dtype=np.int32)
    fn((2,), (32,), (out,))
    got = sorted(emu.asnumpy(out).tolist(), reverse=True)
    assert got == seen
    if order == "alternate":  # a launch of one block: the orders by turns, launch by launch
        firsts = []
        for _ in range(2):
            fn((1,), (32,), (out,))
            firsts.append(int(out[0]))
        assert sorted(firsts, reverse=True) == [42, -1]


@pytest.mark.parametrize("n", (1024, 1000, 3))
@pytest.mark.parametrize("write", (0, 1))
def test_out_of_bounds_accesses_are_stopped(emu, n, write):
    """Reading or writing one element past the end of a device array stops the launch with
    the thread, and the argument the address lies past."""
    fn = emu.RawModule(code=_LANES).get_function("past_the_end")
    x, out = emu.zeros(n, dtype=np.float32), emu.zeros(n, dtype=np.float32)
    with pytest.raises(RuntimeError, match=f"out-of-bounds .* past the end of argument "
                                           f"{2 if write else 0}"):
        fn((1,), (32,), (x, np.int64(n), out, np.int32(write)))
    threads = min(n, 32)  # the last elements, in bounds: it runs
    fn((1,), (threads,), (x, np.int64(n - threads), out, np.int32(write)))


def test_a_thread_past_its_stack_is_stopped(emu):
    fn = emu.RawModule(code=_LANES).get_function("deep_stack")
    with pytest.raises(RuntimeError, match="stack overflow"):
        fn((1,), (32,), (emu.zeros(32, dtype=np.int32),))


def test_a_changed_header_is_recompiled(emu, tmp_path, monkeypatch):
    """The cache of compiled modules is keyed by the headers a source may include too."""
    monkeypatch.setenv("ZETA_REF_CUDA_HOST_CACHE", str(tmp_path / "modules"))
    code = '#include "value.cuh"\nextern "C" __global__ void value(int* out) { out[0] = VALUE; }'
    out = emu.zeros(1, dtype=np.int32)
    for value in (1, 2):
        (tmp_path / "value.cuh").write_text(f"#define VALUE {value}\n")
        emu.RawModule(code=code, options=(f"-I{tmp_path}",)).get_function("value")(
            (1,), (1,), (out,))
        assert int(out[0]) == value


def test_device_arrays_stay_behind_a_wall(emu):
    x = emu.asarray(np.arange(4.0))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    assert not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__")
    module = emu.RawModule(code=_LANES)
    with pytest.raises(TypeError, match="NumPy array"):
        module.get_function("early_exit")((1,), (32,), (np.zeros(32, np.int32),))
    assert isinstance(emu.asnumpy(x * 2 + 1), np.ndarray)


GPU_TEST_FILES = ("tests/test_cupy.py", "tests/test_cupy_backward.py", "tests/test_mqar_gpu.py",
                  "tests/test_crosscheck.py")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """One cache of compiled modules for the subprocesses below."""
    return tmp_path_factory.mktemp("cuda_host_modules")


def _env(modules):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOST), str(ROOT)]),
                NUMBA_NUM_THREADS="1", ZETA_REF_CUDA_HOST_CACHE=str(modules),
                ZETA_REF_CUDA_HOST_ORDER="alternate")


def test_the_gpu_tests_pass_on_the_cpu(modules):
    """Every ``gpu`` test, run on the emulation, the threads of a block taking turns from the
    first or from the last by turns (a result that depends on the order fails). Skipped there,
    and only those: the tests marked ``gpu_only`` (each one exactly once) and those that need
    torch where it is not installed."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                           "-p", "no:cacheprovider", "-o", "addopts=", *GPU_TEST_FILES],
                          cwd=ROOT, env=_env(modules), capture_output=True, text=True,
                          timeout=1800)
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert int(re.search(r"(\d+) passed", done.stdout).group(1)) >= 300, tail
    gpu_only = 0
    for count, reason in re.findall(r"^SKIPPED \[(\d+)\] \S+ (.*)$", done.stdout, re.M):
        if "could not import 'torch'" in reason:
            continue
        assert "too large for the CPU emulation" in reason, tail
        gpu_only += int(count)
    marked = sum(len(re.findall(r"^@pytest\.mark\.gpu_only", (ROOT / f).read_text(), re.M))
                 for f in GPU_TEST_FILES)
    assert gpu_only == marked > 0, tail


def test_the_gpu_benchmark_runs_on_the_cpu(tmp_path, modules):
    """``zeta-ref bench --backends cupy`` end to end on the emulation, at two small shapes:
    the GPU half of the benchmark (stage times, the sort reference, the backward pass, the
    JSON) runs without a GPU. Its times say nothing of a GPU's, and its device is named so."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "zeta_ref", "bench", "--backends", "cupy",
                           "--gpu-shapes", "1x2x300", "2x1x1000", "--copy-mib", "1",
                           "--no-sdpa", "--repeats", "1", "--json", str(out)],
                          cwd=ROOT, env=_env(modules), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    gpu = json.loads(out.read_text())["gpu"]
    assert gpu["device"]["name"] == "cuda_host (the CPU)"
    zeta = [r for r in gpu["runs"] if r["method"] == "zeta"]
    assert [(r["batch"], r["heads"], r["n"]) for r in zeta] == [(1, 2, 300), (2, 1, 1000)]
    for r in zeta:
        assert r["skipped"] is None and r["total_s"] > 0 and r["backward_s"] > 0
        assert set(r["stages_s"]) == {"codes", "sort", "pools", "window", "means", "attention"}


def test_the_one_pass_experiments_checks_pass_on_the_cpu(modules):
    """docs/data/means_one_pass_ab.py --check-only (the mean term in one pass, an experiment
    run on a GPU: docs/benchmarks.md) on the emulation: its kernel's blocks, which wait for
    each other's flags, against the library's scan at every tile and link boundary it checks,
    call to call, one column against 16 bytes, every variant; where a checkout has it."""
    script = ROOT / "docs" / "data" / "means_one_pass_ab.py"
    if not script.exists():
        pytest.skip("not a checkout: docs/data is absent")
    done = subprocess.run([sys.executable, str(script), "--check-only"], cwd=ROOT,
                          env=_env(modules), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("checked ") == 25 and done.stdout.rstrip().endswith("done"), \
        done.stdout[-3000:]
