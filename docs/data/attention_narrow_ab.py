"""An A/B of the forward pass's attention kernel (docs/benchmarks.md, issue 10's analysis): the
library's zeta_topk_fast<3, 1> (16 threads a query) against docs/data/attention_narrow.cu's
zeta_topk_narrow (G = 16, 8 or 4 threads a query, each thread 16 / G float4 of a value row's
64 columns), with the weighted sum's loop unrolled 8, 4 or 2 times. G = 16 is the library's
kernel written the new way (the same registers under nvcc 13.0): a check of the rewrite.

Each variant is compiled as the library compiles its kernels (NVRTC, rt.OPTIONS) and replayed
on the very arguments a fused pass hands the library kernel (attention_ahead_ab.py's
recording), with the grid of the library's launch (a block takes 256 / G queries a run and as many
queries in all); its outputs must be the library kernel's, bit for bit, on three launches (the default,
the weights written, the softmax score) before it is timed (medians of three medians of 25
launches, CUDA events; the library kernel first and again last, for drift). Written for one
H200 (2026-12-04); run there and on an H100 on 2026-12-05 (docs/benchmarks.md):

    PYTHONPATH=$PWD python docs/data/attention_narrow_ab.py out.json 1x3x1000 1x8x16384 1x8x65536 16x8x65536

(B x H x N; float32, d_k = 3, d_v = 64, k = 32, the default config; 1 x 3 x 1000 leaves the
last block's last queries past the end.) With `--check-only` it only checks the bits at
1 x 3 x 1000 (for compute-sanitizer). It also times the library's own narrow kernel in its
two forms: the general one (any d_k) and the one compiled for d_k = 3, whose step 1 loads
every slot's coordinates before scoring any (LIBRARY_NARROW). The register caps this script
timed on 2026-12-05 (48, 40 and 32 registers: slower, docs/benchmarks.md) are gone from it.
"""
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref.cupy import _runtime as rt
from attention_ahead_ab import LIBRARY, main

HERE = Path(__file__).resolve().parent
#: (G threads a query, the weighted sum's unrolling); attention_narrow.cu instantiates each
NARROW = ((16, 8), (8, 8), (8, 4), (4, 4), (4, 2))
#: The library's own narrow kernel (G = 8, unroll 8), label -> its d_k template argument
LIBRARY_NARROW = {"library's 8 threads a query, any d_k": 0,
                  "library's 8 threads a query, for d_k = 3": 3}


def launcher(fn, lanes: int):
    """``fn`` as a launch of the library kernel's (grid, block, args) with ``lanes`` threads a
    query: a block takes 256 / lanes queries a run, and as many queries in all as the
    library's blocks (its runs, args[21], times lanes / 16), so that the grid is the same."""
    def launch(grid, block, args):
        rows, n, runs = int(args[9]), int(args[10]), int(args[21])
        per_run = 256 // lanes  # queries a block takes at once (ZETA_FAST_THREADS / G)
        runs = max(1, runs * lanes // 16)
        fn((-(-rows * n // (per_run * runs)),), block, args[:21] + (np.int32(runs),))
    launch.attributes = fn.attributes
    return launch


def variants() -> dict:
    """label -> launch, the library kernel's first."""
    source = (rt.HERE / "topk_softmax.cu").read_text()
    library = cp.RawModule(code=source, options=rt.OPTIONS,
                           name_expressions=(LIBRARY,)).get_function(LIBRARY)
    fns = {"library": launcher(library, 16)}
    names = [f"zeta_topk_narrow<{g}, 3, 1, {u}, 0>" for g, u in NARROW]
    module = cp.RawModule(code=(HERE / "attention_narrow.cu").read_text(), options=rt.OPTIONS,
                          name_expressions=tuple(names))
    for (g, u), name in zip(NARROW, names):
        fns[f"{g} threads a query, unroll {u}"] = launcher(module.get_function(name), g)
    for label, dk in LIBRARY_NARROW.items():  # as the library compiles them
        name = f"zeta_topk_narrow<8, 3, 1, 8, {dk}>"
        fns[label] = launcher(cp.RawModule(code=source, options=rt.OPTIONS,
                                           name_expressions=(name,)).get_function(name), 8)
    return fns


if __name__ == "__main__":
    main(variants, __doc__)
