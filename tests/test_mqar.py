"""zeta_ref.mqar: the MQAR task, every layer's backward against finite differences, the model's
gradient end to end, training to well above chance with full attention and with ZETA,
reproducibility, and the options of ``zeta-ref mqar``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from dataclasses import replace

import numpy as np
import pytest

from zeta_ref import ZetaConfig
from zeta_ref.mqar import layers as L
from zeta_ref.mqar import model as M
from zeta_ref.mqar.grid import make_grid, render_table
from zeta_ref.mqar.task import default_pairs, make_batch, query_slots
from zeta_ref.mqar.train import RunConfig, train

# ------------------------------------------------------------------ the task


@pytest.mark.parametrize("query_dist", ["power", "uniform"])
@pytest.mark.parametrize("filler", ["zero", "random"])
def test_every_query_is_answered_by_its_keys_value(query_dist, filler):
    b, n, p, v = 50, 64, 8, 40
    batch = make_batch(np.random.default_rng(0), b, n, p, v, query_dist=query_dist,
                       filler=filler)
    assert batch.tokens.shape == (b, n) and batch.tokens.dtype == np.int64
    for name in ("query_pos", "answers", "keys", "values"):
        assert getattr(batch, name).shape == (b, p)
    assert (batch.tokens >= 0).all() and (batch.tokens < v).all()
    for row in range(b):
        tok = batch.tokens[row]
        keys, values = tok[0:2 * p:2], tok[1:2 * p:2]
        assert list(keys) == list(batch.keys[row]) and list(values) == list(batch.values[row])
        assert len(set(keys)) == p and ((keys >= 1) & (keys < v // 2)).all()
        assert len(set(values)) == p and ((values >= v // 2) & (values < v)).all()
        pos = batch.query_pos[row]
        assert (np.diff(pos) > 0).all() and pos.min() >= 2 * p and pos.max() + 1 < n
        assert ((pos - 2 * p) % 2 == 0).all()
        lookup = dict(zip(keys, values))
        asked = tok[pos]
        assert sorted(asked) == sorted(keys)  # every key asked exactly once
        for j, q in enumerate(asked):
            assert batch.answers[row, j] == lookup[q] == tok[pos[j] + 1]


def test_the_task_is_seeded():
    a = make_batch(np.random.default_rng(7), 8, 32, 4, 64)
    b = make_batch(np.random.default_rng(7), 8, 32, 4, 64)
    c = make_batch(np.random.default_rng(8), 8, 32, 4, 64)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.answers, b.answers)
    assert not np.array_equal(a.tokens, c.tokens)


def test_power_law_favours_early_slots_and_uniform_does_not():
    rng = np.random.default_rng(1)
    power = query_slots(rng, 4000, 1, 20, "power", 0.01)[:, 0]
    uniform = query_slots(rng, 4000, 1, 20, "uniform")[:, 0]
    # weights 1/(j+1)^0.99: slot 0 about 28 % of the draws; uniform 5 %
    assert 0.24 < np.mean(power == 0) < 0.32 and np.mean(power == 0) > 4 * np.mean(power == 10)
    assert 0.03 < np.mean(uniform == 0) < 0.07


def test_task_sizes_are_checked():
    with pytest.raises(ValueError, match="seq_len must be >= 4"):
        make_batch(np.random.default_rng(0), 2, 15, 4, 64)
    with pytest.raises(ValueError, match="vocab must hold"):
        make_batch(np.random.default_rng(0), 2, 64, 4, 8)
    assert [default_pairs(n) for n in (64, 128, 256)] == [4, 8, 16]


# ------------------------------------------------------------------ finite differences


def _fd_check(fn, inputs: dict, analytic: dict, n_probe: int = 12, h: float = 1e-6,
              rtol: float = 1e-6, atol: float = 1e-8):
    """Central differences of the scalar ``fn()`` at ``n_probe`` entries of each array in
    ``inputs`` (perturbed in place), against ``analytic``; relative to the largest gradient."""
    rng = np.random.default_rng(0)
    for name, x in inputs.items():
        flat = x.reshape(-1)  # a view: perturbing it perturbs x
        idx = rng.choice(flat.size, size=min(n_probe, flat.size), replace=False)
        num = np.empty(idx.size)
        for j, i in enumerate(idx):
            keep = flat[i]
            flat[i] = keep + h
            up = fn()
            flat[i] = keep - h
            down = fn()
            flat[i] = keep
            num[j] = (up - down) / (2 * h)
        ana = np.asarray(analytic[name]).reshape(-1)[idx]
        # relative to the largest gradient of the array; a gradient that is zero in exact
        # arithmetic (a key bias under softmax) is held to the differences' own noise
        scale = np.abs(np.asarray(analytic[name])).max()
        err = np.abs(num - ana).max()
        assert err <= rtol * scale + atol, f"{name}: error {err:.2e}, largest {scale:.2e}"


def _weights(rng, *shape):
    return rng.standard_normal(shape)


def test_embedding_backward():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, size=(3, 5))
    tokens[0, :3] = 2  # a token used several times
    wte, wpe = _weights(rng, 7, 4), _weights(rng, 6, 4)
    g = _weights(rng, 3, 5, 4)
    loss = lambda: float((L.embedding_forward(tokens, wte, wpe)[0] * g).sum())  # noqa: E731
    dwte, dwpe = L.embedding_backward(g, L.embedding_forward(tokens, wte, wpe)[1])
    assert dwpe[5:].sum() == 0  # positions past N get nothing
    _fd_check(loss, {"wte": wte, "wpe": wpe}, {"wte": dwte, "wpe": dwpe}, n_probe=28)


def test_layernorm_backward():
    rng = np.random.default_rng(1)
    x, w, b = _weights(rng, 2, 3, 6), _weights(rng, 6), _weights(rng, 6)
    g = _weights(rng, 2, 3, 6)
    loss = lambda: float((L.layernorm_forward(x, w, b)[0] * g).sum())  # noqa: E731
    dx, dw, db = L.layernorm_backward(g, L.layernorm_forward(x, w, b)[1])
    _fd_check(loss, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_linear_and_gelu_and_mlp_backward():
    rng = np.random.default_rng(2)
    x = _weights(rng, 2, 3, 5)
    w1, b1, w2, b2 = _weights(rng, 5, 8), _weights(rng, 8), _weights(rng, 8, 5), _weights(rng, 5)
    g = _weights(rng, 2, 3, 5)
    loss = lambda: float((L.mlp_forward(x, w1, b1, w2, b2)[0] * g).sum())  # noqa: E731
    dx, dw1, db1, dw2, db2 = L.mlp_backward(g, L.mlp_forward(x, w1, b1, w2, b2)[1])
    _fd_check(loss, {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2},
              {"x": dx, "w1": dw1, "b1": db1, "w2": dw2, "b2": db2})
    # GELU alone, across its curved part
    z = np.linspace(-4, 4, 17)
    gz = _weights(rng, 17)
    dz = L.gelu_backward(gz, L.gelu_forward(z)[1])
    _fd_check(lambda: float((L.gelu_forward(z)[0] * gz).sum()), {"z": z}, {"z": dz},
              n_probe=17)


def test_causal_softmax_attention_backward():
    rng = np.random.default_rng(3)
    q, k, v = _weights(rng, 2, 2, 7, 3), _weights(rng, 2, 2, 7, 3), _weights(rng, 2, 2, 7, 4)
    g = _weights(rng, 2, 2, 7, 4)
    out, cache = L.causal_softmax_attention_forward(q, k, v)
    # causal: the first query sees only the first key
    assert np.allclose(out[:, :, 0], v[:, :, 0])
    loss = lambda: float((L.causal_softmax_attention_forward(q, k, v)[0] * g).sum())  # noqa
    dq, dk, dv = L.causal_softmax_attention_backward(g, cache)
    _fd_check(loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})


@pytest.mark.parametrize("score", ["cauchy", "neg_euclidean", "inv_euclidean"])
def test_zeta_attention_layer_backward_with_gamma(score):
    # N = 12 > k = 4: the window selects (only where it selects nothing new under a 1e-6
    # nudge are differences meaningful: the selection is held fixed, docs/backward.md)
    rng = np.random.default_rng(4)
    x = _weights(rng, 2, 12, 6)
    p = {name: 0.5 * _weights(rng, *shape) for name, shape in
         {"wq": (6, 6), "bq": (6,), "wk": (6, 6), "bk": (6,), "wv": (6, 6), "bv": (6,),
          "wo": (6, 6), "bo": (6,)}.items()}
    g = _weights(rng, 2, 12, 6)
    cfg = ZetaConfig(k=4, score=score)
    state = {"log_gamma": math.log(0.7)}

    def forward():
        return L.attention_layer_forward(x, p, 2, "zeta", log_gamma=state["log_gamma"],
                                         zeta_config=cfg, backend="numpy")

    y, cache = forward()
    dx, grads, dlog_gamma = L.attention_layer_backward(g, cache)
    # the selection must not move under the nudges for the check to mean anything: every
    # nudged forward pass is checked to select what the unnudged one did
    selected = cache[3][4].candidates.copy()
    moved = []  # one entry per nudged pass: did its selection differ?

    def loss():
        out, nudged = forward()
        moved.append(not np.array_equal(nudged[3][4].candidates, selected))
        return float((out * g).sum())

    _fd_check(loss, {"x": x, **p}, {"x": dx, **grads}, n_probe=8)
    probes = sum(min(8, a.size) for a in (x, *p.values()))
    assert len(moved) == 2 * probes and not any(moved)
    h = 1e-6
    state["log_gamma"] += h
    up = loss()
    state["log_gamma"] -= 2 * h
    down = loss()
    state["log_gamma"] += h
    numeric = (up - down) / (2 * h)
    if score == "cauchy":
        assert abs(numeric - dlog_gamma) <= 1e-6 * max(1.0, abs(numeric))
        assert dlog_gamma != 0.0
    else:  # gamma is not used by these scores
        assert dlog_gamma == 0.0 and abs(numeric) < 1e-9


def test_full_attention_layer_backward_with_heads():
    rng = np.random.default_rng(5)
    x = _weights(rng, 2, 5, 6)
    p = {name: 0.5 * _weights(rng, *shape) for name, shape in
         {"wq": (6, 6), "bq": (6,), "wk": (6, 6), "bk": (6,), "wv": (6, 6), "bv": (6,),
          "wo": (6, 6), "bo": (6,)}.items()}
    g = _weights(rng, 2, 5, 6)
    forward = lambda: L.attention_layer_forward(x, p, 3, "full")  # noqa: E731
    dx, grads, dlog_gamma = L.attention_layer_backward(g, forward()[1])
    assert dlog_gamma == 0.0
    _fd_check(lambda: float((forward()[0] * g).sum()), {"x": x, **p}, {"x": dx, **grads},
              n_probe=8)


def test_cross_entropy_backward():
    rng = np.random.default_rng(6)
    logits = 3 * _weights(rng, 5, 9)
    targets = rng.integers(0, 9, size=5)
    loss, cache = L.cross_entropy_forward(logits, targets)
    ref = np.mean([np.log(np.exp(row).sum()) - row[t] for row, t in zip(logits, targets)])
    assert abs(float(loss) - ref) < 1e-12
    _fd_check(lambda: float(L.cross_entropy_forward(logits, targets)[0]), {"logits": logits},
              {"logits": L.cross_entropy_backward(cache)}, n_probe=45)


@pytest.mark.parametrize("attention, mlp_ratio, qk_projection", [
    ("full", 2, "linear"), ("zeta", 0, "linear"), ("zeta", 2, "linear"), ("zeta", 0, "mlp"),
    ("full", 0, "mlp")])
def test_model_gradient_end_to_end(attention, mlp_ratio, qk_projection):
    cfg = RunConfig(seq_len=16, d_model=8, pairs=2, vocab=16, attention=attention, heads=2,
                    k=4, mlp_ratio=mlp_ratio, qk_projection=qk_projection, dtype="float64",
                    backend="numpy")
    mcfg = cfg.model_config()
    flat, params, log_gammas = M.init_params(mcfg, np.random.default_rng(0), np, np.float64)
    flat[:] = np.random.default_rng(1).normal(0.0, 0.3, flat.shape)  # away from the init
    batch = make_batch(np.random.default_rng(2), 3, 16, 2, 16)

    def loss():
        return float(M.forward(mcfg, params, log_gammas, batch.tokens, batch.query_pos,
                               batch.answers)[0])

    _, _, caches = M.forward(mcfg, params, log_gammas, batch.tokens, batch.query_pos,
                             batch.answers)
    gflat = np.full_like(flat, np.nan)  # every entry must be written
    dlog = M.backward(mcfg, caches, M.views(gflat, M.param_shapes(mcfg)))
    assert np.isfinite(gflat).all()
    _fd_check(loss, {"flat": flat}, {"flat": gflat}, n_probe=40)
    assert set(dlog) == set(log_gammas) == ({"h0.attn.log_gamma", "h1.attn.log_gamma"}
                                             if attention == "zeta" else set())
    for name in log_gammas:
        keep = log_gammas[name]
        log_gammas[name] = keep + 1e-6
        up = loss()
        log_gammas[name] = keep - 1e-6
        down = loss()
        log_gammas[name] = keep
        assert abs((up - down) / 2e-6 - dlog[name]) <= 1e-6 * max(1.0, abs(dlog[name]))


def test_qk_projection_adds_the_mlps_first_layer_and_nothing_else():
    base = RunConfig(seq_len=16, d_model=8, pairs=2, vocab=16, attention="zeta", heads=2)
    linear = M.param_shapes(base.model_config())
    mlp = M.param_shapes(replace(base, qk_projection="mlp").model_config())
    extra = {name: shape for name, shape in mlp.items() if name not in linear}
    assert extra == {f"h{i}.attn.{w}": shape for i in range(2)
                     for w, shape in (("wq1", (8, 8)), ("bq1", (8,)), ("wk1", (8, 8)),
                                      ("bk1", (8,)))}
    assert all(mlp[name] == shape for name, shape in linear.items())
    # the linear model's parameters keep their order, so its runs keep their numbers
    assert list(linear) == [name for name in mlp if name in linear]
    _, params, _ = M.init_params(replace(base, qk_projection="mlp").model_config(),
                                 np.random.default_rng(0))
    assert 0.01 < float(params["h0.attn.wq1"].std()) < 0.03  # GPT-2's 0.02, as every weight
    assert float(np.abs(params["h0.attn.bq1"]).max()) == 0.0
    assert "qk=mlp" in replace(base, qk_projection="mlp").label()
    assert "qk=" not in base.label()
    with pytest.raises(ValueError, match="qk_projection must be one of"):
        replace(base, qk_projection="conv")


def test_adam_matches_the_rule_on_host_and_flat():
    flat = np.array([1.0, -2.0, 0.5])
    host = {"a": 1.0, "b": -2.0, "c": 0.5}
    adam, hadam = M.Adam(flat), M.HostAdam(host, clamp=(-10.0, 10.0))
    for step in range(3):
        g = np.array([0.3, -0.1, 2.0]) * (step + 1)
        adam.step(flat, g, 0.01)
        hadam.step(host, dict(zip("abc", g)), 0.01)
    assert np.allclose(flat, [host[n] for n in "abc"], rtol=0, atol=1e-12)
    # a constant gradient: bias-corrected, every step moves each value by lr against its sign
    flat = np.array([1.0, -2.0])
    adam = M.Adam(flat)
    for _ in range(3):
        adam.step(flat, np.array([0.3, -5.0]), 0.01)
    assert np.allclose(flat, [1.0 - 0.03, -2.0 + 0.03], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ training


#: The tiny configuration the training tests use: 4 pairs among 32 tokens, sequences of 32;
#: chance is 1 / 16 and always naming one of the context's 4 values gives 1 / 4, so an
#: accuracy above 0.5 means the model recalls. Measured on the 2-core development VM: see
#: docs/experiments.md.
TINY = dict(seq_len=32, d_model=64, pairs=4, vocab=32, batch=128, lr=1e-3, test_size=512,
            log_every=50, backend="numba")


#: Notebook 7 trains exactly these two runs live in the docs build (tests/test_docs.py), and
#: tests/test_docs.py::test_notebook_07_trains_both_attentions_to_recall checks them there;
#: here they train only where that build cannot run, so that a test run trains them once.
DOCS_BUILD_TRAINS_THEM = all(importlib.util.find_spec(m) for m in ("sphinx", "myst_nb"))


# How long a run stays on the plateau at 1 / P (always naming one of the context's values)
# before it learns to recall depends on the seed and the schedule (docs/experiments.md); these
# seeds leave it within the first 500 steps on the development VM (others leave it later).
@pytest.mark.skipif(DOCS_BUILD_TRAINS_THEM, reason="trained and checked by notebook 7 in "
                    "tests/test_docs.py (test_notebook_07_trains_both_attentions_to_recall)")
@pytest.mark.parametrize("attention, steps, seed", [("full", 800, 1), ("zeta", 800, 1)])
def test_tiny_model_learns_to_recall(attention, steps, seed):
    cfg = RunConfig(attention=attention, steps=steps, seed=seed, **TINY)
    t0 = time.perf_counter()
    result = train(cfg)
    took = time.perf_counter() - t0
    assert result["accuracy"] > 0.5, (result["accuracy"], result["curve"], took)
    assert result["curve"][-1]["loss"] < 0.5 * result["curve"][0]["loss"]
    if attention == "zeta":
        assert set(result["gammas"]) == {"h0.attn.gamma", "h1.attn.gamma"}
        assert all(g > 0 and g != 0.5 for g in result["gammas"].values())  # trained


def test_tiny_zeta_leaves_the_plateau_with_a_selection():
    """The run above has k = 32 >= N: every visible key is a candidate, so the Z-order search
    is never in the loop. With k = 8 the window chooses 8 of up to 32 visible keys (the
    candidates and the backward pass through them change with every step), and the model
    must still leave the plateau at 1 / P = 0.25 (always naming one of the context's values):
    0.456 after 800 steps of seed 1 on the 2-core development VM (2026-12-04, about 40 s;
    seed 0: 0.468),
    where it then waits on the second plateau near one half (docs/experiments.md, "The
    second plateau, seen on the CPU")."""
    result = train(RunConfig(attention="zeta", k=8, steps=800, seed=1, **TINY))
    assert result["accuracy"] > 0.35, (result["accuracy"], result["evals"])
    assert result["curve"][-1]["loss"] < 0.5 * result["curve"][0]["loss"]


@pytest.mark.parametrize("attention", ["full", "zeta"])
def test_same_seed_same_numbers(attention):
    small = {**TINY, "test_size": 64, "batch": 16, "log_every": 2}
    cfg = RunConfig(attention=attention, steps=6, seed=3, eval_every=3, **small)
    a, b = train(cfg), train(cfg)
    assert a["curve"] == b["curve"] and a["evals"] == b["evals"] and a["gammas"] == b["gammas"]
    c = train(RunConfig(attention=attention, steps=6, seed=4, eval_every=3, **small))
    assert c["curve"] != a["curve"]


def test_the_numbers_do_not_depend_on_the_callers_blas_threads():
    """train() runs the BLAS with one thread and gives the caller's setting back: with more
    threads OpenBLAS sums in another order (at this size the losses of the 20 steps differed
    from step 7 on, on two cores, before train() fixed the threads), and parallel runs each
    with a BLAS thread per core were four to five times slower a step."""
    from threadpoolctl import threadpool_info, threadpool_limits

    cfg = RunConfig(attention="full", seq_len=64, d_model=32, batch=64, steps=20,
                    test_size=8, log_every=1)  # V = 8192: the head's product is the one
    curves = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            curves.append(train(cfg)["curve"])
            blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert all(n == threads for n in blas), blas  # the caller's setting is back
    assert curves[0] == curves[1]


@pytest.mark.parametrize("attention", ["full", "zeta"])
def test_a_run_stopped_and_resumed_gives_the_same_numbers(attention, tmp_path):
    """Stopped three times (inside a loss window, just after an evaluation, at once) and
    resumed from its checkpoint, a run ends with the numbers of one never stopped, bit for bit; the
    checkpoint is gone at the end and the result says where it went on from."""
    small = {**TINY, "test_size": 64, "batch": 16, "log_every": 4}
    cfg = RunConfig(attention=attention, steps=12, seed=3, eval_every=6, **small)
    whole = train(cfg)
    path = str(tmp_path / "run.npz")
    assert train(cfg, checkpoint=path, should_stop=lambda step: step == 5) is None
    assert os.path.exists(path)
    # every call moves the run on: one step at least, then saved at step 7
    assert train(cfg, checkpoint=path, should_stop=lambda step: True) is None
    assert train(cfg, checkpoint=path, should_stop=lambda step: step == 9) is None
    rest = train(cfg, checkpoint=path, should_stop=lambda step: False)
    assert not os.path.exists(path)
    for key in ("curve", "evals", "accuracy", "final_loss", "gammas"):
        assert rest[key] == whole[key], key
    assert rest["resumed_at"] == [5, 6, 9] and "resumed_at" not in whole
    assert rest["train_seconds"] > 0 and rest["total_seconds"] >= rest["train_seconds"]


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    small = {**TINY, "test_size": 16, "batch": 8}
    path = str(tmp_path / "run.npz")
    assert train(RunConfig(steps=4, seed=0, **small), checkpoint=path,
                 should_stop=lambda step: step == 2) is None
    with pytest.raises(ValueError, match="belongs to another configuration"):
        train(RunConfig(steps=4, seed=1, **small), checkpoint=path)


# ------------------------------------------------------------------ the grid and its table


def test_paper_grid_holds_the_papers_configurations():
    runs = make_grid("paper", RunConfig(backend="numba"), (0, 1))
    main = [c for g, c in runs if g == "main"]
    ablation = [c for g, c in runs if g == "ablation"]
    assert len(main) == 2 * 3 * 3 * 2 and len(ablation) == 2 * (4 * 4 - 1)
    assert {(c.seq_len, c.pairs) for c in main} == {(64, 4), (128, 8), (256, 16)}
    assert {c.d_model for c in main} == {64, 128, 256}
    assert {(c.d_k, c.score, c.k) for c in main if c.attention == "zeta"} == {(3, "cauchy", 32)}
    # the paper's three scores, and the dot product as a control
    assert {(c.d_k, c.score) for c in ablation} | {(3, "cauchy")} == {
        (d, s) for d in (1, 2, 3, 8)
        for s in ("cauchy", "neg_euclidean", "inv_euclidean", "softmax")}


def test_table_renders_from_results_only():
    def fake(group, acc, **cfg):
        base = dict(RunConfig(**{k: v for k, v in cfg.items()}).__dict__)
        return {"group": group, "config": base, "accuracy": acc}

    # seed 1 finished first: the brackets still give seed 0 first
    runs = [fake("main", a, seq_len=64, d_model=256, attention="full", seed=s)
            for a, s in ((0.6, 1), (1.0, 0))]
    runs += [fake("main", 0.5, seq_len=64, d_model=256, attention="zeta", seed=0)]
    runs += [fake("ablation", a, seq_len=64, d_model=256, attention="zeta", d_k=1, score=s)
             for a, s in ((0.8, "cauchy"), (0.9, "neg_euclidean"), (1.0, "softmax"))]
    # P = 4: below 2 / P = 50 % no score has left the plateau, and no verdict is given
    runs += [fake("ablation", a, seq_len=64, d_model=256, attention="zeta", d_k=2, score=s)
             for a, s in ((0.3, "cauchy"), (0.2, "inv_euclidean"), (0.9, "softmax"))]
    table = render_table({"runs": runs})
    # ZETA ran seed 0 only: the gap compares seed 0 with seed 0 (not with full's mean, 80 %)
    assert ("| 64 | 4 | 256 | 80.0 % (100.0, 60.0) | 50.0 % | 100 % for both | "
            "-50.0 points (seeds 0 only) |") in table
    assert ("| d_K | cauchy | neg_euclidean | inv_euclidean | softmax (not in the paper) | "
            "paper's claim | Cauchy best? |") in table
    # the control is not the paper's: Cauchy's verdict is against neg_euclidean alone
    assert "| 1 | 80.0 % | 90.0 % | — | 100.0 % | slightly below d_K >= 2; Cauchy best | no |" \
        in table
    assert ("| 2 | 30.0 % | — | 20.0 % | 90.0 % | near perfect; Cauchy best | "
            "— (none left the plateau) |") in table
    assert render_table({"runs": []}) == "(no runs in these results)"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_ablation_table_of_the_docs_is_its_data_files():
    """docs/experiments.md's table of the ablation at Zoology's budget holds exactly the rows
    docs/data/mqar_zoology_budget.py --table renders from the committed results (so a number
    typed by hand, or a rerun not copied into the page, fails here)."""
    spec = importlib.util.spec_from_file_location(
        "mqar_zoology_budget", os.path.join(ROOT, "docs", "data", "mqar_zoology_budget.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with open(os.path.join(ROOT, "docs", "experiments.md"), encoding="utf-8") as f:
        page = f.read().splitlines()
    rows, cells = [], set()
    # seed 0 (and seed 1 of d_K = 3, Cauchy), then seed 1 of the other 11 cells
    for name, count in (("mqar_ablation_zoology_full.json", 12),
                        ("mqar_ablation_zoology_seed1.json", 11)):
        with open(os.path.join(ROOT, "docs", "data", name)) as f:
            runs = json.load(f)["runs"]
        assert len(script.table_rows(runs)) == len(runs) == count, name
        rows += script.table_rows(runs)
        cells |= {(r["config"]["d_k"], r["config"]["score"], r["config"]["seed"]) for r in runs}
    # with the d_K = 3 Cauchy run of seed 0 (mqar_zoology_budget.json): two seeds of each cell
    assert len(cells | {(3, "cauchy", 0)}) == 24
    missing = [row for row in rows if row not in page]
    assert not missing, "rows of the data file not in docs/experiments.md:\n" + "\n".join(missing)
    # the rendering: rounded half up from the exact fraction, the last evaluation in bold
    fake = {"config": {"d_k": 2, "score": "inv_euclidean", "seed": 1, "steps": 12500},
            "evals": [{"step": 1000, "accuracy": 0.1225}, {"step": 1500, "accuracy": 0.991}],
            "stopped_at_step": 1500, "stopped_because": "reached 0.99"}
    assert script.table_rows([fake]) == [
        "| d_K = 2, inverse Euclidean, seed 1 | 12.3 / **99.1 % at 1500** | 1500 / 1500 | 1500 |"]


# ------------------------------------------------------------------ the command line



@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1; got 0"),
    (["--lr", "0"], "--lr must be > 0; got 0.0"),
    (["--seq-len", "8", "--pairs", "4"], "--seq-len must be >= 4 * pairs"),
    (["--vocab", "6", "--pairs", "4"], "--vocab must hold P distinct keys"),
    (["--d-model", "10", "--heads", "3"], "--d-model must be a multiple of heads"),
    (["--grid", "paper", "--seq-len", "64"], "--seq-len: --grid paper sets it"),
    (["--jobs", "2"], "--jobs needs --grid"),
    (["--seeds", "1"], "--seeds needs --grid"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]; got -1"),
    (["--d-k", "64"], "--d-k must be <= 63"),
    # a gamma the Cauchy weights cannot hold in the dtype: refused before any work
    (["--attention", "zeta", "--gamma", "1e-30"], "--gamma must lie in ["),
    (["--attention", "zeta", "--gamma", "1e20"], "--gamma must lie in"),
    (["--attention", "zeta", "--gamma", "1e300", "--dtype", "float64"], "--gamma must lie in"),
    # accepted by zeta_attention, but outside where training keeps a learned gamma: the first
    # step would have moved it there (2026-12-05)
    (["--attention", "zeta", "--gamma", "1e-5"], "--gamma must lie in [0.001, 1000], the range"),
    (["--attention", "zeta", "--gamma", "5e3", "--dtype", "float64"],
     "--gamma must lie in [0.001, 1000], the range"),
    (["--table", "/nonexistent/x.json"], "--table /nonexistent/x.json: no such file"),
    (["--grid", "smoke", "--time-limit", "60"], "--time-limit needs --grid and --json"),
    (["--grid", "smoke", "--json", "/tmp/x.json", "--time-limit", "0"],
     "--time-limit must be a number of seconds > 0; got 0.0"),
    (["--grid", "smoke", "--json", "/tmp/x.json", "--time-limit", "nan"],
     "--time-limit must be a number of seconds > 0; got nan"),
])
def test_option_errors_are_one_line(argv, message, zeta_ref_cli):
    code, out, err = zeta_ref_cli(["mqar"] + argv)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zeta-ref mqar: error: ") and message in lines[0], err


def test_cupy_backend_is_refused_cleanly_without_a_gpu(zeta_ref_cli):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    code, _, err = zeta_ref_cli(["mqar", "--backend", "cupy"])
    assert code == 2 and "--backend:" in err and "cupy" in err


@pytest.mark.parametrize("accuracy, pairs, flagged", [(0.124, 8, True), (0.249, 8, True),
                                                      (0.25, 8, False), (0.99, 8, False),
                                                      (0.49, 4, True), (0.5, 4, False),
                                                      (0.01, 8, True), (0.3, 2, False)])
def test_a_run_not_yet_recalling_is_named_so(accuracy, pairs, flagged):
    """The CLI's summary of a run says when its accuracy is below 2/P (on the plateau, at
    1/P, a model names one of the context's values rather than the right one), and not
    above it, nor for P < 4, where 2/P is no threshold."""
    from zeta_ref.tools.mqar import format_run

    result = {"label": "zeta dK=3 cauchy k=32 N=128 d=256 seed=0",
              "config": {"pairs": pairs, "vocab": 8192, "steps": 10, "batch": 8, "lr": 1e-3,
                         "backend": "numpy"},
              "curve": [{"step": 10, "loss": 2.0}], "evals": [{"step": 10, "accuracy": accuracy}],
              "gammas": {}, "accuracy": accuracy, "chance": 1 / 8192, "final_loss": 2.0,
              "seconds_per_step": 0.01, "total_seconds": 0.1}
    text = format_run(result)
    assert ("not recalling yet" in text) == flagged, text
    if flagged:
        assert f"2/P = {200 / pairs:.1f} %" in text and f"1/P = {100 / pairs:.1f} %" in text


def test_one_run_writes_json_and_curves(tmp_path, zeta_ref_cli):
    path = tmp_path / "r.json"
    code, out, _ = zeta_ref_cli(["mqar", "--attention", "zeta", "--seq-len", "32",
                                 "--d-model", "16", "--vocab", "16", "--steps", "4", "--batch",
                                 "8", "--test-size", "16", "--log-every", "2", "--json",
                                 str(path), "--out", str(tmp_path / "o"),
                                 "--qk-projection", "mlp"])
    assert code == 0, out
    assert "test accuracy" in out and (tmp_path / "o" / "mqar_curves.png").stat().st_size > 0
    results = json.loads(path.read_text())
    (run,) = results["runs"]
    assert run["config"]["attention"] == "zeta" and len(run["curve"]) == 2
    assert run["config"]["qk_projection"] == "mlp" and "qk=mlp" in run["label"]
    assert results["command"].startswith("zeta-ref mqar")
    # which zeta_ref wrote it: the version, and the commit where it runs from a git checkout
    from zeta_ref import __version__

    source = results["machine"]["zeta_ref"]
    assert source["version"] == __version__
    assert source["commit"] is None or (len(source["commit"]) == 40 and
                                        isinstance(source["changed"], bool))


@pytest.mark.parametrize("n_runs", [3, 13])
def test_the_curves_of_a_grid_have_a_legend(tmp_path, monkeypatch, n_runs):
    """Up to 12 runs, an entry each; a grid's many runs, one entry per attention with its
    count (each run's own entry would cover the plot)."""
    import matplotlib.pyplot as plt

    from zeta_ref.tools.mqar import plot_curves

    runs = [{"label": f"run {i}", "config": {"attention": "full" if i % 3 == 0 else "zeta"},
             "curve": [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.0}],
             "evals": [{"step": 20, "accuracy": 0.5}]} for i in range(n_runs)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    plot_curves(runs, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    if n_runs <= 12:
        assert legend == [r["label"] for r in runs]
    else:
        assert legend == ["full attention (5 runs)", "ZETA (8 runs)"]
    figures[0].clf()


def test_the_source_of_results_without_git(monkeypatch):
    """Outside a git checkout, or without git, a results file still names the version."""
    import subprocess

    from zeta_ref import __version__
    from zeta_ref.tools import common

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert common.source() == {"version": __version__, "commit": None, "changed": None}


def test_smoke_grid_in_two_processes_and_the_table_again(tmp_path, zeta_ref_cli):
    path = tmp_path / "g.json"
    code, out, _ = zeta_ref_cli(["mqar", "--grid", "smoke", "--steps", "3", "--batch", "8",
                          "--vocab", "16", "--test-size", "16", "--jobs", "2",
                          "--json", str(path)])
    assert code == 0, out
    results = json.loads(path.read_text())
    assert len(results["runs"]) == len(make_grid("smoke", RunConfig(), (0,)))
    assert "| N | pairs | d_model |" in out and "Ablation at N = 64" in out
    code, again, _ = zeta_ref_cli(["mqar", "--table", str(path)])
    assert code == 0 and again.strip() == out.split("wrote")[0].strip()


def test_a_grid_resumes_from_its_json(tmp_path, zeta_ref_cli):
    """--resume keeps the runs the JSON holds and runs only the others; every sitting is
    recorded with its wall-clock time, and the table says how long the grid took."""
    path = tmp_path / "g.json"
    argv = ["mqar", "--grid", "smoke", "--steps", "2", "--batch", "4", "--vocab", "16",
            "--test-size", "8", "--json", str(path)]
    code, out, _ = zeta_ref_cli(argv)
    assert code == 0, out
    full = json.loads(path.read_text())
    assert len(full["sessions"]) == 1 and full["sessions"][0]["runs"] == len(full["runs"])
    # as if interrupted after two runs: the JSON holds those two only
    partial = dict(full, runs=full["runs"][:2])
    path.write_text(json.dumps(partial))
    code, out, err = zeta_ref_cli(argv + ["--resume"])
    assert code == 0, out
    assert f"2 of the {len(full['runs'])} runs are in" in err
    again = json.loads(path.read_text())
    assert [r["label"] for r in again["runs"][:2]] == [r["label"] for r in full["runs"][:2]]
    assert sorted(r["label"] for r in again["runs"]) == sorted(r["label"] for r in full["runs"])
    assert [s["runs"] for s in again["sessions"]] == [len(full["runs"]), len(full["runs"]) - 2]
    assert "in 2 sittings" in out
    # nothing left: a third sitting runs nothing
    code, out, err = zeta_ref_cli(argv + ["--resume"])
    assert code == 0 and "running the other 0" in err
    code, _, err = zeta_ref_cli(["mqar", "--grid", "paper", "--resume", "--json", str(path)])
    assert code == 2 and "holds the grid 'smoke', not 'paper'" in err
    code, _, err = zeta_ref_cli(["mqar", "--resume"])
    assert code == 2 and "--resume needs --grid and --json" in err
    # other options than the file's: refused, the differing ones named, nothing run
    before = path.read_text()
    code, _, err = zeta_ref_cli([a if a != "2" else "3" for a in argv] + ["--resume"])
    assert code == 2, err
    assert f"none of the {len(full['runs'])} results in {path} is a run of this grid" in err
    assert "steps 2 there, 3 here" in err and "give the options of the command" in err
    assert path.read_text() == before
    # a field RunConfig gained after the file was written counts as its default there
    older = dict(full, runs=[dict(r, config={k: v for k, v in r["config"].items()
                                             if k != "qk_projection"}) for r in full["runs"]])
    path.write_text(json.dumps(older))
    code, out, err = zeta_ref_cli(argv + ["--resume"])
    assert code == 0 and "running the other 0" in err, err


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_stopped_grid_says_so_in_its_json(tmp_path, jobs):
    """SIGTERM (what `timeout` sends) ends a grid: the JSON keeps the finished runs, and its
    sitting is marked interrupted with its wall-clock time."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "g.json"
    cmd = [sys.executable, "-m", "zeta_ref", "mqar", "--grid", "smoke", "--steps", "400",
           "--batch", "4", "--vocab", "16", "--test-size", "8", "--jobs", str(jobs),
           "--progress", "never", "--json", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:  # the first run has finished
        time.sleep(0.2)
    assert path.exists(), "no run finished in 120 s"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    results = json.loads(path.read_text())
    (sitting,) = results["sessions"]
    assert sitting["interrupted"] is True and sitting["wall_seconds"] > 0
    assert 1 <= sitting["runs"] == len(results["runs"]) < len(make_grid("smoke", RunConfig(),
                                                                         (0,)))


@pytest.fixture(scope="module")
def smoke_grid_whole(tmp_path_factory):
    """The smoke grid of the time-limit tests, run in one go: {label: result}."""
    from zeta_ref.tools import cli

    path = tmp_path_factory.mktemp("whole") / "whole.json"
    assert cli.main(TIME_LIMIT_ARGV + ["--jobs", "1", "--json", str(path)]) == 0
    return {r["label"]: r for r in json.loads(path.read_text())["runs"]}


TIME_LIMIT_ARGV = ["mqar", "--grid", "smoke", "--steps", "40", "--batch", "4", "--vocab", "16",
                   "--test-size", "8", "--eval-every", "20", "--log-every", "10",
                   "--progress", "never"]


def _same_numbers(results, whole):
    assert sorted(r["label"] for r in results["runs"]) == sorted(whole)
    for r in results["runs"]:
        for key in ("curve", "evals", "accuracy", "final_loss", "gammas"):
            assert r[key] == whole[r["label"]][key], (r["label"], key)


def test_a_grid_with_a_time_limit_loses_no_work(tmp_path, zeta_ref_cli, smoke_grid_whole):
    """--time-limit ends a sitting on time, the run in flight saved; sittings with --resume
    finish the grid with the numbers of a grid run in one go (one job, in this process)."""
    path = tmp_path / "g.json"
    sittings = 0
    while True:
        code, out, err = zeta_ref_cli(TIME_LIMIT_ARGV + [
            "--jobs", "1", "--json", str(path), "--time-limit", "0.3"]
            + (["--resume"] if sittings else []))
        assert code == 0, err
        sittings += 1
        session = json.loads(path.read_text())["sessions"][-1]
        assert session["time_limit"] == 0.3
        if not session["stopped"]:
            break
        assert "--time-limit:" in err and "--resume" in err
        assert sittings < 300, "the grid does not advance"
    results = json.loads(path.read_text())
    assert sittings > 1 and len(results["sessions"]) == sittings
    assert os.listdir(str(path) + ".checkpoints") == []
    assert any(r.get("resumed_at") for r in results["runs"])
    _same_numbers(results, smoke_grid_whole)


def test_a_grid_in_processes_stops_at_its_time_limit(tmp_path, zeta_ref_cli, smoke_grid_whole):
    """With two jobs and a limit already past when they start: each of the first two runs
    takes a step and saves it, the others wait; --resume finishes with the same numbers."""
    path = tmp_path / "g.json"
    argv = TIME_LIMIT_ARGV + ["--jobs", "2", "--json", str(path)]
    code, _, err = zeta_ref_cli(argv + ["--time-limit", "0.01"])
    assert code == 0, err
    results = json.loads(path.read_text())
    assert results["runs"] == [] and results["sessions"][0]["stopped"] == len(smoke_grid_whole)
    assert len(os.listdir(str(path) + ".checkpoints")) == 2
    code, _, err = zeta_ref_cli(argv + ["--resume"])
    assert code == 0 and "(2 of them from their checkpoints)" in err, err
    results = json.loads(path.read_text())
    assert sum(bool(r.get("resumed_at")) for r in results["runs"]) == 2
    _same_numbers(results, smoke_grid_whole)


def test_a_grid_of_several_gpu_jobs_asks_for_mps(tmp_path):
    from zeta_ref.tools.mqar import mps_note

    missing = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "none")}
    note = mps_note("cupy", 8, missing)
    assert note and "nvidia-cuda-mps-control -d" in note and "\n" not in note
    assert mps_note("cupy", 8, {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}) is None
    assert mps_note("cupy", 1, missing) is None  # one job: nothing to share
    assert mps_note("numba", 8, missing) is None  # the CPU


# ------------------------------------------------------------------ the recall-circuit probe


def _probe_model(attention, k=32, seed=0):
    cfg = RunConfig(attention=attention, k=k, seq_len=64, d_model=32, vocab=64, seed=seed,
                    backend="numba")
    mcfg = cfg.model_config()
    _, params, log_gammas = M.init_params(mcfg, np.random.default_rng(seed), np, np.float64)
    batch = make_batch(np.random.default_rng(seed + 1), 8, 64, cfg.pairs, 64)
    return mcfg, params, log_gammas, batch


def test_probe_targets_are_the_recall_circuits_positions():
    from zeta_ref.mqar.probe import _circuit_targets
    batch = make_batch(np.random.default_rng(5), 16, 64, 4, 64)
    (r1, p1, t1), (r2, p2, t2) = _circuit_targets(batch.tokens, batch.query_pos, 4)
    # layer 1: a value position looks one back, at its key
    assert np.array_equal(p1 - 1, t1) and np.all(p1 % 2 == 1) and np.all(p1 < 8)
    # layer 2: the token before the target is the key the query position holds, and the
    # target holds the answer
    assert np.array_equal(batch.tokens[r2, t2 - 1], batch.tokens[r2, p2])
    assert np.array_equal(batch.tokens[r2, t2], batch.answers.reshape(-1))


def test_probe_reports_full_attention_and_zeta_consistently():
    from zeta_ref.mqar.probe import recall_circuit
    mcfg, params, lg, batch = _probe_model("full")
    full = recall_circuit(mcfg, params, lg, batch)
    for step in ("layer1", "layer2"):
        r = full[step]
        assert r["in_candidates"] == 1.0 and r["mean_term_weight"] == 0.0
        assert 0 < r["target_weight"] <= r["largest_weight"] <= 1
    # k >= N: every visible key is a candidate; k = 1: the window holds one key, often not
    # the one the circuit needs
    wide = recall_circuit(*_probe_model("zeta", k=64))
    narrow = recall_circuit(*_probe_model("zeta", k=1))
    assert wide["layer1"]["in_candidates"] == wide["layer2"]["in_candidates"] == 1.0
    assert narrow["layer2"]["in_candidates"] < 1.0
    for r in (*wide.values(), *narrow.values()):
        assert 0 < r["mean_term_weight"] < 1 and 0 <= r["target_weight"] <= r["largest_weight"]
        assert 0 <= r["target_first"] <= 1
    with pytest.raises(ValueError, match="two-layer"):
        recall_circuit(replace(mcfg, layers=1), params, lg, batch)
