"""How many distinct value rows does a run of neighbouring queries (in the visiting order, Z order)
read? The case for an attention kernel that loads a run's rows into shared memory once
(docs/benchmarks.md, the forward pass's "What is left"). CPU only (the Numba backend's stages):

    python docs/data/attention_row_sharing.py

One row of q, k (standard normal, d_k = 3) and v at N = 65536, the default config; for runs of
1 to 256 queries taken in the order the GPU kernels visit them, the candidate rows read (k a
query, plus its own mean row, which no other query reads) and how many of them are distinct."""
import numpy as np
from zeta_ref import ZetaConfig, zeta_attention

rng = np.random.default_rng(0)
n = 65536
q, k = (rng.standard_normal((1, n, 3)).astype(np.float32) for _ in range(2))
v = rng.standard_normal((1, n, 8)).astype(np.float32)
_, im = zeta_attention(q, k, v, ZetaConfig(), backend="numba", return_intermediates=True)
cand = im.candidates[0]  # (N, k)
order = np.lexsort((np.arange(n), im.q_codes[0]))  # queries by code, ties by position
for run in (1, 4, 16, 64, 256):
    reads = distinct = 0
    for s in range(0, n - run + 1, run):
        c = cand[order[s:s + run]].ravel()
        c = c[c >= 0]
        reads += c.size + run
        distinct += np.unique(c).size + run
    runs = (n - run) // run + 1
    print(f"run {run:4d}: rows read {reads / runs:7.1f}, distinct {distinct / runs:7.1f}, "
          f"ratio {reads / distinct:.2f}")
