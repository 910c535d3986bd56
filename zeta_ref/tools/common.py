"""What the subcommands of ``zeta-ref`` share: the checks they run on their options before any
work, the progress bar, and which zeta_ref wrote a results file.

Every check raises :class:`OptionError` naming the option; :mod:`zeta_ref.tools.cli` turns it
into one line and exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


class OptionError(ValueError):
    """A command-line option's value is unusable; the message names the option."""


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



# ------------------------------------------------------------------ the progress bar


def _watched(stream) -> bool:
    """Whether a person watches ``stream``: a terminal, or a Jupyter kernel's output (which
    renders the bar's carriage returns in the cell)."""
    if "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int, mode: str = "auto"):
    """A tqdm progress bar of ``total`` steps on stderr; use as a context manager (it ends its
    line when the block ends, error or not, so that no message lands on the bar's line).

    ``mode`` "auto" shows it only where a person watches (:func:`_watched`): in a pipe, a file
    or a CI log a bar redrawn with carriage returns is noise, and the table says all it says.
    "always" and "never" decide regardless.
    """
    from tqdm import tqdm

    show = mode == "always" or (mode == "auto" and _watched(sys.stderr))
    return tqdm(total=total, file=sys.stderr, disable=not show, unit="step", leave=True,
                dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]")


# ------------------------------------------------------------------ which zeta_ref wrote a result


def source() -> dict:
    """The zeta_ref in use, for a results file: its version and, when it was loaded from a git
    checkout (``pip install -e``), the commit and whether the package's files differ from it
    (None for both outside a checkout, or without git)."""
    from zeta_ref import __version__

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # zeta_ref/
    info = {"version": __version__, "commit": None, "changed": None}

    def git(*args):
        return subprocess.run(["git", "-C", package, *args], capture_output=True, text=True,
                              timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        # the package's own files must be tracked there (not a copy installed inside some
        # other checkout, a virtual environment in a repository, say)
        if head.returncode == 0 and git("ls-files", "--error-unmatch",
                                        "__init__.py").returncode == 0:
            info["commit"] = head.stdout.strip()
            # exit status 1: the package's tracked files differ from that commit
            info["changed"] = git("diff", "--quiet", "HEAD", "--", ".").returncode == 1
    except (OSError, subprocess.SubprocessError):  # no git here
        pass
    return info
