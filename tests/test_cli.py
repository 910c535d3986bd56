"""`zeta-ref`'s shared behaviour (zeta_ref/tools/cli.py and common.py): who is blamed for a
failure, and the checks that run before any work: output paths, memory, number ranges."""

import errno
import os

import pytest

from zeta_ref.tools import bench, cli, common, demo
from zeta_ref.tools.common import OptionError



# ------------------------------------------------------------------ who is blamed


def test_a_bug_inside_a_run_is_not_reported_as_an_option_error(monkeypatch, capsys):
    # a ValueError raised by the library during the run is zeta_ref's bug, not the user's
    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(demo, "zeta_attention", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        cli.main(["demo", "--n", "16"])
    err = capsys.readouterr().err
    assert "internal error" in err and "not in your options" in err
    assert "error: an internal inconsistency" not in err  # not dressed as an option error


def test_out_of_memory_during_a_run_is_one_line(monkeypatch, zeta_ref_cli):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 8.00 TiB for an array with shape (1, 2)")

    monkeypatch.setattr(demo, "make_sequence", no_memory)
    code, out, err = zeta_ref_cli(["demo", "--n", "16"])
    assert code == 1 and out == ""
    assert err.splitlines() == ["zeta-ref demo: error: out of memory: Unable to allocate 8.00 "
                                "TiB for an array with shape (1, 2)"], err


def test_an_os_error_during_a_run_is_one_line(monkeypatch, zeta_ref_cli, tmp_path):
    path = str(tmp_path / "b.json")

    def disk_full(results, p):
        raise OSError(errno.ENOSPC, "No space left on device", p)

    monkeypatch.setattr(bench, "write_json", disk_full)
    monkeypatch.setattr(bench, "run_cpu", lambda *a: None)  # no measurements: an empty table
    code, out, err = zeta_ref_cli(["bench", "--backends", "numba", "--json", path])
    assert code == 1
    assert err.splitlines() == [f"zeta-ref bench: error: No space left on device: {path}"], err


def test_option_errors_are_one_line_with_status_2(zeta_ref_cli):
    code, out, err = zeta_ref_cli(["demo", "--seed", "-1"])
    assert code == 2 and out == ""
    assert err.splitlines() == ["zeta-ref demo: error: --seed must be >= 0; got -1"]


# ------------------------------------------------------------------ output paths


def test_output_file_creates_missing_folders(tmp_path):
    path = tmp_path / "new" / "deeper" / "b.json"
    assert common.output_file(str(path), "--json") == str(path)
    assert path.parent.is_dir() and not path.exists()  # the folders, not the file
    assert list(path.parent.iterdir()) == []  # the write test left nothing behind


def test_output_file_keeps_an_existing_file_until_the_run_writes_it(tmp_path):
    path = tmp_path / "b.json"
    path.write_text("old")
    common.output_file(str(path), "--json")
    assert path.read_text() == "old"


@pytest.mark.parametrize("make, message", [
    (lambda t: str(t), "is a folder; expected a file name"),
    (lambda t: str(t / "sub") + "/", "is a folder; expected a file name"),
    (lambda t: str(t / "file.txt" / "b.json"), "is a file, not a folder"),
    (lambda t: str(t / "file.txt" / "a" / "b.json"), "is a file, not a folder"),
    (lambda t: "", "expected a file name"),
])
def test_output_file_refusals(tmp_path, make, message):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OptionError) as info:
        common.output_file(make(tmp_path), "--json")
    assert str(info.value).startswith("--json") and message in str(info.value)


def test_output_file_in_an_unwritable_folder(tmp_path, monkeypatch):
    # root writes anywhere the file system allows, so the refusal is simulated at the one place
    # the check asks the system: creating a file there
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "mkstemp", read_only)
    with pytest.raises(OptionError, match=r"^--plot .*: cannot write in .* \(Read-only file"):
        common.output_file(str(tmp_path / "p.png"), "--plot")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions do not stop root")
def test_output_file_refuses_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OptionError, match="cannot write in"):
            common.output_file(str(locked / "b.json"), "--json")
        with pytest.raises(OptionError, match="cannot create the folder"):
            common.output_file(str(locked / "sub" / "b.json"), "--json")
    finally:
        locked.chmod(0o700)


def test_output_folder(tmp_path):
    target = tmp_path / "a" / "b"
    assert common.output_folder(str(target), "--out", files=("demo.png",)) == str(target)
    assert target.is_dir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OptionError, match=r"^--out .*: is a file; expected a folder"):
        common.output_folder(str(tmp_path / "file.txt"), "--out")
    with pytest.raises(OptionError, match="is a file, not a folder"):
        common.output_folder(str(tmp_path / "file.txt" / "sub"), "--out")
    (target / "demo.png").mkdir()
    with pytest.raises(OptionError, match="demo.png is a folder"):
        common.output_folder(str(target), "--out", files=("demo.png",))


# ------------------------------------------------------------------ memory and ranges


def test_available_memory_is_known_here():
    avail = common.available_memory()
    assert avail is None or avail > 2**20


def test_check_fits(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: 16 * 2**30)
    common.check_fits(15 * 2**30, "--n 5", "the demo")  # fits: nothing raised
    with pytest.raises(OptionError) as info:
        common.check_fits(3 * 2**40, "--n 5", "the demo", hint="try less")
    assert str(info.value) == ("--n 5: the demo needs about 3 TiB of memory (an estimate), "
                               "more than the 16 GiB available here; try less")
    monkeypatch.setattr(common, "available_memory", lambda: None)  # unknown: nothing is refused
    common.check_fits(2**60, "--n 5", "the demo")


def test_format_bytes():
    assert common.format_bytes(512) == "512 B"
    assert common.format_bytes(1536) == "1.5 KiB"
    assert common.format_bytes(191 * 2**30) == "191 GiB"
    assert common.format_bytes(2**60) == "1.02e+03 PiB"


def test_check_range():
    common.check_range(3, "--x", 1, 3)
    for value, low, high, want in [(0, 1, None, "--x must be >= 1; got 0"),
                                   (5, None, 4, "--x must be <= 4; got 5"),
                                   (9, 1, 4, "--x must be in [1, 4]; got 9"),
                                   (float("nan"), 0, None, "--x must be >= 0; got nan")]:
        with pytest.raises(OptionError) as info:
            common.check_range(value, "--x", low, high)
        assert str(info.value) == want


def test_describe_os_error():
    assert cli.describe_os_error(OSError(errno.ENOENT, "No such file", "a/b")) == \
        "No such file: a/b"
    assert cli.describe_os_error(OSError("plain")) == "plain"


def test_mqar_choices_are_the_ones_the_experiment_accepts():
    """`zeta-ref mqar` spells its choices out (its help imports no model code); each list must
    be the one zeta_ref.mqar (or the config) checks, so that no choice the CLI offers is
    refused later and none the experiment has is missing."""
    import argparse

    from zeta_ref.config import SCORES
    from zeta_ref.mqar.model import ATTENTIONS, POSITION_INITS, QK_PROJECTIONS
    from zeta_ref.mqar.task import FILLERS, QUERY_DISTS
    from zeta_ref.mqar.train import BACKENDS
    from zeta_ref.tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {a.dest: set(a.choices) for a in sub.choices["mqar"]._actions if a.choices}
    want = {"query_dist": QUERY_DISTS, "filler": FILLERS, "positions": POSITION_INITS,
            "qk_projection": QK_PROJECTIONS, "attention": ATTENTIONS, "score": SCORES,
            "backend": BACKENDS}
    for dest, allowed in want.items():
        assert choices[dest] == set(allowed), dest
