"""zeta_ref.crosscheck: dumps, compare (tie-aware, with diagnoses), golden files, the CLI.

The comparisons are tested against an independent implementation written here from the
definitions (:func:`foreign_zeta`: Python loops, a query at a time, NumPy's own exp for the
sigmoid), with switches that put realistic mistakes into it. Each mistake must make compare
name the right stage and the right cause; without mistakes it must pass.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

import zeta_ref
from zeta_ref import ZetaConfig, compare, save_dump, zeta_attention
from zeta_ref.crosscheck import DumpError, load_dump
from zeta_ref.crosscheck.golden import CASES, MANIFEST, case_arrays, write_golden
from zeta_ref.crosscheck.gradients import gradient_sizes
from zeta_ref.crosscheck.schema import FIELDS, FORMAT_VERSION, FORWARD_FIELDS, STAGES
from zeta_ref.stages.topk_softmax import topk_attention
from zeta_ref.tolerances import assert_close
from zeta_ref.tools.cli import main

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


# ------------------------------------------------------------------ an independent ZETA


def foreign_zeta(q, k, v, cfg: ZetaConfig, bugs=()):
    """ZETA from the definitions, one row and one query at a time; ``bugs`` switch on mistakes.

    Returns a dict of every intermediate under the dump's names.
    """
    bugs = set(bugs)
    lead, n, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    rows = int(np.prod(lead, dtype=int))
    qf, kf, vf = (x.reshape((rows, n, x.shape[-1])) for x in (q, k, v))
    b, k_top, width = cfg.bits, min(cfg.k, n), min(cfg.window or cfg.k, n)
    chunk = cfg.chunk_size or max(cfg.k, math.ceil(n / 8))
    out = {name: [] for name in ("q_coords", "k_coords", "q_codes", "k_codes", "key_perm",
                                 "window_idx", "candidates", "weights", "mean_weight",
                                 "output", "mean_k", "mean_v")}

    def cells(x):
        s = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))  # libm's exp, not zeta_ref's
        c = np.round(s * 2**b) if "round" in bugs else np.floor(s * 2**b)
        return np.minimum(c, 2**b - 1).astype(np.uint64)

    def code(c):
        dims = list(range(d))[::-1] if "reversed_dims" in bugs else list(range(d))
        z = 0
        for t in range(b - 1, -1, -1):
            for j in dims:
                z = (z << 1) | ((int(c[j]) >> t) & 1)
        return z

    def pool_len(i):
        if cfg.causal == "none":
            return n
        if cfg.causal == "strict":
            return (i // chunk) * chunk
        if "own_chunk" in bugs:
            return min((i // chunk + 1) * chunk, n)
        return i if "pool_short" in bugs else i + 1

    for r in range(rows):
        qc, kc = cells(qf[r]), cells(kf[r])
        qz = [code(c) for c in qc]
        kz = [code(c) for c in kc]
        tie = (lambda j: (kz[j], -j)) if "unstable_sort" in bugs else (lambda j: (kz[j], j))
        perm = sorted(range(n), key=tie)
        csum_k, csum_v = np.cumsum(kf[r], 0, dtype=np.float64), np.cumsum(vf[r], 0,
                                                                           dtype=np.float64)
        wins, cands, ws, mws, outs, mks, mvs = [], [], [], [], [], [], []
        for i in range(n):
            visible = [j for j in perm if j < pool_len(i)]
            p = sum(1 for j in visible if kz[j] < qz[i])
            start = p if "window_at_p" in bugs else p - width // 2
            start = max(0, min(start, len(visible) - width))
            win = visible[start:start + width] + [-1] * (width - len(visible[start:]))
            win = win[:width]
            dist = {j: float(np.sum((qf[r, i] - kf[r, j]) ** 2)) for j in win if j >= 0}
            if cfg.score == "softmax":
                dist = {j: -float(qf[r, i] @ kf[r, j]) for j in dist}
            keep = sorted(sorted(dist, key=lambda j: (dist[j], j))[:k_top], key=win.index)
            cand = keep + [-1] * (k_top - len(keep))
            if cfg.causal == "none":
                mk, mv = kf[r].mean(0), vf[r].mean(0)
            else:
                mk, mv = csum_k[i] / (i + 1), csum_v[i] / (i + 1)
            gamma2 = cfg.gamma if "gamma_unsquared" in bugs else cfg.gamma ** 2
            slots = [kf[r, j] for j in keep] + ([mk] if cfg.history_mean else [])
            if cfg.score == "cauchy":
                a = [1.0 / (float(np.sum((qf[r, i] - x) ** 2)) + gamma2) for x in slots]
            else:  # softmax
                logits = [float(qf[r, i] @ x) / math.sqrt(d) for x in slots]
                a = [math.exp(t - max(logits)) for t in logits] if logits else []
            total = sum(a) or 1.0
            w = [x / total for x in a]
            vals = [vf[r, j] for j in keep] + ([mv] if cfg.history_mean else [])
            o = sum((wi * vi for wi, vi in zip(w, vals)), np.zeros(vf.shape[-1]))
            wins.append(win)
            cands.append(cand)
            ws.append(w[:len(keep)] + [0.0] * (k_top - len(keep)))
            mws.append(w[-1] if cfg.history_mean else 0.0)
            outs.append(o)
            mks.append(mk)
            mvs.append(mv)
        for name, value in (("q_coords", qc), ("k_coords", kc), ("q_codes", qz),
                            ("k_codes", kz), ("key_perm", perm), ("window_idx", wins),
                            ("candidates", cands), ("weights", ws), ("mean_weight", mws),
                            ("output", outs), ("mean_k", mks), ("mean_v", mvs)):
            out[name].append(value)
    shapes = {"q_coords": (n, d), "k_coords": (n, d), "q_codes": (n,), "k_codes": (n,),
              "key_perm": (n,), "window_idx": (n, width), "candidates": (n, k_top),
              "weights": (n, k_top), "mean_weight": (n,), "output": (n, v.shape[-1]),
              "mean_k": (n, d), "mean_v": (n, v.shape[-1])}
    result = {}
    for name, rows_ in out.items():
        arr = np.array(rows_)
        arr = arr.astype(np.int64 if name in ("key_perm", "window_idx", "candidates") else
                         np.uint64 if "co" in name and "coords" in name or "codes" in name
                         else q.dtype)
        result[name] = arr.reshape(lead + shapes[name])
    if not cfg.history_mean:
        del result["mean_k"], result["mean_v"]
    return result


def _qkv(rng, n=40, lead=(2, 2), dtype=np.float64, d_v=5):
    return (rng.standard_normal(lead + (n, 3)).astype(dtype),
            rng.standard_normal(lead + (n, 3)).astype(dtype),
            rng.standard_normal(lead + (n, d_v)).astype(dtype))


@pytest.mark.parametrize("cfg", [
    ZetaConfig(k=6),
    ZetaConfig(k=6, window=14, score="softmax", causal="strict", chunk_size=8),
    ZetaConfig(k=6, window=10, bits=2, causal="none", history_mean=False),
    ZetaConfig(k=50, window=60),  # k and W above N
], ids=["defaults", "strict-softmax-rerank", "ties-none-nomean", "k-above-n"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_independent_implementation_passes(rng, cfg, dtype):
    q, k, v = _qkv(rng, dtype=dtype)
    report = compare(q, k, v, cfg, **foreign_zeta(q, k, v, cfg))
    assert report.ok, str(report)
    assert report.exit_status == 0
    assert {f.name for f in report.fields} == set(foreign_zeta(q, k, v, cfg))


def test_the_specification_passes_on_every_field(rng, tmp_path):
    q, k, v = _qkv(rng, n=33, lead=(3,))
    cfg = ZetaConfig(k=5, window=9, causal="strict", chunk_size=6)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    path = save_dump(tmp_path / "spec", q, k, v, cfg, **inter.arrays())
    report = compare(path)
    assert [f.name for f in report.fields] == [f.name for f in FORWARD_FIELDS]
    assert all(f.status == "match" for f in report.fields)
    assert report.summary() == "all 15 provided fields match zeta_ref"


# ------------------------------------------------------------------ mistakes named


@pytest.mark.parametrize("bug, cfg, fields, stage, words", [
    ("reversed_dims", ZetaConfig(k=6), ("q_codes", "k_codes", "key_perm", "output"),
     "morton", "dimension order reversed (the last dimension most significant) (D3)"),
    ("reversed_dims", ZetaConfig(k=6), ("output",), "output", "dimension order reversed"),
    ("round", ZetaConfig(k=6), ("q_coords", "k_coords", "q_codes"), "quantize",
     "rounded to the nearest instead of floored"),
    ("own_chunk", ZetaConfig(k=6), ("window_idx", "candidates", "output"), "window",
     "own chunk visible"),
    ("pool_short", ZetaConfig(k=6), ("window_idx", "output"), "window", "pools one key short"),
    ("window_at_p", ZetaConfig(k=6), ("key_perm", "window_idx", "output"), "window",
     "a window starting at the insertion point instead of centred on it (D11)"),
    ("gamma_unsquared", ZetaConfig(k=6, gamma=0.3), ("candidates", "weights", "output"),
     "weights", "gamma where gamma^2 belongs"),
    ("gamma_unsquared", ZetaConfig(k=6, gamma=0.3), ("output",), "output",
     "gamma where gamma^2 belongs"),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_mistake_is_named_with_its_stage(rng, bug, cfg, fields, stage, words, backend):
    q, k, v = _qkv(rng)
    theirs = foreign_zeta(q, k, v, cfg, bugs=[bug])
    report = compare(q, k, v, cfg, backend=backend, **{f: theirs[f] for f in fields})
    assert report.exit_status == 1
    wrong = report.first_wrong
    assert wrong is not None and wrong.stage == stage, str(report)
    assert words in wrong.diagnosis, str(report)
    assert words in report.summary()


def _lsb_first_codes(coords, bits):
    """Codes with the bit groups in the other order: the least significant group first."""
    d = coords.shape[-1]
    z = np.zeros(coords.shape[:-1], np.uint64)
    for t in range(bits):  # least significant group first, placed highest
        for j in range(d):
            z = (z << np.uint64(1)) | ((coords[..., j] >> np.uint64(t)) & np.uint64(1))
    return z


def _exclusive_means(x):
    """The mean of the positions j < i (the first query's mean 0): a mean over another history."""
    total = np.cumsum(x, axis=-2)
    prev = np.concatenate([np.zeros_like(total[..., :1, :]), total[..., :-1, :]], axis=-2)
    count = np.maximum(np.arange(x.shape[-2]), 1)[:, None]
    return prev / count


def _other_config(**change):
    def make(q, k, v, cfg):
        from dataclasses import replace

        return zeta_attention(q, k, v, replace(cfg, **change), return_intermediates=True)[1]
    return make


@pytest.mark.parametrize("what, make, fields, stage, words", [
    ("lsb first", lambda q, k, v, cfg: {
        "k_codes": _lsb_first_codes(zeta_ref.stages.quantize.quantize(k, cfg.bits), cfg.bits)},
     ("k_codes",), "morton", "the least significant bit group first (D3)"),
    ("tanh squash", _other_config(squash="tanh"), ("q_coords", "k_coords"), "quantize",
     "squash='tanh' (the config says 'sigmoid') (D1)"),
    ("strict pools", _other_config(causal="strict"), ("pool_len", "window_idx"), "pools",
     "causal='strict' (the config says 'inclusive') (D4)"),
    ("no mean term", _other_config(history_mean=False), ("candidates", "weights", "mean_weight"),
     "weights", "no mean term (D8)"),
    ("another gamma", _other_config(gamma=0.8), ("candidates", "weights"), "weights",
     "gamma = 0.8 (the config says 0.5) (D7)"),
    ("mean over j < i", lambda q, k, v, cfg: {"mean_v": _exclusive_means(v)}, ("mean_v",),
     "means", "the mean over the positions j < i (the query's own left out) (D8)"),
    ("mean over j < i, output only", lambda q, k, v, cfg: {
        "output": topk_attention(
            q, k, v, zeta_attention(q, k, v, cfg, return_intermediates=True)[1].candidates,
            cfg.score, cfg.gamma, _exclusive_means(k), _exclusive_means(v))[0]},
     ("output",), "output", "the mean over the positions j < i"),
])
def test_more_mistakes_are_named(rng, what, make, fields, stage, words):
    cfg = ZetaConfig(k=6)
    q, k, v = _qkv(rng)
    made = make(q, k, v, cfg)
    theirs = made if isinstance(made, dict) else made.arrays()
    report = compare(q, k, v, cfg, **{f: theirs[f] for f in fields})
    wrong = report.first_wrong
    assert wrong is not None and wrong.stage == stage, str(report)
    assert words in wrong.diagnosis, str(report)


def test_later_stages_read_as_right_given_the_wrong_codes(rng):
    cfg = ZetaConfig(k=6)
    q, k, v = _qkv(rng)
    theirs = foreign_zeta(q, k, v, cfg, bugs=["reversed_dims"])
    report = compare(q, k, v, cfg, **theirs)
    by = {f.name: f for f in report.fields}
    assert by["q_coords"].status == by["k_coords"].status == "match"
    assert by["q_codes"].status == by["k_codes"].status == "mismatch"
    assert by["key_perm"].status == "follows"
    assert "right given your k_codes: the differences come from there" in by["key_perm"].notes
    for name in ("window_idx", "candidates", "weights", "mean_weight", "output"):
        assert by[name].status == "follows", name
    assert "key_perm: right given your k_codes" in str(report)
    assert report.first_wrong.name == "q_codes"


def test_an_unstable_sort_is_equally_right_and_said(rng):
    cfg = ZetaConfig(k=6, bits=2)  # a coarse grid: many equal codes
    q, k, v = _qkv(rng)
    theirs = foreign_zeta(q, k, v, cfg, bugs=["unstable_sort"])
    report = compare(q, k, v, cfg, **theirs)
    by = {f.name: f for f in report.fields}
    assert by["key_perm"].status == "equivalent"
    assert any("not stable (D10)" in note for note in by["key_perm"].notes)
    assert by["window_idx"].status in ("match", "equivalent")
    assert report.ok, str(report)


def test_cell_edges_are_equally_right(rng):
    """A dump whose squash rounds differently at a cell edge is not wrong (D13)."""
    cfg = ZetaConfig(k=4, bits=10)
    q, k, v = _qkv(rng, n=8, lead=())
    # put one key exactly on a cell edge: sigmoid(x) = 513 / 1024
    edge = -math.log(1024 / 513 - 1)
    k[3, 0] = edge
    ours = zeta_ref.stages.quantize.quantize(k, cfg.bits)
    theirs = ours.copy()
    theirs[3, 0] = 512 if ours[3, 0] == 513 else 513  # the other side of the edge
    report = compare(q, k, v, cfg, k_coords=theirs)
    (field,) = report.fields
    assert field.status == "equivalent", str(report)
    assert "cell edge" in field.notes[0]
    far = ours.copy()
    far[5, 1] = (int(far[5, 1]) + 1) % 1024  # an input far from any edge
    assert compare(q, k, v, cfg, k_coords=far).fields[0].status == "mismatch"


def test_permuted_slots_are_equally_right(rng):
    cfg = ZetaConfig(k=6, window=12)
    q, k, v = _qkv(rng)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    shuffle = rng.permuted(np.broadcast_to(np.arange(6), inter.candidates.shape), axis=-1)
    report = compare(q, k, v, cfg,
                     candidates=np.take_along_axis(inter.candidates, shuffle, -1),
                     weights=np.take_along_axis(inter.weights, shuffle, -1),
                     output=inter.output)
    by = {f.name: f for f in report.fields}
    assert by["candidates"].status == "equivalent"
    assert by["weights"].status == "match"
    assert report.ok


def test_the_first_difference_is_reported_with_both_values(rng):
    cfg = ZetaConfig(k=6)
    q, k, v = _qkv(rng)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    out = inter.output.copy()
    out[1, 0, 7, 2] += 0.5
    report = compare(q, k, v, cfg, output=out)
    (f,) = report.fields
    assert f.status == "mismatch" and f.shown.first == (1, 0, 7, 2)
    assert f.shown.n_differ == 1
    assert f.shown.theirs == pytest.approx(f.shown.ours + 0.5)
    assert "(1, 0, 7, 2)" in str(report)


def test_report_as_json(rng, tmp_path):
    cfg = ZetaConfig(k=6)
    q, k, v = _qkv(rng)
    theirs = foreign_zeta(q, k, v, cfg, bugs=["reversed_dims"])
    path = save_dump(tmp_path / "d.npz", q, k, v, cfg, q_codes=theirs["q_codes"])
    assert main(["compare", path, "--json", str(tmp_path / "r.json")]) == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["exit_status"] == 1 and data["first_wrong"] == "q_codes"
    assert "dimension order reversed" in data["fields"][0]["diagnosis"]
    assert data["fields"][0]["end_to_end"]["differ"] > 0


# ------------------------------------------------------------------ dumps that cannot be read


@pytest.fixture
def good_dump(tmp_path, rng):
    q, k, v = _qkv(rng, n=20, lead=(2,), dtype=np.float32)
    cfg = ZetaConfig(k=4)
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    arrays = {"q": q, "k": k, "v": v, **inter.arrays(),
              "config": json.dumps({"k": 4}), "format_version": FORMAT_VERSION}
    return tmp_path, arrays


def _write(tmp_path, arrays, **changes):
    data = dict(arrays)
    for name, value in changes.items():
        if value is None:
            data.pop(name)
        else:
            data[name] = value
    path = str(tmp_path / "changed.npz")
    np.savez(path, **data)
    return path


@pytest.mark.parametrize("changes, words", [
    ({"q": None}, "missing the input 'q'"),
    ({"q_code": "x"}, "unknown array 'q_code'; did you mean 'q_codes'?"),
    ({"foo": np.zeros(2)}, "unknown array 'foo'; known names: q, k, v"),
    ({"config": json.dumps({"kk": 4})}, "config has an unknown field 'kk'; did you mean 'k'?"),
    ({"config": json.dumps({"k": 0})}, "config: k must be an integer >= 1"),
    ({"config": "{k: 4"}, "config is not valid JSON"),
    ({"format_version": 2}, "format_version is 2; this zeta_ref"),
    ({"candidates": np.zeros((2, 20, 3), np.int64)}, "candidates must have shape (2, 20, 4)"),
    ({"q_codes": np.zeros((2, 20))}, "q_codes must be an integer array"),
    ({"weights": np.zeros((2, 20, 4), np.int64)}, "weights must be a float array"),
    ({"q_codes": np.full((2, 20), 2**30)}, "q_codes must hold codes in [0, 2^(d_k * bits) - 1]"),
    ({"k_coords": np.full((2, 20, 3), -1)}, "k_coords must hold cells in [0, 2^bits - 1]"),
    ({"candidates": np.full((2, 20, 4), 20)}, "zeta_ref marks those -1, D9"),
    ({"key_perm": np.full((2, 20), 20)}, "key_perm must hold key positions in [0, N - 1]"),
    ({"pool_len": np.full(20, 21)}, "pool_len must hold values in [0, N] = [0, 20]"),
    ({"v": np.zeros((2, 19, 3), np.float32)}, "v must have shape (..., N, d_v)"),
    ({"q": np.zeros((2, 20, 3), np.int64)}, "q must be a float32 or float64 array"),
])
def test_a_malformed_dump_is_one_line_and_exit_2(good_dump, changes, words, capsys):
    tmp_path, arrays = good_dump
    if "q_code" in changes:  # a misnamed field: the right data under a wrong name
        changes = {"q_code": arrays["q_codes"], "q_codes": None}
    path = _write(tmp_path, arrays, **changes)
    with pytest.raises(DumpError, match=None) as err:
        load_dump(path)
    assert words in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as ex:
        main(["compare", path])
    assert ex.value.code == 2
    err_text = capsys.readouterr().err
    assert words in err_text and "Traceback" not in err_text
    assert err_text.count("\n") == 1


def test_unreadable_files_are_exit_2(good_dump, capsys):
    tmp_path, arrays = good_dump
    path = _write(tmp_path, arrays)
    raw = open(path, "rb").read()
    cases = {
        "text.npz": (b"not an archive at all", "not a .npz archive"),
        "half.npz": (raw[: len(raw) // 2], "truncated"),
        "single.npy": (None, "a single .npy array"),
    }
    for name, (content, words) in cases.items():
        target = tmp_path / name
        if content is None:
            np.save(target, arrays["q"])
        else:
            target.write_bytes(content)
        with pytest.raises(SystemExit) as ex:
            main(["compare", str(target)])
        assert ex.value.code == 2
        assert words in capsys.readouterr().err
    corrupt = bytearray(raw)
    middle = len(raw) // 3
    corrupt[middle:middle + 64] = bytes(64)
    (tmp_path / "bad.npz").write_bytes(bytes(corrupt))
    with pytest.raises(SystemExit) as ex:
        main(["compare", str(tmp_path / "bad.npz")])
    assert ex.value.code == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_a_gamma_zeta_attention_refuses_is_refused_in_a_dump(good_dump, capsys, rng):
    """A Cauchy gamma outside check_gamma's range for the dump's dtype (zeta_attention refuses
    it, as its weights would overflow) is an invalid config: exit 2 with the reason, not a
    NaN reference and a made-up diagnosis; save_dump and compare() refuse it too."""
    tmp_path, arrays = good_dump  # float32, k = 4
    path = _write(tmp_path, arrays, config=json.dumps({"k": 4, "gamma": 1e-30}))
    with pytest.raises(SystemExit) as ex:
        main(["compare", path])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "gamma must lie in" in err and "Traceback" not in err
    q, k, v = _qkv(rng, n=6, lead=(), dtype=np.float32)
    with pytest.raises(DumpError, match="gamma must lie in"):
        save_dump(tmp_path / "g", q, k, v, config=ZetaConfig(gamma=1e-30))
    with pytest.raises(DumpError, match="gamma must lie in"):
        compare(q, k, v, {"gamma": 1e-30}, weights=np.zeros((6, 6), np.float32))
    # the score that has no gamma takes any
    assert compare(q, k, v, {"gamma": 1e-30, "score": "softmax"}).ok


def test_a_folder_of_npy_files_and_other_integer_dtypes(good_dump):
    tmp_path, arrays = good_dump
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, value in arrays.items():
        if name == "config":
            (folder / "config.json").write_text(value)
        elif name in ("q_codes", "k_codes", "candidates"):
            np.save(folder / f"{name}.npy", np.asarray(value).astype(np.int32))
        else:
            np.save(folder / f"{name}.npy", value)
    report = compare(str(folder))
    assert report.ok and len(report.fields) == 15


def test_save_dump_refuses_what_could_not_be_read(rng, tmp_path):
    q, k, v = _qkv(rng, n=10, lead=())
    with pytest.raises(DumpError, match="unknown array 'outptu'; did you mean 'output'"):
        save_dump(tmp_path / "x", q, k, v, outptu=np.zeros((10, 5)))
    assert not os.path.exists(tmp_path / "x.npz")
    with pytest.raises(TypeError, match="config must be a ZetaConfig"):
        save_dump(tmp_path / "x", q, k, v, config="k=4")


def test_compare_refuses_a_gpu_backend(rng):
    q, k, v = _qkv(rng, n=5, lead=())
    with pytest.raises(ValueError, match="backend must be one of 'numpy', 'numba'"):
        compare(q, k, v, backend="cupy")


def test_numba_recomputes_the_same_verdicts(rng):
    cfg = ZetaConfig(k=6, window=10)
    q, k, v = _qkv(rng, dtype=np.float32)
    theirs = foreign_zeta(q, k, v, cfg, bugs=["window_at_p"])
    a = compare(q, k, v, cfg, **theirs)
    b = compare(q, k, v, cfg, backend="numba", **theirs)
    assert [(f.name, f.status) for f in a.fields] == [(f.name, f.status) for f in b.fields]
    assert a.summary() == b.summary()


# ------------------------------------------------------------------ extremes


@pytest.mark.parametrize("n, cfg", [
    (1, ZetaConfig(k=4, bits=1)),
    (3, ZetaConfig(k=8, window=16, causal="strict", chunk_size=1)),
    (7, ZetaConfig(k=2, bits=21, causal="none", score="softmax")),
])
def test_extremes_pass_untouched_and_fail_corrupted(rng, n, cfg):
    q, k, v = _qkv(rng, n=n, lead=(2,))
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    assert compare(q, k, v, cfg, **inter.arrays()).ok
    bad = inter.output.copy()
    bad[-1, -1, 0] += 1.0
    assert not compare(q, k, v, cfg, output=bad).ok


def test_bits_63_with_one_dimension(rng):
    cfg = ZetaConfig(k=3, bits=63)
    q = rng.standard_normal((9, 1))
    k = rng.standard_normal((9, 1))
    v = rng.standard_normal((9, 2))
    _, inter = zeta_attention(q, k, v, cfg, return_intermediates=True)
    report = compare(q, k, v, cfg, **inter.arrays())
    assert report.ok, str(report)


# ------------------------------------------------------------------ golden files


def _manifest():
    with open(os.path.join(GOLDEN, MANIFEST)) as f:
        return json.load(f)


def test_the_committed_golden_set_is_the_documented_one():
    manifest = _manifest()
    assert manifest["format_version"] == FORMAT_VERSION
    assert [e["file"] for e in manifest["files"]] == [c.name + ".npz" for c in CASES]
    for entry, case in zip(manifest["files"], CASES):
        assert entry["config"] == zeta_ref.crosscheck.dump.config_fields(ZetaConfig(**case.config))
        assert os.path.exists(os.path.join(GOLDEN, entry["file"]))
    covered = {(c.config.get("causal", "inclusive"), c.config.get("score", "cauchy"),
                c.config.get("history_mean", True), c.dtype) for c in CASES}
    assert {c[0] for c in covered} == {"inclusive", "strict", "none"}
    assert {c[1] for c in covered} == {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}
    assert {c[2] for c in covered} == {True, False}
    assert {c[3] for c in covered} == {"float32", "float64"}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zeta_ref_reproduces_the_golden_files(case, backend):
    dump = load_dump(os.path.join(GOLDEN, case.name + ".npz"))
    q, k, v = case.inputs()
    np.testing.assert_array_equal(dump.q, q)  # the manifest's recipe gives the stored inputs
    _, inter = zeta_attention(dump.q, dump.k, dump.v, dump.config, backend=backend,
                              return_intermediates=True)
    np.testing.assert_array_equal(dump.grad_output, case.inputs(grad_output=True)[3])
    grads = zeta_ref.zeta_attention_backward(dump.q, dump.k, dump.v, dump.grad_output,
                                             dump.config, intermediates=inter, backend=backend)
    ours = {**inter.arrays(), "dq": grads.dq, "dk": grads.dk, "dv": grads.dv,
            "dgamma": np.float64(grads.dgamma)}
    assert set(ours) == set(dump.results)
    c = dump.config
    means = inter.mean_k, inter.mean_v
    sizes = dict(zip(("dq", "dk", "dv", "dgamma"), gradient_sizes(
        dump.q, dump.k, dump.v, inter.candidates, c.score, c.gamma,
        *(means if c.history_mean else (None, None)), dump.grad_output, c.causal)))
    for name, stored in dump.results.items():
        if stored.dtype.kind in "iu":
            np.testing.assert_array_equal(ours[name], stored, err_msg=name)
        elif name in sizes:  # each entry against the terms it adds up, as compare holds it
            tol = zeta_ref.tolerances.tolerance(dump.q.dtype)
            err = np.abs(np.asarray(ours[name], np.float64) - stored)
            assert (err <= tol["rtol"] * np.abs(stored) + tol["atol"] * sizes[name]).all(), name
        else:
            scale = np.abs(dump.v).max() if name in ("output", "mean_v") else None
            assert_close(ours[name], stored, scale=scale, err_msg=name)


def test_compare_passes_golden_files_and_names_a_corrupted_stage(tmp_path, capsys):
    path = os.path.join(GOLDEN, CASES[0].name + ".npz")
    assert main(["compare", path]) == 0
    assert "all 19 provided fields match zeta_ref" in capsys.readouterr().out
    data = dict(np.load(path))
    data["k_codes"] = data["k_codes"].copy()
    data["k_codes"][0, 1, 5] ^= np.uint64(1 << 7)
    bad = tmp_path / "corrupted.npz"
    np.savez(bad, **data)
    assert main(["compare", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "first wrong stage: 3 interleave (k_codes)" in out
    assert "(0, 1, 5)" in out


def test_zeta_ref_golden_writes_the_set(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["golden", "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == sorted([c.name + ".npz" for c in CASES] + [MANIFEST])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["zeta_ref_version"] == zeta_ref.__version__
    for entry in manifest["files"]:
        assert len(entry["sha256"]) == 64
        assert compare(str(out / entry["file"])).ok


def test_a_golden_file_of_another_version_is_refused(tmp_path):
    data = dict(np.load(os.path.join(GOLDEN, CASES[-1].name + ".npz")))
    data["format_version"] = np.array(FORMAT_VERSION + 1)
    path = tmp_path / "future.npz"
    np.savez(path, **data)
    with pytest.raises(DumpError, match=f"format_version is {FORMAT_VERSION + 1}; this "
                                        f"zeta_ref .* reads dumps of version {FORMAT_VERSION}"):
        load_dump(path)


def test_golden_cases_are_deterministic():
    a = case_arrays(CASES[1])
    b = case_arrays(CASES[1])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_schema_names_every_intermediate_and_every_stage_once():
    inter_fields = set(zeta_ref.Intermediates.__dataclass_fields__) - {
        "config", "backend", "chunk_size"}
    assert {f.name for f in FORWARD_FIELDS} == inter_fields
    assert [f.name for f in FIELDS[len(FORWARD_FIELDS):]] == ["dq", "dk", "dv", "dgamma"]
    assert sorted(f for s in STAGES for f in s.fields) == sorted(f.name for f in FIELDS)


# ------------------------------------------------------------------ arrays from any framework


def test_torch_cpu_tensors_everywhere(rng, tmp_path):
    torch = pytest.importorskip("torch")
    q, k, v = _qkv(rng, n=24, lead=(2,))
    cfg = ZetaConfig(k=5)
    want = zeta_attention(q, k, v, cfg)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    for backend in ("numpy", "numba"):
        got = zeta_attention(tq, tk, tv, cfg, backend=backend)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, zeta_attention(q, k, v, cfg, backend=backend))
    np.testing.assert_array_equal(zeta_attention(tq, tk, tv, cfg), want)
    path = save_dump(tmp_path / "t", tq, tk, tv, cfg, output=torch.from_numpy(want))
    assert compare(path).ok
    assert compare(tq, tk, tv, cfg, output=torch.from_numpy(want)).ok
    grad = torch.from_numpy(q).requires_grad_()
    with pytest.raises(TypeError, match="q cannot be read as an array"):
        zeta_attention(grad, tk, tv, cfg)
    assert compare(tq, tk, tv, cfg.__class__(k=5), output=torch.from_numpy(want)).ok


def test_objects_with_array_or_dlpack_only(rng):
    q, k, v = _qkv(rng, n=12, lead=())

    class OnlyArray:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    class OnlyDLPack:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kwargs):
            return self.a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    want = zeta_attention(q, k, v)
    for wrap in (OnlyArray, OnlyDLPack):
        np.testing.assert_array_equal(zeta_attention(wrap(q), wrap(k), wrap(v)), want)


@pytest.mark.gpu
def test_device_arrays_from_torch_and_cupy(rng, tmp_path):
    cp = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    if "cupy" not in zeta_ref.backends() or not torch.cuda.is_available():
        pytest.skip("needs the cupy backend and torch with CUDA")
    q, k, v = _qkv(rng, n=64, lead=(2,), dtype=np.float32)
    cfg = ZetaConfig(k=8)
    want = zeta_attention(q, k, v, cfg, backend="cupy")
    tq, tk, tv = (torch.from_numpy(x).cuda() for x in (q, k, v))
    got = zeta_attention(tq, tk, tv, cfg, backend="cupy")
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), want)
    with pytest.raises(TypeError, match="q is a GPU array; the CPU backends take host arrays"):
        zeta_attention(tq, tk, tv, cfg)
    path = save_dump(tmp_path / "gpu", tq, cp.asarray(k), tv, cfg, output=got)
    assert compare(path).ok


# ------------------------------------------------------------------ docs/compare.md stays true

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "compare.md")


def _blocks(text: str, lang: str) -> list[str]:
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```")[0] for p in parts]


def test_the_docs_schema_table_lists_every_field():
    text = open(DOC, encoding="utf-8").read()
    for f in FIELDS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")),
                   None)
        assert row is not None, f"{f.name} missing from docs/compare.md"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f.shape, f.name
        assert cells[4] == f.decisions, f.name


def test_the_docs_worked_example_prints_what_the_docs_show(tmp_path, monkeypatch, capsys):
    text = open(DOC, encoding="utf-8").read()
    example = next(b for b in _blocks(text, "python") if "save_dump(\"theirs.npz\"" in b
                   and "morton_encode" in b)
    shown = next(b for b in _blocks(text, "text") if "first wrong stage" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/compare.md", "exec"), {})
    assert main(["compare", "theirs.npz"]) == 1
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    for line in shown.splitlines():
        if line.strip():
            assert line.rstrip() in printed, f"the docs show a line compare does not print: {line}"


# ------------------------------------------------------------------ gradients


def _with_gradients(rng, cfg, n=30, lead=(2,), dtype=np.float64, backend="numpy", d_k=3):
    """q, k, v, grad_output, and a dump's results: candidates and zeta_ref's gradients."""
    q, k = (rng.standard_normal(lead + (n, d_k)).astype(dtype) for _ in range(2))
    v, g = (rng.standard_normal(lead + (n, 4)).astype(dtype) for _ in range(2))
    _, inter = zeta_attention(q, k, v, cfg, backend=backend, return_intermediates=True)
    grads = zeta_ref.zeta_attention_backward(q, k, v, g, cfg, intermediates=inter,
                                             backend=backend)
    results = {"candidates": inter.candidates, "dq": grads.dq, "dk": grads.dk, "dv": grads.dv,
               "dgamma": grads.dgamma}
    return q, k, v, g, results


@pytest.mark.parametrize("score", ["cauchy", "softmax", "neg_euclidean", "inv_euclidean"])
@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_zeta_refs_own_gradients_match_through_a_dump(rng, tmp_path, score, causal):
    cfg = ZetaConfig(k=5, score=score, causal=causal, chunk_size=4, gamma=0.7,
                     history_mean=causal != "strict")
    q, k, v, g, results = _with_gradients(rng, cfg)
    path = save_dump(tmp_path / "grads", q, k, v, cfg, grad_output=g, **results)
    report = compare(path)
    assert [f.name for f in report.fields] == ["candidates", "dq", "dk", "dv", "dgamma"]
    assert all(f.status == "match" for f in report.fields), str(report)
    assert load_dump(path).grad_output.shape == v.shape


@pytest.mark.parametrize("causal", ["inclusive", "strict", "none"])
def test_float32_gradients_where_their_terms_cancel_match(causal):
    """The Numba twin's float32 gradients at "inv_euclidean", d_k = 1, one bit (keys 1e-3 from
    their queries, terms hundreds of times their sums; the cases of tests/test_backward.py's
    test_numba_matches_numpy_where_the_terms_cancel, where the tolerance of max |dq| failed 3
    of the 180 on 2026-12-05): compare measures each entry against the size of its terms and
    they match; a relative error of 1e-3 in dk does not."""
    from zeta_ref.crosscheck.gradients import gradient_sizes

    rng = np.random.default_rng([20250414, 7, ["inclusive", "strict", "none"].index(causal)])
    largest_cancellation = 0.0
    for case in range(60):
        n, d_v, rows = int(rng.integers(2, 60)), int(rng.integers(1, 9)), int(rng.integers(1, 3))
        q, k, v, g = (rng.standard_normal((rows, n, d)).astype(np.float32)
                      for d in (1, 1, d_v, d_v))
        cfg = ZetaConfig(k=int(rng.integers(1, 10)), bits=1, score="inv_euclidean",
                         causal=causal, history_mean=bool(case % 2))
        _, inter = zeta_attention(q, k, v, cfg, backend="numba", return_intermediates=True)
        theirs = zeta_ref.zeta_attention_backward(q, k, v, g, cfg, intermediates=inter,
                                                  backend="numba")
        results = {"candidates": inter.candidates, "dq": theirs.dq, "dk": theirs.dk,
                   "dv": theirs.dv}
        report = compare(q, k, v, cfg, grad_output=g, diagnose=False, **results)
        assert report.ok, str(report)
        means = (zeta_ref.stages.topk_softmax.history_means(k, v, causal) if cfg.history_mean
                 else (None, None))
        sizes = gradient_sizes(q, k, v, inter.candidates, cfg.score, cfg.gamma, *means, g,
                               causal)
        if np.abs(theirs.dq).max() > 0:
            largest_cancellation = max(largest_cancellation,
                                       float(sizes[0].max() / np.abs(theirs.dq).max()))
        bad = dict(results, dk=results["dk"] * np.float32(1.001))
        if np.abs(results["dk"]).max() > 1e-3:  # a change of 1e-3 that is not lost in 0
            assert not compare(q, k, v, cfg, grad_output=g, diagnose=False, **bad).ok
    assert largest_cancellation > 100  # the cases reach the regime they are for


@pytest.mark.parametrize("mistake, field, words", [
    ("overwrite", "dk", "overwritten instead of added"),
    ("normalisation", "dq", "no gradient through the normalisation"),
    ("mean_share", "dk", "the mean term's share left out of dk and dv"),
    ("dgamma_of_c", "dgamma", "dL/d(gamma^2) for dL/dgamma"),
])
def test_a_backward_mistake_is_named(rng, mistake, field, words):
    from zeta_ref.crosscheck.gradients import shares_and_sums
    from zeta_ref.stages.topk_softmax import history_means

    cfg = ZetaConfig(k=5, gamma=0.7)
    q, k, v, g, results = _with_gradients(rng, cfg, n=40)
    cand = results["candidates"]
    kw = {"overwrite": mistake == "overwrite", "mean_share": mistake != "mean_share",
          "normalisation": mistake != "normalisation"}
    dq, dk, dv, dgamma = shares_and_sums(q, k, v, cand, cfg.score, cfg.gamma,
                                         *history_means(k, v, cfg.causal), g, cfg.causal, **kw)
    if mistake == "dgamma_of_c":
        dq, dk, dv, dgamma = (results["dq"], results["dk"], results["dv"],
                              results["dgamma"] / (2 * cfg.gamma))
    report = compare(q, k, v, cfg, grad_output=g, candidates=cand, dq=dq, dk=dk, dv=dv,
                     dgamma=dgamma)
    assert report.first_wrong is not None and report.first_wrong.name == field, str(report)
    assert words in report.first_wrong.diagnosis, str(report)


def test_gradients_from_their_own_candidates_follow_them(rng):
    """Wrong candidates, and the gradients right for those candidates: the gradients read
    "follows" (right given your candidates), the candidates are the first wrong stage."""
    cfg = ZetaConfig(k=5)
    q, k, v, g, results = _with_gradients(rng, cfg, n=40)
    cand = np.roll(results["candidates"], 1, axis=-2)  # another selection
    grads = zeta_ref.stages.backward.topk_attention_backward(
        q, k, v, cand, cfg.score, cfg.gamma, *zeta_ref.stages.topk_softmax.history_means(
            k, v, cfg.causal), g)
    dk, dv = zeta_ref.stages.backward.history_means_backward(grads[3], grads[4], cfg.causal,
                                                            add_to=grads[1:3])
    report = compare(q, k, v, cfg, grad_output=g, candidates=cand, dq=grads[0], dk=dk, dv=dv)
    status = {f.name: f.status for f in report.fields}
    assert status == {"candidates": "mismatch", "dq": "follows", "dk": "follows",
                      "dv": "follows"}, str(report)


@pytest.mark.parametrize("change, words", [
    (lambda r: r.pop("grad_output"), "dq needs grad_output"),
    (lambda r: r.update(grad_output=r["grad_output"][..., :3]), "grad_output must have the "
                                                                "shape of v"),
    (lambda r: r.update(grad_output=r["grad_output"].astype(np.float32)),
     "grad_output must have q's dtype"),
    (lambda r: r["grad_output"].__setitem__((0, 3, 1), np.nan), "grad_output contains NaN"),
    (lambda r: r.update(dgamma=np.ones(2)), "dgamma must have shape ()"),
])
def test_a_dump_with_bad_gradients_is_refused_in_one_line(rng, change, words):
    cfg = ZetaConfig(k=5)
    q, k, v, g, results = _with_gradients(rng, cfg)
    raw = dict(results, grad_output=g.copy())
    change(raw)
    with pytest.raises(DumpError, match=words):
        compare(q, k, v, cfg, **raw)


def test_the_command_line_compares_gradients(rng, tmp_path, zeta_ref_cli):
    cfg = ZetaConfig(k=5)
    q, k, v, g, results = _with_gradients(rng, cfg)
    path = save_dump(tmp_path / "grads", q, k, v, cfg, grad_output=g, **results)
    code, out, err = zeta_ref_cli(["compare", path])
    assert code == 0 and err == "", err
    assert "7 gradients  dgamma" in out and "all 5 provided fields match zeta_ref" in out


@pytest.mark.parametrize("score", ["cauchy", "softmax", "neg_euclidean", "inv_euclidean"])
def test_gradient_sizes_and_shares_agree_with_loops_and_the_backward(rng, score,
                                                                      gradient_sizes):
    """crosscheck.gradients, vectorised, against conftest's loop over queries and slots (the
    sizes), and its signed shares summed against zeta_attention_backward (the gradients)."""
    from zeta_ref.crosscheck import gradients as G
    from zeta_ref.stages.topk_softmax import history_means

    for causal, mean in (("inclusive", True), ("strict", False), ("none", True)):
        cfg = ZetaConfig(k=4, score=score, causal=causal, chunk_size=3, gamma=0.7,
                         history_mean=mean)
        q, k, v, g, results = _with_gradients(rng, cfg, n=23, d_k=2)
        cand = results["candidates"]
        means = history_means(k, v, causal) if mean else (None, None)
        sizes = G.gradient_sizes(q, k, v, cand, score, 0.7, *means, g, causal)
        for r in range(q.shape[0]):
            loop = gradient_sizes(q[r], k[r], v[r], g[r], cand[r], score, 0.7, causal, mean)
            for a, b in zip(sizes[:3], loop):
                np.testing.assert_allclose(a[r], b, rtol=1e-12, atol=1e-300)
        summed = G.shares_and_sums(q, k, v, cand, score, 0.7, *means, g, causal)
        for a, name in zip(summed, ("dq", "dk", "dv", "dgamma")):
            np.testing.assert_allclose(a, results[name], rtol=1e-10, atol=1e-12)
        # in blocks of 1 and 5 queries: the same sums, and the same last writers
        whole = G.shares_and_sums(q, k, v, cand, score, 0.7, *means, g, causal, overwrite=True)
        for block in (1, 5):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(G, "BLOCK_BYTES", block * q.shape[0] * 5 * 4 * 8)
                for kw, want in (({}, summed), ({"overwrite": True}, whole)):
                    got = G.shares_and_sums(q, k, v, cand, score, 0.7, *means, g, causal, **kw)
                    for a, b in zip(got, want):
                        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("means_dtype", [np.float16, np.float32])
def test_means_of_another_float_dtype_give_a_report_on_every_backend(rng, means_dtype):
    """A float64 dump whose mean term was saved in a narrower float: a report (the means
    judged in float64, so outside its tolerance), not a traceback, on both backends; the
    stages after them take them in the inputs' dtype."""
    cfg = ZetaConfig(k=5)
    q, k, v, g, results = _with_gradients(rng, cfg)
    mean_k, mean_v = zeta_ref.stages.topk_softmax.history_means(k, v, cfg.causal)
    for backend in ("numpy", "numba"):
        report = compare(q, k, v, cfg, backend=backend, grad_output=g,
                         mean_k=mean_k.astype(means_dtype), mean_v=mean_v.astype(means_dtype),
                         candidates=results["candidates"], dq=results["dq"])
        status = {f.name: f.status for f in report.fields}
        assert status["candidates"] == "match" and status["mean_k"] == "mismatch", str(report)
        assert status["dq"] in ("match", "follows"), str(report)


@pytest.mark.parametrize("dgamma", [0, 0.0, np.zeros(1), np.zeros((1, 1), np.float32)])
def test_dgamma_may_be_any_single_number(rng, dgamma):
    """The scores without gamma have dgamma 0: a Python int, a float or a one-value array."""
    cfg = ZetaConfig(k=5, score="softmax")
    q, k, v, g, results = _with_gradients(rng, cfg)
    report = compare(q, k, v, cfg, grad_output=g, candidates=results["candidates"],
                     dgamma=dgamma)
    assert report.ok and [f.name for f in report.fields] == ["candidates", "dgamma"]
