"""``compare``: hold a dump from another implementation against zeta_ref, stage by stage.

For every field the dump provides, two checks:

1. end to end: zeta_ref's value computed from the dump's q, k, v and config;
2. locally: zeta_ref's stage applied to the dump's *own* values of that stage's inputs
   (where the dump has them), so that one early disagreement does not hide the later
   stages: wrong codes but a right sort of those codes reads "matches given your k_codes".

A field's status, in the report:

=============  ===============================================================================
match          equal (integers) or within tolerance (floats), end to end
equivalent     different but equally right (ties, cell edges, slot order), with a note
follows        wrong end to end, right given the dump's own inputs: the fault is upstream
mismatch       wrong given its own inputs: this stage is at fault (with a diagnosis if one of
               the common mistakes of :mod:`~zeta_ref.crosscheck.variants` reproduces it)
=============  ===============================================================================

The report's first mismatch is the first wrong stage; ``zeta-ref compare`` exits 0 when every
provided field matches or is equivalent, 1 otherwise, 2 for a dump it cannot read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from .._checks import as_host_array
from ..backends import get_backend
from .chain import Chain
from .dump import Dump, DumpError, dump_from_arrays, load_dump
from .schema import FIELDS, STAGE_BY_NAME, STAGE_OF, nearest_given
from .variants import explain
from .verdicts import Verdict, judge

#: Backends compare may recompute with: the CPU ones (the specification, or its Numba twin
#: for long dumps).
COMPARE_BACKENDS = ("numpy", "numba")


@dataclass
class FieldReport:
    """One provided field: its two checks, its status, and what explains a mismatch."""

    name: str
    stage: str
    end_to_end: Verdict
    local: Verdict | None  # None: no input of this stage came from the dump
    local_inputs: tuple  # the dump's fields the local check used
    status: str = ""
    notes: list = field(default_factory=list)
    diagnosis: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("match", "equivalent")

    @property
    def shown(self) -> Verdict:
        """The check whose numbers the table shows: the local one where it decided."""
        if self.status == "mismatch" and self.local:
            return self.local
        return self.end_to_end

    def as_dict(self) -> dict:
        return {"field": self.name, "stage": self.stage, "status": self.status,
                "end_to_end": self.end_to_end.as_dict(),
                "local": None if self.local is None else self.local.as_dict(),
                "local_inputs": list(self.local_inputs), "notes": list(self.notes),
                "diagnosis": self.diagnosis}


@dataclass
class Report:
    """What :func:`compare` found; ``str(report)`` is the table ``zeta-ref compare`` prints."""

    source: str
    config: object
    shape: dict
    backend: str
    fields: list

    @property
    def ok(self) -> bool:
        """True when every provided field matches or is equally right."""
        return all(f.ok for f in self.fields)

    @property
    def first_wrong(self) -> FieldReport | None:
        """The earliest field that is wrong given its own inputs."""
        return next((f for f in self.fields if f.status == "mismatch"), None)

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        if not self.fields:
            return "nothing to compare: the dump holds no stage results (only its inputs)"
        wrong = self.first_wrong
        if wrong is None:
            eq = [f.name for f in self.fields if f.status == "equivalent"]
            return (f"all {len(self.fields)} provided fields match zeta_ref"
                    + (f" ({', '.join(eq)} equally right: see the notes)" if eq else ""))
        stage = STAGE_BY_NAME[wrong.stage]
        because = f": {wrong.diagnosis}" if wrong.diagnosis else \
            ": no common mistake reproduces it (see the first difference)"
        return f"first wrong stage: {stage.title} ({wrong.name}){because}"

    def as_dict(self) -> dict:
        return {"source": self.source, "zeta_ref_version": __version__,
                "backend": self.backend, "config": _config_dict(self.config),
                "shape": self.shape, "ok": self.ok, "exit_status": self.exit_status,
                "summary": self.summary(),
                "first_wrong": None if self.first_wrong is None else self.first_wrong.name,
                "fields": [f.as_dict() for f in self.fields]}

    def to_json(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=2)
            f.write("\n")

    def __str__(self) -> str:
        return format_report(self)


def _config_dict(cfg) -> dict:
    from .dump import config_fields

    return config_fields(cfg)


# ------------------------------------------------------------------ the comparison


def compare(dump, k=None, v=None, config=None, *, backend: str = "numpy",
            diagnose: bool = True, **results) -> Report:
    """Hold another implementation's results against zeta_ref, stage by stage.

    Parameters
    ----------
    dump : path, Dump, or the queries q
        A dump file or folder (see :mod:`zeta_ref.crosscheck.dump`), a loaded :class:`Dump`,
        or the array q, with k, v, config and the results given as arguments (arrays from any
        framework).
    k, v, config, **results
        Only when ``dump`` is q: the rest of the dump, as :func:`save_dump` takes it.
    backend : {"numpy", "numba"}
        What recomputes zeta_ref's side: the specification (default), or its Numba twin for
        long dumps (integer stages bit-identical, floats within tolerance).
    diagnose : bool, default True
        Try the common mistakes on each mismatching field (the slowest part, on one row).

    Returns
    -------
    Report
        ``report.ok``, ``report.first_wrong``, ``report.summary()``, ``str(report)`` (the
        table), ``report.as_dict()`` / ``report.to_json(path)``.

    Raises
    ------
    DumpError
        A dump that cannot be read (one line saying what is wrong).
    """
    if backend not in COMPARE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, COMPARE_BACKENDS))} "
                         f"(compare recomputes on the CPU); got {backend!r}")
    if isinstance(dump, Dump):
        d = dump
    elif isinstance(dump, (str, os.PathLike)):
        d = load_dump(dump)
    else:
        if k is None or v is None:
            raise TypeError("compare(q, k, v, config, **results) needs k and v with q; or "
                            "pass a dump's path")
        raw = {"q": dump, "k": k, "v": v, **results}
        d = dump_from_arrays({name: as_host_array(a, name) for name, a in raw.items()},
                             config=config)
    stages = get_backend(backend).stages()
    ours = Chain(d, stages=stages)
    local = Chain(d, given=d.results, stages=stages)
    reports = []
    for spec in FIELDS:
        if spec.name in d.results:
            reports.append(_check_field(d, spec.name, ours, local, reports, diagnose))
    shape = {"lead": list(d.lead), "N": d.n, "d_k": d.q.shape[-1], "d_v": d.v.shape[-1],
             "dtype": str(d.q.dtype)}
    return Report(source=d.source, config=d.config, shape=shape, backend=backend,
                  fields=reports)


def _check_field(d: Dump, name: str, ours: Chain, local: Chain, done: list,
                 diagnose: bool) -> FieldReport:
    theirs = d.results[name]
    inputs = nearest_given(name, d.results)
    their_cand = local["candidates"] if name == "weights" else None
    e2e = judge(name, ours[name], theirs, ours, their_cand)
    loc = None
    if inputs:
        try:
            loc = judge(name, local.fresh(name), theirs, local, their_cand)
        except (ValueError, TypeError, IndexError) as err:  # their inputs break the stage
            loc = Verdict("mismatch", note=f"cannot recompute from your inputs: {err}")
    rep = FieldReport(name, STAGE_OF[name], e2e, loc, inputs)
    earlier = {r.name: r for r in done}
    upstream_ok = all(earlier[f].ok for f in inputs if f in earlier)
    if e2e.ok:
        rep.status = e2e.status
        if e2e.note:
            rep.notes.append(e2e.note)
    elif loc is not None and loc.ok:
        if upstream_ok:
            rep.status = "equivalent"
            rep.notes.append("differs end to end only where your earlier fields differ "
                             "equally rightly")
        else:
            rep.status = "follows"
            wrong = [f for f in inputs if f in earlier and not earlier[f].ok]
            rep.notes.append(f"right given your {', '.join(wrong)}: the differences come "
                             f"from there")
        if loc.note:
            rep.notes.append(loc.note)
    else:
        rep.status = "mismatch"
        shown = loc if loc is not None else e2e
        if shown.note:
            rep.notes.append(shown.note)
        if diagnose and shown.n_differ:
            rep.diagnosis = _diagnose(d, name, shown, inputs, ours.s)
    return rep


def _diagnose(d: Dump, name: str, verdict: Verdict, inputs: tuple, stages) -> str:
    """Name the common mistake that reproduces the field, tried on the row of its first
    difference (one (batch, head) slice: the mistakes are slow, and one row tells)."""
    lead = d.lead
    row = tuple(verdict.first[:len(lead)]) if verdict.first is not None and \
        name != "pool_len" else (0,) * len(lead)
    one = _row(d, row)
    given = {f: one.results[f] for f in inputs}
    local = Chain(one, given=given, stages=stages)
    try:
        mine = judge(name, local.fresh(name), one.results[name], local,
                     local["candidates"] if name == "weights" else None)
    except (ValueError, TypeError, IndexError):
        return ""
    if mine.ok:
        return ""
    found = explain(one, name, one.results[name], mine.n_differ, given, stages)
    return "" if found is None else found.sentence(name)


def _row(d: Dump, row: tuple) -> Dump:
    """The dump restricted to one leading (batch, head) index."""
    if not row:
        return d
    results = {name: (a if name in ("pool_len", "dgamma") else a[row])
               for name, a in d.results.items()}
    return Dump(q=d.q[row], k=d.k[row], v=d.v[row], config=d.config, results=results,
                source=d.source,
                grad_output=None if d.grad_output is None else d.grad_output[row])


# ------------------------------------------------------------------ the table


STATUS_TEXT = {"match": "match", "equivalent": "equivalent", "follows": "follows",
               "mismatch": "MISMATCH"}


def format_report(report: Report) -> str:
    """The table: one line per provided field, then the notes, the diagnoses and a summary."""
    shape = report.shape
    lead = "x".join(str(x) for x in shape["lead"]) or "-"
    lines = [
        f"zeta-ref compare: {report.source}",
        f"  shape: lead {lead}, N {shape['N']}, d_k {shape['d_k']}, d_v {shape['d_v']}, "
        f"{shape['dtype']}; recomputed with backend {report.backend!r}",
        f"  config: {_config_line(report.config)}",
        "",
    ]
    head = ("stage", "field", "status", "differ", "max abs", "max rel", "tolerance",
            "first difference at (lead..., query[, slot]): zeta_ref vs yours")
    rows = [head]
    for f in report.fields:
        v = f.shown
        differ = f"{v.n_differ}/{v.n_total}" if v.n_total else "-"
        first = "" if v.first is None else \
            f"{tuple(v.first)}: {_value(v.ours)} vs {_value(v.theirs)}"
        rows.append((STAGE_BY_NAME[f.stage].title, f.name, STATUS_TEXT[f.status], differ,
                     _num(v.max_abs), _num(v.max_rel), v.short_tolerance, first))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    extra = []
    for f in report.fields:
        basis = f"given your {', '.join(f.local_inputs)}" if f.local_inputs else "end to end"
        if f.status in ("follows", "mismatch") or f.notes or f.diagnosis:
            words = {"mismatch": "wrong " + basis}
            parts = ([words[f.status]] if f.status in words else []) + f.notes
            if f.diagnosis:
                parts.append(f.diagnosis)
            extra.append(f"  {f.name}: " + "; ".join(parts))
    if extra:
        lines += ["", "notes:"] + extra
    if any(f.shown.tolerance != "exact" for f in report.fields):
        lines += ["", "tolerance of a float: |yours - zeta_ref| <= rtol |zeta_ref| + atol x "
                  "scale, scale the largest |k|, |v| or 1 in play (zeta_ref.tolerances)"
                  + ("; for a gradient, each entry's sum of the magnitudes of the terms it "
                     "adds up" if any(f.stage == "backward" for f in report.fields) else "")]
    lines += ["", report.summary()]
    return "\n".join(lines)


def _config_line(cfg) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in _config_dict(cfg).items())


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _value(x) -> str:
    if x is None:
        return "?"
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        return f"{float(arr):.6g}"
    return str(arr.item() if arr.ndim == 0 else arr.tolist())


__all__ = ["COMPARE_BACKENDS", "DumpError", "FieldReport", "Report", "compare"]
