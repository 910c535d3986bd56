"""Trees of the library timed against each other on the GPU, in turns: the call
`zeta_attention(q, k, v, backend="cupy")` on the benchmark's workload, the same output bit for
bit (docs/benchmarks.md).

    python docs/data/tree_ab.py OLD_TREES OUT.json SHAPE...     e.g. 1x8x65536 16x8x65536

OLD_TREES, comma-separated folders, each holding an older `zeta_ref` package (e.g. `git
archive REV zeta_ref | tar -x -C out/old`); "new" is this checkout's. Each tree runs in a
process of its own (all are called zeta_ref), four rounds in turns (each old tree, then new),
each a median of three medians of 25 calls per shape; the JSON holds every round's numbers and
the medians, each tree's over the first old one's.
"""
import json
import os
import subprocess
import sys

ROUNDS = 4
CHILD = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2])
import cupy as cp
import zeta_ref
from zeta_ref import zeta_attention
from gpu_timing import benchmark_inputs, rounds
row = {"package": zeta_ref.__file__}
for shape in sys.argv[3:]:
    q, k, v = benchmark_inputs(shape)
    out = zeta_attention(q, k, v, backend="cupy")
    row[shape] = {"ms": rounds(lambda: zeta_attention(q, k, v, backend="cupy"), warm=3),
                  "output_sha1": hashlib.sha1(cp.asnumpy(out).tobytes()).hexdigest()}
    del q, k, v, out
    cp.get_default_memory_pool().free_all_blocks()
print(json.dumps(row))
"""


def run(tree: str, shapes) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH="")  # the tree comes first on sys.path, nothing else
    done = subprocess.run([sys.executable, "-c", CHILD, tree, here, *shapes], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit("usage: python docs/data/tree_ab.py OLD_TREES OUT.json SHAPE...")
    olds, path, shapes = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
    new = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_timing import header

    result = header()
    result["rounds"] = []
    trees = [(os.path.basename(os.path.normpath(t)), t) for t in olds] + [("new", new)]
    for _ in range(ROUNDS):
        for name, tree in trees:
            row = run(tree, shapes)
            row["tree"] = name
            result["rounds"].append(row)
            print(name, {s: round(row[s]["ms"], 4) for s in shapes}, flush=True)
    for shape in shapes:
        med = {}
        for name, _ in trees:
            v = sorted(r[shape]["ms"] for r in result["rounds"] if r["tree"] == name)
            med[name] = (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
        base = trees[0][0]
        same = len({r[shape]["output_sha1"] for r in result["rounds"]}) == 1
        result[shape] = {"ms": med, "over_" + base: {n: m / med[base] for n, m in med.items()},
                         "same_output": same}
        print(f"{shape}: " + ", ".join(f"{n} {m:.4f} ms ({m / med[base]:.3f})"
                                       for n, m in med.items()) + f"; same output: {same}",
              flush=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
