"""Shared fixtures and brute-force helpers for the tests of the NumPy specification.

The helpers here are deliberately naive (Python loops, one query at a time) and share no code
with zeta_ref, so that a test comparing the two can fail when the specification is wrong.
They are exposed as session-scoped fixtures so that hypothesis tests can use them too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest -n (the README's command) the worker processes share the cores. The BLAS
    # behind NumPy would start a thread per core in each, whose idle threads spin and slow
    # the other workers several times over (zeta_ref.mqar.train says what was measured): one
    # BLAS thread per worker, here and in the processes a test starts (the docs build).
    from threadpoolctl import threadpool_limits

    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    threadpool_limits(limits=1, user_api="blas")

SEED = 20250414


@pytest.fixture
def rng():
    """A fresh, seeded generator for each test (no global random state)."""
    return np.random.default_rng(SEED)


def _make_qkv(rng, n, d_k=3, d_v=4, *, lead=(), dtype=np.float64, scale=1.0):
    """Random q, k (lead + (N, d_k)) and v (lead + (N, d_v)) of one float dtype."""
    q = (rng.standard_normal(lead + (n, d_k)) * scale).astype(dtype)
    k = (rng.standard_normal(lead + (n, d_k)) * scale).astype(dtype)
    v = rng.standard_normal(lead + (n, d_v)).astype(dtype)
    return q, k, v


@pytest.fixture(scope="session")
def make_qkv():
    """``make_qkv(rng, n, d_k=3, d_v=4, *, lead=(), dtype=np.float64, scale=1.0)``."""
    return _make_qkv


def _brute_window(q_codes, k_codes, pool_len, width):
    """Stage 5 (steps 1-3) for one row, one query at a time, straight from the definition.

    For query i: the visible keys are the positions j < L_i; order them by (code, position)
    (D10); the insertion point p is the number of visible keys whose code is below the
    query's; the window is the ranks p - W//2 ... p - W//2 + W - 1, slid to stay inside
    [0, n_pool) (D11); slots past the pool hold -1 (D9).
    """
    q_codes = [int(c) for c in q_codes]
    k_codes = [int(c) for c in k_codes]
    n = len(q_codes)
    out = np.full((n, width), -1, dtype=np.int64)
    for i in range(n):
        visible = sorted(range(int(pool_len[i])), key=lambda j: (k_codes[j], j))
        n_pool = len(visible)
        if n_pool == 0:
            continue
        p = sum(1 for j in visible if k_codes[j] < q_codes[i])
        start = p - width // 2
        start = min(start, n_pool - width)  # slide down at the top end
        start = max(start, 0)  # slide up at the bottom end
        taken = visible[start:start + width]
        out[i, :len(taken)] = taken
    return out


@pytest.fixture(scope="session")
def brute_window():
    """``brute_window(q_codes (N,), k_codes (N,), pool_len (N,), width) -> (N, W)``."""
    return _brute_window


def _sq_dist(a, b):
    a = [float(x) for x in a]
    b = [float(x) for x in b]
    return sum((x - y) ** 2 for x, y in zip(a, b))


def _near(q, key, score):
    """Nearness of one key to one query (smaller is nearer), Python floats."""
    if score == "softmax":
        return -sum(float(x) * float(y) for x, y in zip(q, key))
    return _sq_dist(q, key)


def _brute_rerank(q, k, window_idx, k_top, score):
    """Keep the k_top nearest window keys (ties to the lower position), in window order."""
    n, _ = window_idx.shape
    out = np.full((n, k_top), -1, dtype=np.int64)
    for i in range(n):
        valid = [int(j) for j in window_idx[i] if j >= 0]
        kept = set(sorted(valid, key=lambda j: (_near(q[i], k[j], score), j))[:k_top])
        ordered = [int(j) for j in window_idx[i] if j in kept]  # window order
        out[i, :len(ordered)] = ordered
    return out


@pytest.fixture(scope="session")
def brute_rerank():
    """``brute_rerank(q (N, d), k (N, d), window_idx (N, W), k_top, score) -> (N, k)``."""
    return _brute_rerank


def _brute_weights(q, k, v, cand, score, gamma, mean_k=None, mean_v=None, eps=1e-6):
    """Stage 6 for one row in float64, one query at a time: (out, weights, mean_weight)."""
    n, n_slots = cand.shape
    d_k = q.shape[-1]
    out = np.zeros((n, v.shape[-1]))
    weights = np.zeros((n, n_slots))
    mean_weight = np.zeros(n)
    for i in range(n):
        keys = [k[j] for j in cand[i] if j >= 0]
        vals = [v[j] for j in cand[i] if j >= 0]
        slots = [s for s in range(n_slots) if cand[i, s] >= 0]
        if mean_k is not None:
            keys.append(mean_k[i])
            vals.append(mean_v[i])
        if not keys:
            continue
        if score == "cauchy":
            a = [1.0 / (_sq_dist(q[i], kk) + gamma ** 2) for kk in keys]
        elif score == "inv_euclidean":
            a = [1.0 / (_sq_dist(q[i], kk) + eps) for kk in keys]
        elif score == "neg_euclidean":
            logits = [-_sq_dist(q[i], kk) for kk in keys]
            top = max(logits)
            a = [np.exp(x - top) for x in logits]
        elif score == "softmax":
            logits = [sum(float(x) * float(y) for x, y in zip(q[i], kk)) / np.sqrt(d_k)
                      for kk in keys]
            top = max(logits)
            a = [np.exp(x - top) for x in logits]
        else:  # pragma: no cover
            raise AssertionError(score)
        total = sum(a)
        w = [x / total for x in a]
        for s, wi in zip(slots, w):
            weights[i, s] = wi
        if mean_k is not None:
            mean_weight[i] = w[-1]
        out[i] = sum(wi * np.asarray(vv, dtype=np.float64) for wi, vv in zip(w, vals))
    return out, weights, mean_weight


@pytest.fixture(scope="session")
def brute_weights():
    """``brute_weights(q, k, v, cand, score, gamma, mean_k=None, mean_v=None)`` for one row."""
    return _brute_weights


def _gradient_sizes(q, k, v, g, cand, score, gamma, causal, mean, eps=1e-6):
    """The size in play of each gradient of stage 6, for one row, in float64: (dq, dk, dv).

    Every gradient is a sum of terms (each slot's share, and each query's share of a key),
    and the terms can cancel: with "inv_euclidean" and a key 1e-3 from its query, a term is
    of order 1e6 and the sum of order 1. A float32 backward is then accurate to a few units
    of float32 in the terms, not in the sum, and ``max |dq|`` is no yardstick for comparing
    two of them. This follows the backward pass (b1 to b5 of zeta_ref.stages.backward) with
    every signed quantity replaced by its absolute value: the sums of |terms|, position by
    position, to pass on as ``scale`` (their largest) to ``assert_close``.
    """
    q, k, v, g = (np.asarray(x, dtype=np.float64) for x in (q, k, v, g))
    n, d_k = q.shape
    mean_k = _cumulative_means(k, causal) if mean else None
    mean_v = _cumulative_means(v, causal) if mean else None
    _, weights, mean_weight = _brute_weights(q, k, v, cand, score, gamma, mean_k, mean_v, eps)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dmean_k, dmean_v = np.zeros_like(q), np.zeros_like(v)
    for i in range(n):
        slots = [(int(j), weights[i, s], k[j], v[j]) for s, j in enumerate(cand[i]) if j >= 0]
        if mean:
            slots.append((None, mean_weight[i], mean_k[i], mean_v[i]))
        dw = [np.abs(val) @ np.abs(g[i]) for _, _, _, val in slots]  # |<g, v_s>| at most
        rho = sum(w * x for (_, w, _, _), x in zip(slots, dw))
        for (j, w, key, _), x in zip(slots, dw):
            dt = w * (x + rho)
            if score in ("softmax", "neg_euclidean"):
                dnear = dt / (np.sqrt(d_k) if score == "softmax" else 1.0)
            else:
                dnear = dt / (_sq_dist(q[i], key) + (gamma ** 2 if score == "cauchy" else eps))
            if score == "softmax":
                to_q, to_key = dnear * np.abs(key), dnear * np.abs(q[i])
            else:
                to_q = to_key = 2 * dnear * np.abs(q[i] - key)
            dq[i] += to_q
            (dk[j] if j is not None else dmean_k[i])[:] += to_key
            (dv[j] if j is not None else dmean_v[i])[:] += w * np.abs(g[i])
    if mean:  # a mean over positions 0..i (all N for "none") passes a share to each of them
        for mean_grad, grad in ((dmean_k, dk), (dmean_v, dv)):
            if causal == "none":
                grad += mean_grad.sum(axis=0) / n
            else:
                share = mean_grad / np.arange(1, n + 1)[:, None]
                grad += np.cumsum(share[::-1], axis=0)[::-1]
    return dq, dk, dv


@pytest.fixture(scope="session")
def gradient_sizes():
    """``gradient_sizes(q, k, v, g, cand, score, gamma, causal, mean) -> (dq, dk, dv)`` for
    one row: the sums of |terms| each gradient adds up (see ``_gradient_sizes``)."""
    return _gradient_sizes


def _cumulative_means(x, causal):
    """Mean of rows 0..i for every i (or of all rows for causal="none"), float64 loop."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-2]
    out = np.zeros(x.shape)
    for i in range(n):
        upto = n if causal == "none" else i + 1
        out[..., i, :] = x[..., :upto, :].sum(axis=-2) / upto
    return out


@pytest.fixture(scope="session")
def cumulative_means():
    """``cumulative_means(x (..., N, d), causal) -> float64 (..., N, d)``."""
    return _cumulative_means


def rel_err(actual, desired):
    """max |actual - desired| / max |desired| (absolute when desired is all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    scale = np.abs(desired).max() if desired.size else 0.0
    err = np.abs(actual - desired).max() if desired.size else 0.0
    return err / scale if scale > 0 else err


@pytest.fixture(scope="session")
def relative_error():
    """``relative_error(actual, desired)``: max abs difference over max abs of desired."""
    return rel_err


@pytest.fixture
def zeta_ref_cli(capsys):
    """``zeta_ref_cli(argv)`` runs ``zeta-ref ARGV`` in this process and returns (exit status,
    stdout, stderr): the tests of the subcommands' options and messages."""
    from zeta_ref.tools import cli

    def run(argv):
        try:
            code = cli.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _mqar_reference_step(cfg, xp=np):
    """The MQAR model's loss and gradients for one seeded batch, through its hand-written
    backward (zeta_ref.mqar.model), in float64 on ``xp`` (NumPy or CuPy): (loss, gradients by
    name as host arrays, log gammas' gradients, the batch)."""
    from zeta_ref.mqar import model as M
    from zeta_ref.mqar.task import make_batch

    mcfg = cfg.model_config()
    flat, params, log_gammas = M.init_params(mcfg, np.random.default_rng([cfg.seed, 0]), xp,
                                             np.float64)
    batch = make_batch(np.random.default_rng(5), cfg.batch, cfg.seq_len, cfg.pairs, cfg.vocab)
    grads = M.views(xp.zeros_like(flat), M.param_shapes(mcfg))
    loss, _, caches = M.forward(mcfg, params, log_gammas,
                                *(xp.asarray(a) for a in (batch.tokens, batch.query_pos,
                                                          batch.answers)), cfg.backend)
    dlog_gammas = M.backward(mcfg, caches, grads)
    host = {name: g.get() if hasattr(g, "get") else g for name, g in grads.items()}
    return float(loss), host, dlog_gammas, batch


@pytest.fixture
def mqar_reference_step():
    return _mqar_reference_step


def pytest_collection_modifyitems(config, items):
    """Under tests/cuda_host's CPU emulation of CuPy, skip the GPU tests marked ``gpu_only``
    (sizes that take a GPU; they run on the device machine only)."""
    try:
        import cupy
    except ImportError:
        return
    if not getattr(cupy, "CUDA_HOST", False):
        return
    skip = pytest.mark.skip(reason="too large for the CPU emulation (tests/cuda_host); GPU only")
    for item in items:
        if "gpu_only" in item.keywords:
            item.add_marker(skip)
