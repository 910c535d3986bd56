"""One setting of the CuPy backend timed at its values in turns, on the call
`zeta_attention(q, k, v, backend="cupy")` and the benchmark's workload (docs/benchmarks.md).

    python docs/data/knob_ab.py OUT.json SHAPE... -- MODULE.NAME=VALUE,VALUE ...

e.g. `-- topk_softmax.MEANS_WIDE=True,False fused.WINDOW_LANES=8,16`: each setting's values in
turns (the others at the library's own), three rounds, each a median of three medians of 25
calls; the output must be the same bits at every value, or the script stops. MODULE is a
module of zeta_ref.cupy; VALUE a Python literal.
"""
import ast
import hashlib
import json
import sys

import cupy as cp

from zeta_ref import zeta_attention
import zeta_ref.cupy.fused  # noqa: F401 (imported for the settings: sys.modules holds them)
import zeta_ref.cupy.topk_softmax  # noqa: F401
from gpu_timing import benchmark_inputs, header, rounds

ROUNDS = 3


def main() -> None:
    if "--" not in sys.argv or len(sys.argv) < 5:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    path, shapes, knobs = sys.argv[1], sys.argv[2:cut], sys.argv[cut + 1:]
    result = header()
    result["settings"] = {}
    for knob in knobs:
        name, values = knob.split("=")
        module, attr = name.split(".")
        mod = sys.modules[f"zeta_ref.cupy.{module}"]
        if not hasattr(mod, attr):  # a setting of another tree (a branch's): say so, go on
            print(f"{name}: not a setting of this tree; skipped", flush=True)
            continue
        default = getattr(mod, attr)
        values = [ast.literal_eval(x) for x in values.split(",")]
        table = result["settings"][name] = {}
        for shape in shapes:
            q, k, v = benchmark_inputs(shape)
            times = {repr(x): [] for x in values}
            bits = set()
            for _ in range(ROUNDS):
                for x in values:
                    setattr(mod, attr, x)
                    out = zeta_attention(q, k, v, backend="cupy")
                    bits.add(hashlib.sha1(cp.asnumpy(out).tobytes()).hexdigest())
                    times[repr(x)].append(rounds(lambda: zeta_attention(q, k, v, backend="cupy"),
                                                 warm=2))
            setattr(mod, attr, default)
            if len(bits) != 1:
                sys.exit(f"{name} changed the output bits at {shape}")
            table[shape] = {x: sorted(t)[len(t) // 2] for x, t in times.items()}
            print(name, shape, table[shape], flush=True)
            q = k = v = out = None
            cp.get_default_memory_pool().free_all_blocks()
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
