"""zeta_ref in the environments people run it in (issue 13; the set-up is in zeta_ref.numba._jit).

- A read-only install: Numba finds no writable cache folder (not beside the sources, not in the
  user's cache folder, HOME unset, NUMBA_CACHE_DIR unset). The Numba backend still loads, with
  its cache in a private folder under the temp folder; where even that is impossible it is
  simply not available, and everything else works.
- Forked and spawned workers after the parent ran parallel kernels.
- Two Python threads running the Numba backend at once.

Each scenario runs in a fresh Python, so that Numba's process-wide state (cache folder,
threading layer) starts clean, and an abort or a hang fails one test (by its timeout) instead
of killing or blocking the whole run.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# the module (zeta_ref.backends, the attribute of the package, is the function)
registry = importlib.import_module("zeta_ref.backends")

PACKAGE = Path(__file__).resolve().parents[1] / "zeta_ref"

# Inputs and the check shared by the scripts below: the Numba backend against the NumPy
# specification. squash="clip" is bit-identical in both (see quantize_numba), so the candidates
# must match exactly and the outputs within the float64 tolerance.
CHECK_NUMBA = """
import numpy as np
import zeta_ref
from zeta_ref.tolerances import assert_close

def inputs(n, heads=2, seed=0):
    rng = np.random.default_rng(seed)
    # q, k (1, heads, N, 3); v (1, heads, N, 5)
    return [rng.standard_normal((1, heads, n, d)) for d in (3, 3, 5)]

CFG = zeta_ref.ZetaConfig(k=8, squash="clip")

def check_numba(n=64):
    q, k, v = inputs(n)
    want, want_im = zeta_ref.zeta_attention(q, k, v, CFG, backend="numpy",
                                            return_intermediates=True)
    got, got_im = zeta_ref.zeta_attention(q, k, v, CFG, backend="numba",
                                          return_intermediates=True)
    np.testing.assert_array_equal(got_im.candidates, want_im.candidates)
    assert_close(got, want, scale=float(np.abs(v).max()))
"""


def _clean_env(**changes) -> dict:
    """os.environ without the Numba settings that would hide what is tested, plus ``changes``
    (a value of None removes the variable)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "NUMBA_THREADING_LAYER")}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _python(args, *, env=None, cwd=None, timeout=300, prefix=()) -> str:
    """Run ``python args...`` (after the command ``prefix``, if any); its stdout, or a test
    failure that shows what went wrong."""
    try:
        done = subprocess.run([*prefix, sys.executable, *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no answer within {timeout} s (a hang?)\n{err.stdout}\n{err.stderr}")
    assert done.returncode == 0, (f"exit status {done.returncode}\n"
                                  f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done.stdout


def _script(folder: Path, body: str, prelude: str = "") -> list[str]:
    """``body`` after ``prelude`` and CHECK_NUMBA, as a script file (spawned workers re-import
    the main script, which ``python -c`` does not have)."""
    path = folder / "scenario.py"
    path.write_text(prelude + CHECK_NUMBA + textwrap.dedent(body))
    return [str(path)]


# ---------------------------------------------------------------------------------------------
# read-only installs
# ---------------------------------------------------------------------------------------------


def _installed_copy(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the package where Numba can cache nothing, and the environment to run it in.

    The root user may write anywhere, so unwritable folders are made impossible instead: the
    copy's ``__pycache__`` is a regular file, and the user cache folder (XDG_CACHE_HOME; HOME
    is unset) lies below a regular file. Numba's own checks fail there exactly as they do on a
    read-only folder (an OSError from os.makedirs).
    """
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "zeta_ref", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [site / "zeta_ref", *(p for p in (site / "zeta_ref").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a folder\n")  # in every package folder
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    (tmp_path / "tmp").mkdir()
    env = _clean_env(PYTHONPATH=site, HOME=None, XDG_CACHE_HOME=blocker / "cache",
                     TMPDIR=tmp_path / "tmp", PYTHONDONTWRITEBYTECODE=1)
    return site, env


@pytest.mark.slow  # compiles every kernel the small pass uses into a fresh cache
def test_read_only_install_caches_in_a_private_temp_folder(tmp_path):
    site, env = _installed_copy(tmp_path)
    out = _python(_script(tmp_path, f"""
        from zeta_ref.numba import _jit as _jit_numba
        assert zeta_ref.__file__.startswith({str(site)!r}), zeta_ref.__file__
        assert zeta_ref.backends() == ["numpy", "numba"], zeta_ref.backends()
        check_numba()
        print(_jit_numba.FALLBACK_CACHE_DIR)
    """), env=env, cwd=tmp_path)
    cache = Path(out.split()[-1])
    assert cache.parent == tmp_path / "tmp" and cache.name.startswith("numba-cache")
    assert any(cache.rglob("*.nbi")), "nothing was cached"
    assert (cache.stat().st_mode & 0o077) == 0, "the fallback cache must be private"
    version = _python(["-m", "zeta_ref", "--version"], env=env, cwd=tmp_path)
    assert version.startswith("zeta_ref ")


def test_no_writable_folder_anywhere_leaves_numpy_working(tmp_path):
    """Not even the temp folder is usable: the Numba backend is unavailable (and says why in
    one line), the NumPy backend and the command line work."""
    site, env = _installed_copy(tmp_path)
    no_temp = "import tempfile; tempfile.tempdir = {!r}\n".format(str(tmp_path / "blocker" / "t"))
    out = _python(_script(tmp_path, """
        assert zeta_ref.backends() == ["numpy"], zeta_ref.backends()
        q, k, v = inputs(64)
        zeta_ref.zeta_attention(q, k, v, CFG, backend="numpy")
        try:
            zeta_ref.get_backend("numba")
        except ValueError as err:
            print(err)
        else:
            raise AssertionError("get_backend('numba') should say why it is not usable")
    """, prelude=no_temp), env=env, cwd=tmp_path)
    message = out.strip()
    assert "\n" not in message and "NUMBA_CACHE_DIR" in message, message
    version = _python(["-c", no_temp + "import sys, runpy; sys.argv = ['zeta-ref', '--version']; "
                       "runpy.run_module('zeta_ref', run_name='__main__')"], env=env, cwd=tmp_path)
    assert version.startswith("zeta_ref ")


def _as_another_user() -> list[str] | None:
    """A command prefix that runs a program as an ordinary user: none when we are one, and for
    root a new user namespace in which root's files count as ours but without root's right to
    write anywhere (None when that is not possible here)."""
    if not hasattr(os, "geteuid"):
        return None
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.geteuid())"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 and probe.stdout.strip() == "1000" else None


@pytest.mark.slow
def test_real_read_only_copy(tmp_path):
    """The package and the user cache folder really read-only (mode 555), run as a user who
    cannot write to them."""
    prefix = _as_another_user()
    if prefix is None:
        pytest.skip("cannot run as a user other than root here (no user namespaces)")
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "zeta_ref", ignore=shutil.ignore_patterns("__pycache__"))
    user_cache = tmp_path / "user-cache"
    user_cache.mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o777)  # the temp folder stays writable, as /tmp is
    package_folders = [p for p in (site / "zeta_ref").rglob("*") if p.is_dir()]
    read_only = (*package_folders, site / "zeta_ref", site, user_cache)
    for folder in read_only:
        folder.chmod(0o555)
    try:
        env = _clean_env(PYTHONPATH=site, HOME=None, XDG_CACHE_HOME=user_cache,
                         TMPDIR=tmp_path / "tmp", PYTHONDONTWRITEBYTECODE=1)
        out = _python(_script(tmp_path, """
            import os
            from zeta_ref.numba import _jit as _jit_numba
            assert not os.access(os.path.dirname(zeta_ref.__file__), os.W_OK)
            assert zeta_ref.backends() == ["numpy", "numba"], zeta_ref.backends()
            check_numba()
            print(_jit_numba.FALLBACK_CACHE_DIR)
        """), env=env, cwd=tmp_path, prefix=prefix)
        assert Path(out.split()[-1]).parent == tmp_path / "tmp"
        version = _python(["-m", "zeta_ref", "--version"], env=env, cwd=tmp_path, prefix=prefix)
        assert version.startswith("zeta_ref ")
    finally:
        for folder in read_only:
            folder.chmod(0o755)


def test_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    """A fallback folder that others can write is not used: Numba's cache files are pickles."""
    from zeta_ref.numba import _jit as _jit_numba

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = Path(_jit_numba._private_cache_dir())
    assert path.parent == tmp_path and (path.stat().st_mode & 0o777) == 0o700
    path.chmod(0o777)
    with pytest.raises(OSError, match="only this user"):
        _jit_numba._private_cache_dir()


def test_a_backend_that_fails_to_load_is_left_out(tmp_path, monkeypatch):
    (tmp_path / "zeta_broken_backend.py").write_text(
        "raise RuntimeError('cannot cache function: no locator available\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "broken",
                        registry.Backend("broken", "zeta_broken_backend", False, "for a test"))
    assert "broken" not in registry.backends()
    assert "broken" in registry.backends(include_unavailable=True)
    with pytest.raises(ValueError) as err:
        registry.get_backend("broken")
    message = str(err.value)
    assert "\n" not in message
    assert "RuntimeError: cannot cache function: no locator available" in message


# ---------------------------------------------------------------------------------------------
# threading layer, fork, spawn, threads
# ---------------------------------------------------------------------------------------------

def _parallel_size(heads: int) -> int:
    """The smallest N at which every stage of a (1, heads, N, 3) pass takes its parallel kernel
    (the window, re-rank and mean kernels always do; sort from two rows on)."""
    from zeta_ref.numba import morton as morton_numba
    from zeta_ref.numba import quantize as quantize_numba
    from zeta_ref.numba import topk_softmax as topk_softmax_numba

    from zeta_ref.numba._jit import parallel_from

    return max(-(-parallel_from(morton_numba.PARALLEL_MIN_CODES) // heads),
               -(-parallel_from(quantize_numba.PARALLEL_MIN_VALUES) // (3 * heads)),
               -(-topk_softmax_numba.PARALLEL_MIN_QUERIES // heads))


HEADS = 4
N_PARALLEL = _parallel_size(HEADS)


def test_threading_layer_is_fork_safe_by_default():
    out = _python(["-c", "from zeta_ref.numba import _jit; print(_jit.threading_layer())"],
                  env=_clean_env())
    layer = out.strip()
    assert layer in ("tbb", "workqueue") or (layer == "omp" and sys.platform != "linux"), layer


@pytest.mark.parametrize("how", ["env", "config"])
def test_threading_layer_chosen_by_the_user_is_kept(how):
    choose = "numba.config.THREADING_LAYER = 'threadsafe'; " if how == "config" else ""
    env = _clean_env(NUMBA_THREADING_LAYER="threadsafe" if how == "env" else None)
    out = _python(["-c", "import numba; " + choose + "import zeta_ref.numba; "
                   "print(numba.config.THREADING_LAYER)"], env=env)
    assert out.strip() == "threadsafe"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_after_the_parent_ran_parallel_kernels(method, tmp_path):
    """The parent runs the Numba backend (parallel kernels), then a pool of workers does too:
    with GNU OpenMP a forked worker would abort and Pool.map hang."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method!r} start method here")
    out = _python(_script(tmp_path, f"""
        import multiprocessing

        def forward(seed):
            q, k, v = inputs({N_PARALLEL}, heads={HEADS}, seed=seed)
            return zeta_ref.zeta_attention(q, k, v, CFG, backend="numba")

        if __name__ == "__main__":
            want = [forward(seed) for seed in range(3)]
            from zeta_ref.numba import _jit as _jit_numba
            print(_jit_numba.threading_layer())
            with multiprocessing.get_context({method!r}).Pool(2) as pool:
                got = pool.map_async(forward, range(3)).get(timeout=240)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
            print("ok")
    """), env=_clean_env(), timeout=400)
    assert out.split()[-1] == "ok", out


def test_two_threads_run_the_numba_backend_at_once(tmp_path):
    """Under "workqueue" two threads launching parallel kernels at once would abort the process."""
    out = _python(_script(tmp_path, f"""
        import threading

        q, k, v = inputs({N_PARALLEL}, heads={HEADS})
        want = zeta_ref.zeta_attention(q, k, v, CFG, backend="numba")
        errors = []

        def work():
            for _ in range(10):
                got = zeta_ref.zeta_attention(q, k, v, CFG, backend="numba")
                if not np.array_equal(got, want):
                    errors.append("a different result")

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        print("ok")
    """), env=_clean_env(), timeout=400)
    assert out.split()[-1] == "ok", out
