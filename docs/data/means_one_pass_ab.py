"""An A/B of the mean term in one pass (docs/data/means_one_pass.cu, an experiment) against the
library's three kernels of the blocked scan (topk_softmax.history_means), docs/benchmarks.md,
issue 10. The scan reads k and v twice, the one pass once: 2.2 GB less at 16 x 8 x 65536.

Checked before any timing (and alone with --check-only, for compute-sanitizer and for the CPU
emulation of tests/cuda_host): at small shapes (N = 1, a tile one position short, full and
one over, several links and rows; d_v = 64 with 16 bytes a thread and 7 with one column;
float and double, double at d_v = 64 in blocks of over 512 threads; rows of d = 1024 whose
tile is one run and whose link is three tiles) and at the timed shapes: the one pass is
within a few ulps of the scan (the largest difference in units of the largest |mean|, under
1e-6 in float and 1e-14 in double), gives the same bits on three calls and with one column a
thread as with 16 bytes, every variant gives the default's bits, and max |v| (tracked as the
fused pass asks) is max_abs's, bit for bit.

Then in turns, three rounds of medians of 25 calls each (CUDA events): the library's mean
term, and the one pass in each variant of means_one_pass.cu (the library's launch: the block
sums' max |v| tracked, as in the fused pass):

    PYTHONPATH=$PWD python docs/data/means_one_pass_ab.py out.json 1x8x65536 16x8x65536
    PYTHONPATH=$PWD python docs/data/means_one_pass_ab.py --check-only
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import cupy as cp

from zeta_ref.cupy import _runtime as rt, topk_softmax as T

HERE = Path(__file__).resolve().parent
RUN, RUNS, SHARED, LINK = 8, 16, 4096, 32  # means_one_pass.cu's ZETA_ONE_PASS_RUN, ...
#: The variants of the default shape's instance (float, 16 bytes a thread), as
#: (MAX_THREADS, MIN_BLOCKS, KEEP); None: the launcher's own choice (512 or 1024, 1, 1).
VARIANTS = {"one pass": None, "one pass, 3 blocks an SM": (320, 3, 1),
            "one pass, values read again": (512, 1, 0),
            "one pass, values read again, 4 blocks an SM": (320, 4, 0)}


def instances():
    names = [f"zeta_means_one_pass<{t}, {v}, {m}, 1, 1>" for t, v in
             (("float", 1), ("float", 4), ("double", 1), ("double", 2)) for m in (512, 1024)]
    names += [f"zeta_means_one_pass<float, 4, {m}, {b}, {k}>" for m, b, k in
              (x for x in VARIANTS.values() if x)]
    return tuple(names)


def module():
    return cp.RawModule(code=(HERE / "means_one_pass.cu").read_text(), options=rt.OPTIONS,
                        name_expressions=instances())


def plan(d: int):
    """(runs a tile, tiles a link) for rows of d columns, or None past d = 1024."""
    segments = min(RUNS, 1024 // d)
    return None if segments < 1 else (segments, min(LINK, SHARED // d - segments))


def one_pass(mod, k, v, variant=None, largest=None, wide=True):
    """The one pass's means (mean_k, mean_v), launched as the library would launch it."""
    n, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    rows = k.size // (n * d_k)
    d = d_k + d_v
    t = rt.ctype_name(k.dtype)
    mean_k, mean_v = cp.empty(k.shape, k.dtype), cp.empty(v.shape, v.dtype)
    vec = 16 // v.itemsize if wide else 1
    if d_v % vec or v.data.ptr % 16 or mean_v.data.ptr % 16:
        vec = 1
    segments, link = plan(d)
    n_tiles = -(-n // (segments * RUN))
    n_links = -(-n_tiles // link)
    status = cp.zeros(2 + rows * (n_tiles + n_links), np.uint32)  # the counter, the flags
    aggregates = cp.empty((rows, n_tiles, d), np.float64)
    prefixes = cp.empty((rows, n_links, d), np.float64)
    threads = -(-(d_k + d_v // vec) * segments // 32) * 32
    if variant is None:
        variant = (512 if threads <= 512 else 1024, 1, 1)
    assert threads <= variant[0], (threads, variant)
    fn = mod.get_function(f"zeta_means_one_pass<{t}, {vec}, {variant[0]}, {variant[1]}, "
                          f"{variant[2]}>")
    track = largest is not None
    fn((min(rows * n_tiles, 1 << 20),), (threads,),
       (k, v, rt.i64(rows), rt.i64(n), np.int32(d_k), np.int32(d_v), np.int32(segments),
        np.int32(link), status, aggregates, prefixes, np.int32(track),
        largest if track else status, mean_k, mean_v))
    return mean_k, mean_v


def digest(arrays) -> str:
    return hashlib.sha1(b"".join(cp.asnumpy(a).tobytes() for a in arrays)).hexdigest()


def inputs(shape, d_v=64, dtype=np.float32, seed=0):
    b, h, n = (int(x) for x in shape.split("x"))
    rng = np.random.default_rng(seed)
    k = cp.asarray(rng.standard_normal((b, h, n, 3)).astype(dtype))
    v = cp.asarray(rng.standard_normal((b, h, n, d_v)).astype(dtype))
    return k, v


def check(mod, k, v, label, variants=()):
    """The one pass against the scan, call to call, one column against 16 bytes, the variants
    against the default, and max |v| against max_abs; a line of what was found."""
    largest = cp.zeros(1, np.uint64)
    got = one_pass(mod, k, v, largest=largest)
    want = T.history_means(k, v, "inclusive")
    scale = max(float(cp.abs(x).max()) for x in want) or 1.0
    diff = max(float(cp.abs(a.astype(np.float64) - b).max()) for a, b in zip(got, want)) / scale
    bound = 1e-6 if k.dtype == np.float32 else 1e-14
    assert diff <= bound, f"{label}: the one pass is {diff} from the scan"
    bits = digest(got)
    assert all(digest(one_pass(mod, k, v)) == bits for _ in range(2)), f"{label}: call to call"
    assert digest(one_pass(mod, k, v, wide=False)) == bits, f"{label}: one column a thread"
    for variant in variants:
        assert digest(one_pass(mod, k, v, variant)) == bits, f"{label}: {variant}"
    assert int(largest[0]) == int(rt.max_abs_all([(v, None)]).view(np.uint64)[0]), \
        f"{label}: max |v|"
    print(f"checked {label}: {diff:.3g} of the largest |mean| from the scan", flush=True)


def checks(mod, shapes) -> None:
    segments, link = plan(67)
    span = segments * RUN
    for n in (1, span - 1, span, span + 1, link * span + 1, 3 * link * span + 17):
        for dtype in (np.float32, np.float64):
            for d_v in (64, 7):
                k, v = inputs(f"2x3x{n}", d_v, dtype, seed=n)
                check(mod, k, v, f"2x3x{n} d_v={d_v} {np.dtype(dtype).name}",
                      [x for x in VARIANTS.values() if x] if dtype == np.float32 and
                      d_v == 64 else ())
    k, v = inputs("1x2x600", 1021, np.float64, seed=1)  # d = 1024: one run a tile, 3 a link
    check(mod, k, v, "1x2x600 d_v=1021 float64")
    for shape in shapes:
        check(mod, *inputs(shape), shape, [x for x in VARIANTS.values() if x])


def main() -> None:
    mod = module()
    if sys.argv[1:] == ["--check-only"]:
        checks(mod, [])
        cp.cuda.Device().synchronize()
        print("done")
        return
    from gpu_timing import header, rounds
    path, shapes = sys.argv[1], sys.argv[2:]
    result = header()
    result["registers"] = {name: mod.get_function(name).attributes["num_regs"]
                           for name in instances()}
    print("registers", result["registers"], flush=True)
    checks(mod, shapes)
    result["shapes"] = {}
    for shape in shapes:
        k, v = inputs(shape)
        largest = cp.zeros(1, np.uint64)
        runs = {"scan (library)": lambda: T.history_means(k, v, "inclusive", largest=largest)}
        for label, variant in VARIANTS.items():
            runs[label] = (lambda x: lambda: one_pass(mod, k, v, x, largest))(variant)
        times = {label: [] for label in runs}
        for _ in range(3):
            for label, fn in runs.items():
                times[label].append(rounds(fn, warm=2))
        row = result["shapes"][shape] = {label: sorted(t)[1] for label, t in times.items()}
        for label, ms in row.items():
            print(f"{shape}: {label} {ms:.4f} ms ({ms / row['scan (library)']:.3f})",
                  flush=True)
        k = v = None
        cp.get_default_memory_pool().free_all_blocks()
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
