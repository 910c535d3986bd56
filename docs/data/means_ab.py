"""An A/B of the mean term's last kernel, zeta_means_write<float, 4> (docs/benchmarks.md, issue
10's analysis): at 16 x 8 x 65536 it took 2.01 ms on an H100 (2026-12-05) at 24 % occupancy,
with 94 registers a thread (two blocks of 256 an SM), most of them for the double division of
each running sum by its position. The library's kernel now takes each quotient from a
reciprocal (topk_softmax.cu's Quotient<float>) and loads 2 positions ahead, not 4.

Variants of topk_softmax.cu, each compiled as the library compiles it (NVRTC, rt.OPTIONS), each
launched on the very arguments the library's history_means hands the kernel (its block sums,
already scanned, from the library's own first two kernels). Registers from nvcc 13's ptxas
(the script prints the device's own):

  division, U = 4 (main before)   run / (i + 1) divided; 4 positions ahead (94 registers)
  division, U = 2                 (80 registers: three blocks)
  reciprocal, U = 4               the library's quotient; 4 positions ahead (72: three blocks)
  library: reciprocal, U = 2      (64 registers: four blocks)

Every variant's two outputs (the mean keys and the mean values) must be the division's bits,
bit for bit, at each shape before it is timed (medians of three medians of 25 launches, CUDA
events; the kernel before first and again last, for drift):

    PYTHONPATH=$PWD python docs/data/means_ab.py out.json 1x8x65536 16x8x65536
"""
import json
import sys
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref.cupy import _runtime as rt, topk_softmax as T
from gpu_timing import benchmark_inputs, header, rounds

NAME = "zeta_means_write<float, 4>"
QUOTIENT = "m.x[c] = narrow<T>(Quotient<T>::of(run[c], count, y));"
INVERSE = "Quotient<T>::inverse(count)"
UNROLL = "running_means<T, V, 2>(src"


def source(unroll=2, reciprocal=True) -> str:
    """The library's topk_softmax.cu (the reciprocal, 2 positions ahead), or a variant: the
    division (main's kernel before, with unroll=4), or other positions ahead."""
    text = (rt.HERE / "topk_softmax.cu").read_text()
    assert text.count(QUOTIENT) == 2 and text.count(INVERSE) == 2 and text.count(UNROLL) == 1
    text = text.replace(UNROLL, f"running_means<T, V, {unroll}>(src")
    if not reciprocal:
        text = text.replace(QUOTIENT, "m.x[c] = narrow<T>(run[c] / count);").replace(INVERSE, "0.0")
    return text


VARIANTS = {"division, U = 4 (main before)": {"unroll": 4, "reciprocal": False},
            "division, U = 2": {"reciprocal": False},
            "reciprocal, U = 4": {"unroll": 4},
            "library: reciprocal, U = 2": {}}
REFERENCE = "division, U = 4 (main before)"


def kernels() -> dict:
    out = {}
    for label, kw in VARIANTS.items():
        fn = cp.RawModule(code=source(**kw), options=rt.OPTIONS,
                          name_expressions=(NAME,)).get_function(NAME)
        out[label] = fn
    return out


def arguments(shape: str):
    """The library's launch of zeta_means_write<float, 4> for the benchmark's k and v."""
    _, k, v = benchmark_inputs(shape)
    n, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    rows = k.size // (n * d_k)
    block = T.scan_block(n)
    n_blocks = -(-n // block)
    sums = cp.empty((rows, n_blocks, d_k + d_v), np.float64)
    totals = cp.empty((rows, d_k + d_v), np.float64)
    lib = kernels_library()
    rt.launch(lib["zeta_block_sums<float, 4>"], rows * n_blocks * (d_k + d_v // 4),
              (k, v, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(d_v), rt.i64(block), sums,
               np.int32(0), totals))
    rt.launch(lib["zeta_scan_blocks"], 32 * rows * (d_k + d_v),
              (sums, rt.i64(rows), rt.i64(n_blocks), np.int32(d_k + d_v), totals))
    tasks = rows * n_blocks * (d_k + d_v // 4)

    def launch(fn, mean_k, mean_v):
        rt.launch(fn, tasks, (k, v, sums, totals, np.int32(0), rt.i64(rows), rt.i64(n),
                              np.int32(d_k), np.int32(d_v), rt.i64(block), mean_k, mean_v))
    return k, v, launch


def kernels_library() -> dict:
    return {name: T._fn(name) for name in ("zeta_block_sums<float, 4>", "zeta_scan_blocks")}


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    fns = kernels()
    result = header()
    result["registers"] = {}
    for label, fn in fns.items():
        regs, local = fn.attributes["num_regs"], fn.attributes["local_size_bytes"]
        result["registers"][label] = {"registers": regs, "local bytes": local}
        print(f"{label}: {regs} registers, {local} bytes of local memory", flush=True)
    result["times"] = {}
    for shape in sys.argv[2:]:
        k, v, launch = arguments(shape)
        outs = {}
        for label, fn in fns.items():
            mk, mv = cp.full(k.shape, np.nan, np.float32), cp.full(v.shape, np.nan, np.float32)
            launch(fn, mk, mv)
            outs[label] = (cp.asnumpy(mk).view(np.uint32), cp.asnumpy(mv).view(np.uint32))
        ref = outs[REFERENCE]
        table = result["times"][shape] = {}
        mk, mv = cp.empty(k.shape, np.float32), cp.empty(v.shape, np.float32)
        base = None
        for label in list(fns) + ["again: " + REFERENCE]:
            fn = fns[label.removeprefix("again: ")]
            same = label.startswith("again: ") or all(
                np.array_equal(a, b) for a, b in zip(outs[label], ref))
            if not same:
                print(f"{shape} {label}: NOT the division's bits; not timed", flush=True)
                table[label] = None
                continue
            t = rounds(lambda: launch(fn, mk, mv), warm=2)
            base = t if base is None else base
            table[label] = t
            print(f"{shape} {label:<32} {t:8.4f} ms  x{t / base:.3f}  same bits: {same}",
                  flush=True)
        k = v = mk = mv = None
        cp.get_default_memory_pool().free_all_blocks()
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
    print("wrote", sys.argv[1])


if __name__ == "__main__":
    main()
