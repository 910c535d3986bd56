"""Write the golden files: versioned dumps of every intermediate for a documented set of cases.

Each case (every causal mode and score, the mean term on and off, W = k and W > k, float32
and float64, ties in Z order, k >= N, bits = 1, N = 1; see zeta_ref.crosscheck.golden.CASES)
becomes OUT/<case>.npz holding q, k, v, the config, every stage's result and the gradients of
the backward pass for a seeded grad_output, and
OUT/manifest.json lists them with their configs, the format version, the zeta_ref version and
a SHA-256 per file. `zeta-ref compare OUT/<case>.npz` passes on each; an implementation
checks itself by recomputing from each file's q, k, v and config.
"""

from __future__ import annotations

import argparse
import os

from ..crosscheck.golden import CASES, MANIFEST, write_golden
from .common import output_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", required=True, help="folder to write the files in")


def run(args) -> int:
    output_folder(args.out, "--out", tuple(c.name + ".npz" for c in CASES) + (MANIFEST,))
    paths = write_golden(args.out)
    for path in paths:
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    print(f"zeta-ref golden: {len(CASES)} cases and {MANIFEST} in {args.out}")
    return 0
