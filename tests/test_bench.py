"""`zeta-ref bench`: it runs end to end on tiny sizes, and what it times is what it claims."""

import json
import subprocess
import sys

import numpy as np
import pytest

from zeta_ref import oracles
from zeta_ref.bench import dense_causal_attention, make_inputs, stage_calls

pytest.importorskip("numba")


def test_dense_baseline_is_causal_softmax_attention():
    q, k, v = make_inputs(50, seed=1)
    want = oracles.dense_attention(q, k, v, score="softmax", causal="inclusive")
    np.testing.assert_allclose(dense_causal_attention(q, k, v), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stage_calls_do_the_work_of_the_forward_pass(backend):
    # the per-stage timings must time the same work as the end-to-end pass
    from zeta_ref import ZetaConfig, zeta_attention

    q, k, v = make_inputs(300, seed=2)
    cfg = ZetaConfig(k=32)
    res = {}
    calls = stage_calls(backend, q, k, v, cfg, res)
    assert list(calls) == ["quantize", "morton", "sort", "window", "means", "topk"]
    for fn in calls.values():
        fn()
    out, im = zeta_attention(q, k, v, cfg, backend=backend, return_intermediates=True)
    for name, field in [("kc", "k_coords"), ("qz", "q_codes"), ("perm", "key_perm"),
                        ("cand", "candidates"), ("mv", "mean_v"), ("out", "output")]:
        np.testing.assert_array_equal(res[name], getattr(im, field), err_msg=name)


def test_bench_runs_and_writes_table_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    res = subprocess.run([sys.executable, "-m", "zeta_ref", "bench", "--sizes", "64", "256",
                          "--repeats", "2", "--morton-n", "4096", "--morton-stream-n", "8192",
                          "--json", str(out_json), "--plot", str(out_png)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "targets (issue 3):" in res.stdout
    assert "at N=65536 >= 1,000,000: not measured" in res.stdout  # no silent pass
    data = json.loads(out_json.read_text())
    runs = {(r["n"], r["method"]): r for r in data["runs"]}
    assert set(runs) == {(n, m) for n in (64, 256) for m in ("numpy", "numba", "dense")}
    for r in runs.values():
        assert r["total_s"] > 0 and r["tokens_per_s"] > 0 and r["faults_per_call"] >= 0
        assert r["memory"]["peak_extra_kib"] >= 0
    assert set(runs[256, "numba"]["stages_s"]) == {"quantize", "morton", "sort", "window",
                                                   "means", "topk"}
    assert data["morton"]["codes"] == 4096 and data["morton"]["codes_per_s"] > 0
    assert data["pool_off"]["n"] == 256 and data["pool_off"]["total_s"] > 0
    assert "with the output pool off" in res.stdout
    assert out_png.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats"),
    (["--sizes", "0"], "--sizes"),
    (["--backends", "cupy"], "--backends"),
])
def test_bench_bad_options(args, message):
    res = subprocess.run([sys.executable, "-m", "zeta_ref", "bench", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
