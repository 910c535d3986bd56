"""Where one MQAR training step's time goes on the GPU (docs/experiments.md, "What a training
step costs"). One process, alone on the GPU, the step of zeta_ref.mqar.train's loop (a batch
drawn on the host and copied, the model's forward and backward, Adam):

    python docs/data/mqar_step_profile.py split '{"seq_len": 128, "batch": 512}'
        host and device time of a step and of its parts (cupyx.profiler.benchmark, medians of
        20 after 3 warm-up steps), and the 25 functions of most own time in a cProfile of 20
        steps (the host's side: launches, transfers, waits);
    python docs/data/mqar_step_profile.py ncu '{"seq_len": 128, "batch": 512}'
        one step inside a profiler range, for
        ncu --profile-from-start off --metrics gpu__time_duration.sum --csv
        (every kernel's time: the sum is the GPU's work in a step, with the host taken out);
    python docs/data/mqar_step_profile.py summary NCU.csv
        that CSV summed by kernel: launches and microseconds of each, largest first.

The JSON overrides RunConfig fields; the defaults are docs/data/mqar_zoology_budget.py's
(ZETA, Cauchy, d_K = 3, k = 32, d_model = 256, V = 8192, CuPy).
"""
import cProfile
import importlib
import io
import json
import pstats
import sys

import numpy as np
import cupy as cp
import cupyx.profiler

from zeta_ref.mqar import layers as L
from zeta_ref.mqar import model as M
from zeta_ref.mqar.task import make_batch

# the module (zeta_ref.mqar's own name `train` is its function of that name)
T = importlib.import_module("zeta_ref.mqar.train")

DEFAULTS = dict(attention="zeta", d_k=3, score="cauchy", k=32, seq_len=128, d_model=256,
                batch=512, steps=1000, lr=1e-3, seed=0, backend="cupy")


def setup(overrides):
    cfg = T.RunConfig(**dict(DEFAULTS, **overrides))
    mcfg = cfg.model_config()
    flat, params, log_gammas = M.init_params(mcfg, np.random.default_rng([cfg.seed, 0]), cp,
                                             np.float32)
    gflat = cp.zeros_like(flat)
    grads = M.views(gflat, M.param_shapes(mcfg))
    adam, host_adam = M.Adam(flat), M.HostAdam(log_gammas)
    stream = np.random.default_rng([cfg.seed, 1])
    return cfg, mcfg, flat, params, log_gammas, gflat, grads, adam, host_adam, stream


def summary(path):
    import collections
    import csv

    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's table, not its log
    total, count = collections.Counter(), collections.Counter()
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3,
                 "ms": 1e3}[row["Metric Unit"]]
        name = row["Kernel Name"][:60]
        total[name] += value * scale
        count[name] += 1
    print(f"{sum(count.values())} kernels, {sum(total.values()):.1f} us in all")
    for name, us in total.most_common():
        print(f"{us:10.1f} us {count[name]:5d} x  {name}")


def main():
    if sys.argv[1] == "summary":
        summary(sys.argv[2])
        return
    mode, overrides = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    cfg, mcfg, flat, params, log_gammas, gflat, grads, adam, host_adam, stream = setup(overrides)

    def draw():
        batch = make_batch(stream, cfg.batch, cfg.seq_len, cfg.pairs, cfg.vocab,
                           query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)
        return T._to_device(batch, cp)

    fixed = draw()

    def forward(data=fixed):
        return M.forward(mcfg, params, log_gammas, *data, cfg.backend)

    def forward_backward(data=fixed):
        _, _, caches = forward(data)
        return M.backward(mcfg, caches, grads)

    def step():
        data = draw()
        dlog = forward_backward(data)
        adam.step(flat, gflat, 1e-4)
        host_adam.step(log_gammas, dlog, 1e-4)

    def layer_parts():
        x = cp.asarray(np.random.default_rng(3).standard_normal(
            (cfg.batch, cfg.seq_len, cfg.d_model)), dtype=cp.float32)
        p = {name[len("h0.attn."):]: a for name, a in params.items()
             if name.startswith("h0.attn.")}
        kw = dict(log_gamma=log_gammas.get("h0.attn.log_gamma", 0.0), zeta_config=mcfg.zeta,
                  backend=cfg.backend)
        y, cache = L.attention_layer_forward(x, p, mcfg.heads, mcfg.attention, **kw)
        return x, p, kw, y, cache

    for _ in range(3):
        step()
    cp.cuda.Device().synchronize()
    if mode == "ncu":
        with cupyx.profiler.profile():
            step()
            cp.cuda.Device().synchronize()
        return
    print(f"config: {cfg.label()} batch={cfg.batch}", flush=True)
    x, p, kw, y, cache = layer_parts()
    dy = cp.ones_like(y)
    parts = [
        ("step (draw, copy, forward, backward, Adam)", step, ()),
        ("draw a batch on the host and copy it", draw, ()),
        ("forward", forward, ()),
        ("forward + backward", forward_backward, ()),
        ("Adam", lambda: adam.step(flat, gflat, 1e-4), ()),
        ("one attention layer forward", lambda: L.attention_layer_forward(
            x, p, mcfg.heads, mcfg.attention, **kw), ()),
        ("one attention layer backward", lambda: L.attention_layer_backward(dy, cache), ()),
    ]
    if mcfg.attention == "zeta":
        q, k, v, zcfg, inter, backend = cache[3]
        from zeta_ref import zeta_attention
        from zeta_ref.backward import zeta_attention_backward
        do = cp.ones_like(v)
        parts += [
            ("ZETA forward, with intermediates (as trained)", lambda: zeta_attention(
                q, k, v, zcfg, backend=backend, return_intermediates=True), ()),
            ("ZETA forward, fused (no intermediates)", lambda: zeta_attention(
                q, k, v, zcfg, backend=backend), ()),
            ("ZETA backward", lambda: zeta_attention_backward(
                q, k, v, do, zcfg, intermediates=inter, backend=backend), ()),
        ]
    for name, fn, args in parts:
        r = cupyx.profiler.benchmark(fn, args, n_repeat=20, n_warmup=3)
        print(f"{name:50s} host {np.median(r.cpu_times) * 1e3:8.3f} ms   "
              f"device {np.median(r.gpu_times[0]) * 1e3:8.3f} ms", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20):
        step()
    cp.cuda.Device().synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue())


if __name__ == "__main__":
    main()
