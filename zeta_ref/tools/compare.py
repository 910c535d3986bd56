"""Hold a dump from another ZETA implementation against zeta_ref, stage by stage.

DUMP is a .npz archive or a folder of .npy files with q, k, v, the config (a JSON string of
ZetaConfig fields) and any of the stages' results, under the names of zeta_ref.Intermediates,
and of the gradients dq, dk, dv, dgamma with grad_output (docs/compare.md gives the schema;
zeta_ref.save_dump writes one). Every provided result is
checked end to end (from q, k, v) and locally (from the dump's own inputs to its stage), up to
ties that are equally right; a wrong field is tried against common mistakes, and the first
wrong stage is named with the mistake that reproduces it.

Exit status: 0 when every provided result matches, 1 when one does not, 2 for a dump that
cannot be read (one line saying why).
"""

from __future__ import annotations

import argparse

from ..crosscheck.compare import COMPARE_BACKENDS, compare
from ..crosscheck.dump import DumpError
from .common import OptionError, output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dump", metavar="DUMP", help="a .npz archive or a folder of .npy files")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--backend", choices=COMPARE_BACKENDS, default="numpy",
                   help="what recomputes zeta_ref's side: the NumPy specification (default) "
                        "or its Numba twin, faster for long dumps")
    p.add_argument("--no-diagnose", action="store_true",
                   help="skip trying the common mistakes on a mismatching field")


def run(args) -> int:
    if args.json is not None:
        output_file(args.json, "--json")
    try:
        report = compare(args.dump, backend=args.backend, diagnose=not args.no_diagnose)
    except DumpError as err:
        raise OptionError(str(err)) from None
    print(report)
    if args.json is not None:
        report.to_json(args.json)
    return report.exit_status
