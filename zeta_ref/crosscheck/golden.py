"""Golden files: versioned dumps of zeta_ref's every intermediate, for others to reproduce.

:data:`CASES` is the documented set: every causal mode and score, the mean term on and off,
W = k and W > k, float32 and float64, an odd N, k >= N, coarse grids full of ties in Z order,
each squash, at sizes small enough to commit. :func:`write_golden` writes one dump per case
(inputs, config, every stage's result, the output, and the gradients of the backward pass for
a seeded ``grad_output``) and a ``manifest.json`` listing each file with its config, its format
version, the zeta_ref version that wrote it and its SHA-256.

tests/golden/ holds the set in the repository; tests/test_crosscheck.py checks that zeta_ref
reproduces it (integers exactly, floats within tolerance), so a change that moves any
intermediate shows up, and that ``zeta-ref compare`` passes them untouched and names the
stage of a corrupted one. Another implementation checks itself against them by running on
each file's q, k, v and config and comparing with the stored results (or by writing its own
dump and running ``zeta-ref compare`` on it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..attention import zeta_attention
from ..backward import zeta_attention_backward
from ..config import ZetaConfig
from .dump import config_fields, load_dump, write_archive
from .schema import FORMAT_VERSION

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Case:
    """One golden file: its name, what it covers, its sizes and config."""

    name: str
    covers: str
    lead: tuple
    n: int
    d_k: int
    d_v: int
    dtype: str
    config: dict
    seed: int

    def inputs(self, grad_output: bool = False):
        """q, k, v (and with ``grad_output`` the gradient of the output the stored gradients
        are for): seeded standard normals of this case's shapes and dtype, in that order."""
        rng = np.random.default_rng(self.seed)
        shape = self.lead + (self.n,)
        q = rng.standard_normal(shape + (self.d_k,))
        k = rng.standard_normal(shape + (self.d_k,))
        v = rng.standard_normal(shape + (self.d_v,))
        drawn = (q, k, v) + ((rng.standard_normal(shape + (self.d_v,)),) if grad_output else ())
        return tuple(x.astype(self.dtype) for x in drawn)


CASES = (
    Case("g01_defaults_f32", "the defaults: inclusive pools, Cauchy, mean term on, W = k",
         (2, 2), 48, 3, 8, "float32", {"k": 8}, 1),
    Case("g02_strict_softmax_rerank_f64", "strict pools (first chunk empty), softmax, W > k",
         (1, 2), 64, 3, 8, "float64",
         {"k": 8, "window": 20, "causal": "strict", "score": "softmax"}, 2),
    Case("g03_none_negeuclid_nomean_f32", "no causal mask, neg_euclidean, mean term off",
         (2, 1), 40, 3, 5, "float32",
         {"k": 6, "causal": "none", "score": "neg_euclidean", "history_mean": False}, 3),
    Case("g04_inclusive_inveuclid_chunk_f64", "inv_euclidean, W > k, an explicit chunk size",
         (1, 1), 57, 3, 4, "float64",
         {"k": 7, "window": 15, "score": "inv_euclidean", "chunk_size": 10}, 4),
    Case("g05_strict_cauchy_ties_f32", "a coarse grid (bits = 2): many ties in Z, odd N, "
         "strict pools with a chunk size, gamma 0.25, tanh squash",
         (2, 2), 33, 3, 6, "float32",
         {"k": 5, "window": 9, "bits": 2, "causal": "strict", "chunk_size": 7,
          "gamma": 0.25, "squash": "tanh"}, 5),
    Case("g06_k_above_n_f64", "k and W above N (capped at N), clip squash, d_k = 2",
         (1, 2), 5, 2, 3, "float64",
         {"k": 8, "window": 12, "bits": 31, "squash": "clip", "causal": "none"}, 6),
    Case("g07_one_bit_single_query_f32", "bits = 1 and N = 1", (1,), 1, 3, 2, "float32",
         {"k": 4, "bits": 1}, 7),
)


def case_arrays(case: Case) -> dict:
    """Every array of a case's dump: the inputs, every intermediate and the gradients for the
    case's grad_output (the spec's)."""
    q, k, v, g = case.inputs(grad_output=True)
    cfg = ZetaConfig(**case.config)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    grads = zeta_attention_backward(q, k, v, g, cfg, intermediates=inter)
    return {"q": q, "k": k, "v": v, **inter.arrays(), "grad_output": g, "dq": grads.dq,
            "dk": grads.dk, "dv": grads.dv, "dgamma": np.float64(grads.dgamma)}


def write_golden(out: str, cases=CASES) -> list[str]:
    """Write one ``<name>.npz`` per case and ``manifest.json`` into the folder ``out``.

    Returns the paths written (the manifest last).
    """
    os.makedirs(out, exist_ok=True)
    written, entries = [], []
    for case in cases:
        arrays = case_arrays(case)
        cfg = ZetaConfig(**case.config)
        path = os.path.join(out, case.name + ".npz")
        write_archive(path, cfg, arrays, compressed=True)
        load_dump(path)  # every golden file is one zeta-ref compare reads
        entries.append({
            "file": case.name + ".npz", "covers": case.covers, "config": config_fields(cfg),
            "lead": list(case.lead), "N": case.n, "d_k": case.d_k, "d_v": case.d_v,
            "dtype": case.dtype, "seed": case.seed, "sha256": _sha256(path),
        })
        written.append(path)
    manifest = os.path.join(out, MANIFEST)
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump({"format_version": FORMAT_VERSION, "zeta_ref_version": __version__,
                   "inputs": "q, k, v, grad_output: numpy.random.default_rng(seed)"
                             ".standard_normal, in the order q, k, v, grad_output, cast to "
                             "dtype",
                   "files": entries}, f, indent=2)
        f.write("\n")
    written.append(manifest)
    return written


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
