"""An A/B of the forward pass's attention kernel (docs/benchmarks.md, issue 10's analysis): the
library's zeta_topk_fast<3, 1> against the variants of docs/data/attention_ahead.cu, which load
the next round's query place (and candidates) during the current round's weighted sum (or just
after it), with and without __launch_bounds__, and against the library kernel with its
weighted sum's loop unrolled 16 times instead of 8.

Each variant is compiled as the library compiles its kernels (NVRTC, rt.OPTIONS), replayed on
the very arguments a fused pass hands the library kernel (recorded from one call of
zeta_ref.cupy.fused.forward), and its outputs compared with the library kernel's, bit for bit,
before it is timed (medians of three medians of 25 launches, CUDA events). Written for one
H200 (2026-12-04); run there on 2026-12-05 (docs/benchmarks.md):

    PYTHONPATH=$PWD python docs/data/attention_ahead_ab.py out.json 1x3x1000 1x8x16384 1x8x65536 16x8x65536

(B x H x N; float32, d_k = 3, d_v = 64, k = 32, the default config; 1 x 3 x 1000 leaves the
last block's last half-warps past the end). It prints each variant's registers and local
memory (spills), then a line per shape and variant: whether the outputs were the library
kernel's, bit for bit, on three launches (the default one, the same with the weights
written, and the softmax score's) and, if they were, the time (the library kernel timed
first and again last, for drift).
"""
import json
import sys
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref import ZetaConfig
from zeta_ref.cupy import fused, topk_softmax as T, _runtime as rt
from gpu_timing import benchmark_inputs, header, rounds

HERE = Path(__file__).resolve().parent
LIBRARY = "zeta_topk_fast<3, 1>"
#: AHEAD (1: the place, 2: and the candidates, 3: both after the sum), UNROLL, MIN_BLOCKS
#: (0: no __launch_bounds__); attention_ahead.cu instantiates each
AHEAD = ((1, 8, 0), (2, 8, 0), (2, 8, 3), (2, 8, 4), (2, 16, 3), (3, 8, 0))
LOOP = "#pragma unroll 8\n        for (int t = 0; t < n_slots; ++t) {"


def variants() -> dict:
    """name -> compiled kernel, the library's first."""
    source = (rt.HERE / "topk_softmax.cu").read_text()
    assert source.count(LOOP) == 1, "the weighted sum's loop of topk_softmax.cu has changed"
    fns = {"library": cp.RawModule(code=source, options=rt.OPTIONS,
                                   name_expressions=(LIBRARY,)).get_function(LIBRARY),
           "library, unroll 16": cp.RawModule(
               code=source.replace(LOOP, LOOP.replace("unroll 8", "unroll 16")),
               options=rt.OPTIONS, name_expressions=(LIBRARY,)).get_function(LIBRARY)}
    names = [f"zeta_topk_ahead<3, 1, {a}, {u}>" if not b else
             f"zeta_topk_ahead_bounded<3, 1, {a}, {u}, {b}>" for a, u, b in AHEAD]
    module = cp.RawModule(code=(HERE / "attention_ahead.cu").read_text(), options=rt.OPTIONS,
                          name_expressions=tuple(names))
    for (a, u, b), name in zip(AHEAD, names):
        label = (("ahead: place" if a == 1 else "ahead: place and candidates"
                  if a == 2 else "after the sum: place and candidates")
                 + f", unroll {u}, " + (f"{b} blocks an SM" if b else "no bound"))
        fns[label] = module.get_function(name)
    return fns


#: What the library launches instead since 2026-12-05 (8 threads a query, the same bits): its
#: arguments are zeta_topk_fast<3, 1>'s with half the runs a block (twice the queries a run)
NARROWED = ("zeta_topk_narrow<8, 3, 1, 8, 0>", "zeta_topk_narrow<8, 3, 1, 8, 3>")


def recorded_call(q, k, v, cfg):
    """(grid, block, args) of zeta_topk_fast<3, 1>'s launch in one fused pass with ``cfg``
    (recorded from the library's launch of it, or of either NARROWED, whose runs are doubled
    back)."""
    calls = {}
    real = T._fn

    def recording(name):
        fn = real(name)
        if name != LIBRARY and name not in NARROWED:
            return fn

        def launch(grid, block, args, **kw):
            if name in NARROWED:  # the 16-lane kernel's runs: twice as many, on the same grid
                calls[LIBRARY] = (grid, block, args[:21] + (np.int32(2 * int(args[21])),))
            else:
                calls[name] = (grid, block, args)
            return fn(grid, block, args, **kw)
        return launch
    T._fn = recording
    try:
        fused.forward(q, k, v, cfg)
    finally:
        T._fn = real
    if LIBRARY not in calls:
        raise SystemExit(f"the fused pass did not launch {LIBRARY}")
    grid, block, args = calls[LIBRARY]
    assert len(args) == 22 and int(args[19]) == 0, "launch_topk's arguments have changed"
    return grid, block, args


def weights_written(call):
    """The same launch with the weights written (argument 18, sized (rows, n, n_slots), and
    with_weights = 1, argument 19): the fused pass writes none."""
    grid, block, args = call
    a = list(args)
    rows, n, n_slots = int(a[9]), int(a[10]), int(a[13])
    a[18], a[19] = cp.empty(rows * n * n_slots, np.float32), np.int32(1)
    return grid, block, tuple(a)


def same_bits(fns, call) -> dict:
    """label -> whether the kernel's outputs (out, weights, mean_weight; poisoned before each
    launch) are the library kernel's, bit for bit, on the launch ``call``."""
    grid, block, args = call
    outputs = [a for a in args if isinstance(a, cp.ndarray)][-3:]
    reference, same = None, {}
    for label, fn in fns.items():
        for a in outputs:
            a.view(np.uint32).fill(0xFFFFFFFF)
        fn(grid, block, args)
        cp.cuda.Device().synchronize()
        got = [a.copy() for a in outputs]
        if reference is None:
            reference = got
        same[label] = all(bool(cp.array_equal(x.view(np.uint8), y.view(np.uint8)))
                          for x, y in zip(got, reference))
    return same


def compare(fns: dict, out_path: str, shapes) -> None:
    """Each launch of ``fns`` (label -> launch(grid, block, args), the library kernel's under
    "library") checked against the library kernel, bit for bit, on three launches at each
    shape, then timed if the same (the library first and again last, for drift); printed,
    and written to ``out_path`` as JSON with the registers and spills of each."""
    for label, fn in fns.items():
        print(f"{label}: {fn.attributes['num_regs']} registers, "
              f"{fn.attributes['local_size_bytes']} bytes of local memory", flush=True)
    result = {**header(),
              "kernels": {label: {"registers": fn.attributes["num_regs"],
                                  "local_bytes": fn.attributes["local_size_bytes"]}
                          for label, fn in fns.items()},
              "shapes": {}}
    for shape in shapes:
        q, k, v = benchmark_inputs(shape)
        cauchy = recorded_call(q, k, v, ZetaConfig())
        # the bits on three launches: the default, with the weights written, an exp score
        checks = {"cauchy": cauchy, "cauchy, weights written": weights_written(cauchy),
                  "softmax": recorded_call(q, k, v, ZetaConfig(score="softmax"))}
        same = {case: same_bits(fns, call) for case, call in checks.items()}
        # the times on the default launch; the library kernel first and again last (drift)
        grid, block, args = cauchy
        rows = {}
        for label, fn in list(fns.items()) + [("library, again", fns["library"])]:
            key = "library" if label == "library, again" else label
            ok = all(s[key] for s in same.values())
            ms = rounds(lambda: fn(grid, block, args), warm=2) if ok else None
            rows[label] = {"ms": ms, "same_bits": {case: s[key] for case, s in same.items()}}
            shown = f"{ms:8.4f} ms  x{ms / rows['library']['ms']:.3f}" if ok else "not timed"
            print(f"{shape} {label:56s} {shown}  same bits (3 launches): {ok}", flush=True)
        result["shapes"][shape] = rows
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


def check_only(fns: dict, shape: str = "1x3x1000") -> int:
    """The bit checks of :func:`compare` at one small shape, nothing timed (the launches for
    compute-sanitizer): 0 if every variant gave the library kernel's bits, else 1."""
    q, k, v = benchmark_inputs(shape)
    cauchy = recorded_call(q, k, v, ZetaConfig())
    bad = 0
    for call in (cauchy, weights_written(cauchy),
                 recorded_call(q, k, v, ZetaConfig(score="softmax"))):
        for label, same in same_bits(fns, call).items():
            print(f"{shape} {label}: {'same bits' if same else 'DIFFERENT BITS'}", flush=True)
            bad += not same
    return 1 if bad else 0


def main(make=None, usage=__doc__):
    """The command line (this script's, and attention_narrow_ab.py's with its ``make``, the
    function that builds its kernels): OUT.json SHAPE..., or --check-only."""
    make = variants if make is None else make
    if sys.argv[1:] == ["--check-only"]:
        sys.exit(check_only(make()))
    if len(sys.argv) < 3 or "--check-only" in sys.argv:
        raise SystemExit(usage)
    compare(make(), sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    main()
