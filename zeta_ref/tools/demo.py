"""Walk through the six stages of ZETA on a small seeded sequence and check the result.

The sequence is synthetic and embedded: N tokens drawn from a small vocabulary of random
d_model-wide embeddings plus noise, so that a query's nearest keys are the tokens most like it.
One seeded Johnson-Lindenstrauss map takes queries and keys to d_k dimensions (queries and keys
share it here), another takes values to d_v. The demo prints what every stage produced and
what it means, then measures the selection against the exact top-k (recall@k) and the output
against dense attention over all visible keys with the same score (Cauchy by default),
beside the same comparison for the exact top-k, to tell the cost of keeping k keys apart
from the cost of finding them on the Z-curve.

With --out DIR it also saves DIR/demo.png: the visible keys of one query in a 2-D view of the
quantised grid with the Z-curve through them, the query, its window and its true nearest
neighbours; and the same keys laid out by Z rank against distance to the query.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .. import oracles
from ..attention import zeta_attention
from ..backends import backends
from ..config import CAUSAL_MODES, SCORES, SQUASHES, ZetaConfig
from ..stages.projection import project, random_projection
from ..stages.topk_softmax import topk_attention


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("the synthetic sequence")
    data.add_argument("--n", type=_positive_int, default=512, help="sequence length N (512)")
    data.add_argument("--d-model", type=_positive_int, default=32,
                      help="width of the token embeddings before projection (32)")
    data.add_argument("--d-k", type=_positive_int, default=3,
                      help="query/key width after projection, d_k (3, as in the paper)")
    data.add_argument("--d-v", type=_positive_int, default=16, help="value width d_v (16)")
    data.add_argument("--vocab", type=_positive_int, default=48,
                      help="number of distinct token embeddings (48)")
    data.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    cfg = p.add_argument_group("ZetaConfig (see docs/decisions.md for D1..D12)")
    d = ZetaConfig()
    cfg.add_argument("--k", type=_positive_int, default=d.k, help=f"keys per query ({d.k})")
    cfg.add_argument("--bits", type=_positive_int, default=d.bits,
                     help=f"bits per coordinate, D2 ({d.bits})")
    cfg.add_argument("--chunk-size", type=_positive_int, default=None,
                     help="chunk length M, D5 (automatic: max(k, ceil(N/8)))")
    cfg.add_argument("--causal", choices=CAUSAL_MODES, default=d.causal,
                     help=f"causal pools, D4 ({d.causal})")
    cfg.add_argument("--window", type=_positive_int, default=None,
                     help="window width W >= k, D6 (k: the window is the selection)")
    cfg.add_argument("--score", choices=SCORES, default=d.score, help=f"weighting ({d.score})")
    cfg.add_argument("--gamma", type=float, default=d.gamma,
                     help=f"Cauchy gamma of Eq. 6, D7 ({d.gamma})")
    cfg.add_argument("--no-history-mean", dest="history_mean", action="store_false",
                     help="leave out the mean term, D8 (on by default)")
    cfg.add_argument("--squash", choices=SQUASHES, default=d.squash,
                     help=f"map to [0, 1] before quantising, D1 ({d.squash})")
    cfg.add_argument("--clip-range", type=float, nargs=2, metavar=("LO", "HI"),
                     default=d.clip_range, help="range of --squash clip (-4 4)")
    run_ = p.add_argument_group("running")
    run_.add_argument("--backend", default="numpy",
                      help=f"implementation to run (here: {', '.join(backends())})")
    run_.add_argument("--query", type=int, default=None,
                      help="position of the query shown in detail (default: 3N/4)")
    run_.add_argument("--out", default=None, metavar="DIR",
                      help="also save DIR/demo.png, a picture of one query's selection")


def make_sequence(n, d_model, d_k, d_v, vocab, seed):
    """The demo's embedded default input: tokens, embeddings, and q, k, v after stage 1.

    Returns a dict with ``tokens`` (N,), ``x`` (N, d_model), ``q`` and ``k`` (N, d_k),
    ``v`` (N, d_v), all float64, drawn from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    # rows of norm about 1, so the projected coordinates (std about 1/sqrt(d_k)) sit where the
    # sigmoid squash of stage 2 still separates them
    table = rng.standard_normal((vocab, d_model)) / np.sqrt(d_model)  # (V, d_model)
    tokens = rng.integers(0, vocab, size=n)  # (N,)
    x = table[tokens] + 0.3 / np.sqrt(d_model) * rng.standard_normal((n, d_model))  # (N, d_model)
    w_qk = random_projection(d_model, d_k, rng=rng)  # (d_model, d_k), shared by q and k
    w_v = random_projection(d_model, d_v, rng=rng)  # (d_model, d_v)
    qk = project(x, w_qk)  # (N, d_k)
    q = qk + 0.02 * rng.standard_normal(qk.shape)  # a query is near, not on, its own key
    return {"tokens": tokens, "x": x, "q": q, "k": qk, "v": project(x, w_v)}


def _fmt_row(a):
    return np.array2string(np.asarray(a), precision=4, suppress_small=True)


def _bin(code, nbits):
    return format(int(code), f"0{nbits}b")


def run(args) -> int:
    t0 = time.perf_counter()
    cfg = ZetaConfig(k=args.k, bits=args.bits, chunk_size=args.chunk_size, causal=args.causal,
                     window=args.window, score=args.score, gamma=args.gamma,
                     history_mean=args.history_mean, squash=args.squash,
                     clip_range=tuple(args.clip_range))
    n = args.n
    i = (3 * n) // 4 if args.query is None else args.query
    if not 0 <= i < n:
        raise ValueError(f"--query must be a position in [0, {n - 1}]; got {i}")
    data = make_sequence(n, args.d_model, args.d_k, args.d_v, args.vocab, args.seed)
    q, k, v = data["q"], data["k"], data["v"]
    out, im = zeta_attention(q, k, v, cfg, backend=args.backend, return_intermediates=True)
    d_k, nbits = q.shape[-1], q.shape[-1] * cfg.bits
    M, W = im.chunk_size, cfg.window_width
    say = print

    say(f"zeta-ref demo: ZETA top-k attention on a seeded synthetic sequence (backend {im.backend})")
    say(f"  N={n} d_model={args.d_model} d_k={d_k} d_v={args.d_v} seed={args.seed}")
    say(f"  {cfg}")
    say("")
    say("stage 1  projection (section 3.2): tokens -> q, k in d_k dims, v in d_v dims")
    say(f"  x {data['x'].shape} --JL map--> q {q.shape}, k {k.shape};  v {v.shape}")
    say(f"  query {i} (token {data['tokens'][i]}): q = {_fmt_row(q[i])}")
    say("")
    say(f"stage 2  quantisation (Eq. 4, D1, D2): {cfg.squash} to [0, 1], then {cfg.bits} bits "
        f"per coordinate -> integers in [0, {2 ** cfg.bits - 1}]")
    say(f"  q_coords {im.q_coords.shape} {im.q_coords.dtype}; query {i}: "
        f"{im.q_coords[i].tolist()}")
    say(f"  key coordinates use {len(np.unique(im.k_coords, axis=0))} distinct grid cells "
        f"for {n} keys")
    say("")
    say(f"stage 3  bit interleaving (D3): {d_k} x {cfg.bits} bits -> one {nbits}-bit Z code, "
        "dimension 0 most significant in each group")
    say(f"  query {i}: {im.q_coords[i].tolist()} -> {int(im.q_codes[i])} = "
        f"{_bin(im.q_codes[i], nbits)}b")
    say("")
    say("stage 4  sort (D10): keys in Z order, ties by position")
    say("  rank  position  code")
    for r in range(min(5, n)):
        say(f"  {r:4d}  {int(im.key_perm[r]):8d}  {int(im.sorted_key_codes[r])}")
    if n > 5:
        say("   ...")
    say("")
    L = int(im.pool_len[i])
    say(f"stage 5  causal neighbour window (D4, D5, D6, D11): causal={cfg.causal}, chunk size "
        f"M={M} ({-(-n // M)} chunks), W={W}")
    say(f"  query {i} is in chunk {i // M}; it may see key positions 0..{L - 1} ({L} keys)")
    say(f"  binary search: {int(im.insertion[i])} pool keys have a smaller code; the window "
        f"takes the pool ranks around that insertion point")
    win = im.window_idx[i]
    say(f"  window positions (Z order): {win[win >= 0][:12].tolist()}"
        f"{' ...' if (win >= 0).sum() > 12 else ''}")
    if W > cfg.k:
        say(f"  re-rank: the {cfg.k} nearest of the {W} window keys are kept")
    say("")
    say(f"stage 6  top-k softmax (Eq. 6, D7, D8): score={cfg.score}, gamma={cfg.gamma}, "
        f"mean term {'on' if cfg.history_mean else 'off'}")
    cand, w = im.candidates[i], im.weights[i]
    dist = np.sqrt(((k[np.maximum(cand, 0)] - q[i]) ** 2).sum(-1))
    top = np.argsort(-w)[:5]
    say("  candidate  distance  weight")
    for s in top:
        if cand[s] >= 0:
            say(f"  {int(cand[s]):9d}  {dist[s]:8.4f}  {w[s]:.4f}")
    if cfg.history_mean:
        say(f"  mean term            {im.mean_weight[i]:.4f}")
    say(f"  output {out.shape}: o[{i}] = {_fmt_row(out[i][:4])} ...")
    say("")

    say("checks against the oracles (brute force, O(N^2))")
    exact = oracles.exact_topk(q, k, cfg.k, cfg.score, cfg.causal, chunk_size=M)  # (N, k)
    recall = oracles.recall_at_k(im.candidates, exact)
    n_exact = (exact >= 0).sum(-1)
    has = n_exact > 0
    random_recall = float(np.mean(np.minimum(1.0, cfg.k / np.maximum(im.pool_len[has], 1))))
    say(f"  recall@{cfg.k} of the selection vs the exact top-{cfg.k}: {recall:.3f}  "
        f"(a random choice of {cfg.k} visible keys would expect {random_recall:.3f})")
    dense = oracles.dense_attention(q, k, v, cfg.score, cfg.causal, gamma=cfg.gamma, chunk_size=M)
    # the same stage 6 over the exact top-k: how much error top-k itself costs
    exact_out, _, _ = topk_attention(q, k, v, exact, cfg.score, cfg.gamma, im.mean_k, im.mean_v)
    seen = im.pool_len > 0

    def rel(a):
        return np.linalg.norm(a[seen] - dense[seen]) / np.linalg.norm(dense[seen])

    say(f"  relative error of the output against dense attention (score {cfg.score!r}) over all "
        "visible keys:")
    say(f"    ZETA's selection            {rel(out):.3f}")
    say(f"    the exact top-{cfg.k} instead    {rel(exact_out):.3f}   (the cost of keeping only k keys)")
    say(f"    ZETA vs exact top-{cfg.k}        "
        f"{np.linalg.norm(out[seen] - exact_out[seen]) / np.linalg.norm(exact_out[seen]):.3f}"
        "   (the cost of finding them on the Z-curve)")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "demo.png")
        save_figure(path, q, k, im, i, exact[i])
        say(f"\nfigure saved: {path}")
    say(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def save_figure(path, q, k, im, i, exact_i):
    """The picture of ``--out``: one query's pool on the Z-curve, its window, its true top-k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = int(im.pool_len[i])
    in_pool = im.key_perm < L
    pool = im.key_perm[in_pool]  # (n_pool,) positions in Z order
    coords = im.k_coords[pool].astype(float)  # (n_pool, d_k)
    qc = im.q_coords[i].astype(float)
    cand = im.candidates[i][im.candidates[i] >= 0]
    exact_i = exact_i[exact_i >= 0]
    rank_of = {int(pos): r for r, pos in enumerate(pool)}

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5.5))
    if coords.shape[1] >= 2:
        x, y = coords[:, 0], coords[:, 1]
        qx, qy = qc[0], qc[1]
        xl, yl = "quantised coordinate 0", "quantised coordinate 1"
    else:
        x, y, qx, qy = coords[:, 0], np.zeros(len(pool)), qc[0], 0.0
        xl, yl = "quantised coordinate 0", ""
    ax0.plot(x, y, "-", color="0.8", lw=0.6, label="Z-curve through the keys (sorted order)")
    ax0.scatter(x, y, s=8, color="0.5", label=f"keys the query may see ({len(pool)})")
    ex = np.array([rank_of[int(p)] for p in exact_i], dtype=int)
    ca = np.array([rank_of[int(p)] for p in cand], dtype=int)
    ax0.scatter(x[ex], y[ex], s=70, facecolors="none", edgecolors="tab:green", lw=1.5,
                label=f"exact top-{len(im.candidates[i])}")
    ax0.scatter(x[ca], y[ca], s=18, color="tab:orange", label="ZETA's candidates")
    ax0.scatter([qx], [qy], marker="*", s=250, color="tab:red", edgecolors="k",
                label=f"query {i}", zorder=5)
    ax0.set_xlabel(xl)
    ax0.set_ylabel(yl)
    ax0.set_title(f"Query {i}: its pool on the Z-curve (2-D view of a {coords.shape[1]}-D grid)")
    ax0.legend(loc="upper left", fontsize=8, framealpha=0.9)

    qf = q[i]
    dist = np.sqrt(((k[pool] - qf) ** 2).sum(-1))
    ranks = np.arange(len(pool))
    ax1.scatter(ranks, dist, s=6, color="0.6", label="visible keys")
    ax1.scatter(ex, dist[ex], s=70, facecolors="none", edgecolors="tab:green", lw=1.5,
                label="exact top-k")
    ax1.scatter(ca, dist[ca], s=18, color="tab:orange", label="ZETA's candidates")
    ax1.axvline(int(im.insertion[i]), color="tab:red", ls="--", lw=1, label="query's insertion point")
    ax1.set_xlabel("rank in Z order among the visible keys")
    ax1.set_ylabel("Euclidean distance to the query (d_k dims)")
    ax1.set_title("The window is a run of Z ranks; true neighbours may lie outside it")
    ax1.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
