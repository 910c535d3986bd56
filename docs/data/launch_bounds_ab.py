"""The script that wrote docs/data/launch_bounds_ab.json (docs/benchmarks.md): the forward pass's
attention and window kernels compiled with __launch_bounds__(256, B), B = 4, 6, 8 blocks an SM
(0: none, as they were), replayed on the arguments a fused pass gives them; every array
argument compared after each replay (the same bits), medians of three medians of 25 launches.
It runs on the tree of commit 20e0efa (since then the window kernel carries B = 6):

    PYTHONPATH=$PWD:$PWD/docs/data python docs/data/launch_bounds_ab.py out.json 1x8x16384 1x8x65536
"""
import sys, json, time
import numpy as np, cupy as cp
from zeta_ref import ZetaConfig
from zeta_ref.cupy import fused, topk_softmax as T, _runtime as rt
from gpu_timing import rounds

KERNELS = {  # production name -> (stem, declaration to decorate, where the instances begin)
    "zeta_topk_fast<3, 1>": ("topk_softmax", "__global__ void zeta_topk_fast(", "#define ZETA_MEANS(T)"),
    "zeta_fused_window_group<8>": ("fused", "__global__ void zeta_fused_window_group(",
                                   "template __global__ void zeta_fused_window_group<8>("),
}
MINB = (0, 4, 6, 8)
variants = {}
for name, (stem, decl, cut) in KERNELS.items():
    src = (rt.HERE / f"{stem}.cu").read_text()
    src = src[:src.index(cut)]
    assert src.count(decl) == 1, (name, src.count(decl))
    for b in MINB:
        s = src if b == 0 else src.replace(decl, decl.replace("void ", f"void __launch_bounds__(256, {b}) "))
        mod = cp.RawModule(code=s + f"\n// variant {b}\n", options=rt.OPTIONS, name_expressions=(name,))
        variants[(name, b)] = mod.get_function(name)
        print(name, b, "regs", variants[(name, b)].attributes["num_regs"], "local", variants[(name, b)].attributes["local_size_bytes"], flush=True)

calls = {}
class Rec:
    def __init__(self, name, fn): self.name, self.fn = name, fn
    def __call__(self, grid, block, args, **kw):
        calls[self.name] = (grid, block, args, kw)
        return self.fn(grid, block, args, **kw)
    def __getattr__(self, a): return getattr(self.fn, a)
T.AUTO_FAST = "fast"
real_f, real_t = fused._fn, T._fn
fused._fn = lambda name: Rec(name, real_f(name))
T._fn = lambda name: Rec(name, real_t(name))
res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shapes": {}}
for shape in [tuple(int(x) for x in s.split("x")) for s in sys.argv[2:]]:
    b_, h, n = shape
    rng = np.random.default_rng(0)
    q, k = (cp.asarray(rng.standard_normal((b_, h, n, 3)).astype(np.float32)) for _ in range(2))
    v = cp.asarray(rng.standard_normal((b_, h, n, 64)).astype(np.float32))
    calls.clear()
    fused.forward(q, k, v, ZetaConfig())
    r = {}
    for name in KERNELS:
        grid, block, args, kw = calls[name]
        ref = None
        for b in MINB:
            fn = variants[(name, b)]
            go = lambda: fn(grid, block, args, **kw)
            go(); cp.cuda.Device().synchronize()
            snap = [a.copy() for a in args if isinstance(a, cp.ndarray)]
            if ref is None: ref = snap
            same = all(bool(cp.array_equal(x, y)) for x, y in zip(snap, ref))
            r[f"{name} minb={b} ms"] = rounds(go, warm=2)
            r[f"{name} minb={b} same"] = same
    key = "x".join(map(str, shape))
    res["shapes"][key] = r
    print(key, {k2: (round(x, 4) if isinstance(x, float) else x) for k2, x in r.items()}, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
