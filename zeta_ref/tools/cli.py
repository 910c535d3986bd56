"""The ``zeta-ref`` command (also ``python -m zeta_ref``).

Subcommands:
  demo     step through the six stages on a small seeded sequence and check them (zeta_ref.tools.demo)
  bench    time the backends against dense attention (zeta_ref.tools.bench)
  compare  hold another implementation's dump against zeta_ref, stage by stage (zeta_ref.tools.compare)
  golden   write the golden files: dumps of every intermediate for a set of cases (zeta_ref.tools.golden)
  grade    grade a course-pack exercise against the specification (zeta_ref.tools.grade)
  mqar     train a small model on MQAR, full attention or ZETA; the paper's grid (zeta_ref.tools.mqar)

How a failure reaches the user lives here; the checks every subcommand runs on its options
before it starts any work, and the progress bar, live in :mod:`zeta_ref.tools.common`.

How a run ends:
  - an option the user got wrong (a value out of range, an output path that cannot be
    written, a run that cannot fit in memory): one line naming the option, status 2, before
    any work. Only :class:`OptionError` is reported this way, and the subcommands raise it
    only while checking their options;
  - the machine refusing (an :class:`OSError`: a full disk, a file removed meanwhile; a
    :class:`MemoryError`): one line saying what, status 1;
  - anything else is a bug in zeta_ref: a line saying so, then the traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .common import OptionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeta-ref",
        description="zeta_ref: the reference implementation of ZETA (Z-order top-k attention).",
    )
    parser.add_argument("--version", action="version", version=f"zeta_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench,compare,golden,grade,mqar}")
    sub.required = True

    from . import bench, compare, demo, golden, grade, mqar

    commands = (
        ("demo", demo, "walk through the six stages on a seeded example"),
        ("bench", bench, "time the backends against dense attention"),
        ("compare", compare, "hold another implementation's dump against zeta_ref"),
        ("golden", golden, "write the golden files (every intermediate, versioned)"),
        ("grade", grade, "grade an exercise of the course pack against the specification"),
        ("mqar", mqar, "train a small model on MQAR with full attention or ZETA"),
    )
    for name, module, summary in commands:  # each module: add_arguments, run, its docstring
        p = sub.add_parser(name, help=summary, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"zeta-ref {args.command}"
    try:
        return int(args.func(args) or 0)
    except OptionError as err:  # the user's: found before any work started
        parser.exit(2, f"{prog}: error: {err}\n")
    except MemoryError as err:  # NumPy's says how much it asked for; CuPy's is one too
        parser.exit(1, f"{prog}: error: out of memory{': ' + str(err) if str(err) else ''}\n")
    except OSError as err:
        parser.exit(1, f"{prog}: error: {describe_os_error(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{prog}: interrupted\n")
    except Exception:
        sys.stderr.write(f"{prog}: internal error: a bug in zeta_ref, not in your options; "
                         "please report it with the traceback below\n")
        raise


def describe_os_error(err: OSError) -> str:
    """'No space left on device: out/b.json' rather than "[Errno 28] ...: 'out/b.json'"."""
    if err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return err.strerror or str(err) or type(err).__name__


