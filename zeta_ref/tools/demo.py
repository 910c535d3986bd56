"""Walk through the six stages of ZETA on a small seeded sequence and check the result.

The sequence is synthetic and embedded: N tokens drawn from a small vocabulary of random
d_model-wide embeddings plus noise, so that a query's nearest keys are the tokens most like it.
One seeded Johnson-Lindenstrauss map takes queries and keys to d_k dimensions (queries and keys
share it here), another takes values to d_v. The demo prints what every stage produced and
what it means, then checks the selection against brute-force oracles, each check marked PASS
or FAIL:

  1. recall: ZETA's k candidates hold more of the exact top-k (by the same score) than k keys
     drawn at random from the query's visible keys would, on average;
  2. output: ZETA's output is closer to the output of the same stage 6 over the exact top-k
     than the output over k random visible keys is (by the median relative error).

Beside them, for context, the output's distance from dense attention over all visible keys,
for ZETA's selection and for the exact top-k: the cost of keeping only k keys. That is not
a check: how near top-k attention comes to dense attention depends on the score and the data.

Every output is compared by one metric, the one the notebooks use too (docs/glossary.md):
the relative error (per query, L2), ||o_i - r_i||_2 / ||r_i||_2 for each query i that may see
a key, where o is the output under test and r the reference output; it is reported as its
median and its maximum over the queries (:func:`relative_error_per_query`). It exceeds 1 for a
query whose reference row is shorter than the difference, which happens against dense
attention: averaging every visible value cancels most of it (the demo then says so).
The exit status is 1 if a check fails. Every option is checked before any work: values out of
range, an --out folder that cannot be written, and an N whose estimated memory exceeds what
this machine has available are refused in one line.

With --out DIR it also saves DIR/demo.png: the visible keys of one query in a 2-D view of the
quantised grid with the Z-curve through them, the query, its window and its true nearest
neighbours; and the same keys laid out by Z rank against distance to the query.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import oracles
from .._checks import check_bits_for_dim, check_gamma
from ..attention import zeta_attention
from ..backends import backends, get_backend
from ..config import CAUSAL_MODES, SCORES, SQUASHES, ZetaConfig
from ..stages.projection import project, random_projection
from ..stages.topk_softmax import topk_attention
from .common import OptionError, check_fits, check_range, output_folder

FIGURE = "demo.png"


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
    data.add_argument("--seed", type=int, default=0, help="seed of every random draw, >= 0 (0)")
    cfg = p.add_argument_group("ZetaConfig (see docs/decisions.md for D1..D13)")
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
                      help="also save DIR/demo.png, a picture of one query's selection "
                           "(DIR is created if missing)")


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


# ------------------------------------------------------------------ the options, before any work


def memory_estimate(n: int, d_model: int, d_k: int, d_v: int, vocab: int,
                    cfg: ZetaConfig) -> int:
    """Bytes the demo holds at its peak, roughly; everything is float64 or int64.

    The vocabulary's embeddings (vocab, d_model), and per token: the sequence (three (N, d_model) arrays while the embeddings are drawn), q, k,
    v and the outputs, the intermediates ((N, W) window, (N, k) candidates and weights), and
    stage 6's gathered keys and values ((N, k, d_k + d_v), for ZETA's selection and again for
    each comparison). At the defaults that is 12.3 KiB per token; measured: 11.7.
    """
    k, w = cfg.k_for(n), cfg.window_for(n)
    per_token = 3 * d_model + 4 * d_k + 4 * d_v + 2 * w + 4 * k + 2 * k * (d_k + d_v)
    return 8 * (vocab * d_model + n * per_token)


def check_options(args) -> tuple[ZetaConfig, int, str | None]:
    """Check every option before any work; return the config, the query shown in detail and
    the figure's path (None without --out). A refusal is an OptionError naming the option."""
    check_range(args.seed, "--seed", 0)
    try:
        cfg = ZetaConfig(k=args.k, bits=args.bits, chunk_size=args.chunk_size,
                         causal=args.causal, window=args.window, score=args.score,
                         gamma=args.gamma, history_mean=args.history_mean, squash=args.squash,
                         clip_range=tuple(args.clip_range))
    except (ValueError, TypeError) as err:  # ZetaConfig's messages start with the field's name
        raise OptionError(f"--{str(err).split()[0].replace('_', '-')}: {err}") from None
    n = args.n
    i = (3 * n) // 4 if args.query is None else args.query
    check_range(i, "--query", 0, n - 1, what=" (a position)")
    try:
        get_backend(args.backend)
    except ValueError as err:
        raise OptionError(f"--backend: {err}") from None
    try:  # what zeta_attention and the oracles would refuse once the data exist
        check_bits_for_dim(cfg.bits, args.d_k)
    except ValueError as err:
        raise OptionError(f"--bits {cfg.bits} with --d-k {args.d_k}: {err}") from None
    if cfg.score == "cauchy":  # ZETA weighs k keys (+ the mean term), dense attention up to N
        try:
            check_gamma(cfg.gamma, np.float64, max(n, cfg.k_for(n) + cfg.history_mean))
        except ValueError as err:
            raise OptionError(f"--gamma: {err}") from None
    need = memory_estimate(n, args.d_model, args.d_k, args.d_v, args.vocab, cfg)
    if 8 * args.vocab * args.d_model > need / 2:  # the vocabulary's embeddings dominate
        check_fits(need, f"--vocab {args.vocab}",
                   f"a vocabulary of {args.vocab:,} embeddings of width {args.d_model}")
    check_fits(need, f"--n {n}", f"the demo at N={n:,}")
    if args.out is None:
        return cfg, i, None
    return cfg, i, os.path.join(output_folder(args.out, "--out", files=(FIGURE,)), FIGURE)


# ------------------------------------------------------------------ the run


def run(args) -> int:
    t0 = time.perf_counter()
    cfg, i, figure = check_options(args)  # nothing is computed before this
    data = make_sequence(args.n, args.d_model, args.d_k, args.d_v, args.vocab, args.seed)
    q, k, v = data["q"], data["k"], data["v"]
    out, im = zeta_attention(q, k, v, cfg, backend=args.backend, return_intermediates=True)
    print(f"zeta-ref demo: ZETA top-k attention on a seeded synthetic sequence "
          f"(backend {im.backend})")
    print(f"  N={args.n} d_model={args.d_model} d_k={args.d_k} d_v={args.d_v} seed={args.seed}")
    print(f"  {cfg}")
    for line in (stage_lines_1_to_4(data, im, cfg, i) + stage_lines_5(im, cfg, i)
                 + stage_lines_6(q, k, out, im, cfg, i)):
        print(line)
    print("checks against the oracles (brute force, O(N^2))")
    print(f"  {METRIC} = ||o_i - r_i||_2 / ||r_i||_2 for each query i: ZETA's output o "
          "against a reference")
    print("  output r (top-k attention over the exact top-k, or dense attention), reported as "
          "its median and max over the queries")
    report = check_against_oracles(q, k, v, out, im, cfg, args.seed)
    for line in report.lines:
        print(line)
    if figure:
        save_figure(figure, q, k, im, i, report.exact[i])
        print(f"\nfigure saved: {figure}")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0 if all(report.verdicts) else 1


def stage_lines_1_to_4(data, im, cfg, i) -> list[str]:
    """What stages 1 to 4 made of the sequence, and of query ``i``."""
    q, k, v, n = data["q"], data["k"], data["v"], len(data["q"])
    d_k, nbits = q.shape[-1], q.shape[-1] * cfg.bits
    lines = [
        "",
        "stage 1  projection (section 3.2): tokens -> q, k in d_k dims, v in d_v dims",
        f"  x {data['x'].shape} --JL map--> q {q.shape}, k {k.shape};  v {v.shape}",
        f"  query {i} (token {data['tokens'][i]}): q = {_fmt_row(q[i])}",
        "",
        f"stage 2  quantisation (Eq. 4, D1, D2): {cfg.squash} to [0, 1], then {cfg.bits} bits "
        f"per coordinate -> integers in [0, {2 ** cfg.bits - 1}]",
        f"  q_coords {im.q_coords.shape} {im.q_coords.dtype}; query {i}: "
        f"{im.q_coords[i].tolist()}",
        f"  key coordinates use {len(np.unique(im.k_coords, axis=0))} distinct grid cells "
        f"for {n} keys",
        "",
        f"stage 3  bit interleaving (D3): {d_k} x {cfg.bits} bits -> one {nbits}-bit Z code, "
        "dimension 0 most significant in each group",
        f"  query {i}: {im.q_coords[i].tolist()} -> {int(im.q_codes[i])} = "
        f"{_bin(im.q_codes[i], nbits)}b",
        "",
        "stage 4  sort (D10): keys in Z order, ties by position",
        "  rank  position  code",
    ]
    lines += [f"  {r:4d}  {int(im.key_perm[r]):8d}  {int(im.sorted_key_codes[r])}"
              for r in range(min(5, n))]
    return lines + (["   ..."] if n > 5 else [])


def stage_lines_5(im, cfg, i) -> list[str]:
    """Query ``i``'s causal pool and window."""
    n, M, L = len(im.pool_len), im.chunk_size, int(im.pool_len[i])
    lines = ["", f"stage 5  causal neighbour window (D4, D5, D6, D11): causal={cfg.causal}, "
                 f"chunk size M={M} ({-(-n // M)} chunks), W={cfg.window_width}"]
    if L == 0:  # only "strict" in chunk 0
        return lines + [f"  query {i} is in chunk 0 and may see no key: under 'strict' a query "
                        "sees the chunks before its own only", "  its window is empty"]
    win = im.window_idx[i]
    lines += [f"  query {i} is in chunk {i // M}; it may see key positions 0..{L - 1} "
              f"({L} key{'s' if L > 1 else ''})",
              f"  binary search: {int(im.insertion[i])} pool keys have a smaller code; the "
              "window takes the pool ranks around that insertion point",
              f"  window positions (Z order): {win[win >= 0][:12].tolist()}"
              f"{' ...' if (win >= 0).sum() > 12 else ''}"]
    if cfg.window_width > cfg.k:
        lines.append(f"  re-rank: the {cfg.k} nearest of the {cfg.window_width} window keys "
                     "are kept")
    return lines


def stage_lines_6(q, k, out, im, cfg, i) -> list[str]:
    """Query ``i``'s heaviest candidates, the mean term and the output."""
    lines = ["", f"stage 6  top-k softmax (Eq. 6, D7, D8): score={cfg.score}, gamma={cfg.gamma}, "
                 f"mean term {'on' if cfg.history_mean else 'off'}"]
    cand, w = im.candidates[i], im.weights[i]
    if (cand >= 0).any():
        dist = np.sqrt(((k[np.maximum(cand, 0)] - q[i]) ** 2).sum(-1))
        lines.append("  candidate  distance  weight")
        lines += [f"  {int(cand[s]):9d}  {dist[s]:8.4f}  {w[s]:.4f}"
                  for s in np.argsort(-w)[:5] if cand[s] >= 0]
    else:
        lines.append("  no candidates (every slot -1, D9): the output is "
                     + ("the mean term alone" if cfg.history_mean else "zero"))
    if cfg.history_mean:
        lines.append(f"  mean term            {im.mean_weight[i]:.4f}")
    return lines + [f"  output {out.shape}: o[{i}] = {_fmt_row(out[i][:4])} ...", ""]


# ------------------------------------------------------------------ the checks


def random_selection(pool_len, k: int, rng) -> np.ndarray:
    """k distinct key positions drawn uniformly from each query's pool 0 .. L-1 (all of them
    where L <= k), -1 in the slots left over: the chance the checks compare against.

    Floyd's algorithm, one slot per step for all queries at once: at step s a query with L
    keys and t = min(k, L) slots draws r from 0 .. L - t + s and takes r, or L - t + s if it
    holds r already.
    """
    pool_len = np.asarray(pool_len, dtype=np.int64)  # (N,)
    take = np.minimum(pool_len, k)  # (N,)
    out = np.full((len(pool_len), k), -1, dtype=np.int64)  # (N, k)
    for s in range(k):
        rows = np.nonzero(take > s)[0]
        top = pool_len[rows] - take[rows] + s  # (rows,) the largest position step s may draw
        r = np.minimum((rng.random(len(rows)) * (top + 1)).astype(np.int64), top)
        held = (out[rows, :s] == r[:, None]).any(axis=-1)
        out[rows, s] = np.where(held, top, r)
    return out


#: The name of the one error metric of the demo and the notebooks (docs/glossary.md).
METRIC = "relative error (per query, L2)"


def relative_error_per_query(out, ref, rows=None) -> np.ndarray:
    """The relative error (per query, L2) of every query row: ||out_i - ref_i||_2 / ||ref_i||_2.

    Parameters
    ----------
    out, ref : float arrays (..., N, d_v)
        The output under test (ZETA's, say) and the reference output (dense attention, or
        attention over the exact top-k), one row per query.
    rows : bool or int index over N, optional
        The queries to keep (default: all), for example those that may see at least one key.

    Returns
    -------
    float64 array (..., n_rows): one error per query; 0 where both rows are 0, inf where only
    the reference row is 0. It exceeds 1 where the difference is longer than the reference
    row, as against dense attention, whose rows average many values that largely cancel.
    """
    out = np.asarray(out, dtype=np.float64)  # (..., N, d_v)
    ref = np.asarray(ref, dtype=np.float64)  # (..., N, d_v)
    if rows is not None:
        out, ref = out[..., rows, :], ref[..., rows, :]
    diff = np.linalg.norm(out - ref, axis=-1)  # (..., n_rows)
    size = np.linalg.norm(ref, axis=-1)  # (..., n_rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = diff / size
    return np.where(size > 0, err, np.where(diff == 0, 0.0, np.inf))


def error_summary(out, ref, rows=None) -> tuple[float, float]:
    """(median, max) over the queries of :func:`relative_error_per_query`."""
    err = relative_error_per_query(out, ref, rows)
    return float(np.median(err)), float(np.max(err))


def _rms(x, rows) -> float:
    """The root mean square of the rows' Euclidean norms."""
    return float(np.sqrt(np.mean(np.sum(x[rows] ** 2, axis=-1))))


@dataclass
class OracleReport:
    lines: list  # what to print
    verdicts: list  # True (PASS) or False (FAIL), one per check that ran
    exact: np.ndarray  # (N, k) the exact top-k, -1 for empty slots


def _verdict(ok: bool, why: str) -> str:
    return f"     {'PASS' if ok else 'FAIL'}: {why}"


def check_against_oracles(q, k, v, out, im, cfg, seed) -> OracleReport:
    """The checks of the module docstring, and dense attention for context."""
    n, M, k_top = len(q), im.chunk_size, cfg.k_for(len(q))
    exact = oracles.exact_topk(q, k, cfg.k, cfg.score, cfg.causal, chunk_size=M)  # (N, k)
    seen = im.pool_len > 0  # (N,) queries that may see at least one key
    if not seen.any():  # only "strict" with M >= N: every query is in chunk 0
        return OracleReport([
            f"  no query may see a key: under 'strict' a query sees the chunks before its own "
            f"only, and with chunk size M={M} >= N={n} every query is in chunk 0",
            "  nothing to check (a smaller --chunk-size, or --causal inclusive, gives the "
            "queries keys to see)"], [], exact)
    lines, verdicts = [], []

    # 1. recall@k against chance: k random keys of a pool of L hold min(1, k/L) of its top-k
    recall = oracles.recall_at_k(im.candidates, exact)
    chance = float(np.mean(np.minimum(1.0, k_top / im.pool_len[seen])))
    ok = recall > chance or recall == 1.0
    random_keys = f"{k_top} random visible key" + ("s" if k_top > 1 else "")
    lines += [f"  1. recall@{k_top}: ZETA's candidates hold {recall:.3f} of the exact "
              f"top-{k_top} (score {cfg.score!r}); {random_keys} would hold {chance:.3f} "
              "on average",
              _verdict(ok, "more than chance" if recall > chance else
                       "every visible key is selected" if ok else "no more than chance")]
    verdicts.append(ok)

    # 2. the output against the exact top-k's, beside the output over k random visible keys
    def attend(candidates):  # the same stage 6 over other candidates, mean term included
        return topk_attention(q, k, v, candidates, cfg.score, cfg.gamma, im.mean_k,
                              im.mean_v)[0]  # (N, d_v)

    exact_out = attend(exact)
    rand = random_selection(im.pool_len, k_top, np.random.default_rng([seed, 1]))  # (N, k)
    (med, top), (med_rand, top_rand) = (error_summary(x, exact_out, seen)
                                        for x in (out, attend(rand)))
    ok = top <= 1e-12 or med < med_rand
    lines += [f"  2. output: {METRIC} against stage 6 over the exact top-{k_top}, median (max) "
              f"over {int(seen.sum())} queries: ZETA's {med:.3f} ({top:.3f}); over "
              f"{random_keys} {med_rand:.3f} ({top_rand:.3f})",
              _verdict(ok, "the exact top-k's output, to rounding" if top <= 1e-12 else
                       "closer than chance" if ok else "no closer than chance")]
    verdicts.append(ok)

    # for context: dense attention over every visible key
    dense = oracles.dense_attention(q, k, v, cfg.score, cfg.causal, gamma=cfg.gamma,
                                    chunk_size=M)  # (N, d_v)
    (z_med, z_max), (x_med, x_max) = (error_summary(x, dense, seen) for x in (out, exact_out))
    lines += [f"  for context, not a check: {METRIC} against dense attention over all "
              f"visible keys (score {cfg.score!r}):",
              f"     {'':<24} {'median':>8} {'max':>8}",
              f"     {'ZETA selection':<24} {z_med:8.3f} {z_max:8.3f}",
              f"     {f'the exact top-{k_top}':<24} {x_med:8.3f} {x_max:8.3f}   "
              "(the cost of keeping only k keys)"]
    if max(z_max, x_max) > 1:
        above = int((relative_error_per_query(out, dense, seen) > 1).sum())
        lines += [f"     above 1 for {above} of {int(seen.sum())} queries with ZETA's selection"]
        lines += explain_error_above_one(out, dense, v, im.pool_len, seen)
    failed = verdicts.count(False)
    lines += ["", f"all {len(verdicts)} checks passed" if not failed else
              f"{failed} of {len(verdicts)} checks FAILED"]
    return OracleReport(lines, verdicts, exact)


def explain_error_above_one(out, dense, v, pool_len, seen) -> list[str]:
    """Why a query's output can be further from dense attention's than dense attention's is
    from 0: its relative error (per query, L2) then exceeds 1."""
    size, values, ours = _rms(dense, seen), _rms(v, slice(None)), _rms(out, seen)
    if size < 0.5 * values:
        return [f"     why above 1: dense attention's output is small, RMS norm {size:.3g} per row "
                f"against the values' {values:.3g}:",
                f"     it averages all visible keys ({pool_len[seen].mean():.0f} per query on "
                "average), whose values largely cancel out;",
                f"     top-k attention averages k keys and the mean term, which cancel less "
                f"(ZETA's rows: RMS {ours:.3g}),",
                "     so the difference can be larger than dense attention's output itself"]
    return [f"     why above 1: the difference is larger than dense attention's output itself "
            f"(RMS norm {size:.3g} per row, ZETA's {ours:.3g}):",
            "     top-k attention weighs a few keys where dense attention weighs them all"]


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
