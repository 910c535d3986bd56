"""Numba set-up shared by every kernel module, and one kernel body in two compilations.

Every Numba module of zeta_ref imports this one before it defines a kernel, so the set-up below
runs before the first ``@nb.njit(cache=True)`` decoration:

1. A cache folder Numba can write. Numba picks the folder of a ``cache=True`` function when it
   is *decorated*, not when it is first called: ``NUMBA_CACHE_DIR``, else the ``__pycache__``
   beside the source, else the user's cache folder (``~/.cache/numba``). Where none of them is
   writable (a read-only site-packages, a container running as another user, no HOME) the
   decoration raises "cannot cache function ...: no locator available", and the whole module
   fails to import. We ask Numba first; only if it finds no folder do we point
   ``numba.config.CACHE_DIR`` at a private per-user folder under ``tempfile.gettempdir()``.
   Compiling every kernel takes seconds to tens of seconds, so a cache is worth keeping even
   there.
2. A fork-safe threading layer. By default Numba takes TBB if installed, else OpenMP, else its
   built-in "workqueue". OpenMP on Linux is GNU's, and a process that forks after running a
   GNU OpenMP parallel region aborts the child ("fork() called from a process already using
   GNU OpenMP"): a multiprocessing Pool (which forks, by default, on Linux) hangs. Unless the
   user chose a layer (``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER``), we ask
   Numba for its "forksafe" choice: TBB if installed, else "workqueue" on Linux (OpenMP,
   fork-safe there, before "workqueue" elsewhere).
3. One parallel region at a time under "workqueue". That layer aborts the process when two
   Python threads launch parallel kernels at once, so every parallel kernel of zeta_ref is
   called through :func:`parallel_njit`, which holds a process-wide lock around the call when
   (and only when) the layer in use is "workqueue".

The twins compile each parallel kernel body twice and pick by the size of the work
(:func:`serial_and_parallel`): on a machine with few cores a parallel loop costs a wake-up of
the worker threads at every call; when the other core is busy that wake-up can wait a whole
scheduler tick (4 ms, see docs/benchmarks.md, "Noise"), far more than a small stage's work.
``prange`` in the serial compilation is a plain ``range``, so both run the same code and give
the same results.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import threading
import types

import numba as nb

# ---------------------------------------------------------------------------------------------
# 1. a cache folder Numba can write
# ---------------------------------------------------------------------------------------------


def _cache_probe():  # lives in this package's folder, like every kernel: same cache folders
    return 0


def _numba_can_cache() -> bool:
    """Whether Numba finds a writable cache folder for the kernels of this package.

    Decorating with ``cache=True`` is the exact test: it runs Numba's own search (and writes a
    temporary file to check the folder) without compiling anything.
    """
    try:
        nb.njit(cache=True)(_cache_probe)
    except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
        return False
    return True


def _private_cache_dir() -> str:
    """``<temp>/numba-cache-<uid>``, created if needed; an OSError unless it is ours alone.

    Numba's cache files are pickles, and loading a pickle runs code: a folder that another user
    created or can write would let them run code in this process, so it is refused.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None  # no user ids on Windows
    name = "numba-cache" if uid is None else f"numba-cache-{uid}"
    path = os.path.join(tempfile.gettempdir(), name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    ours_alone = (stat.S_ISDIR(info.st_mode) and (uid is None or info.st_uid == uid)
                  and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    if not ours_alone:
        raise OSError(f"{path} is not a folder that only this user can write")
    return path


def _make_caching_possible() -> str | None:
    """Where Numba finds no cache folder, give it a private one; returns that folder (or None
    when Numba's own search succeeded). Raises RuntimeError when no folder can be found."""
    if _numba_can_cache():
        return None
    try:
        path = _private_cache_dir()
    except OSError as err:  # no writable temp folder, or one that is not ours
        reason = str(err)
    else:
        nb.config.CACHE_DIR = path  # read by Numba at each later decoration
        if _numba_can_cache():
            return path
        reason = f"{path} is not writable"
    raise RuntimeError(
        "Numba has no writable folder to cache compiled kernels in (not the package folder, not "
        f"the user cache folder, and {reason}); set NUMBA_CACHE_DIR to a writable folder"
    )


#: The folder Numba caches zeta_ref's kernels in when its own search found none (None when
#: it found one: the ``__pycache__`` beside the sources, ``~/.cache/numba`` or NUMBA_CACHE_DIR).
FALLBACK_CACHE_DIR = _make_caching_possible()

# ---------------------------------------------------------------------------------------------
# 2. a fork-safe threading layer, unless the user chose one
# ---------------------------------------------------------------------------------------------


def _threads_started() -> bool:
    """Whether Numba has started its worker threads (after which the layer cannot change)."""
    try:
        nb.threading_layer()
    except ValueError:  # "Threading layer is not initialized."
        return False
    return True


def _choose_threading_layer() -> None:
    user_chose = ("NUMBA_THREADING_LAYER" in os.environ
                  or str(nb.config.THREADING_LAYER).lower() != "default")
    if user_chose or _threads_started():
        return
    # Numba resolves "forksafe" (see the module docstring) when the first parallel kernel runs
    nb.config.THREADING_LAYER = "forksafe"


_choose_threading_layer()


def threading_layer() -> str:
    """The name of the threading layer Numba's parallel kernels run on: "tbb", "omp" or
    "workqueue".

    Starts Numba's worker threads if no parallel kernel has run yet (as the first one would):
    from then on the layer is fixed for the life of the process.
    """
    nb.get_num_threads()  # starts the threads, choosing the layer from numba.config
    return nb.threading_layer()


# ---------------------------------------------------------------------------------------------
# 3. one parallel region at a time under "workqueue"
# ---------------------------------------------------------------------------------------------

_workqueue_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    # A child forked while another thread of the parent held the lock would wait for ever.
    global _workqueue_lock
    _workqueue_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


@functools.cache
def _one_region_at_a_time() -> bool:
    """True under "workqueue", which aborts when two threads launch parallel regions at once."""
    return threading_layer() == "workqueue"


def parallel_njit(fn):
    """``nb.njit(cache=True, parallel=True)(fn)``, callable from any number of Python threads.

    Under the "workqueue" layer the call holds a process-wide lock, so parallel kernels of
    different threads run one after the other instead of aborting the process. The result is a
    Python function (call it from Python, not from other Numba code); the compiled Numba
    dispatcher is its ``dispatcher`` attribute.
    """
    kernel = nb.njit(cache=True, parallel=True)(fn)

    @functools.wraps(fn)
    def run(*args):
        if not _one_region_at_a_time():
            return kernel(*args)
        with _workqueue_lock:
            return kernel(*args)

    run.dispatcher = kernel
    return run


# ---------------------------------------------------------------------------------------------
# one body, two compilations
# ---------------------------------------------------------------------------------------------

#: How much more work a parallel call must carry under "workqueue" than under OpenMP or TBB
#: before it pays. Measured on the 2-core development VM (2026-12-02), a parallel call of a
#: trivial kernel costs about 100-150 us under "workqueue" against 2-4 us under OpenMP; the
#: size thresholds of the kernel modules were tuned under OpenMP.
WORKQUEUE_THRESHOLD_FACTOR = 16


def parallel_from(threshold: int) -> int:
    """The size from which a kernel module runs its parallel compilation: ``threshold`` (tuned
    under OpenMP), times :data:`WORKQUEUE_THRESHOLD_FACTOR` under "workqueue"."""
    return threshold * (WORKQUEUE_THRESHOLD_FACTOR if _one_region_at_a_time() else 1)



def _renamed(fn, name: str):
    """A copy of ``fn`` under another name (Numba's disk cache is keyed by the name, and the two
    compilations of one body must not share a cache entry)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


def serial_and_parallel(body):
    """``(serial, parallel)``: ``body`` compiled with ``njit(cache=True)`` and with
    :func:`parallel_njit`."""
    name = body.__name__.strip("_").removesuffix("_body")
    serial = nb.njit(cache=True)(_renamed(body, f"_{name}_serial"))
    parallel = parallel_njit(_renamed(body, f"_{name}_parallel"))
    return serial, parallel
