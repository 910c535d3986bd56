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
    out_dir = tmp_path / "new" / "figures"  # created by the demo
    res = run_cli("demo", "--out", str(out_dir))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for stage in range(1, 7):
        assert f"stage {stage}" in out
    assert (out_dir / "demo.png").stat().st_size > 10_000
    # the selection must beat a random choice of k visible keys, by the demo's own numbers
    m = re.search(r"recall@32: ZETA's candidates hold ([0-9.]+) .* would hold ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) > float(m.group(2)) + 0.1
    # each check says PASS or FAIL, and the summary counts them
    verdicts = re.findall(r"^ +(PASS|FAIL): ", out, re.MULTILINE)
    assert verdicts == ["PASS", "PASS"], out
    assert "all 2 checks passed" in out


def _context_errors(out):
    """The relative errors (per query, L2) against dense attention that the demo prints for
    context: (median, max) for ZETA's selection and for the exact top-k."""
    rows = re.findall(r"^ +(?:ZETA selection|the exact top-\d+) +([0-9.]+) +([0-9.]+)", out,
                      re.MULTILINE)
    return [(float(med), float(top)) for med, top in rows]


def test_demo_names_its_one_error_metric_and_says_what_it_compares():
    res = run_cli("demo", "--n", "128")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "relative error (per query, L2) = ||o_i - r_i||_2 / ||r_i||_2 for each query i" in out
    assert "median and max over the queries" in out
    # both outputs it compares are reported with that name, as a median and a max
    assert re.search(r"2\. output: relative error \(per query, L2\) against stage 6 over the "
                     r"exact top-32, median \(max\) over 128 queries: ZETA's [0-9.]+ "
                     r"\([0-9.]+\); over 32 random visible keys [0-9.]+ \([0-9.]+\)", out), out
    assert "relative error (per query, L2) against dense attention" in out
    assert "relative error against" not in out  # no second, unnamed metric


@pytest.mark.parametrize("args", [[], ["--score", "softmax"], ["--score", "inv_euclidean"],
                                  ["--score", "inv_euclidean", "--k", "256"]])
def test_an_error_above_one_is_explained(args):
    # at N = 512 the worst query is above 1 against dense attention for every score (dense
    # attention's rows can be short); with k = 256 and inv_euclidean no query is
    res = run_cli("demo", *args)
    assert res.returncode == 0, res.stderr
    errors = _context_errors(res.stdout)
    assert len(errors) == 2, res.stdout
    assert all(med <= top for med, top in errors)
    worst = max(top for _, top in errors)
    assert ("why above 1:" in res.stdout) == (worst > 1), res.stdout
    assert ("above 1 for " in res.stdout) == (worst > 1), res.stdout


def test_relative_error_per_query_is_per_row_and_says_inf_for_a_zero_reference():
    from zeta_ref.tools.demo import error_summary, relative_error_per_query

    ref = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.1, 0.0]])  # (N, d_v)
    out = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [-0.1, 0.0]])  # (N, d_v)
    err = relative_error_per_query(out, ref)
    np.testing.assert_allclose(err, [0.0, 1.0, 0.0, np.inf, 2.0])  # the last above 1
    np.testing.assert_allclose(relative_error_per_query(out, ref, np.array([0, 1, 4])),
                               [0.0, 1.0, 2.0])
    assert error_summary(out, ref, np.array([0, 1, 4])) == (1.0, 2.0)
    # leading dims stay: one error per (head, query)
    assert relative_error_per_query(np.stack([out, ref]), np.stack([ref, ref])).shape == (2, 5)


def test_the_explanation_of_an_error_above_one_uses_the_run_s_numbers():
    from zeta_ref.tools.demo import explain_error_above_one

    rng = np.random.default_rng(0)
    v = rng.standard_normal((100, 4))  # (N, d_v)
    seen = np.ones(100, dtype=bool)
    pool = np.arange(1, 101)
    small = np.full((100, 4), 0.01)  # dense attention's output near zero: the values cancel
    lines = explain_error_above_one(v[:, :] * 0.5, small, v, pool, seen)
    assert "dense attention's output is small, RMS norm 0.02 per row" in lines[0]
    assert "(50 per query on average)" in lines[1] and "cancel" in lines[1]
    lines = explain_error_above_one(-v, v, v, pool, seen)  # not small: the other reason
    assert "weighs a few keys where dense attention weighs them all" in lines[1]


def test_demo_with_no_visible_key_prints_no_nan_and_no_warning():
    res = subprocess.run([sys.executable, "-W", "error", "-m", "zeta_ref", "demo", "--n", "2",
                          "--causal", "strict"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    out = res.stdout
    assert "nan" not in out.lower() and "0..-1" not in out
    assert "may see no key" in out and "its window is empty" in out
    assert "no candidates (every slot -1, D9): the output is the mean term alone" in out
    assert "nothing to check" in out


def test_an_empty_strict_pool_is_said_in_words(capsys):
    # query 3 sits in chunk 0 of a strict run with chunks of 8: its pool is empty
    assert cli.main(["demo", "--n", "32", "--causal", "strict", "--chunk-size", "8", "--k", "4",
                     "--query", "3", "--no-history-mean"]) == 0
    out = capsys.readouterr().out
    assert "query 3 is in chunk 0 and may see no key" in out and "0..-1" not in out
    assert "the output is zero" in out
    assert re.findall(r"(PASS|FAIL): ", out) == ["PASS", "PASS"]


def test_failed_checks_say_fail_and_set_the_exit_status(monkeypatch, capsys):
    # a selection that selects nothing finds none of the exact top-k, and an output of zeros
    # is no closer to the exact top-k's than chance
    import dataclasses

    from zeta_ref.tools import demo

    real = demo.zeta_attention

    def selects_nothing(q, k, v, cfg, **kwargs):
        out, im = real(q, k, v, cfg, **kwargs)
        return np.zeros_like(out), dataclasses.replace(
            im, candidates=np.full_like(im.candidates, -1))

    monkeypatch.setattr(demo, "zeta_attention", selects_nothing)
    assert cli.main(["demo", "--n", "128"]) == 1
    out = capsys.readouterr().out
    assert re.findall(r"^ +(PASS|FAIL): ", out, re.MULTILINE) == ["FAIL", "FAIL"], out
    assert "2 of 2 checks FAILED" in out


def test_random_selection_draws_distinct_visible_keys_uniformly():
    from zeta_ref.tools.demo import random_selection

    pool = np.array([0, 1, 3, 8, 9, 50, 1000])
    rng = np.random.default_rng(5)
    for _ in range(50):
        sel = random_selection(pool, 8, rng)  # (N, 8)
        for row, L in zip(sel, pool):
            taken = row[row >= 0]
            assert len(taken) == min(8, L) and (row[len(taken):] == -1).all()
            assert len(set(taken.tolist())) == len(taken) and (taken < L).all()
    # every key of a pool of 10 is taken 3 times in 10, on average over many draws
    counts = np.zeros(10)
    for _ in range(2000):
        counts[random_selection(np.array([10]), 3, rng)[0]] += 1
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)


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
    (["--window", "4"], "--window: window"),
    (["--backend", "nope"], "--backend: backend must be one of"),
    (["--query", "600"], "--query must be in [0, 511] (a position); got 600"),
    (["--gamma", "0"], "--gamma: gamma"),
    (["--gamma", "1e-200"], "--gamma: gamma"),
    (["--d-k", "7", "--bits", "10"], "--bits 10 with --d-k 7: "),  # then _checks.py's words
    (["--seed", "-1"], "--seed must be >= 0; got -1"),
    (["--clip-range", "2", "1"], "--clip-range: clip_range"),
    (["--n", "1000000000"], "--n 1000000000: the demo at N=1,000,000,000 needs about "),
    (["--vocab", str(10**12)], f"--vocab {10**12}: a vocabulary of 1,000,000,000,000 "
                               "embeddings of width 32 needs about 233 TiB"),
])
def test_demo_bad_options_fail_with_a_clear_message(args, message):
    res = run_cli("demo", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "file.txt", "is a file; expected a folder"),
    (lambda t: t / "file.txt" / "sub", "is a file, not a folder"),
    (lambda t: t / "full", "demo.png is a folder, so demo.png cannot be written there"),
])
def test_demo_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch, make, message):
    from zeta_ref.tools import demo

    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "full" / "demo.png").mkdir(parents=True)

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(demo, "make_sequence", no_work)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(make(tmp_path))])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeta-ref demo: error: --out "), err
    assert message in lines[0]


def test_demo_memory_estimate_matches_what_it_holds():
    from zeta_ref import ZetaConfig
    from zeta_ref.tools.demo import memory_estimate

    per_token = memory_estimate(1000, 32, 3, 16, 0, ZetaConfig()) / 1000
    assert 8 * 1024 < per_token < 16 * 1024  # measured: 11.7 KiB per token at the defaults


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
