"""Each piece of the backward pass's radix sort of the pairs timed alone against cupy.argsort, on
a forward pass's candidates (docs/data/backward_pairs_ab.json's "pieces"). The radix sort was
removed after commit 199a09d, the tree this script runs on:

    git worktree add /tmp/radix 199a09d && cd /tmp/radix
    PYTHONPATH=$PWD:$PWD/docs/data python docs/data/backward_radix_parts.py 1x8x65536
"""
import sys
import numpy as np, cupy as cp
import zeta_ref
from zeta_ref import ZetaConfig
from zeta_ref.cupy import _runtime as rt
from gpu_timing import rounds
src = (rt.HERE / "backward.cu").read_text()
names = ("zeta_bwd_radix_counts", "zeta_bwd_radix_scatter<unsigned int>", "zeta_bwd_radix_scatter<long long>", "zeta_bwd_key_starts", "zeta_bwd_pair_keys<int, unsigned int>")
mod = cp.RawModule(code=src, options=rt.OPTIONS, name_expressions=names)
f = {nm: mod.get_function(nm) for nm in names}
cfg = ZetaConfig()
for spec in sys.argv[1:]:
    b, h, n = (int(x) for x in spec.split("x"))
    rs = cp.random.RandomState(0)
    q, k, v = (rs.standard_normal((b, h, n, d), dtype=cp.float32) for d in (3, 3, 64))
    _, inter = zeta_ref.zeta_attention(q, k, v, cfg, backend="cupy", return_intermediates=True)
    cand = cp.asarray(inter.candidates).astype(cp.int32)
    rows, size, ns = b * h, cand.size, cand.shape[-1]
    tiles = -(-size // 2048); passes = max(1, -(-(rows * n).bit_length() // 8))
    keys = [cp.empty(size, cp.uint32) for _ in range(2)]; vals = [cp.empty(size, cp.uint32) for _ in range(2)]
    pairs = cp.empty(size, cp.int64); counts = cp.empty(256 * tiles, cp.uint32); place = cp.empty_like(counts)
    starts = cp.empty(rows * n + 1, cp.int64)
    sizes = (np.int64(rows), np.int64(n), np.int32(ns), np.int64(size))
    def cnt(t):
        f["zeta_bwd_radix_counts"]((tiles,), (256,), (cand, keys[(t + 1) % 2], np.int32(t == 0)) + sizes + (np.int32(8 * t), np.int64(tiles), counts))
    def scan():
        cp.cumsum(counts, dtype=np.uint32, out=place)
    def sca(t):
        last = t == passes - 1
        f[f"zeta_bwd_radix_scatter<{'long long' if last else 'unsigned int'}>"]((tiles,), (256,), (cand, keys[(t + 1) % 2], vals[(t + 1) % 2], np.int32(t == 0)) + sizes + (np.int32(8 * t), np.int64(tiles), place, keys[t % 2], pairs if last else vals[t % 2]))
    def st():
        rt.launch(f["zeta_bwd_key_starts"], size + 1, (keys[(passes - 1) % 2], np.int64(size), np.int64(rows * n), starts))
    def whole():
        for t in range(passes):
            cnt(t); scan(); sca(t)
        st()
    whole()
    pk = cp.empty(size, cp.uint32)
    rt.launch(f["zeta_bwd_pair_keys<int, unsigned int>"], size, (cand, np.int64(rows), np.int64(n), np.int32(ns), pk))
    same = bool(cp.array_equal(cp.argsort(pk), pairs))
    out = {"whole": rounds(whole, warm=2), "argsort": rounds(lambda: cp.argsort(pk), warm=2), "scan": rounds(scan, warm=2), "starts": rounds(st, warm=2)}
    for t in range(passes):
        out[f"counts{t}"] = rounds(lambda: cnt(t), warm=2)
    for t in range(passes):
        cnt(t); scan(); out[f"scatter{t}"] = rounds(lambda: sca(t), warm=2)  # this pass's places
    whole()
    out["same"] = same and bool(cp.array_equal(cp.argsort(pk), pairs))
    print(spec, "passes", passes, {a: (round(x, 4) if isinstance(x, float) else x) for a, x in out.items()}, flush=True)
