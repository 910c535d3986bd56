"""The main job, `zeta-ref demo`: it runs, says what each stage did, and its checks hold."""

import re
import subprocess
import sys

import numpy as np
import pytest

from zeta_ref.tools import cli
from zeta_ref import oracles
from zeta_ref.tools.demo import make_sequence


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "zeta_ref", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_default_runs_and_reports_every_stage(tmp_path):
    res = run_cli("demo", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for stage in range(1, 7):
        assert f"stage {stage}" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # the selection must beat a random choice of k visible keys, by the demo's own numbers
    m = re.search(r"recall@32 .*: ([0-9.]+) .*would expect ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) > float(m.group(2)) + 0.1


def test_demo_options_mirror_zeta_config(capsys):
    assert cli.main(["demo", "--n", "64", "--k", "8", "--window", "16", "--causal", "strict",
                     "--chunk-size", "16", "--score", "softmax", "--no-history-mean",
                     "--squash", "clip", "--clip-range", "-2", "2", "--bits", "6"]) == 0
    out = capsys.readouterr().out
    assert "k=8" in out and "window=16" in out and "causal='strict'" in out
    assert "history_mean=False" in out and "squash='clip'" in out and "bits=6" in out
    assert "re-rank" in out


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "--k"),
    (["--window", "4"], "window must be"),
    (["--backend", "nope"], "backend must be one of"),
    (["--query", "600"], "--query"),
    (["--gamma", "0"], "gamma"),
    (["--d-k", "7", "--bits", "10"], "config.bits"),
])
def test_demo_bad_options_fail_with_a_clear_message(args, message):
    res = run_cli("demo", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_demo_help_explains_options():
    res = run_cli("demo", "--help")
    assert res.returncode == 0
    for opt in ["--k", "--bits", "--chunk-size", "--causal", "--window", "--score", "--gamma",
                "--no-history-mean", "--squash", "--out", "--seed"]:
        assert opt in res.stdout


def test_embedded_sequence_is_seeded_and_has_neighbours():
    a = make_sequence(128, 32, 3, 16, 48, seed=3)
    b = make_sequence(128, 32, 3, 16, 48, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # a query's exact nearest key is usually a token of its own kind: the data has structure
    exact = oracles.exact_topk(a["q"], a["k"], 1, causal="none")[:, 0]
    same = np.mean(a["tokens"][exact] == a["tokens"])
    assert same > 0.5
