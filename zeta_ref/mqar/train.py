"""Training and evaluating the MQAR model: one run of one configuration.

:func:`train` draws fresh batches every step from a seeded stream (an endless training set),
takes ``steps`` Adam steps with a warm-up and a cosine decay of the learning rate, and scores
a held-out, seeded test set: **accuracy** is the fraction of the test set's query positions
whose most likely token is exactly the answer.

Where it runs (``backend``):

- "numpy": NumPy arrays on the CPU, ZETA through its NumPy specification (slow; for checks);
- "numba": NumPy arrays on the CPU, ZETA through its Numba twin (the CPU default);
- "cupy": CuPy arrays on the GPU, ZETA through its CuPy twin. Batches are drawn on the host
  (NumPy) and copied to the device (a few hundred KiB a step). The loop itself reads nothing
  back from the device except every ``log_every`` steps (the loss) and at each evaluation;
  the ZETA reference does wait for the device inside its calls (its input checks), which is
  part of its cost.

Reproducible: the same :class:`RunConfig` gives the same numbers on the same backend (on the
GPU, up to the order of the float64 additions of the embedding's gradient, see
:func:`zeta_ref.mqar.layers.embedding_backward`). Three generators, all derived from
``seed``: the parameters' initialisation, the training stream and the test set.

The BLAS behind NumPy's matrix products runs with one thread while :func:`train` runs, for
two reasons. OpenBLAS sums a product in another order with another number of threads, so
the numbers would otherwise depend on the machine's cores (Numba's kernels give the same
numbers with any number of threads). And runs in parallel processes (a grid's ``--jobs``)
would each start a BLAS thread per core, whose idle threads spin: on a two-core machine two
such runs at once took four to five times as long a step as one alone, and the smoke grid
with ``--jobs 2`` three times as long as with ``--jobs 1`` (docs/experiments.md).

A run can stop part way and go on later (a grid run in sittings, :mod:`zeta_ref.mqar.grid`):
``train(cfg, checkpoint=PATH, should_stop=...)`` saves everything the remaining steps depend
on (the parameters, both Adams' moments, the training stream's generator, the loss window,
the curve and the evaluations so far) to PATH when ``should_stop`` says so, and a later call
with the same PATH goes on from there. The resumed run gives the numbers of one that was
never stopped (tested bit for bit on the CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import model as M
from .layers import array_module, to_host
from .task import FILLERS, QUERY_DISTS, check_task, default_pairs, make_batch

BACKENDS = ("numpy", "numba", "cupy")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class RunConfig:
    """One MQAR run: the task, the model, the optimiser and where it runs.

    Task: ``seq_len`` (N), ``pairs`` (P; None gives N / 16, :func:`default_pairs`), ``vocab``
    (V), ``query_dist`` and ``power_a`` (where the queries go), ``filler``.
    Model: ``d_model``, ``layers``, ``heads``, ``mlp_ratio``, ``positions``,
    ``qk_projection`` (see :class:`~zeta_ref.mqar.model.ModelConfig`), ``attention`` ("full" or
    "zeta"), and for ZETA ``d_k``, ``k``, ``score``, ``gamma`` (initial) and
    ``history_mean`` (D8); the other ZETA settings are the reference's defaults.
    Training: ``steps``, ``batch``, ``lr`` (peak), ``warmup`` (steps; None: 10 % of the
    steps, at most 200), ``seed``, ``backend``, ``dtype``, ``test_size`` (sequences),
    ``eval_every`` (steps between evaluations of the test accuracy; 0: only at the end),
    ``log_every`` (steps between loss readings).
    """

    seq_len: int = 64
    d_model: int = 64
    pairs: int | None = None
    vocab: int = 8192
    query_dist: str = "power"
    power_a: float = 0.01
    filler: str = "zero"
    layers: int = 2
    heads: int = 1
    mlp_ratio: int = 0
    positions: str = "normal"
    qk_projection: str = "linear"
    attention: str = "full"
    d_k: int = 3
    k: int = 32
    score: str = "cauchy"
    gamma: float = 0.5
    history_mean: bool = True
    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    warmup: int | None = None
    seed: int = 0
    backend: str = "numba"
    dtype: str = "float32"
    test_size: int = 1000
    eval_every: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.pairs is None:
            object.__setattr__(self, "pairs", default_pairs(self.seq_len))
        if self.warmup is None:
            object.__setattr__(self, "warmup", min(200, self.steps // 10))
        check_task(self.seq_len, self.pairs, self.vocab)
        if self.query_dist not in QUERY_DISTS:
            raise ValueError(f"query_dist must be one of {QUERY_DISTS}; got {self.query_dist!r}")
        if self.filler not in FILLERS:
            raise ValueError(f"filler must be one of {FILLERS}; got {self.filler!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {self.dtype!r}")
        for name in ("steps", "batch", "test_size", "log_every", "d_model", "layers", "heads",
                     "d_k", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        zeta = self.model_config().zeta  # the model's own checks (heads divide d_model, ...)
        if self.attention == "zeta" and zeta.score == "cauchy":  # what zeta_attention refuses
            from zeta_ref._checks import check_gamma

            check_gamma(zeta.gamma, self.dtype, zeta.k_for(self.seq_len) + zeta.history_mean)
            lo, hi = M.GAMMA_RANGE  # training would move it there after its first step
            if not lo <= zeta.gamma <= hi:
                raise ValueError(f"gamma must lie in [{lo:g}, {hi:g}], the range training keeps "
                                 f"the learned gamma in; got {zeta.gamma!r}")

    def model_config(self) -> M.ModelConfig:
        from zeta_ref import ZetaConfig

        # the reference's bits per coordinate, fewer where d_K of them would not fit a
        # 63-bit code (d_K = 8: 7 bits)
        bits = min(ZetaConfig().bits, 63 // self.d_k)
        zeta = ZetaConfig(k=self.k, score=self.score, gamma=self.gamma,
                          history_mean=self.history_mean, bits=bits)
        return M.ModelConfig(vocab=self.vocab, seq_len=self.seq_len, d_model=self.d_model,
                             layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio,
                             attention=self.attention, d_k=self.d_k, zeta=zeta,
                             positions=self.positions, qk_projection=self.qk_projection)

    def label(self) -> str:
        """A short name: 'zeta dK=3 cauchy k=32 N=64 d=64 seed=0'."""
        att = (f"zeta dK={self.d_k} {self.score} k={self.k}" if self.attention == "zeta"
               else "full")
        qk = " qk=mlp" if self.qk_projection == "mlp" else ""
        return f"{att}{qk} N={self.seq_len} d={self.d_model} seed={self.seed}"


def array_namespace(backend: str):
    """CuPy for the "cupy" backend, else NumPy."""
    if backend == "cupy":
        import cupy

        return cupy
    return np


def learning_rate(step: int, cfg: RunConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps to ``cfg.lr``, then a cosine decay to
    ``cfg.lr / 10`` at the last step (``step`` counts from 0)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup - 1)
    frac = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _to_device(batch, xp):
    return (xp.asarray(batch.tokens), xp.asarray(batch.query_pos), xp.asarray(batch.answers))


def held_out_set(cfg: RunConfig):
    """The held-out test set of ``cfg``: ``test_size`` sequences from its own seeded stream
    (independent of the training stream; the same for every model of the same task and seed)."""
    rng = np.random.default_rng([cfg.seed, 2])
    return make_batch(rng, cfg.test_size, cfg.seq_len, cfg.pairs, cfg.vocab,
                      query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)


def evaluate(cfg: RunConfig, mcfg, params, log_gammas, test, xp, backend) -> float:
    """Accuracy on ``test``: the share of query positions where the argmax is the answer.

    In batches of ``cfg.batch`` sequences; the correct counts are summed on the device and
    read once at the end.
    """
    correct = xp.zeros((), dtype=xp.int64)
    for start in range(0, test.tokens.shape[0], cfg.batch):
        part = slice(start, start + cfg.batch)
        tokens, query_pos, answers = (xp.asarray(a[part]) for a in
                                      (test.tokens, test.query_pos, test.answers))
        _, logits, _ = M.forward(mcfg, params, log_gammas, tokens, query_pos, answers, backend)
        correct += (logits.argmax(axis=-1) == answers).sum()
    return int(correct) / test.answers.size


def train(cfg: RunConfig, progress=None, state: dict | None = None,
          checkpoint: str | None = None, should_stop=None) -> dict | None:
    """Train one model on MQAR and score it; return the results as a JSON-ready dict.

    ``progress``: an optional tqdm-like bar (``update(n)``, ``set_postfix_str(s)``).
    ``state``: an optional dict that receives the trained model at the end, to look inside
    it (notebook 7): "model_config" (the ModelConfig), "params" (the named parameters, arrays
    of the backend's namespace) and "log_gammas" (the host log gammas, by name).

    ``checkpoint``: a file (.npz) to go on from where it exists, and to save to when
    ``should_stop(step)`` returns true (asked before every step but the first of the call,
    so that every call moves the run on; ``step`` counts from 0): then the run returns None,
    and a later call with the same ``checkpoint`` takes up the remaining steps. The file is
    removed when the run finishes.

    The result holds the config, the learning curve (the mean training loss of every
    ``log_every`` steps), the test accuracy at each evaluation and at the end, the final
    gammas (ZETA with the Cauchy score), and the time taken (training steps alone, and
    in all; a resumed run counts every sitting's time and lists the steps it went on from
    as "resumed_at").
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # the same sums on every machine
        return _train(cfg, progress, state, checkpoint, should_stop)


def _train(cfg: RunConfig, progress, state, checkpoint, should_stop) -> dict | None:
    """:func:`train`'s loop, with the BLAS limited by the caller."""
    t_start = time.perf_counter()
    xp = array_namespace(cfg.backend)
    dtype = np.dtype(cfg.dtype)
    mcfg = cfg.model_config()
    zeta_backend = cfg.backend  # the ZETA backend of the same name works on these arrays
    flat, params, log_gammas = M.init_params(mcfg, np.random.default_rng([cfg.seed, 0]), xp,
                                             dtype)
    gflat = xp.zeros_like(flat)
    grads = M.views(gflat, M.param_shapes(mcfg))
    adam, host_adam = M.Adam(flat), M.HostAdam(log_gammas)
    stream = np.random.default_rng([cfg.seed, 1])
    test = held_out_set(cfg)

    curve, evals = [], []
    loss_sum, count, train_seconds = xp.zeros((), dtype=dtype), 0, 0.0
    first, resumed_at = 0, []
    if checkpoint is not None and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint, cfg, flat, adam, host_adam, log_gammas, stream)
        first, curve, evals, count = saved["step"], saved["curve"], saved["evals"], saved["count"]
        loss_sum = xp.full((), saved["loss_sum"], dtype=dtype)
        train_seconds = saved["train_seconds"]
        t_start -= saved["total_seconds"]  # the earlier sittings' time counts
        resumed_at = saved["resumed_at"] + [first]
        if progress is not None:
            progress.update(first)
    t_train = time.perf_counter()
    for step in range(first, cfg.steps):
        if step > first and checkpoint is not None and should_stop is not None \
                and should_stop(step):
            save_checkpoint(checkpoint, cfg, step, flat, adam, host_adam, log_gammas,
                            stream, curve=curve, evals=evals, count=count,
                            loss_sum=float(loss_sum), resumed_at=resumed_at,
                            train_seconds=train_seconds + time.perf_counter() - t_train,
                            total_seconds=time.perf_counter() - t_start)
            return None
        batch = make_batch(stream, cfg.batch, cfg.seq_len, cfg.pairs, cfg.vocab,
                           query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)
        tokens, query_pos, answers = _to_device(batch, xp)
        loss, _, caches = M.forward(mcfg, params, log_gammas, tokens, query_pos, answers,
                                    zeta_backend)
        dlog_gammas = M.backward(mcfg, caches, grads)
        lr = learning_rate(step, cfg)
        adam.step(flat, gflat, lr)
        host_adam.step(log_gammas, dlog_gammas, lr)
        loss_sum += loss
        count += 1
        if progress is not None:
            progress.update(1)
        last = step == cfg.steps - 1
        if count == cfg.log_every or last:  # the one read-back of the loop
            mean_loss = float(loss_sum) / count
            curve.append({"step": step + 1, "loss": mean_loss})
            loss_sum, count = xp.zeros((), dtype=dtype), 0
            if progress is not None:
                progress.set_postfix_str(f"loss {mean_loss:.3f}")
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            train_seconds += time.perf_counter() - t_train
            acc = evaluate(cfg, mcfg, params, log_gammas, test, xp, zeta_backend)
            evals.append({"step": step + 1, "accuracy": acc})
            t_train = time.perf_counter()
    if state is not None:
        state.update(model_config=mcfg, params=params, log_gammas=dict(log_gammas))
    if checkpoint is not None and os.path.exists(checkpoint):
        os.remove(checkpoint)
    extra = {"resumed_at": resumed_at} if resumed_at else {}
    return run_record(cfg, curve, evals, log_gammas, train_seconds, t_start, **extra)


def save_checkpoint(path: str, cfg: RunConfig, step: int, flat, adam, host_adam,
                    log_gammas: dict, stream: np.random.Generator, **progress) -> None:
    """Save a run stopped before ``step`` to ``path`` (an .npz, written whole or not at all):
    the parameters and Adam's moments as arrays; the step, Adam's step counts, the host
    Adam's state, the log gammas, the stream generator's state and ``progress`` (curve,
    evaluations, loss window, times) as JSON beside them."""
    meta = {"config": asdict(cfg), "step": step, "adam_t": adam.t,
            "host_adam": {"m": host_adam.m, "v": host_adam.v, "t": host_adam.t},
            "log_gammas": log_gammas, "stream": stream.bit_generator.state, **progress}
    tmp = path + ".tmp.npz"
    np.savez(tmp, flat=to_host(flat), m=to_host(adam.m), v=to_host(adam.v),
             meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def load_checkpoint(path: str, cfg: RunConfig, flat, adam, host_adam, log_gammas: dict,
                    stream: np.random.Generator) -> dict:
    """Put the state saved by :func:`save_checkpoint` back into the run's objects (in place:
    the named parameters are views of ``flat``); return the saved progress. A checkpoint of
    another configuration is refused."""
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        if meta["config"] != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"checkpoint {path} belongs to another configuration: "
                             f"{meta['config']} (this run: {asdict(cfg)})")
        for target, name in ((flat, "flat"), (adam.m, "m"), (adam.v, "v")):
            if saved[name].shape != target.shape or saved[name].dtype != target.dtype:
                raise ValueError(f"checkpoint {path}: {name} is {saved[name].dtype} "
                                 f"{saved[name].shape}, the run needs {target.dtype} "
                                 f"{target.shape}")
            target[...] = array_module(target).asarray(saved[name])  # to the device if CuPy
    adam.t = meta["adam_t"]
    host_adam.m, host_adam.v = meta["host_adam"]["m"], meta["host_adam"]["v"]
    host_adam.t = meta["host_adam"]["t"]
    log_gammas.update(meta["log_gammas"])
    stream.bit_generator.state = meta["stream"]
    return meta


def run_record(cfg: RunConfig, curve, evals, log_gammas: dict, train_seconds: float,
               t_start: float, **extra) -> dict:
    """One run's results as a JSON-ready dict (the form :func:`train` returns); ``log_gammas``
    by parameter name ("h0.attn.log_gamma"), ``extra`` fields added as given."""
    return {
        "label": cfg.label(),
        **extra,
        "config": asdict(cfg),
        "curve": curve,
        "evals": evals,
        "accuracy": evals[-1]["accuracy"],
        "final_loss": curve[-1]["loss"],
        "gammas": {name.replace(".log_gamma", ".gamma"): math.exp(v)
                   for name, v in log_gammas.items()},
        "chance": 1.0 / (cfg.vocab - cfg.vocab // 2),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / cfg.steps,
        "total_seconds": time.perf_counter() - t_start,
    }
