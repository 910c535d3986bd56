"""An A/B of the mean term in one pass (topk_softmax.cu's zeta_means_one_pass, the library's
default for the causal modes) against the three kernels of the blocked scan it replaces
(topk_softmax.MEANS_ONE_PASS = False), docs/benchmarks.md, issue 10.

The scan reads k and v twice (the block sums, then the running sums) and the one pass once:
at 16 x 8 x 65536 that is 2.2 GB less to read. The one pass sums in another order (tiles of
runs, links of tiles), so the two give other bits; what must hold, and is checked before any
timing at each shape:

  - the one pass gives the same bits on five calls (its order never depends on which tile
    finishes first);
  - its means are within a few float ulps of the scan's (printed: the largest difference,
    in units of the largest |mean|), and so are the two calls' outputs.

Then, in turns, three rounds each (medians of 25 calls, CUDA events): the mean term alone
(history_means with the fused pass's max |v|) and the whole call (zeta_attention), each way;
and the one-pass kernel compiled with its registers capped by __maxnreg__ (variants of the
source, NVRTC with the library's options, the same bits required), on the mean term alone.

    PYTHONPATH=$PWD python docs/data/means_one_pass_ab.py out.json 1x8x65536 16x8x65536
"""
import hashlib
import json
import sys

import numpy as np
import cupy as cp

from zeta_ref import zeta_attention
from zeta_ref.cupy import _runtime as rt, topk_softmax as T
from gpu_timing import benchmark_inputs, header, rounds

KERNEL = "__global__ void zeta_means_one_pass("
CAPS = (56, 64, 72)


def variant(cap: int):
    """The library's source with the one-pass kernel's registers capped at `cap`."""
    text = (rt.HERE / "topk_softmax.cu").read_text()
    assert text.count(KERNEL) == 1, "the kernel's signature moved: update this script"
    text = text.replace(KERNEL, f"__global__ void __maxnreg__({cap}) zeta_means_one_pass(")
    return cp.RawModule(code=text, options=rt.OPTIONS, name_expressions=T._NAMES)


def digest(arrays) -> str:
    return hashlib.sha1(b"".join(cp.asnumpy(a).tobytes() for a in arrays)).hexdigest()


def main() -> None:
    path, shapes = sys.argv[1], sys.argv[2:]
    result = header()
    name = "zeta_means_one_pass<float, 4>"
    library_fn = T._fn
    modules = {cap: variant(cap) for cap in CAPS}
    result["registers"] = {"library": library_fn(name).attributes["num_regs"]}
    for cap, mod in modules.items():
        result["registers"][f"cap {cap}"] = mod.get_function(name).attributes["num_regs"]
    print("registers", result["registers"], flush=True)
    result["shapes"] = {}
    for shape in shapes:
        q, k, v = benchmark_inputs(shape)
        largest = cp.zeros(1, np.uint64)

        def means():
            return T.history_means(k, v, "inclusive", largest=largest)

        def call():
            return zeta_attention(q, k, v, backend="cupy")

        row = result["shapes"][shape] = {}
        T.MEANS_ONE_PASS = True
        one = means()
        hashes = {digest(means()) for _ in range(5)}
        out_one = call()
        T.MEANS_ONE_PASS = False
        scan = means()
        out_scan = call()
        T.MEANS_ONE_PASS = True
        if len(hashes) != 1 or digest(one) not in hashes:
            sys.exit(f"the one pass gave other bits from call to call at {shape}")
        scale = max(float(cp.abs(x).max()) for x in scan)
        row["means_largest_difference"] = max(float(cp.abs(a - b).max()) for a, b in
                                              zip(one, scan)) / scale
        row["output_largest_difference"] = float(cp.abs(out_one - out_scan).max() /
                                                 cp.abs(out_scan).max())
        print(shape, "differences (of the largest |value|): means",
              row["means_largest_difference"], "output", row["output_largest_difference"],
              flush=True)
        if row["means_largest_difference"] > 1e-5 or row["output_largest_difference"] > 1e-4:
            sys.exit(f"the one pass and the scan disagree at {shape}")
        for cap, mod in modules.items():  # the same bits with the registers capped
            T._fn = mod.get_function
            if digest(means()) not in hashes:
                sys.exit(f"the variant capped at {cap} registers gave other bits at {shape}")
            T._fn = library_fn
        one = scan = out_one = out_scan = None
        times = {"means, scan": [], "means, one pass": [], "call, scan": [],
                 "call, one pass": []}
        times.update({f"means, one pass capped at {cap}": [] for cap in CAPS})
        for _ in range(3):
            for flag, label in ((False, "scan"), (True, "one pass")):
                T.MEANS_ONE_PASS = flag
                times[f"means, {label}"].append(rounds(means, warm=2))
                times[f"call, {label}"].append(rounds(call, warm=2))
            T.MEANS_ONE_PASS = True
            for cap, mod in modules.items():
                T._fn = mod.get_function
                times[f"means, one pass capped at {cap}"].append(rounds(means, warm=2))
                T._fn = library_fn
        row["ms"] = {key: sorted(t)[1] for key, t in times.items()}
        for key, ms in row["ms"].items():
            base = row["ms"]["means, scan" if key.startswith("means") else "call, scan"]
            print(f"{shape}: {key} {ms:.4f} ms ({ms / base:.3f})", flush=True)
        q = k = v = None
        cp.get_default_memory_pool().free_all_blocks()
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
