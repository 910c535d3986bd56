"""The ``zeta-ref`` command (also ``python -m zeta_ref``).

Subcommands:
  demo   step through the six stages on a small seeded sequence and check them (zeta_ref.tools.demo)
  bench  time the CPU backends against dense attention (zeta_ref.tools.bench)
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeta-ref",
        description="zeta_ref: the reference implementation of ZETA (Z-order top-k attention).",
    )
    parser.add_argument("--version", action="version", version=f"zeta_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench}")
    sub.required = True

    from . import bench, demo

    p = sub.add_parser("demo", help="walk through the six stages on a seeded example",
                       description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)

    p = sub.add_parser("bench", help="time the CPU backends against dense attention",
                       description=bench.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as err:  # bad option values: say which, no traceback
        parser.exit(2, f"zeta-ref {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
