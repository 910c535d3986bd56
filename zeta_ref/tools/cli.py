"""The ``zeta-ref`` command (also ``python -m zeta_ref``).

Subcommands:
  demo     step through the six stages on a small seeded sequence and check them (zeta_ref.tools.demo)
  bench    time the backends against dense attention (zeta_ref.tools.bench)
  compare  hold another implementation's dump against zeta_ref, stage by stage (zeta_ref.tools.compare)
  golden   write the golden files: dumps of every intermediate for a set of cases (zeta_ref.tools.golden)

What the subcommands share lives here: how a failure reaches the user, and the checks every
subcommand runs on its options before it starts any work.

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
import os
import sys
import tempfile

from .. import __version__


class OptionError(ValueError):
    """A command-line option's value is unusable; the message names the option."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeta-ref",
        description="zeta_ref: the reference implementation of ZETA (Z-order top-k attention).",
    )
    parser.add_argument("--version", action="version", version=f"zeta_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench,compare,golden}")
    sub.required = True

    from . import bench, compare, demo, golden

    commands = (
        ("demo", demo, "walk through the six stages on a seeded example"),
        ("bench", bench, "time the backends against dense attention"),
        ("compare", compare, "hold another implementation's dump against zeta_ref"),
        ("golden", golden, "write the golden files (every intermediate, versioned)"),
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


# ------------------------------------------------------------------ output paths, before any work


def _missing_folders(folder: str, option: str, path: str) -> None:
    """Create ``folder`` and its missing parents (``mkdir -p``), or say why that is impossible."""
    existing = folder
    while not os.path.exists(existing):  # the nearest part of the path that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OptionError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OptionError(f"{option} {path}: cannot create the folder {folder} "
                          f"({err.strerror})") from None


def _probe_writable(folder: str, option: str, path: str) -> None:
    """Write and remove a file in ``folder``: the one test that also holds for root (whom
    permissions do not stop) on a read-only file system or a full disk's quota."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".zeta-ref-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OptionError(f"{option} {path}: cannot write in {folder} ({err.strerror})") from None


def output_file(path: str, option: str) -> str:
    """Check that the file ``path`` can be written, before any work; create missing folders.

    Refused with an :class:`OptionError` naming ``option``: an empty path, a path that names
    a folder (an existing one, or one ending in a slash), a path below a file, a folder that
    cannot be created or written, an existing file that cannot be overwritten. An existing
    file is replaced when the run writes it.
    """
    if not path:
        raise OptionError(f"{option}: expected a file name; got an empty path")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise OptionError(f"{option} {path}: is a folder; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    _missing_folders(folder, option, path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OptionError(f"{option} {path}: the file exists and cannot be overwritten")
    _probe_writable(folder, option, path)
    return path


def output_folder(path: str, option: str, files: tuple[str, ...] = ()) -> str:
    """Check that the folder ``path`` can hold new files, before any work; create it (and its
    missing parents) if needed. ``files`` are the names the run will write in it: none of
    them may be an existing folder. Refused with an :class:`OptionError` naming ``option``."""
    if not path:
        raise OptionError(f"{option}: expected a folder name; got an empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError(f"{option} {path}: is a file; expected a folder")
    _missing_folders(os.path.abspath(path), option, path)
    for name in files:
        if os.path.isdir(os.path.join(path, name)):
            raise OptionError(f"{option} {path}: {os.path.join(path, name)} is a folder, so "
                              f"{name} cannot be written there")
    _probe_writable(path, option, path)
    return path


# ------------------------------------------------------------------ memory, before any work


def available_memory() -> int | None:
    """Bytes a new allocation can get without swapping: MemAvailable of /proc/meminfo on
    Linux, else the physical memory, else None (unknown: nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(need: float, option: str, what: str, hint: str = "") -> None:
    """Refuse, naming ``option``, a run whose estimated memory ``need`` (bytes) exceeds what
    this machine has available; ``what`` says what needs it, ``hint`` what to do instead."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise OptionError(f"{option}: {what} needs about {format_bytes(need)} of memory (an "
                          f"estimate), more than the {format_bytes(avail)} available here"
                          + (f"; {hint}" if hint else ""))


def check_range(value, option: str, low=None, high=None, what: str = "") -> None:
    """Refuse, naming ``option``, a number outside [low, high] (either end may be open: None);
    NaN is always refused."""
    ok = value == value and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            want = f"in [{low}, {high}]"
        else:
            want = f">= {low}" if low is not None else f"<= {high}"
        raise OptionError(f"{option} must be {want}{what}; got {value}")


if __name__ == "__main__":
    sys.exit(main())
