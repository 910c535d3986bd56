"""Common mistakes, each a way of computing a field that zeta_ref does not take.

When a field of a dump disagrees with zeta_ref's, :func:`explain` recomputes it under each
mistake of :data:`CATALOGUE` (and under a gamma fitted to the dump) from the dump's own inputs
to that stage, and names the first mistake that reproduces the dump: "codes match zeta_ref
with the dimension order reversed (D3)". A mistake is a :class:`Variant`: another config, or
other rules for some fields (:class:`~zeta_ref.crosscheck.chain.Chain` computes the rest), so
a mistake at an early stage also explains a later field when the dump skips the stages
between (an ``output`` alone can still be traced to reversed dimensions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..stages.morton import morton_encode
from ..stages.quantize import squash
from ..stages.topk_softmax import history_means
from ..stages.window import gather_rows, nearness
from .chain import Chain, weighted_sum
from .gradients import shares_and_sums
from .schema import FIELDS, STAGE_OF, STAGES
from .verdicts import judge

STAGE_INDEX = {s.name: i for i, s in enumerate(STAGES)}
#: The exact top-k is tried as a mistake up to this N (it is a brute-force search).
EXACT_TOPK_MAX_N = 8192
FIELD_INDEX = {f.name: i for i, f in enumerate(FIELDS)}


@dataclass(frozen=True)
class Variant:
    """One mistake: a sentence saying what it is, the decision it departs from, and how."""

    text: str  # completes "<field> matches zeta_ref with ..."
    decision: str
    stage: str  # the earliest stage it changes
    rules: dict = field(default_factory=dict)  # field -> function(chain) -> array
    config: dict = field(default_factory=dict)  # ZetaConfig fields to change

    def chain(self, dump, given, stages=None) -> Chain:
        cfg = replace(dump.config, **self.config) if self.config else None
        return Chain(dump, given=given, rules=self.rules, cfg=cfg, stages=stages)


# ------------------------------------------------------------------ stage 2: quantise


def _cells(x_name: str, how: str):
    def rule(ch: Chain):
        c, x = ch.cfg, getattr(ch, x_name)
        top = float((1 << c.bits) - 1)
        if how == "minmax":  # scaled from the sequence's own range: sees the future (D1)
            lo = x.min(axis=-2, keepdims=True).astype(np.float64)
            hi = x.max(axis=-2, keepdims=True).astype(np.float64)
            s = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
        else:
            s = squash(x, c.squash, c.clip_range)  # (..., N, d_k) in [0, 1]
        scaled = {"round": np.round(s * math.ldexp(1.0, c.bits)),
                  "floor_top": np.floor(s * top), "round_top": np.round(s * top),
                  "minmax": np.floor(s * math.ldexp(1.0, c.bits))}[how]
        return np.minimum(scaled, top).astype(np.uint64)
    return rule


def _both_cells(how: str) -> dict:
    return {"q_coords": _cells("q", how), "k_coords": _cells("k", how)}


# ------------------------------------------------------------------ stage 3: interleave


def _bit_reversed(u, bits: int):
    out = np.zeros_like(u)
    for t in range(bits):
        out |= ((u >> np.uint64(t)) & np.uint64(1)) << np.uint64(bits - 1 - t)
    return out


def _codes(coords_name: str, how: str):
    def rule(ch: Chain):
        u, b = np.asarray(ch[coords_name], dtype=np.uint64), ch.cfg.bits
        if how == "concatenated":  # all bits of dimension 0, then dimension 1, ...
            d = u.shape[-1]
            z = np.zeros(u.shape[:-1], np.uint64)
            for j in range(d):
                z |= u[..., j] << np.uint64(b * (d - 1 - j))
            return z
        if "reversed" in how:
            u = u[..., ::-1]
        if "lsb" in how:
            u = _bit_reversed(u, b)
        return morton_encode(np.ascontiguousarray(u), b, check=False)
    return rule


def _both_codes(how: str) -> dict:
    return {"q_codes": _codes("q_coords", how), "k_codes": _codes("k_coords", how)}


# ------------------------------------------------------------------ stage 4: sort


def _perm_descending(ch: Chain):
    return np.argsort(~np.asarray(ch["k_codes"], np.uint64), axis=-1, kind="stable")


def _perm_inverse(ch: Chain):
    perm = np.argsort(ch["k_codes"], axis=-1, kind="stable")
    return np.argsort(perm, axis=-1, kind="stable")  # the rank of each key


# ------------------------------------------------------------------ stage 5: pools, search


def _pools_shifted(shift: int):
    def rule(ch: Chain):
        return np.clip(np.arange(ch.n) + 1 + shift, 0, ch.n)
    return rule


def _own_chunk(ch: Chain):
    m = ch.chunk()
    return np.minimum((np.arange(ch.n) // m + 1) * m, ch.n)


def _search_args(ch: Chain, side: str = "left", pool=None):
    """The stage functions' arguments for a search with ``side`` ("right": the codes + 1,
    searched with side "left", count the equal codes as smaller) over ``pool``."""
    qz = np.asarray(ch["q_codes"], np.uint64)
    if side == "right":
        qz = qz + np.uint64(1)  # codes are below 2^63: no overflow
    return (np.ascontiguousarray(qz), np.ascontiguousarray(ch["key_perm"], dtype=np.int64),
            np.ascontiguousarray(ch["sorted_key_codes"], dtype=np.uint64),
            np.asarray(ch["pool_len"]) if pool is None else pool)


def _search(side: str, whole: bool = False):
    def rule(ch: Chain):
        pool = np.full(ch.n, ch.n, dtype=np.int64) if whole else None
        return ch.s.insertion_points(*_search_args(ch, side, pool))
    return rule


def _window(offset=None, slide=True, side="left", chunk_masked=False):
    """A window rule: ``offset(W)`` keys below the insertion point (zeta_ref: W // 2),
    slid inside the pool or not, the search's side, or cut from the query's whole chunk
    with the keys after the query masked afterwards.

    Computed from the backend's own window of 3W ranks around the insertion point (which
    holds every rank such a window can take), so it costs what the stage costs.
    """
    def rule(ch: Chain):
        w, n = ch.width(), ch.n
        pool = _own_chunk(ch) if chunk_masked else np.asarray(ch["pool_len"])
        args = _search_args(ch, side, pool)
        ins = ch.s.insertion_points(*args)  # (..., N)
        wide = min(3 * w, n)
        around = ch.s.neighbour_window(*args, wide)  # (..., N, 3W): ranks start3 ...
        start3 = np.clip(ins - wide // 2, 0, np.maximum(pool - wide, 0))  # (..., N)
        below = w // 2 if offset is None else offset(w)
        start = ins - below
        if slide:
            start = np.clip(start, 0, np.maximum(pool - w, 0))
        rank = start[..., None] + np.arange(w)  # (..., N, W) pool ranks
        inside = (rank >= 0) & (rank < pool[:, None])
        at = rank - start3[..., None]  # where each rank sits in the wide window
        if (inside & ((at < 0) | (at >= wide))).any():
            raise ValueError("a rank outside the wide window")  # cannot happen; be safe
        out = np.where(inside, np.take_along_axis(around, np.clip(at, 0, wide - 1), -1), -1)
        if chunk_masked:  # the keys after the query, visible in its chunk, masked afterwards
            out = np.where(out <= np.arange(n)[:, None], out, -1)
        return out.astype(np.int64)
    return rule


# ------------------------------------------------------------------ stage 5d: re-rank


def _rerank_by(score=None, codes=False, first=False):
    def rule(ch: Chain):
        window = np.asarray(ch["window_idx"])
        k_top = ch.k_top()
        if first:
            return window[..., :k_top]
        if codes:  # nearness along the curve: |z_q - z_k|
            kz = gather_rows(np.asarray(ch["k_codes"], np.float64)[..., None], window)[..., 0]
            near = np.abs(kz - np.asarray(ch["q_codes"], np.float64)[..., None])
        else:
            near = nearness(ch.q, gather_rows(ch.k, window), score)
        near = np.where(window >= 0, near, np.inf)
        pos = np.where(window >= 0, window, np.iinfo(np.int64).max)
        order = np.lexsort((pos, near), axis=-1)[..., :k_top]
        return np.take_along_axis(window, np.sort(order, axis=-1), axis=-1)
    return rule


def _exact_topk(ch: Chain):
    from ..oracles import exact_topk

    c = ch.cfg
    return exact_topk(ch.q, ch.k, ch.k_top(), c.score, c.causal, chunk_size=ch.chunk())


# ------------------------------------------------------------------ stage 6: means, weights


def _means(how: str, index: int):
    def rule(ch: Chain):
        x = (ch.k, ch.v)[index]
        n = ch.n
        total = np.cumsum(x, axis=-2, dtype=np.float64)  # (..., N, d)
        count = np.arange(1, n + 1, dtype=np.float64)[:, None]
        if how == "exclusive":  # j < i; the first query's mean is 0
            prev = np.concatenate([np.zeros_like(total[..., :1, :]), total[..., :-1, :]], -2)
            out = prev / np.maximum(count - 1, 1)
        elif how == "sum":
            out = total if ch.cfg.causal != "none" else np.broadcast_to(
                total[..., -1:, :], total.shape)
        elif how == "pool":  # over the keys the query's pool holds
            pool = np.asarray(ch["pool_len"])
            padded = np.concatenate([np.zeros_like(total[..., :1, :]), total], -2)
            out = padded[..., pool, :] / np.maximum(pool, 1)[:, None]
        else:  # how is the other causal reading: cumulative vs all N
            other = "none" if ch.cfg.causal != "none" else "inclusive"
            return history_means(ch.k, ch.v, other)[index]
        return np.ascontiguousarray(out, dtype=x.dtype)
    return rule


def _both_means(how: str) -> dict:
    return {"mean_k": _means(how, 0), "mean_v": _means(how, 1)}


def _unscaled_softmax(which: int):
    def rule(ch: Chain):
        c = ch.cfg
        root = np.sqrt(ch.q.shape[-1]).astype(ch.q.dtype)
        mean_k = ch["mean_k"] if c.history_mean else None
        mean_v = ch["mean_v"] if c.history_mean else None
        return ch.s.topk_attention(ch.q * root, ch.k, ch.v, np.asarray(ch["candidates"]),
                                   "softmax", c.gamma, mean_k, mean_v)[which]
    return rule


def _output_without_mean(ch: Chain):
    return weighted_sum(ch, with_mean=False)


# ------------------------------------------------------------------ the catalogue


def catalogue(cfg, n: int) -> list[Variant]:
    """The mistakes worth trying for a dump of this config and length, earliest stage first."""
    out = [
        Variant("cells rounded to the nearest instead of floored", "D2, D13", "quantize",
                _both_cells("round")),
        Variant("the squash scaled by 2^B - 1 and floored", "D2", "quantize",
                _both_cells("floor_top")),
        Variant("the squash scaled by 2^B - 1 and rounded", "D2", "quantize",
                _both_cells("round_top")),
        Variant("coordinates scaled by the sequence's own min and max (which leaks the future)",
                "D1", "quantize", _both_cells("minmax")),
    ]
    out += [Variant(f"squash={s!r} (the config says {cfg.squash!r})", "D1", "quantize",
                    config={"squash": s}) for s in ("sigmoid", "tanh", "clip") if s != cfg.squash]
    if cfg.bits > 1:
        out.append(Variant(f"bits={cfg.bits - 1} (the config says {cfg.bits})", "D2",
                           "quantize", config={"bits": cfg.bits - 1}))
    out += [
        Variant("the dimension order reversed (the last dimension most significant)", "D3",
                "morton", _both_codes("reversed")),
        Variant("the least significant bit group first", "D3", "morton", _both_codes("lsb")),
        Variant("the dimension order reversed and the least significant bit group first", "D3",
                "morton", _both_codes("reversed lsb")),
        Variant("the dimensions' bits concatenated instead of interleaved", "D3", "morton",
                _both_codes("concatenated")),
        Variant("the keys sorted in descending order", "D10", "sort",
                {"key_perm": _perm_descending,
                 "sorted_key_codes": lambda ch: np.sort(ch["k_codes"], -1)[..., ::-1]}),
        Variant("the inverse permutation (each key's rank, not the key at each rank)", "D10",
                "sort", {"key_perm": _perm_inverse}),
    ]
    out += [Variant(f"causal={mode!r} (the config says {cfg.causal!r})", "D4", "pools",
                    config={"causal": mode})
            for mode in ("inclusive", "strict", "none") if mode != cfg.causal]
    if cfg.causal != "none":
        out += [
            Variant("each query's own chunk visible, later keys of the chunk included "
                    "(which leaks the future)", "D4, D5", "pools", {"pool_len": _own_chunk}),
            Variant("pools one key short: query i sees the keys j < i", "D4", "pools",
                    {"pool_len": _pools_shifted(-1)}),
            Variant("pools one key long: query i sees the keys j <= i + 1", "D4", "pools",
                    {"pool_len": _pools_shifted(+1)}),
        ]
    chunks = sorted({cfg.k, -(-n // 4), -(-n // 16), 64, 128, 256} - {cfg.chunk_size_for(n)})
    out += [Variant(f"causal='strict' with chunk_size={m}", "D4, D5", "pools",
                    config={"causal": "strict", "chunk_size": m}) for m in chunks if m <= n]
    out += [
        Variant("the binary search's side 'right' (equal codes counted as smaller)", "D4",
                "search", {"insertion": _search("right")}),
        Variant("the binary search over all N keys instead of the query's pool", "D4",
                "search", {"insertion": _search("left", whole=True)}),
        Variant("a window starting at the insertion point instead of centred on it", "D11",
                "window", {"window_idx": _window(offset=lambda w: 0)}),
        Variant("a window ending at the insertion point instead of centred on it", "D11",
                "window", {"window_idx": _window(offset=lambda w: w)}),
        Variant("(W - 1) // 2 keys below the insertion point instead of W // 2", "D11",
                "window", {"window_idx": _window(offset=lambda w: (w - 1) // 2)}),
        Variant("a window not slid inside the pool at its ends (empty slots instead)", "D11",
                "window", {"window_idx": _window(slide=False)}),
        Variant("the window's binary search with side 'right'", "D11", "window",
                {"window_idx": _window(side="right")}),
        Variant("the window cut from the query's whole chunk, later keys masked afterwards "
                "(the future then pushes keys out of the window)", "D4", "window",
                {"window_idx": _window(chunk_masked=True)}),
    ]
    if cfg.window_for(n) > cfg.k_for(n):
        out += [Variant(f"the re-rank by {s!r}'s nearness (the config's score is "
                        f"{cfg.score!r})", "D6", "rerank", {"candidates": _rerank_by(s)})
                for s in ("cauchy", "softmax") if (s == "softmax") != (cfg.score == "softmax")]
        out += [
            Variant("the re-rank by distance along the curve |z_q - z_k|", "D6", "rerank",
                    {"candidates": _rerank_by(codes=True)}),
            Variant("the first k keys of the window (no re-rank)", "D6", "rerank",
                    {"candidates": _rerank_by(first=True)}),
        ]
    if n <= EXACT_TOPK_MAX_N:  # a brute-force search: O(N^2)
        out.append(Variant("the exact top-k of each pool instead of a Z-order window", "D6",
                           "rerank", {"candidates": _exact_topk}))
    if cfg.history_mean:
        out += [
            Variant("the mean over the positions j < i (the query's own left out)", "D8",
                    "means", _both_means("exclusive")),
            Variant("the mean over " + ("all N positions" if cfg.causal != "none" else
                                        "the positions j <= i"), "D4, D8", "means",
                    _both_means("other")),
            Variant("a sum instead of a mean", "D8", "means", _both_means("sum")),
            Variant("the mean over the query's pool", "D4, D8", "means", _both_means("pool")),
            Variant("no mean term", "D8", "weights", config={"history_mean": False}),
        ]
    else:
        out.append(Variant("the mean term on", "D8", "weights", config={"history_mean": True}))
    out += [Variant(f"score={s!r} (the config says {cfg.score!r})", "Eq. 6", "weights",
                    config={"score": s}) for s in ("cauchy", "softmax", "neg_euclidean",
                                                   "inv_euclidean") if s != cfg.score]
    if cfg.score == "cauchy":
        root = math.sqrt(cfg.gamma)
        out.append(Variant(f"gamma where gamma^2 belongs (gamma = {root:.6g} would square to "
                           f"the config's {cfg.gamma:g})", "D7, Eq. 6", "weights",
                           config={"gamma": root}))
    if cfg.score == "softmax":
        out.append(Variant("softmax without the 1 / sqrt(d_k) scale", "Eq. 6", "weights",
                           {"weights": _unscaled_softmax(1), "mean_weight": _unscaled_softmax(2),
                            "output": _unscaled_softmax(0)}))
    if cfg.history_mean:
        out.append(Variant("the mean term counted in the weights but its value left out of "
                           "the sum", "D8", "output", {"output": _output_without_mean}))
    out += [
        Variant("the shares of a key chosen by several queries overwritten instead of added "
                "(a scatter by assignment: the last query's share stays)", "b5",
                "backward", _gradient_rules(overwrite=True)),
        Variant("no gradient through the normalisation (dt = w <g, v> without "
                "- w sum_l w_l <g, v_l>)", "b3", "backward",
                _gradient_rules(normalisation=False)),
    ]
    if cfg.history_mean:
        out.append(Variant("the mean term's share left out of dk and dv", "D8", "backward",
                           _gradient_rules(mean_share=False)))
    if cfg.score == "cauchy":
        out.append(Variant("dL/d(gamma^2) for dL/dgamma (the factor 2 gamma left out)",
                           "b4, D7", "backward", {"dgamma": _dgamma_of_c}))
    return out


# ------------------------------------------------------------------ stage 7: gradients


def _gradient_rules(**mistake) -> dict:
    """dq, dk, dv, dgamma computed with one of the mistakes
    :func:`~zeta_ref.crosscheck.gradients.shares_and_sums` can make."""
    def computed(ch: Chain):
        if "_mistaken_backward" not in ch._memo:
            c = ch.cfg
            means = (ch["mean_k"], ch["mean_v"]) if c.history_mean else (None, None)
            ch._memo["_mistaken_backward"] = shares_and_sums(
                ch.q, ch.k, ch.v, np.asarray(ch["candidates"]), c.score, c.gamma, *means,
                ch.dump.grad_output, c.causal, **mistake)
        return ch._memo["_mistaken_backward"]

    def rule(index: int):
        return lambda ch: computed(ch)[index]
    return {name: rule(i) for i, name in enumerate(("dq", "dk", "dv", "dgamma"))}


def _dgamma_of_c(ch: Chain):
    """dL/dc for c = gamma^2: zeta_ref's dL/dgamma divided by 2 gamma."""
    return np.float64(ch.backward()[3] / (2.0 * ch.cfg.gamma))


# ------------------------------------------------------------------ gamma


def fitted_gamma(local: Chain, name: str, theirs) -> float | None:
    """The gamma that best explains the dump's ``weights`` (solved per query from two slots,
    median over queries) or ``output`` (a one-dimensional search on log gamma)."""
    cfg = local.cfg
    if cfg.score != "cauchy":
        return None
    if name == "weights":
        cand = np.asarray(local["candidates"])
        near = nearness(local.q, gather_rows(local.k, cand), "cauchy").astype(np.float64)
        w = np.where(cand >= 0, np.asarray(theirs, np.float64), np.nan)
        hi, lo = np.nanargmax(np.nan_to_num(w, nan=-1), -1), np.nanargmin(
            np.nan_to_num(w, nan=np.inf), -1)
        take = lambda a, i: np.take_along_axis(a, i[..., None], -1)[..., 0]  # noqa: E731
        wa, wb = take(w, hi), take(w, lo)
        da, db = take(near, hi), take(near, lo)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = (wb * db - wa * da) / (wa - wb)  # w (d + c) is the same for every slot
        c = c[np.isfinite(c) & (np.abs(wa - wb) > 1e-6 * np.abs(wa))]
        c = c[c > 0]
        return float(np.sqrt(np.median(c))) if c.size else None
    if name != "output":
        return None
    theirs = np.asarray(theirs, np.float64)

    def error(log_g):
        ch = Chain(local.dump, given=local.given, cfg=replace(cfg, gamma=float(np.exp(log_g))),
                   stages=local.s)
        return float(np.abs(np.asarray(ch.fresh("output"), np.float64) - theirs).max())

    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(60):  # golden-section search
        a, b = hi - (hi - lo) * 0.618, lo + (hi - lo) * 0.618
        if error(a) < error(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


# ------------------------------------------------------------------ naming the mistake


@dataclass
class Explanation:
    variant: Variant
    explained: int  # of the differing entries, how many the variant reproduces
    differing: int

    @property
    def complete(self) -> bool:
        return self.explained == self.differing

    def sentence(self, name: str) -> str:
        head = f"{name} matches zeta_ref with {self.variant.text} ({self.variant.decision})"
        if self.complete:
            return head
        return (f"closest: {self.variant.text} ({self.variant.decision}), which reproduces "
                f"{self.explained} of the {self.differing} differing entries of {name}")


def explain(dump, name: str, theirs, differing: int, given: dict,
            stages=None) -> Explanation | None:
    """The mistake that reproduces the dump's ``name`` from its own inputs, if one does.

    ``given`` are the dump's fields that ``name`` is computed from (the local inputs);
    ``differing`` how many entries differ from zeta_ref's local answer; ``stages`` the
    backend that computes (default the specification). A mistake that
    reproduces every entry wins at once; else the one that leaves fewest differences, when it
    reproduces at least 90% of them.
    """
    stage_at = STAGE_INDEX[STAGE_OF[name]]
    variants = [v for v in catalogue(dump.config, dump.n)
                if STAGE_INDEX[v.stage] <= stage_at
                and not (v.rules and all(f in given for f in v.rules))]
    local = Chain(dump, given=given, stages=stages)
    gamma = fitted_gamma(local, name, theirs) if name in ("weights", "output") else None
    if gamma and not math.isclose(gamma, dump.config.gamma, rel_tol=1e-3):
        variants.append(Variant(f"gamma = {gamma:.6g} (the config says {dump.config.gamma:g})",
                                "D7", "weights", config={"gamma": gamma}))
    best = None
    their_cand = local["candidates"] if name == "weights" else None
    for v in variants:
        try:
            ch = v.chain(dump, given, stages)
            verdict = judge(name, ch.fresh(name), theirs, ch, their_cand, edges=False)
        except (ValueError, TypeError, IndexError, OverflowError, FloatingPointError):
            continue  # a mistake that cannot even run on these inputs explains nothing
        explained = differing - min(verdict.n_differ, differing)
        if verdict.ok:
            return Explanation(v, differing, differing)
        if best is None or explained > best.explained:
            best = Explanation(v, explained, differing)
    if best is not None and best.explained >= 0.9 * differing and best.explained > 0:
        return best
    return None
