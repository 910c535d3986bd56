"""The script that wrote docs/data/mqar_diagnosis.json: MQAR training runs of zeta_ref.mqar
with the recall-circuit measures every ``eval_every`` steps (docs/experiments.md, "a diagnosis").

    python docs/data/mqar_diagnosis.py TAG '{"attention": "zeta", "k": 32}' out.json

The JSON argument overrides the defaults below (any RunConfig field) and takes a few
experiments that are not zeta_ref options: ``gamma_sigmoid`` (gamma = sigmoid(theta), kept
in (0, 1), with theta trained in place of log gamma), ``scores`` (one score per layer, layer i using
scores[i % len(scores)]), ``qknorm`` (q and k scaled to unit length before ZETA, with that
scaling's backward), ``qk_init`` (a factor on the initial attn.wq and attn.wk), ``window`` and
``chunk`` (ZETA's W and chunk size), ``wall`` (stop after this many seconds, keeping what was
measured). Every evaluation prints one JSON line and rewrites the output file.

The measures, on a fixed batch of 64 sequences (what zeta_ref.mqar.probe.recall_circuit
computes, plus a few): L1_* for layer 1 at the context's value positions (the target: the key
one position back), L2_* for layer 2 at the query positions (the target: the value position
of the query's pair); _in: share of positions whose target is a ZETA candidate; _w: the
target's weight; _wmax: the largest weight; L2_rank: candidates weighted above the target;
L1_self / L1_selfkey: the weight on a position's own key (value / key positions); *_meanw: the
mean term's weight; acc: accuracy on the held-out test set.

Monkeypatching ``zeta_ref.mqar.layers`` is how the experiments reach inside the model; they
are not part of the package.
"""
import json, math, sys, time
from dataclasses import replace
import numpy as np
from zeta_ref.mqar import model as M
from zeta_ref.mqar.train import (RunConfig, learning_rate, held_out_set, evaluate, _to_device,
                                 array_namespace)
from zeta_ref.mqar.task import make_batch

def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)

def qk_normalised():
    """Experiment: ZETA on q and k scaled to unit length (distance then depends on the angle)."""
    from zeta_ref.mqar import layers as L
    fwd, bwd = L.zeta_attention_forward, L.zeta_attention_backward
    def unit(x):
        xp = L.array_module(x)
        norm = xp.sqrt((x * x).sum(axis=-1, keepdims=True)) + 1e-6
        return x / norm, norm
    def forward(q, k, v, log_gamma, config, backend):
        qn, nq = unit(q); kn, nk = unit(k)
        o, cache = fwd(qn, kn, v, log_gamma, config, backend)
        return o, (cache, qn, nq, kn, nk)
    def backward(do, cache):
        inner, qn, nq, kn, nk = cache
        dqn, dkn, dv, dlg = bwd(do, inner)
        dq = (dqn - qn * (qn * dqn).sum(axis=-1, keepdims=True)) / nq
        dk = (dkn - kn * (kn * dkn).sum(axis=-1, keepdims=True)) / nk
        return dq, dk, dv, dlg
    L.zeta_attention_forward, L.zeta_attention_backward = forward, backward

def layer_scores(scores):
    """Experiment: layer i of the model uses scores[i % 2] (the forward visits layers in order)."""
    from zeta_ref.mqar import layers as L
    fwd = L.zeta_attention_forward
    calls = [0]
    def forward(q, k, v, log_gamma, config, backend):
        cfg = replace(config, score=scores[calls[0] % len(scores)]); calls[0] += 1
        return fwd(q, k, v, log_gamma, cfg, backend)
    L.zeta_attention_forward = forward

def sigmoid_gamma():
    """Experiment: gamma = sigmoid(theta), so it stays in (0, 1) (the paper's bound), where
    zeta_ref.mqar trains log gamma; the host parameter holds theta, its gradient by the chain
    rule dtheta = dgamma * gamma * (1 - gamma)."""
    from zeta_ref.mqar import layers as L
    fwd, bwd = L.zeta_attention_forward, L.zeta_attention_backward
    def forward(q, k, v, theta, config, backend):
        gamma = 1.0 / (1.0 + math.exp(-theta))
        o, cache = fwd(q, k, v, math.log(gamma), config, backend)
        return o, (cache, gamma)
    def backward(do, cache):
        inner, gamma = cache
        dq, dk, dv, dlog_gamma = bwd(do, inner)  # dlog_gamma = dgamma * gamma
        return dq, dk, dv, dlog_gamma * (1.0 - gamma)
    L.zeta_attention_forward, L.zeta_attention_backward = forward, backward

def run(tag, window=None, chunk=None, dump=None, qknorm=False, scores=None, qk_init=1.0,
        wall=None, gamma_sigmoid=False, **kw):
    if qknorm:
        qk_normalised()
    if gamma_sigmoid:
        sigmoid_gamma()
    if scores:
        layer_scores(scores)
    cfg = RunConfig(**kw)
    xp = array_namespace(cfg.backend); mcfg = cfg.model_config(); be = cfg.backend
    if cfg.attention == "zeta" and (window or chunk):
        mcfg = replace(mcfg, zeta=replace(mcfg.zeta, window=window, chunk_size=chunk))
    flat, params, lg = M.init_params(mcfg, np.random.default_rng([cfg.seed, 0]), xp, np.dtype(cfg.dtype))
    if gamma_sigmoid:  # theta such that sigmoid(theta) is the starting gamma
        for name in lg:
            lg[name] = math.log(mcfg.zeta.gamma / (1.0 - mcfg.zeta.gamma))
    for name in params:
        if name.endswith(("attn.wq", "attn.wk")):
            params[name][...] *= qk_init
    gflat = xp.zeros_like(flat); grads = M.views(gflat, M.param_shapes(mcfg))
    adam, hadam = M.Adam(flat), M.HostAdam(lg)
    stream = np.random.default_rng([cfg.seed, 1]); test = held_out_set(cfg)
    db = make_batch(np.random.default_rng(12345), 64, cfg.seq_len, cfg.pairs, cfg.vocab,
                    query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)
    dtok, dqp, dans = db.tokens, db.query_pos, db.answers
    ddev = _to_device(db, xp)
    P = cfg.pairs; B = dtok.shape[0]; rows = np.arange(B)[:, None]
    t0 = time.time(); lsum = xp.zeros(()); out = []
    for step in range(cfg.steps):
        b = make_batch(stream, cfg.batch, cfg.seq_len, cfg.pairs, cfg.vocab,
                       query_dist=cfg.query_dist, power_a=cfg.power_a, filler=cfg.filler)
        tokens, qp, ans = _to_device(b, xp)
        loss, _, caches = M.forward(mcfg, params, lg, tokens, qp, ans, be)
        dlg = M.backward(mcfg, caches, grads)
        lr = learning_rate(step, cfg); adam.step(flat, gflat, lr); hadam.step(lg, dlg, lr)
        lsum += loss
        if (step + 1) % cfg.eval_every == 0:
            rec = {"step": step + 1, "loss": float(lsum) / cfg.eval_every}; lsum = xp.zeros(())
            if cfg.attention == "zeta":
                _, _, c = M.forward(mcfg, params, lg, *ddev, be)
                a0, a1 = c["h0.attn"][3], c["h1.attn"][3]
                for wrapped in (qknorm, gamma_sigmoid):  # each experiment wraps the cache once
                    if wrapped:
                        a0, a1 = a0[0], a1[0]
                i0, i1 = a0[4], a1[4]
                c0, c1 = host(i0.candidates)[:, 0], host(i1.candidates)[:, 0]
                w0, w1 = host(i0.weights)[:, 0], host(i1.weights)[:, 0]
                vpos = np.arange(1, 2 * P, 2)
                hit0 = c0[:, vpos, :] == (vpos - 1)[None, :, None]
                self0 = c0[:, vpos, :] == vpos[None, :, None]
                selfk = c0[:, 0:2 * P:2, :] == np.arange(0, 2 * P, 2)[None, :, None]
                keys = dtok[:, 0:2 * P:2]; qtok = dtok[rows, dqp]
                target = 2 * (qtok[:, :, None] == keys[:, None, :]).argmax(-1) + 1
                hit1 = c1[rows, dqp] == target[:, :, None]
                wq = w1[rows, dqp]
                rank = (wq > (wq * hit1).sum(-1, keepdims=True)).sum(-1)[hit1.any(-1)]
                rec.update(L1_in=float(hit0.any(-1).mean()), L1_w=float((w0[:, vpos] * hit0).sum(-1).mean()),
                           L1_wmax=float(w0[:, vpos].max(-1).mean()),
                           L1_self=float((w0[:, vpos] * self0).sum(-1).mean()),
                           L1_selfkey=float((w0[:, 0:2 * P:2] * selfk).sum(-1).mean()),
                           L1_meanw=float(host(i0.mean_weight)[:, 0][:, vpos].mean()),
                           L2_in=float(hit1.any(-1).mean()), L2_w=float((wq * hit1).sum(-1).mean()),
                           L2_wmax=float(wq.max(-1).mean()),
                           L2_rank=float(rank.mean()) if rank.size else -1,
                           L2_meanw=float(host(i1.mean_weight)[:, 0][rows, dqp].mean()),
                           gammas=[round(float(1 / (1 + np.exp(-v)) if gamma_sigmoid else np.exp(v)), 4)
                                   for v in lg.values()])
            rec["acc"] = evaluate(cfg, mcfg, params, lg, test, xp, be)
            rec["sec"] = round(time.time() - t0, 1)
            out.append(rec)
            print(tag, json.dumps(rec), flush=True)
            if dump:
                json.dump({"tag": tag, "config": kw, "scores": scores, "qk_init": qk_init,
                           "gamma_sigmoid": gamma_sigmoid, "window": window, "chunk": chunk,
                           "evals": out}, open(dump, "w"))
            if wall and time.time() - t0 > wall:
                print(tag, "wall limit", flush=True)
                return out
    return out

if __name__ == "__main__":
    kw = json.loads(sys.argv[2])
    base = dict(seq_len=64, d_model=256, steps=1500, batch=128, eval_every=100, backend="cupy",
                test_size=512, seed=0)
    base.update(kw)
    run(sys.argv[1], dump=sys.argv[3] if len(sys.argv) > 3 else None, **base)
