"""How one field of a dump is held against zeta_ref's: exactly, within tolerance, or up to ties.

:func:`judge` returns a :class:`Verdict`: "match" (equal; floats within the tolerance of
:mod:`zeta_ref.tolerances`), "equivalent" (different, but equally right, with a note saying
why), or "mismatch" (with how many entries differ, the largest errors and the first
differing position with the values on both sides).

What counts as equally right, field by field:

- cells and codes: a value one cell away where the input lies within a few units in the last
  place of a cell edge, so that the last bit of the squash decides (D13);
- ``key_perm``: another order of keys with equal codes: a sort that is not stable (D10);
- ``window_idx``: the same keys in other slots, or other keys with the same codes (ties in
  Z order, D10);
- ``candidates``: the same keys in other slots, or other keys equally near (ties in the
  re-rank, D6);
- ``weights``: compared slot by slot after putting both sides' slots in the order of their
  candidates, so a permutation of slots is no difference.

The gradients are measured entry by entry against the size of the terms each entry adds up,
not of the result (:func:`~zeta_ref.crosscheck.gradients.gradient_sizes`): where those terms
cancel, two right float32 backward passes differ by a few units of float32 in the terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..stages.morton import morton_decode
from ..stages.quantize import squash
from ..stages.window import gather_rows, nearness
from ..tolerances import tolerance
from .gradients import gradient_sizes

#: The fields compared within a tolerance (the rest exactly, or up to ties).
FLOAT_FIELDS = ("mean_k", "mean_v", "weights", "mean_weight", "output", "dq", "dk", "dv",
                "dgamma")
#: How many units in the last place (of the input's dtype) the squash of another
#: implementation may be off for a cell difference at an edge to count as its rounding (D13).
EDGE_ULPS = 4


@dataclass
class Verdict:
    """One field held against zeta_ref's value of it."""

    status: str  # "match", "equivalent" or "mismatch"
    n_differ: int = 0
    n_total: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    first: tuple | None = None  # index of the first differing entry
    ours: object = None  # the values there, both sides
    theirs: object = None
    tolerance: str = "exact"
    note: str = ""
    tolerance_short: str = "exact"

    @property
    def ok(self) -> bool:
        return self.status in ("match", "equivalent")

    @property
    def short_tolerance(self) -> str:
        """The tolerance in one word: "exact", or "rtol+atol*scale"."""
        return self.tolerance if self.tolerance == "exact" else self.tolerance_short

    def as_dict(self) -> dict:
        return {
            "status": self.status, "differ": self.n_differ, "total": self.n_total,
            "max_abs": self.max_abs, "max_rel": self.max_rel,
            "first": None if self.first is None else list(self.first),
            "ours": _plain(self.ours), "theirs": _plain(self.theirs),
            "tolerance": self.tolerance, "note": self.note,
        }


def _plain(x):
    if x is None:
        return None
    arr = np.asarray(x)
    return arr.tolist() if arr.ndim else arr.item()


def judge(name: str, ours, theirs, chain, their_candidates=None, *,
          edges: bool = True) -> Verdict:
    """Hold the dump's ``theirs`` against ``ours`` for the field ``name``.

    ``chain`` supplies the context of the tie rules (the inputs, the codes, the candidates):
    the chain that computed ``ours``. ``their_candidates`` are the candidates the dump's
    ``weights`` belong to (default: the chain's). ``edges=False`` leaves out the cell-edge
    rule, which holds only for zeta_ref's own quantisation (not for a mistake's).
    """
    ours = np.asarray(ours)
    theirs = np.asarray(theirs)
    if name in FLOAT_FIELDS:
        return _floats(name, ours, theirs, chain, their_candidates)
    verdict = _exact(ours, theirs)
    if verdict.ok:
        return verdict
    relax = _RELAXED.get(name)
    if not edges and name in ("q_coords", "k_coords", "q_codes", "k_codes"):
        relax = None
    note = relax(name, ours, theirs, chain) if relax else ""
    if note:
        verdict.status, verdict.note = "equivalent", note
    elif name == "key_perm" and not is_permutation(theirs):
        verdict.note = _not_a_permutation(theirs)
    return verdict


def _not_a_permutation(perm) -> str:
    rows = perm.reshape(-1, perm.shape[-1])
    for r, row in enumerate(rows):
        counts = np.bincount(row, minlength=row.size)
        if (counts != 1).any():
            twice = int(np.flatnonzero(counts > 1)[0])
            index = np.unravel_index(r, perm.shape[:-1]) if perm.ndim > 1 else ()
            return (f"not a permutation: key {twice} appears {int(counts[twice])} times in row "
                    f"{tuple(int(i) for i in index)}")
    return ""


def _exact(ours, theirs) -> Verdict:
    differ = ours != theirs
    n = int(differ.sum())
    if n == 0:
        return Verdict("match", 0, ours.size)
    first = tuple(int(i) for i in np.argwhere(differ)[0])
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    return Verdict("mismatch", n, ours.size, float(diff.max()), None, first,
                   ours[first], theirs[first])


# ------------------------------------------------------------------ floats


def _floats(name: str, ours, theirs, chain, their_candidates) -> Verdict:
    dtype = chain.q.dtype
    tol = tolerance(dtype)
    if name == "weights":  # slots in the order of their candidates, on both sides
        ours = _by_candidate(ours, chain["candidates"])
        theirs = _by_candidate(theirs, chain["candidates"] if their_candidates is None
                               else their_candidates)
    scale = _scale(name, chain)  # a number, or for a gradient one per entry
    largest = float(np.max(scale)) if np.size(scale) else 0.0
    a = theirs.astype(np.float64)
    b = ours.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - b)
        bad = ~(err <= tol["rtol"] * np.abs(b) + tol["atol"] * scale)  # NaN counts as bad
        rel = err / np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    each = "each entry's terms, at most " if np.ndim(scale) else ""
    text = (f"rtol {tol['rtol']:g} + atol {tol['atol']:g} x {each}{largest:.3g} "
            f"({np.dtype(dtype)})")
    n = int(bad.sum())
    max_abs = float(np.nanmax(err)) if err.size and not np.isnan(err).all() else 0.0
    max_rel = float(np.nanmax(np.where(np.abs(b) > 0, rel, 0))) if err.size else 0.0
    short = f"{tol['rtol']:g}+{tol['atol']:g}x{'<=' if each else ''}{largest:.3g}"
    if n == 0:
        return Verdict("match", 0, a.size, max_abs, max_rel, tolerance=text,
                       tolerance_short=short)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return Verdict("mismatch", n, a.size, max_abs, max_rel, first, ours[first], theirs[first],
                   tolerance=text, tolerance_short=short)


def _scale(name: str, chain) -> float:
    """The size of the data a float field is measured against (see zeta_ref.tolerances)."""
    if name in ("weights", "mean_weight"):
        return 1.0  # weights are fractions of 1
    if name in ("dq", "dk", "dv"):  # each entry against the terms it adds up
        return _gradient_sizes(chain)[("dq", "dk", "dv").index(name)]
    if name == "dgamma":
        return float(_gradient_sizes(chain)[3])
    source = chain.k if name == "mean_k" else chain.v
    return float(np.max(np.abs(source))) if source.size else 0.0


def _gradient_sizes(chain):
    """(dq, dk, dv, dgamma) sizes of the chain's gradients, computed once a chain."""
    if "_gradient_sizes" not in chain._memo:
        c = chain.cfg
        means = ((chain["mean_k"], chain["mean_v"]) if c.history_mean else (None, None))
        chain._memo["_gradient_sizes"] = gradient_sizes(
            chain.q, chain.k, chain.v, np.asarray(chain["candidates"]), c.score, c.gamma,
            *means, chain.dump.grad_output, c.causal)
    return chain._memo["_gradient_sizes"]


def _by_candidate(weights, candidates):
    """Each query's slot weights in the order of its candidate positions."""
    order = np.argsort(candidates, axis=-1, kind="stable")
    return np.take_along_axis(weights, order, axis=-1)


# ------------------------------------------------------------------ equally right


def _edge_cells(x, cfg):
    """The cells of ``x`` when its squash is off by up to EDGE_ULPS units in the last place
    of ``x``'s dtype, either way: (2, ...) uint64, the lowest and the highest such cell. A
    squash computed in the input's precision, or with another exp, lands anywhere between."""
    s = squash(x, cfg.squash, cfg.clip_range)  # float64 in [0, 1]
    slack = EDGE_ULPS * np.spacing(s.astype(x.dtype)).astype(np.float64)
    scale = math.ldexp(1.0, cfg.bits)
    top = float((1 << cfg.bits) - 1)
    return np.stack([np.clip(np.floor(np.clip(s + e, 0.0, 1.0) * scale), 0, top)
                     for e in (-slack, slack)]).astype(np.uint64)


def _cells_equivalent(theirs_cells, x, cfg, differ) -> bool:
    """Every differing cell lies between the cells of the squash pushed EDGE_ULPS units in the
    last place down and up: the input sits at a cell edge, where the rounding decides."""
    if not differ.any():
        return True
    low, high = _edge_cells(x[differ], cfg)  # (n_differ,) each
    theirs = theirs_cells[differ]
    return bool(((theirs >= low) & (theirs <= high)).all())


def _coords_relaxed(name, ours, theirs, chain) -> str:
    x = chain.q if name == "q_coords" else chain.k
    differ = ours != theirs
    if _cells_equivalent(theirs, x, chain.cfg, differ):
        return (f"{int(differ.sum())} cell(s) differ by one, each where the squash lies within "
                f"{EDGE_ULPS} ulp of a cell edge, so that its last bits decide (D13)")
    return ""


def _codes_relaxed(name, ours, theirs, chain) -> str:
    x = chain.q if name == "q_codes" else chain.k
    d_k, bits = x.shape[-1], chain.cfg.bits
    their_cells = morton_decode(theirs, d_k, bits)  # (..., N, d_k)
    our_cells = morton_decode(ours, d_k, bits)
    differ = their_cells != our_cells
    if _cells_equivalent(their_cells, x, chain.cfg, differ):
        return (f"{int((ours != theirs).sum())} code(s) differ by one cell in a coordinate "
                f"whose squash lies within {EDGE_ULPS} ulp of a cell edge (D13)")
    return ""


def _perm_relaxed(name, ours, theirs, chain) -> str:
    codes = chain["k_codes"]
    if not is_permutation(theirs):
        return ""
    same = np.take_along_axis(codes, theirs, -1) == np.take_along_axis(codes, ours, -1)
    if same.all():
        return "keys with equal codes come in another order: your sort is not stable (D10)"
    return ""


def _slots_relaxed(name, ours, theirs, chain) -> str:
    if (np.sort(ours, axis=-1) == np.sort(theirs, axis=-1)).all():
        return "the same keys, in other slots"
    if name == "window_idx":
        codes = np.asarray(chain["k_codes"])
        if (_sorted_by(codes, ours) == _sorted_by(codes, theirs)).all():
            return "other keys with the same codes: ties in Z order broken another way (D10)"
        return ""
    near_ours = _sorted_nearness(ours, chain)
    near_theirs = _sorted_nearness(theirs, chain)
    if np.array_equal(near_ours, near_theirs):
        return "other keys exactly as near: ties in the re-rank broken another way (D6)"
    return ""


def _sorted_by(codes, idx):
    """Each query's slot codes, sorted, with empty slots (-1) as the largest value."""
    vals = gather_rows(codes[..., None], idx)[..., 0]  # (..., N, W) uint64
    vals = np.where(idx >= 0, vals, np.iinfo(np.uint64).max)
    return np.sort(vals, axis=-1)


def _sorted_nearness(idx, chain):
    keys = gather_rows(chain.k, idx)  # (..., N, k, d_k)
    near = nearness(chain.q, keys, chain.cfg.score)  # (..., N, k)
    return np.sort(np.where(idx >= 0, near, np.inf), axis=-1)


def is_permutation(perm) -> bool:
    """Every row of ``perm`` holds 0 .. N-1 once."""
    n = perm.shape[-1]
    if perm.size == 0:
        return True
    if perm.min() < 0 or perm.max() >= n:
        return False
    return bool((np.sort(perm, axis=-1) == np.arange(n)).all())


_RELAXED = {
    "q_coords": _coords_relaxed, "k_coords": _coords_relaxed,
    "q_codes": _codes_relaxed, "k_codes": _codes_relaxed,
    "key_perm": _perm_relaxed,
    "window_idx": _slots_relaxed, "candidates": _slots_relaxed,
}
