"""The MQAR model's second path, in PyTorch (zeta_ref.mqar.torch_model), against the first
(hand-written backward passes, zeta_ref.mqar.model): the same loss, the same gradient of
every parameter and log gamma, the same first steps of training. Skipped without torch."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zeta_ref.mqar.torch_model import build, loss_of, train_torch  # noqa: E402
from zeta_ref.mqar.train import RunConfig, train  # noqa: E402

TINY = RunConfig(seq_len=32, d_model=16, vocab=64, steps=4, batch=6, test_size=12,
                 dtype="float64", backend="numba", log_every=1, lr=3e-3)


def _both(cfg, reference_step):
    """Loss and gradients of one batch through both paths (float64)."""
    loss, grads, dlog_gammas, batch = reference_step(cfg)
    model = build(cfg)
    t_loss, _ = loss_of(model, *(torch.as_tensor(a) for a in
                                 (batch.tokens, batch.query_pos, batch.answers)))
    t_loss.backward()
    return loss, grads, dlog_gammas, t_loss.item(), model


@pytest.mark.parametrize("attention, score, heads, mlp_ratio, qk_projection", [
    ("full", "cauchy", 1, 0, "linear"), ("full", "cauchy", 2, 4, "linear"),
    ("zeta", "cauchy", 1, 0, "linear"), ("zeta", "cauchy", 2, 4, "linear"),
    ("zeta", "neg_euclidean", 1, 0, "linear"), ("zeta", "inv_euclidean", 1, 0, "linear"),
    ("zeta", "softmax", 1, 0, "linear"), ("zeta", "cauchy", 2, 0, "mlp"),
    ("full", "cauchy", 1, 0, "mlp")])
def test_the_two_paths_give_the_same_loss_and_gradients(attention, score, heads, mlp_ratio,
                                                        qk_projection, mqar_reference_step):
    cfg = replace(TINY, attention=attention, score=score, heads=heads, mlp_ratio=mlp_ratio,
                  d_k=2 if heads == 2 else 3, qk_projection=qk_projection)
    loss, grads, dlog_gammas, t_loss, model = _both(cfg, mqar_reference_step)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    # one scale for all: some gradients are 0 up to rounding (bk for softmax attention,
    # whose scores do not change when a constant is added to every key)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    for name, g in grads.items():
        t_grad = model.p(name).grad
        assert t_grad is not None, name
        np.testing.assert_allclose(t_grad.numpy(), g, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=name)
    log_gamma_grads = {name: float(model.p(name).grad) for name in dlog_gammas}
    assert set(log_gamma_grads) == (
        {f"h{i}.attn.log_gamma" for i in range(cfg.layers)}
        if attention == "zeta" and score == "cauchy" else set())
    for name, g in dlog_gammas.items():
        assert log_gamma_grads[name] == pytest.approx(g, rel=1e-9, abs=1e-14), name


@pytest.mark.parametrize("attention", ["full", "zeta"])
def test_the_two_paths_train_alike(attention):
    """Four Adam steps on the same batches: the same learning curve and gammas."""
    cfg = replace(TINY, attention=attention)
    mine, theirs = train(cfg), train_torch(cfg)
    assert theirs["engine"] == "torch"
    np.testing.assert_allclose([p["loss"] for p in theirs["curve"]],
                               [p["loss"] for p in mine["curve"]], rtol=1e-9)
    assert theirs["accuracy"] == mine["accuracy"]
    assert theirs["gammas"].keys() == mine["gammas"].keys()
    for name, g in mine["gammas"].items():
        assert theirs["gammas"][name] == pytest.approx(g, rel=1e-9)


def test_the_torch_engine_from_the_command_line(tmp_path, zeta_ref_cli):
    path = tmp_path / "t.json"
    argv = ["mqar", "--engine", "torch", "--attention", "zeta", "--seq-len", "32",
            "--d-model", "16", "--vocab", "16", "--steps", "3", "--batch", "8",
            "--test-size", "16", "--log-every", "1", "--dtype", "float64"]
    code, out, _ = zeta_ref_cli(argv + ["--json", str(path)])
    assert code == 0, out
    (run,) = json.loads(path.read_text())["runs"]
    assert run["engine"] == "torch" and run["label"].endswith("(torch)")
    code, out, _ = zeta_ref_cli(["mqar"] + argv[3:])  # the same run, the reference engine
    assert code == 0
    # the curve as printed (3 decimals)
    reference_curve = [float(x.split(": ")[1]) for x in
                       out.split("training loss by step: ")[1].splitlines()[0].split(", ")]
    np.testing.assert_allclose([p["loss"] for p in run["curve"]], reference_curve, atol=6e-4)
    code, _, err = zeta_ref_cli(["mqar", "--engine", "torch", "--grid", "smoke"])
    assert code == 2 and "--engine torch runs one configuration" in err
