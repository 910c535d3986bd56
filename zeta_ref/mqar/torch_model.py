"""The MQAR model again, in PyTorch: a second path that checks the first.

:mod:`zeta_ref.mqar.model` writes every layer's backward pass by hand. This module builds the
same model from the same :class:`~zeta_ref.mqar.model.ModelConfig` and the same initial
numbers (:func:`~zeta_ref.mqar.model.init_params`, drawn from the same seed), and lets
torch's autograd take the gradients: full attention through torch's own operations, ZETA
through zeta_ref's PyTorch adapter (:func:`zeta_ref.torch.zeta_attention`, whose backward
pass is :func:`zeta_ref.zeta_attention_backward`). The two paths must agree: the same loss and
the same gradient for every parameter and every log gamma (tests/test_mqar_torch.py), and the
same learning curve for the first steps of a run.

:func:`train_torch` trains it as :func:`zeta_ref.mqar.train.train` trains the hand-written
model: the same batches, learning-rate schedule, Adam (``torch.optim.Adam``, no weight decay)
and held-out test set, and it returns a result of the same form. ``zeta-ref mqar --engine
torch`` runs it. Optional: torch is imported here only, and only this module needs it.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import model as M
from .task import make_batch

#: torch's dtype for each of RunConfig.dtype's names.
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MQARModel(torch.nn.Module):
    """The model of :mod:`zeta_ref.mqar.model` as a torch module.

    Parameters are named as in :func:`~zeta_ref.mqar.model.param_shapes` (dots become
    underscores for torch: ``h0.attn.wq`` is ``params["h0_attn_wq"]``); each ZETA layer with
    the Cauchy score has a parameter ``h{layer}_attn_log_gamma`` (gamma = exp of it).

    ``backend``: zeta_ref's backend for ZETA ("numba" or "numpy" on the CPU, "cupy" for CUDA
    tensors).
    """

    def __init__(self, cfg: M.ModelConfig, flat_host, log_gammas: dict, *,
                 dtype=torch.float32, device="cpu", backend: str = "numba"):
        super().__init__()
        self.cfg, self.backend = cfg, backend
        named = M.views(np.asarray(flat_host), M.param_shapes(cfg))
        self.params = torch.nn.ParameterDict({
            _key(name): torch.nn.Parameter(torch.tensor(np.array(p), dtype=dtype, device=device))
            for name, p in named.items()})
        for name, value in log_gammas.items():
            self.params[_key(name)] = torch.nn.Parameter(
                torch.tensor(value, dtype=torch.float64, device=device))

    def p(self, name: str):
        """The parameter of :func:`~zeta_ref.mqar.model.param_shapes`'s name ``name``."""
        return self.params[_key(name)]

    def forward(self, tokens, query_pos):
        """Logits (B, P, V) at the query positions; tokens (B, N), query_pos (B, P) int64."""
        cfg = self.cfg
        n = tokens.shape[1]
        x = self.p("wte")[tokens] + self.p("wpe")[:n]  # (B, N, d)
        for layer in range(cfg.layers):
            pre = f"h{layer}."
            h = self._norm(x, pre + "ln1")
            x = x + self._attention(h, pre + "attn.")
            if cfg.mlp_ratio:
                h = self._norm(x, pre + "ln2")
                h = torch.nn.functional.gelu(h @ self.p(pre + "mlp.w1") + self.p(pre + "mlp.b1"),
                                             approximate="tanh")
                x = x + h @ self.p(pre + "mlp.w2") + self.p(pre + "mlp.b2")
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]  # (B, 1)
        h = self._norm(x[rows, query_pos], "lnf")  # (B, P, d): the scored positions only
        return h @ self.p("wte").T  # (B, P, V): the tied head

    def _norm(self, x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.p(name + ".w"),
                                              self.p(name + ".b"), eps=1e-5)

    def _qk(self, x, pre, which):
        """Queries or keys: one linear map, or the two-layer MLP of qk_projection="mlp"."""
        if self.cfg.qk_projection == "mlp":
            hidden = x @ self.p(pre + f"w{which}1") + self.p(pre + f"b{which}1")
            x = torch.nn.functional.gelu(hidden, approximate="tanh")
        return x @ self.p(pre + f"w{which}") + self.p(pre + f"b{which}")

    def _attention(self, x, pre):
        cfg = self.cfg
        b, n, d = x.shape
        heads = cfg.heads

        def split(t):  # (B, N, H w) -> (B, H, N, w)
            return t.reshape(b, n, heads, -1).transpose(1, 2)

        q = split(self._qk(x, pre, "q"))
        k = split(self._qk(x, pre, "k"))
        v = split(x @ self.p(pre + "wv") + self.p(pre + "bv"))
        if cfg.attention == "full":
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            from zeta_ref.torch import zeta_attention

            gamma = None
            if cfg.learns_gamma:  # gamma = exp(log gamma), float64 as the host Adam keeps it
                gamma = torch.exp(self.p(pre + "log_gamma"))
            o = zeta_attention(q, k, v, cfg.zeta, gamma=gamma, backend=self.backend)
        o = o.transpose(1, 2).reshape(b, n, d)  # (B, N, d)
        return o @ self.p(pre + "wo") + self.p(pre + "bo")


def _key(name: str) -> str:
    return name.replace(".", "_")


def loss_of(model: MQARModel, tokens, query_pos, answers):
    """(loss, logits): the mean cross-entropy at the query positions, as the hand-written
    model's :func:`zeta_ref.mqar.model.forward` computes it."""
    logits = model(tokens, query_pos)  # (B, P, V)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             answers.reshape(-1))
    return loss, logits


def build(cfg, device="cpu"):
    """The torch model of RunConfig ``cfg`` with the hand-written path's initial numbers; its
    ZETA layers use the "cupy" backend on CUDA, else ``cfg.backend`` ("numpy" or "numba")."""
    mcfg = cfg.model_config()
    flat, _, log_gammas = M.init_params(mcfg, np.random.default_rng([cfg.seed, 0]), np,
                                        np.float64)
    backend = "cupy" if torch.device(device).type == "cuda" else (
        "numpy" if cfg.backend == "numpy" else "numba")
    model = MQARModel(mcfg, flat, log_gammas, dtype=TORCH_DTYPES[cfg.dtype], device=device,
                      backend=backend)
    return model


def train_torch(cfg, device="cpu", progress=None) -> dict:
    """Train the torch model on MQAR as :func:`zeta_ref.mqar.train.train` trains the
    hand-written one (same batches, schedule, evaluation), and return the same kind of
    result, with ``"engine": "torch"``."""
    from .train import held_out_set, learning_rate, run_record

    t_start = time.perf_counter()
    model = build(cfg, device)
    # Adam as HostAdam and Adam of the hand-written path: betas (0.9, 0.999), eps 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    clamp = (math.log(M.GAMMA_RANGE[0]), math.log(M.GAMMA_RANGE[1]))  # as HostAdam's
    stream = np.random.default_rng([cfg.seed, 1])
    test = held_out_set(cfg)

    def tensors(batch, part=slice(None)):
        return (torch.as_tensor(a[part], device=device) for a in
                (batch.tokens, batch.query_pos, batch.answers))

    curve, evals = [], []
    loss_sum, count, train_seconds = 0.0, 0, 0.0
    t_train = time.perf_counter()
    for step in range(cfg.steps):
        batch = make_batch(stream, cfg.batch, cfg.seq_len, cfg.pairs, cfg.vocab,
                           query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)
        tokens, query_pos, answers = tensors(batch)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_of(model, tokens, query_pos, answers)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name, p in model.params.items():
                if name.endswith("log_gamma"):
                    p.clamp_(*clamp)
        loss_sum += loss.item()
        count += 1
        if progress is not None:
            progress.update(1)
        last = step == cfg.steps - 1
        if count == cfg.log_every or last:
            curve.append({"step": step + 1, "loss": loss_sum / count})
            loss_sum, count = 0.0, 0
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            train_seconds += time.perf_counter() - t_train
            evals.append({"step": step + 1, "accuracy": evaluate_torch(cfg, model, test,
                                                                        tensors)})
            t_train = time.perf_counter()
    log_gammas = {name.replace("_attn_log_gamma", ".attn.log_gamma"): p.item()
                  for name, p in model.params.items() if name.endswith("log_gamma")}
    result = run_record(cfg, curve, evals, log_gammas, train_seconds, t_start,
                        engine="torch")
    result["label"] += " (torch)"
    return result


def evaluate_torch(cfg, model, test, tensors) -> float:
    """Test accuracy as :func:`zeta_ref.mqar.train.evaluate` computes it."""
    correct = 0
    with torch.no_grad():
        for start in range(0, test.tokens.shape[0], cfg.batch):
            tokens, query_pos, answers = tensors(test, slice(start, start + cfg.batch))
            logits = model(tokens, query_pos)
            correct += int((logits.argmax(dim=-1) == answers).sum())
    return correct / test.answers.size
