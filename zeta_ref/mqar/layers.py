"""The layers of the MQAR model, each a forward and a hand-written backward.

Every layer is a pair of functions::

    y, cache = <layer>_forward(inputs..., params...)
    grads = <layer>_backward(dy, cache)

``cache`` holds what the backward needs (as llm.c's reference trainer keeps its activations);
the backward returns the gradients of the loss with respect to every input and parameter, in
the order of the forward's arguments. The layers are written against the array API: they take
arrays and compute with their namespace ``xp`` (NumPy on the CPU, CuPy on the GPU, found by
:func:`array_module`), so the same code runs on both. They never move data between host and
device and never wait for the device (no ``float(...)`` of an array, no boolean-mask indexing).

Each backward is checked against central finite differences in float64 in tests/test_mqar.py.

Shapes: B batch, N sequence length, d = d_model, H heads, hd = d / H the head width, d_K the
query/key width of ZETA, V the vocabulary, M the number of scored positions (B P).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)  # the tanh approximation of GELU (as GPT-2 and llm.c)


def array_module(x):
    """The namespace of the array ``x``: :mod:`cupy` for a CuPy array, else :mod:`numpy`.

    (``cupy.get_array_module`` does the same where CuPy is installed; this needs no CuPy.)
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(x) -> np.ndarray:
    """A host (NumPy) copy of a NumPy or CuPy array."""
    return np.asarray(x) if array_module(x) is np else x.get()


def sum_leading(x, count: int):
    """``x`` summed over its first ``count`` axes: shape ``(a_1, ..., a_count) + rest`` to
    ``rest``.

    NumPy sums as ``x.sum`` does (the numbers of docs/experiments.md). On the GPU it is the
    product of a ones vector with ``x`` as an ``(a_1 ... a_count, prod(rest))`` matrix, one
    cuBLAS call: CuPy's own reduction over the first two axes of a (512, 128, 256) float32
    array took 1.58 ms on an H200, the product 0.067 ms, and the 17 such sums of a training
    step (N = 128, batch 512, d = 256) 13.6 ms of its 36 ms of kernel time
    (docs/experiments.md, "What a training step costs").
    """
    xp = array_module(x)
    if xp is np:
        return x.sum(axis=tuple(range(count)))
    rest = x.shape[count:]
    flat = x.reshape(-1, math.prod(rest))  # (a_1 ... a_count, prod(rest))
    return (xp.ones(flat.shape[0], dtype=x.dtype) @ flat).reshape(rest)


# ------------------------------------------------------------------ embedding


def embedding_forward(tokens, wte, wpe):
    """Token plus position embedding: ``x[b, i] = wte[tokens[b, i]] + wpe[i]``.

    tokens: int (B, N); wte: (V, d); wpe: (N_max, d) with N_max >= N. Returns x (B, N, d).
    """
    n = tokens.shape[1]
    x = wte[tokens] + wpe[:n]  # (B, N, d)
    return x, (tokens, wte.shape, wpe.shape)


def embedding_backward(dx, cache):
    """Gradients (dwte, dwpe) of :func:`embedding_forward` (tokens get none).

    dwte[t] sums dx over every position holding token t: a scatter-add in float64 over the
    flat index ``t * d + column``, on the CPU one weighted ``bincount``, on the GPU
    ``cupyx.scatter_add`` (atomic additions: their order is not fixed, so the last bits may
    differ run to run there; CuPy's bincount would wait for the device twice a step, to
    check and to size its output).
    """
    tokens, wte_shape, wpe_shape = cache
    xp = array_module(dx)
    b, n, d = dx.shape
    flat = (tokens.reshape(b * n, 1) * d + xp.arange(d)).reshape(-1)  # (B N d,)
    if xp is np:
        dwte = np.bincount(flat, weights=dx.reshape(-1), minlength=wte_shape[0] * d)
    else:
        import cupyx

        dwte = xp.zeros(wte_shape[0] * d, dtype=np.float64)  # (V d,)
        cupyx.scatter_add(dwte, flat, dx.reshape(-1).astype(np.float64))
    dwte = dwte.reshape(wte_shape).astype(dx.dtype)  # (V, d)
    dwpe = xp.zeros(wpe_shape, dtype=dx.dtype)  # (N_max, d)
    dwpe[:n] = sum_leading(dx, 1)  # over the batch
    return dwte, dwpe


# ------------------------------------------------------------------ layer normalisation


def layernorm_forward(x, w, b, eps: float = 1e-5):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` over the last axis. x: (..., d)."""
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., d)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / array_module(x).sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., d)
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    """Gradients (dx, dw, db) of :func:`layernorm_forward`.

    With xhat the normalised input: dxhat = dy w, and through the normalisation
    ``dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`` (means over the last axis).
    """
    xhat, rstd, w = cache
    dw = sum_leading(dy * xhat, dy.ndim - 1)  # (d,)
    db = sum_leading(dy, dy.ndim - 1)  # (d,)
    dxhat = dy * w  # (..., d)
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))  # (..., d)
    return dx, dw, db


# ------------------------------------------------------------------ linear, GELU, MLP


def linear_forward(x, w, b):
    """``y = x @ w + b``. x: (..., d_in); w: (d_in, d_out); b: (d_out,)."""
    return x @ w + b, (x, w)


def linear_backward(dy, cache):
    """Gradients (dx, dw, db) of :func:`linear_forward`."""
    x, w = cache
    x2 = x.reshape(-1, x.shape[-1])  # (rows, d_in)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (rows, d_out)
    dw = x2.T @ dy2  # (d_in, d_out)
    db = sum_leading(dy2, 1)  # (d_out,)
    dx = dy @ w.T  # (..., d_in)
    return dx, dw, db


def gelu_forward(x):
    """GELU, tanh approximation: ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))``, c = sqrt(2/pi)."""
    xp = array_module(x)
    t = xp.tanh(GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    """dx of :func:`gelu_forward`: ``0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 0.044715 x^2)``."""
    x, t = cache
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return dy * local


def mlp_forward(x, w1, b1, w2, b2):
    """The block's feed-forward: linear d -> 4d (or any width), GELU, linear back to d."""
    h, c1 = linear_forward(x, w1, b1)  # (..., d_ff)
    a, c2 = gelu_forward(h)  # (..., d_ff)
    y, c3 = linear_forward(a, w2, b2)  # (..., d)
    return y, (c1, c2, c3)


def mlp_backward(dy, cache):
    """Gradients (dx, dw1, db1, dw2, db2) of :func:`mlp_forward`."""
    c1, c2, c3 = cache
    da, dw2, db2 = linear_backward(dy, c3)
    dh = gelu_backward(da, c2)
    dx, dw1, db1 = linear_backward(dh, c1)
    return dx, dw1, db1, dw2, db2


# ------------------------------------------------------------------ attention cores


def causal_softmax_attention_forward(q, k, v):
    """Full causal softmax attention: ``o_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(hd)) v_j``.

    q, k: (B, H, N, hd); v: (B, H, N, d_v). Every one of the N x N scores is computed (the
    dense baseline ZETA is compared with).
    """
    xp = array_module(q)
    n, hd = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(hd)
    s = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, N, N)
    causal = xp.tril(xp.ones((n, n), dtype=bool))  # (N, N): key j <= query i
    s = xp.where(causal, s, xp.asarray(-math.inf, dtype=s.dtype))
    s = s - s.max(axis=-1, keepdims=True)
    p = xp.exp(s)
    p = p / p.sum(axis=-1, keepdims=True)  # (B, H, N, N), rows sum to 1
    return p @ v, (q, k, v, p, scale)  # (B, H, N, d_v)


def causal_softmax_attention_backward(do, cache):
    """Gradients (dq, dk, dv) of :func:`causal_softmax_attention_forward`.

    dv = P^T dO; dP = dO V^T; through the softmax, dS = P (dP - rowsum(P dP)) (masked
    entries have P = 0, so they get nothing); dq = dS K scale, dk = dS^T Q scale.
    """
    q, k, v, p, scale = cache
    dv = p.swapaxes(-1, -2) @ do  # (B, H, N, d_v)
    dp = do @ v.swapaxes(-1, -2)  # (B, H, N, N)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # (B, H, N, N)
    dq = (ds @ k) * scale  # (B, H, N, hd)
    dk = (ds.swapaxes(-1, -2) @ q) * scale  # (B, H, N, hd)
    return dq, dk, dv


def zeta_attention_forward(q, k, v, log_gamma: float, config, backend: str):
    """ZETA top-k attention through the reference (:func:`zeta_ref.zeta_attention`).

    q, k: (B, H, N, d_K); v: (B, H, N, hd). ``log_gamma`` is log of the Cauchy scale gamma,
    a Python float (gamma = exp(log_gamma) stays positive whatever the optimiser does); the
    config is rebuilt with the current gamma on every call, since a ZetaConfig holds gamma as
    one number. The selection (stages 2 to 5) is kept in the cache for the backward pass.
    """
    from zeta_ref import zeta_attention

    cfg = replace(config, gamma=math.exp(log_gamma)) if config.score == "cauchy" else config
    o, inter = zeta_attention(q, k, v, cfg, backend=backend, return_intermediates=True)
    return o, (q, k, v, cfg, inter, backend)  # o: (B, H, N, hd)


def zeta_attention_backward(do, cache):
    """Gradients (dq, dk, dv, dlog_gamma) of :func:`zeta_attention_forward`.

    :func:`zeta_ref.zeta_attention_backward` with the forward pass's intermediates (the
    selection held fixed; docs/backward.md); dlog_gamma = dgamma * gamma by the chain rule
    (a Python float; 0 for the scores that do not use gamma).
    """
    from zeta_ref.backward import zeta_attention_backward as zeta_backward

    q, k, v, cfg, inter, backend = cache
    g = zeta_backward(q, k, v, do, cfg, intermediates=inter, backend=backend)
    dlog_gamma = g.dgamma * cfg.gamma if cfg.score == "cauchy" else 0.0
    return g.dq, g.dk, g.dv, dlog_gamma


# ------------------------------------------------------------------ the attention layer


def split_heads(x, heads: int):
    """(B, N, H w) -> (B, H, N, w)."""
    b, n, hw = x.shape
    return x.reshape(b, n, heads, hw // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, N, w) -> (B, N, H w)."""
    b, h, n, w = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * w)


def qk_forward(x, p: dict, which: str):
    """Queries (``which`` "q") or keys ("k") of an attention layer: ``x @ w{which} + b{which}``,
    or, where ``p`` also holds ``w{which}1`` and ``b{which}1`` (ModelConfig's
    qk_projection="mlp"), the two-layer MLP ``gelu(x @ w{which}1 + b{which}1) @ w{which} +
    b{which}``. Returns the projection and the cache for :func:`qk_backward`."""
    if f"w{which}1" in p:
        y, c = mlp_forward(x, p[f"w{which}1"], p[f"b{which}1"], p[f"w{which}"], p[f"b{which}"])
        return y, ("mlp", which, c)
    y, c = linear_forward(x, p[f"w{which}"], p[f"b{which}"])
    return y, ("linear", which, c)


def qk_backward(dy, cache):
    """Gradients (dx, grads by parameter name) of :func:`qk_forward`."""
    kind, which, c = cache
    if kind == "mlp":
        dx, dw1, db1, dw2, db2 = mlp_backward(dy, c)
        return dx, {f"w{which}1": dw1, f"b{which}1": db1, f"w{which}": dw2, f"b{which}": db2}
    dx, dw, db = linear_backward(dy, c)
    return dx, {f"w{which}": dw, f"b{which}": db}


def attention_layer_forward(x, p: dict, heads: int, core: str, *, log_gamma: float = 0.0,
                            zeta_config=None, backend: str = "numpy"):
    """One attention layer: project, attend per head, project back.

    x: (B, N, d). ``p`` holds wq, bq, wk, bk (d -> H w_qk), wv, bv (d -> d) and wo, bo
    (d -> d); with wq1, bq1, wk1, bk1 (d -> d) too, q and k come from two-layer MLPs
    (:func:`qk_forward`). ``core`` "full": causal softmax attention, w_qk = hd = d / H.
    ``core`` "zeta": ZETA, q and k projected to w_qk = d_K per head (the paper's
    low-dimensional keys), values at the head width hd.
    """
    q, cq = qk_forward(x, p, "q")  # (B, N, H w_qk)
    k, ck = qk_forward(x, p, "k")  # (B, N, H w_qk)
    v, cv = linear_forward(x, p["wv"], p["bv"])  # (B, N, d)
    qh, kh, vh = (split_heads(t, heads) for t in (q, k, v))  # (B, H, N, w)
    if core == "full":
        o, ca = causal_softmax_attention_forward(qh, kh, vh)  # (B, H, N, hd)
    elif core == "zeta":
        o, ca = zeta_attention_forward(qh, kh, vh, log_gamma, zeta_config, backend)
    else:
        raise ValueError(f"core must be 'full' or 'zeta'; got {core!r}")
    y, co = linear_forward(merge_heads(o), p["wo"], p["bo"])  # (B, N, d)
    return y, (cq, ck, cv, ca, co, core, heads)


def attention_layer_backward(dy, cache):
    """Gradients of :func:`attention_layer_forward`: (dx, grads of p by name, dlog_gamma)."""
    cq, ck, cv, ca, co, core, heads = cache
    do, dwo, dbo = linear_backward(dy, co)  # (B, N, d)
    do = split_heads(do, heads)  # (B, H, N, hd)
    if core == "full":
        dqh, dkh, dvh = causal_softmax_attention_backward(do, ca)
        dlog_gamma = 0.0
    else:
        dqh, dkh, dvh, dlog_gamma = zeta_attention_backward(do, ca)
    dx_q, grads_q = qk_backward(merge_heads(dqh), cq)
    dx_k, grads_k = qk_backward(merge_heads(dkh), ck)
    dx_v, dwv, dbv = linear_backward(merge_heads(dvh), cv)
    grads = {**grads_q, **grads_k, "wv": dwv, "bv": dbv, "wo": dwo, "bo": dbo}
    return dx_q + dx_k + dx_v, grads, dlog_gamma


# ------------------------------------------------------------------ the loss


def cross_entropy_forward(logits, targets):
    """Mean cross-entropy of the rows of ``logits`` (M, V) against ``targets`` int (M,).

    Returns the loss as a 0-d array of the logits' namespace (reading it as a Python float
    waits for the device: the training loop does that only when it logs).
    """
    xp = array_module(logits)
    m = logits.shape[0]
    z = logits - logits.max(axis=-1, keepdims=True)  # (M, V), largest 0
    lse = xp.log(xp.exp(z).sum(axis=-1))  # (M,)
    rows = xp.arange(m)
    loss = (lse - z[rows, targets]).mean()
    probs = xp.exp(z - lse[:, None])  # (M, V)
    return loss, (probs, targets)


def cross_entropy_backward(cache):
    """dlogits of :func:`cross_entropy_forward` (for dloss = 1): (softmax - onehot) / M."""
    probs, targets = cache
    xp = array_module(probs)
    m = probs.shape[0]
    d = probs.copy()
    d[xp.arange(m), targets] -= 1.0
    return d / m
