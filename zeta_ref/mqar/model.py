"""The MQAR model: a two-block transformer, its forward and backward pass, and Adam.

In the manner of llm.c's reference trainer (train_gpt2.c), with its layers in
:mod:`zeta_ref.mqar.layers`::

    x = wte[tokens] + wpe[positions]                     embedding      (B, N, d)
    for each of the L blocks (pre-norm, residual):
        x = x + attention(layernorm(x))                  full or ZETA
        x = x + mlp(layernorm(x))                        d -> 4d -> d, GELU (mlp_ratio 0: none)
    h = layernorm(x[query positions])                    only where the loss is  (B, P, d)
    logits = h @ wte^T                                   tied to the embedding   (B, P, V)
    loss = mean cross-entropy against the answers

The output head is the token embedding itself (tied, as GPT-2 and llm.c): the value token's
embedding that attention copies to the query position then scores that very token at once,
which matters with V = 8192 values to learn (untied, a first run at N = 64, V = 8192 was still
learning its head after 2000 steps).

Only the P query positions of each sequence are scored (MQAR's loss), so the final norm and
the output head run on those B P rows alone: with V = 8192 the head over all B N positions
would cost more than the rest of the model.

All parameters live in **one flat array** (as llm.c allocates them), and every named
parameter is a view into it; the gradients likewise. Adam then updates every parameter with a
handful of whole-array operations, whatever the number of tensors (on a GPU each operation is a
kernel launch, so this matters more than the arithmetic). The exception is ZETA's gamma: the
reference takes gamma as a Python float inside a ZetaConfig and returns its gradient as one,
so each ZETA layer's log gamma lives on the host, updated by the same Adam rule
(:class:`HostAdam`).

Heads: ``heads`` per attention layer (default 1, as Zoology's attention baseline). For full
attention each head has width hd = d / H for q, k and v; for ZETA, q and k are projected to
d_K per head (d_K = 3 in the paper) and v keeps hd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import layers as L

ATTENTIONS = ("full", "zeta")
POSITION_INITS = ("sinusoidal", "normal")
QK_PROJECTIONS = ("linear", "mlp")
#: Where training keeps a learned Cauchy gamma: HostAdam (and the torch model's optimiser)
#: clamp log gamma to the logs of these, inside what zeta_attention accepts for float32
#: (zeta_ref._checks.check_gamma); a run's initial gamma must lie here too (RunConfig).
GAMMA_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class ModelConfig:
    """The model's sizes and its attention.

    Parameters
    ----------
    vocab : int
        V, tokens 0 .. V - 1.
    seq_len : int
        N, the length the position embedding is made for.
    d_model : int
        d, the width of the residual stream; a multiple of ``heads``.
    layers : int, default 2
        Number of blocks.
    heads : int, default 1
        Attention heads per layer.
    mlp_ratio : int, default 4
        Hidden width of each block's MLP, in units of d; 0 leaves the MLP out.
    attention : {"full", "zeta"}
        Causal softmax attention over all keys, or ZETA top-k attention.
    d_k : int, default 3
        ZETA's query/key width per head (ignored by "full").
    zeta : ZetaConfig or None
        ZETA's settings (k, score, ...); its gamma is the initial gamma of every layer.
        None: ``ZetaConfig()``.
    positions : {"normal", "sinusoidal"}, default "normal"
        How the (learned) position embedding starts: the sinusoids of the original
        transformer, or small random numbers like every other weight (GPT-2). See
        :func:`init_params`.
    qk_projection : {"linear", "mlp"}, default "linear"
        How each attention layer makes its queries and keys: one linear map (d -> H w_qk), or
        a two-layer MLP (d -> d, GELU, d -> H w_qk; parameters attn.wq1, attn.bq1 and
        attn.wk1, attn.bk1 for the first layer), which one secondary account of the paper
        gives ZETA (docs/experiments.md). Values are always one linear map.
    """

    vocab: int
    seq_len: int
    d_model: int
    layers: int = 2
    heads: int = 1
    mlp_ratio: int = 4
    attention: str = "full"
    d_k: int = 3
    zeta: object = field(default=None)
    positions: str = "normal"
    qk_projection: str = "linear"

    def __post_init__(self):
        if self.positions not in POSITION_INITS:
            raise ValueError(f"positions must be one of {POSITION_INITS}; got {self.positions!r}")
        if self.qk_projection not in QK_PROJECTIONS:
            raise ValueError(f"qk_projection must be one of {QK_PROJECTIONS}; "
                             f"got {self.qk_projection!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}; got {self.attention!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model must be a multiple of heads; got d_model={self.d_model}, "
                             f"heads={self.heads}")
        if self.zeta is None:
            from zeta_ref import ZetaConfig

            object.__setattr__(self, "zeta", ZetaConfig())

    @property
    def qk_width(self) -> int:
        """Width of q and k per head: d_K for ZETA, d / H for full attention."""
        return self.d_k if self.attention == "zeta" else self.d_model // self.heads

    @property
    def learns_gamma(self) -> bool:
        """Whether the model has a gamma per layer to train (ZETA with the Cauchy score)."""
        return self.attention == "zeta" and self.zeta.score == "cauchy"


# ------------------------------------------------------------------ parameters


def param_shapes(cfg: ModelConfig) -> dict:
    """Every device parameter's name and shape, in the order of the flat array."""
    d, hw = cfg.d_model, cfg.heads * cfg.qk_width
    shapes = {"wte": (cfg.vocab, d), "wpe": (cfg.seq_len, d)}
    for layer in range(cfg.layers):
        pre = f"h{layer}."
        shapes.update({pre + "ln1.w": (d,), pre + "ln1.b": (d,)})
        if cfg.qk_projection == "mlp":  # the first layer of the q and k MLPs
            shapes.update({pre + "attn.wq1": (d, d), pre + "attn.bq1": (d,),
                           pre + "attn.wk1": (d, d), pre + "attn.bk1": (d,)})
        shapes.update({pre + "attn.wq": (d, hw), pre + "attn.bq": (hw,),
                       pre + "attn.wk": (d, hw), pre + "attn.bk": (hw,),
                       pre + "attn.wv": (d, d), pre + "attn.bv": (d,),
                       pre + "attn.wo": (d, d), pre + "attn.bo": (d,)})
        if cfg.mlp_ratio:
            f = cfg.mlp_ratio * d
            shapes.update({pre + "ln2.w": (d,), pre + "ln2.b": (d,),
                           pre + "mlp.w1": (d, f), pre + "mlp.b1": (f,),
                           pre + "mlp.w2": (f, d), pre + "mlp.b2": (d,)})
    shapes.update({"lnf.w": (d,), "lnf.b": (d,)})  # the head is wte, tied
    return shapes


def views(flat, shapes: dict) -> dict:
    """Named views into the flat array ``flat``, one per entry of ``shapes``, in order."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return out


def init_params(cfg: ModelConfig, rng: np.random.Generator, xp=np, dtype=np.float32):
    """The initial parameters: (flat array of ``xp``, named views, host log gammas).

    GPT-2's initialisation: weights normal with standard deviation 0.02, the projections that
    write into the residual stream (attn.wo, mlp.w2) 0.02 / sqrt(2 L); biases 0; the norms'
    scales 1. Drawn on the host from ``rng`` in float64 and then converted, so that every
    backend starts from the same numbers. Log gamma starts at log(config.zeta.gamma).
    """
    shapes = param_shapes(cfg)
    host = np.zeros(sum(math.prod(s) for s in shapes.values()), dtype=np.float64)
    named = views(host, shapes)
    resid_std = 0.02 / math.sqrt(2 * cfg.layers)
    for name, p in named.items():
        leaf = name.rsplit(".", 1)[-1]
        if name == "wpe" and cfg.positions == "sinusoidal":
            p[...] = 0.02 * math.sqrt(2.0) * sinusoids(cfg.seq_len, cfg.d_model)
        elif name in ("wte", "wpe") or leaf in ("wq", "wk", "wv", "w1", "wq1", "wk1"):
            p[...] = rng.normal(0.0, 0.02, size=p.shape)
        elif leaf in ("wo", "w2"):
            p[...] = rng.normal(0.0, resid_std, size=p.shape)
        elif leaf == "w":  # a norm's scale
            p[...] = 1.0
    flat = xp.asarray(host.astype(dtype))
    log_gammas = ({f"h{layer}.attn.log_gamma": math.log(cfg.zeta.gamma)
                   for layer in range(cfg.layers)} if cfg.learns_gamma else {})
    return flat, views(flat, shapes), log_gammas


def sinusoids(n: int, d: int) -> np.ndarray:
    """The position code of Vaswani et al. (2017): float64 (n, d), column pairs
    ``sin(i / 10000^(2j/d)), cos(i / 10000^(2j/d))``.

    Position i + 1's code is a fixed rotation of position i's, pair by pair, so "the previous
    position" is a linear map of the code: the first layer learns to look one token back
    (the first half of the recall circuit) much sooner than from random position vectors.
    """
    pos = np.arange(n, dtype=np.float64)[:, None]  # (n, 1)
    freq = 10000.0 ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (ceil(d/2),)
    out = np.zeros((n, d))
    out[:, 0::2] = np.sin(pos * freq)
    out[:, 1::2] = np.cos(pos * freq[: d // 2])
    return out


def _sub(params: dict, prefix: str) -> dict:
    """The entries of ``params`` under ``prefix``, with the prefix removed."""
    return {name[len(prefix):]: p for name, p in params.items() if name.startswith(prefix)}


# ------------------------------------------------------------------ forward and backward


def forward(cfg: ModelConfig, params: dict, log_gammas: dict, tokens, query_pos, answers,
            backend: str = "numpy"):
    """The loss (0-d array), the logits (B, P, V) and the cache for :func:`backward`.

    tokens: int (B, N); query_pos, answers: int (B, P), arrays of the parameters' namespace.
    ``backend``: ZETA's backend ("numpy", "numba" for NumPy arrays; "cupy" for CuPy arrays).
    """
    xp = L.array_module(params["wte"])
    caches = {}
    x, caches["emb"] = L.embedding_forward(tokens, params["wte"], params["wpe"])  # (B, N, d)
    for layer in range(cfg.layers):
        pre = f"h{layer}."
        h, caches[pre + "ln1"] = L.layernorm_forward(x, params[pre + "ln1.w"],
                                                     params[pre + "ln1.b"])
        a, caches[pre + "attn"] = L.attention_layer_forward(
            h, _sub(params, pre + "attn."), cfg.heads, cfg.attention,
            log_gamma=log_gammas.get(pre + "attn.log_gamma", 0.0), zeta_config=cfg.zeta,
            backend=backend)  # (B, N, d)
        x = x + a
        if cfg.mlp_ratio:
            h, caches[pre + "ln2"] = L.layernorm_forward(x, params[pre + "ln2.w"],
                                                         params[pre + "ln2.b"])
            m, caches[pre + "mlp"] = L.mlp_forward(h, params[pre + "mlp.w1"],
                                                   params[pre + "mlp.b1"],
                                                   params[pre + "mlp.w2"],
                                                   params[pre + "mlp.b2"])
            x = x + m  # (B, N, d)
    rows = xp.arange(tokens.shape[0])[:, None]  # (B, 1)
    sel = x[rows, query_pos]  # (B, P, d): the scored positions only
    h, caches["lnf"] = L.layernorm_forward(sel, params["lnf.w"], params["lnf.b"])
    # the head is the token embedding (tied); one product of 2-D matrices (B P rows), as the
    # backward's: matmul takes a 3-D @ 2-D product as a stack of B small products of P rows
    logits = (h.reshape(-1, h.shape[-1]) @ params["wte"].T).reshape(h.shape[:-1] + (-1,))
    caches["head"] = (h, params["wte"])
    loss, caches["ce"] = L.cross_entropy_forward(logits.reshape(-1, cfg.vocab),
                                                 answers.reshape(-1))
    caches["sel"] = (x.shape, rows, query_pos)
    return loss, logits, caches


def backward(cfg: ModelConfig, caches: dict, grads: dict) -> dict:
    """Write the gradient of the loss of :func:`forward` into ``grads`` (named views of the
    flat gradient array, every entry overwritten); return the host log gammas' gradients."""
    dlogits = L.cross_entropy_backward(caches["ce"])  # (B P, V)
    x_shape, rows, query_pos = caches["sel"]
    h, wte = caches["head"]
    dh = (dlogits @ wte).reshape(h.shape)  # (B P, V) @ (V, d) -> (B, P, d)
    dwte_head = dlogits.T @ h.reshape(-1, h.shape[-1])  # (V, d)
    dsel, grads["lnf.w"][...], grads["lnf.b"][...] = L.layernorm_backward(dh, caches["lnf"])
    xp = L.array_module(dsel)
    dx = xp.zeros(x_shape, dtype=dsel.dtype)  # (B, N, d)
    dx[rows, query_pos] = dsel  # the query positions of a row are distinct: no sums needed
    dlog_gammas = {}
    for layer in reversed(range(cfg.layers)):
        pre = f"h{layer}."
        if cfg.mlp_ratio:
            dh, *g = L.mlp_backward(dx, caches[pre + "mlp"])
            for name, value in zip(("w1", "b1", "w2", "b2"), g):
                grads[pre + "mlp." + name][...] = value
            dh, grads[pre + "ln2.w"][...], grads[pre + "ln2.b"][...] = L.layernorm_backward(
                dh, caches[pre + "ln2"])
            dx = dx + dh  # the residual: both paths
        dh, g, dlog_gamma = L.attention_layer_backward(dx, caches[pre + "attn"])
        for name, value in g.items():
            grads[pre + "attn." + name][...] = value
        if cfg.learns_gamma:
            dlog_gammas[pre + "attn.log_gamma"] = dlog_gamma
        dh, grads[pre + "ln1.w"][...], grads[pre + "ln1.b"][...] = L.layernorm_backward(
            dh, caches[pre + "ln1"])
        dx = dx + dh
    dwte, grads["wpe"][...] = L.embedding_backward(dx, caches["emb"])
    grads["wte"][...] = dwte + dwte_head  # the embedding's two uses: input and head
    return dlog_gammas


# ------------------------------------------------------------------ Adam


class Adam:
    """Adam (Kingma and Ba) on one flat parameter array, in place, bias-corrected.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)``. No weight decay.
    """

    def __init__(self, flat, betas=(0.9, 0.999), eps: float = 1e-8):
        xp = L.array_module(flat)
        self.m = xp.zeros_like(flat)
        self.v = xp.zeros_like(flat)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0

    def step(self, flat, grad, lr: float) -> None:
        xp = L.array_module(flat)
        self.t += 1
        self.m *= self.b1
        self.m += (1.0 - self.b1) * grad
        self.v *= self.b2
        self.v += (1.0 - self.b2) * (grad * grad)
        step = lr / (1.0 - self.b1 ** self.t)
        denom = xp.sqrt(self.v * (1.0 / (1.0 - self.b2 ** self.t))) + self.eps
        flat -= step * (self.m / denom)


class HostAdam:
    """The same Adam rule on named Python floats (ZETA's log gammas, which live on the host).

    ``clamp`` keeps each value in [lo, hi]: log gamma within the logs of
    :data:`GAMMA_RANGE` keeps gamma where the reference accepts it for float32
    (zeta_ref._checks.check_gamma).
    """

    def __init__(self, names, betas=(0.9, 0.999), eps: float = 1e-8,
                 clamp=(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1]))):
        self.m = {n: 0.0 for n in names}
        self.v = {n: 0.0 for n in names}
        self.b1, self.b2 = betas
        self.eps = eps
        self.clamp = clamp
        self.t = 0

    def step(self, values: dict, grads: dict, lr: float) -> None:
        self.t += 1
        for name, g in grads.items():
            self.m[name] = self.b1 * self.m[name] + (1.0 - self.b1) * g
            self.v[name] = self.b2 * self.v[name] + (1.0 - self.b2) * g * g
            mhat = self.m[name] / (1.0 - self.b1 ** self.t)
            vhat = self.v[name] / (1.0 - self.b2 ** self.t)
            new = values[name] - lr * mhat / (math.sqrt(vhat) + self.eps)
            values[name] = min(max(new, self.clamp[0]), self.clamp[1])
