"""The grader: one student's file held against the specification, check by check.

:func:`grade_file` loads the file (an import that fails, or a file without the function, is a
grade with an error, never a traceback), then runs, in order:

1. *signature*: the specification's parameters, so that the composer can call it;
2. *own work*: the file does not call the specification's function it is meant to write;
3. *awkward inputs*: N in 1, 2, 3, 17, 257, ties, float32 and float64, bits at 1 and at the
   most allowed, k >= N (:meth:`Exercise.awkward <zeta_ref.course.catalog.Exercise.awkward>`);
4. *hypothesis inputs*: inputs drawn by hypothesis from a fixed seed (a grade is
   reproducible), and the first failure shrunk to the smallest input that still fails;
5. *properties*: what any right answer satisfies: the future never changes the past, every
   candidate inside its pool, weights that add up to 1, and k = W = N giving dense attention;
6. *whole pass*: the student's function swapped into a backend of the registry
   (:mod:`zeta_ref.backends`) and :func:`zeta_ref.zeta_attention` run through it, against the
   specification's pass;
7. for the Numba exercise, that a Numba-compiled kernel ran.

Integer results must equal the specification's exactly, float results within
:mod:`zeta_ref.tolerances`. On a failure the grade shows the smallest failing input, the
result got and expected (codes in binary, windows as pool ranks), the common mistake of
:mod:`zeta_ref.crosscheck.variants` that reproduces it where one does, the decisions
involved, and the recall of the student's selection beside the specification's.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib.util
import inspect
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..attention import zeta_attention
from ..backends import REGISTRY, Backend, register
from ..config import ZetaConfig
from ..crosscheck.chain import Chain
from ..crosscheck.dump import Dump
from ..crosscheck.schema import FIELD_BY_NAME, upstream
from ..crosscheck.schema import STAGE_OF
from ..crosscheck.variants import STAGE_INDEX, Variant, catalogue
from ..crosscheck.verdicts import judge
from ..oracles import dense_attention, exact_topk, recall_at_k
from ..stages import STAGES as SPEC
from ..stages.quantize import squash
from ..tolerances import tolerance
from .catalog import DECISIONS, EXERCISES, Case, Exercise, ResultError, get_exercise, short

#: Hypothesis examples per grade, unless told otherwise.
EXAMPLES = 60
#: The whole passes every exercise runs through the registry: (what, N, d_k, d_v, dtype,
#: leading dims, config fields, coarse inputs that tie).
PASSES = (
    ("N=257, float32, k=16, the defaults otherwise", 257, 3, 8, np.float32, (),
     dict(k=16), False),
    ("N=17, float64, causal='strict' (chunks of 4), W=8 re-ranked to k=4, softmax, "
     "squash='tanh', bits=2: ties", 17, 3, 5, np.float64, (),
     dict(k=4, window=8, causal="strict", chunk_size=4, score="softmax", squash="tanh",
          bits=2), True),
    ("N=3, k=8 >= N, causal='none', bits=1, no mean term, neg_euclidean", 3, 3, 2,
     np.float64, (), dict(k=8, causal="none", bits=1, history_mean=False,
                          score="neg_euclidean"), False),
    ("N=64, (B, H) = (2, 2), bits=21 (the most for d_k = 3), squash='clip', inv_euclidean",
     64, 3, 4, np.float64, (2, 2), dict(k=8, bits=21, squash="clip", score="inv_euclidean"),
     False),
    ("N=40, d_k=2, float32, k=6, W=10, causal='strict'", 40, 2, 3, np.float32, (),
     dict(k=6, window=10, causal="strict"), True),
)
#: k = W = N with the mean term off: ZETA is dense attention (D8; float64, within 1e-10 of
#: the values' size).
DENSE = ((17, "inclusive", "cauchy"), (40, "none", "softmax"), (33, "inclusive", "softmax"))
DENSE_ATOL = 1e-10


class StudentFileError(Exception):
    """The student's file cannot be graded at all (it does not import, or lacks the
    function); the message is one line."""


# ==================================================================== loading

_counter = itertools.count()


def load_student(path, exercise: Exercise):
    """The student's module and function, or :class:`StudentFileError` saying why not."""
    path = Path(path)
    name = f"zeta_ref_student_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StudentFileError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba and dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(name, None)
        raise StudentFileError(f"{path}: cannot be imported: SyntaxError at line {err.lineno}: "
                               f"{err.msg}") from None
    except BaseException as err:  # whatever a student's file raises while importing
        sys.modules.pop(name, None)
        if isinstance(err, KeyboardInterrupt):
            raise
        raise StudentFileError(f"{path}: cannot be imported: {_error_line(err, path)}") from None
    fn = getattr(module, exercise.function, None)
    if fn is None:
        raise StudentFileError(f"{path}: defines no function {exercise.function!r} (exercise "
                               f"{exercise.name} asks for {exercise.function}, with the "
                               f"specification's signature)")
    if not callable(fn):
        raise StudentFileError(f"{path}: {exercise.function} is a {type(fn).__name__}, not a "
                               f"function")
    return module, fn


def _error_line(err: BaseException, path=None) -> str:
    """``TypeError: message (file.py, line 12)``: one line, with the student's line."""
    text = " ".join(str(err).split()) or "(no message)"
    where = ""
    if path is not None:
        for frame in reversed(traceback.extract_tb(err.__traceback__)):
            if os.path.abspath(frame.filename) == os.path.abspath(path):
                where = f" ({Path(path).name}, line {frame.lineno})"
                break
    if len(text) > 300:
        text = text[:300] + " ..."
    return f"{type(err).__name__}: {text}{where}"


def borrowed(path, fn, exercise: Exercise) -> str | None:
    """Whether the file calls the specification's (or a twin's) own function instead of
    writing it: what it does, or None."""
    target = getattr(fn, "py_func", fn)
    if target is exercise.spec or getattr(target, "__module__", "").startswith("zeta_ref."):
        own = (f"{exercise.function} is zeta_ref's own ({target.__module__}."
               f"{target.__name__}), not yours")
    else:
        own = None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return own
    zeta_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zeta_ref"):
            for alias in node.names:
                if alias.name == exercise.function:
                    return (f"imports {exercise.function} from {node.module} (write it "
                            f"yourself; the helpers around it are fine)")
                zeta_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zeta_ref"):
                    zeta_names.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == exercise.function:
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in zeta_names:
                return f"calls zeta_ref's {exercise.function} (line {node.lineno})"
    return own


def signature_problem(fn, exercise: Exercise) -> str | None:
    """None when ``fn`` takes the specification's parameters (names, kinds, defaults)."""
    try:
        theirs = inspect.signature(getattr(fn, "py_func", fn))
    except (TypeError, ValueError):
        return None  # a callable without a signature: the calls will tell
    ours = inspect.signature(exercise.spec)

    def plain(sig):
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    if plain(theirs) == plain(ours):
        return None
    return f"({', '.join(str(p) for p in theirs.parameters.values())}); expected {ours}"


# ==================================================================== one call, compared


@dataclass
class Mismatch:
    """How one call's results differ from the specification's."""

    field: str | None  # the result that differs (None: the call raised)
    what: str  # one line
    index: tuple | None = None  # the first differing entry
    got: str = ""
    expected: str = ""
    n_differ: int = 0
    theirs: object = None  # the student's array (for naming the mistake)
    ours: object = None

    def as_dict(self) -> dict:
        return {"field": self.field, "what": self.what,
                "index": None if self.index is None else list(self.index),
                "got": self.got, "expected": self.expected}


def call(exercise: Exercise, fn, case: Case, path=None):
    """``(results, None)``, or ``(None, Mismatch)`` when ``fn`` raises or returns the wrong
    kind of thing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                return exercise.call(fn, case), None
    except ResultError as err:
        return None, Mismatch(None, str(err))
    except NotImplementedError as err:
        return None, Mismatch(None, f"not written yet: {_error_line(err, path)}")
    except KeyboardInterrupt:
        raise
    except Exception as err:  # whatever the student's code raises is feedback
        return None, Mismatch(None, f"raised {_error_line(err, path)}")


def compare(exercise: Exercise, case: Case, got: dict, expected: dict) -> Mismatch | None:
    """The first result that differs: integers exactly, floats within the tolerances."""
    for name in exercise.fields:
        ours, theirs = expected[name], got.get(name)
        if ours is None:
            continue
        if theirs is None:
            return Mismatch(name, f"{name} is None; expected an array of shape {ours.shape}")
        try:
            theirs = np.asarray(theirs)
        except Exception:  # noqa: BLE001 - anything that is not an array
            return Mismatch(name, f"{name} is not an array ({type(theirs).__name__})")
        if theirs.shape != ours.shape:
            return Mismatch(name, f"{name} has shape {theirs.shape}; expected {ours.shape}")
        if theirs.dtype != ours.dtype:
            return Mismatch(name, f"{name} has dtype {theirs.dtype}; expected {ours.dtype}")
        extra = ""
        if ours.dtype.kind == "f":
            tol = tolerance(exercise.float_dtype(case))
            scale = exercise.scale(name, case)
            a, b = theirs.astype(np.float64), ours.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                err = np.abs(a - b)
                bad = ~(err <= tol["rtol"] * np.abs(b) + tol["atol"] * scale)
            if bad.any():
                worst = float(np.nanmax(err)) if not np.isnan(err).all() else float("nan")
                extra = (f" (largest error {worst:.3g}; allowed: {tol['rtol']:g} x |expected| "
                         f"+ {tol['atol']:g} x {scale:.3g}, zeta_ref.tolerances)")
        else:
            bad = theirs != ours
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            kind = "entries" if ours.dtype.kind == "f" else "values"
            return Mismatch(name, f"{int(bad.sum())} of {bad.size} {kind} of {name} differ"
                            + extra, index,
                            got=exercise.show(name, theirs, case, index),
                            expected=exercise.show(name, ours, case, index),
                            n_differ=int(bad.sum()), theirs=theirs, ours=ours)
    return None


def check_case(exercise: Exercise, fn, case: Case, path=None) -> Mismatch | None:
    expected = exercise.call(exercise.spec, case)
    got, problem = call(exercise, fn, case, path)
    return problem or compare(exercise, case, got, expected)


# ==================================================================== naming the mistake


def _wrapped_top(x_name: str):
    """A rule for cells whose top (a squash of exactly 1.0, cell 2^B) wraps round to 0."""
    def rule(ch):
        c = ch.cfg
        s = squash(getattr(ch, x_name), c.squash, c.clip_range)  # float64 in [0, 1]
        cells = np.floor(s * math.ldexp(1.0, c.bits)).astype(np.uint64)  # up to 2^B
        return cells & np.uint64((1 << c.bits) - 1)
    return rule


#: Mistakes met in the exercises that zeta_ref.crosscheck.variants does not list (it looks
#: for the mistakes of whole implementations; these are a student's at one stage).
EXTRA_MISTAKES = (
    Variant("the top of the range (a squash of exactly 1.0) wrapped round to cell 0 instead "
            "of joining the last cell", "D2", "quantize",
            {"q_coords": _wrapped_top("q"), "k_coords": _wrapped_top("k")}),
)


def _field_scale(name: str, case: Case) -> float:
    if name in ("weights", "mean_weight"):
        return 1.0
    source = case.k if name == "mean_k" else case.v
    return float(np.max(np.abs(source))) if source.size else 0.0


def _same(name: str, value, theirs, case: Case) -> bool:
    """Whether a mistake's ``value`` is the student's ``theirs``: integers exactly, floats
    within the tolerances."""
    value, theirs = np.asarray(value), np.asarray(theirs)
    if value.shape != theirs.shape:
        return False
    if value.dtype.kind != "f":
        return bool(np.array_equal(value.astype(np.int64) if value.dtype.kind in "iu" else value,
                                   theirs.astype(np.int64) if theirs.dtype.kind in "iu"
                                   else theirs))
    tol = tolerance(case.q.dtype)
    a, b = theirs.astype(np.float64), value.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - b) <= tol["rtol"] * np.abs(b) + tol["atol"] * _field_scale(name, case)
    return bool(ok.all())


def reproducing(case: Case, name: str, theirs) -> list:
    """Every common mistake (catalogue and :data:`EXTRA_MISTAKES`) that computes exactly the
    student's ``theirs`` for the field ``name`` from this case's inputs, in catalogue order."""
    dump = Dump(q=case.q, k=case.k, v=case.v, config=case.cfg, results={}, source="grade")
    stage_at = STAGE_INDEX[STAGE_OF[name]]
    out = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for v in list(EXTRA_MISTAKES) + catalogue(case.cfg, case.n):
            if STAGE_INDEX[v.stage] > stage_at or (v.rules and all(f in case.given
                                                                   for f in v.rules)):
                continue  # a later stage, or one whose every field is an input here
            try:
                value = v.chain(dump, case.given).fresh(name)
            except Exception:  # noqa: BLE001 - a mistake that cannot run here explains nothing
                continue
            if _same(name, value, theirs, case):
                out.append(v)
    return out


def _note(case: Case, mismatch: Mismatch) -> str:
    """What zeta_ref.crosscheck.verdicts says of the difference (an unstable sort, ties
    broken another way), where the case's inputs are real ones."""
    if not case.notes:
        return ""
    dump = Dump(q=case.q, k=case.k, v=case.v, config=case.cfg, results={}, source="grade")
    try:
        return judge(mismatch.field, mismatch.ours, mismatch.theirs,
                     Chain(dump, given=case.given)).note
    except Exception:  # noqa: BLE001 - a note is a bonus; it never stops a grade
        return ""


def name_mistake(failures) -> dict | None:
    """The common mistake that reproduces the student's results on the most of the first few
    failing inputs (ties: the earliest of the catalogue), and what zeta_ref's verdicts note
    about the first: ``{"text", "decision", "inputs", "of", "note"}``, or None.

    One input can be explained by several mistakes (at N = 2 a pool one key too long is every
    key); the inputs together tell them apart.
    """
    usable = [(c, m) for c, m in failures
              if m.field is not None and m.theirs is not None and c.mappable][:4]
    if not usable:
        return None
    note = _note(*usable[0])
    found = [reproducing(c, m.field, m.theirs) for c, m in usable]
    counts: dict = {}
    for variants in found:
        for v in variants:
            counts.setdefault(v.text, [v, 0])[1] += 1
    if not counts:
        return {"text": None, "decision": None, "inputs": 0, "of": len(usable),
                "note": note} if note else None
    best, inputs = max(counts.values(), key=lambda entry: entry[1])  # the first of the most
    return {"text": best.text, "decision": best.decision, "inputs": inputs, "of": len(usable),
            "note": note}


def decision_lines(ids) -> list:
    """'D3: order of dimensions inside a bit group; zeta_ref: dimension 0 most significant'."""
    out = []
    for d in ids:
        if d in DECISIONS:
            question, answer = DECISIONS[d]
            out.append(f"{d}: {question}; zeta_ref: {answer}")
        else:
            out.append(d)
    return out


def decisions_of(text: str) -> list:
    return re.findall(r"D\d+", text or "")


# ==================================================================== the checks


@dataclass
class Check:
    """One check of a grade."""

    name: str
    passed: bool
    detail: str
    cases: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Failure:
    """The detailed feedback on one failing input."""

    check: str
    input: list
    mismatch: Mismatch
    mistake: dict | None = None
    decisions: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"check": self.check, "input": self.input, **self.mismatch.as_dict(),
                "mistake": self.mistake, "decisions": self.decisions}


def _awkward(exercise, fn, path):
    failures = []
    cases = exercise.awkward()
    for case in cases:
        problem = check_case(exercise, fn, case, path)
        if problem is not None:
            failures.append((case, problem))
    if failures:
        case, problem = min(failures, key=lambda f: f[0].q.size)
        check = Check("awkward inputs", False, f"{len(failures)} of {len(cases)} fail; the "
                      f"smallest: {case.label}: {problem.what}", len(cases))
    else:
        check = Check("awkward inputs", True, f"{len(cases)} inputs: N in 1, 2, 3, 17, 257, "
                      f"ties, float32 and float64, the ends of every range", len(cases))
    return check, failures


def _search(exercise, fn, path, examples, seed):
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    tried = [0]

    def fails(case):
        tried[0] += 1
        return check_case(exercise, fn, case, path) is not None

    config = settings(max_examples=examples, database=None, deadline=None,
                      phases=[Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
    try:
        with warnings.catch_warnings(), _private_hypothesis_storage():
            warnings.simplefilter("ignore")
            case = find(exercise.strategy(), fails, settings=config, random=random.Random(seed))
    except NoSuchExample:
        return Check("hypothesis inputs", True, f"{tried[0]} drawn inputs (seed {seed})",
                     tried[0]), None
    problem = check_case(exercise, fn, case, path)
    return Check("hypothesis inputs", False, f"fails; the smallest failing input of "
                 f"{tried[0]} tried (seed {seed}, shrunk): {problem.what}", tried[0]), \
        (case, problem)


@contextlib.contextmanager
def _private_hypothesis_storage():
    """Keep hypothesis's files out of the folder the grader runs in.

    Recent hypothesis versions cache constants read from the modules loaded (the student's
    among them) in ``.hypothesis/`` under the working folder. During a search its storage is
    a private folder under the temp directory, and afterwards what it was (hypothesis keeps
    the setting in its ``configuration`` module; a version without it is left alone; so is
    an explicit ``HYPOTHESIS_STORAGE_DIRECTORY``).
    """
    try:
        from hypothesis import configuration
        before = vars(configuration)["__hypothesis_home_directory"]
        set_home = configuration.set_hypothesis_home_dir
    except (ImportError, KeyError, AttributeError):
        yield
        return
    if before is not None or os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    set_home(Path(tempfile.gettempdir()) / f"zeta-ref-grade-hypothesis-{uid}")
    try:
        yield
    finally:
        set_home(before)


def _position_axis(name: str) -> int | None:
    dims = [d.strip() for d in FIELD_BY_NAME[name].shape.strip("()").split(",")]
    return dims.index("N") - len(dims) if "N" in dims else None


def _future(exercise, fn, path):
    """Redraw every input after position t: nothing at t or before may change."""
    rng = np.random.default_rng(11)
    cases = [c for c in exercise.awkward() if c.n >= 3 and c.cfg.causal != "none"][:4]
    for case in cases:
        t = case.n // 2
        later = exercise.perturb(case, t, rng)
        before, p1 = call(exercise, fn, case, path)
        after, p2 = call(exercise, fn, later, path)
        if p1 or p2:
            return Check("the future never changes the past", False, (p1 or p2).what,
                         len(cases)), (case, p1 or p2)
        for name in exercise.fields:
            axis = _position_axis(name)
            if axis is None or before.get(name) is None or after.get(name) is None:
                continue
            a, b = np.asarray(before[name]), np.asarray(after[name])
            if a.shape != b.shape or a.ndim < -axis:
                continue
            past = [slice(None)] * a.ndim
            past[axis] = slice(0, t + 1)
            a, b = a[tuple(past)], b[tuple(past)]
            if a.dtype.kind == "f":
                tol = tolerance(exercise.float_dtype(case))
                scale = exercise.scale(name, case)
                bad = ~(np.abs(a.astype(np.float64) - b) <= tol["rtol"] * np.abs(b)
                        + tol["atol"] * max(scale, 1e-300))
            else:
                bad = a != b
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                pos = index[axis]
                what = (f"{name} at position {pos} changed when only the inputs after position "
                        f"{t} changed ({case.label}): the past depends on the future (D1, D4)")
                mismatch = Mismatch(name, what, None, got=short_row(b, index),
                                    expected=short_row(a, index))
                return Check("the future never changes the past", False, what,
                             len(cases)), (case, mismatch)
    return Check("the future never changes the past", True, f"{len(cases)} inputs, every input "
                 f"after position N/2 redrawn", len(cases)), None


def short_row(a, index):
    """The row of ``a`` that holds the entry ``index``."""
    return short(np.asarray(a)[tuple(index[:-1])] if len(index) > 1 else np.asarray(a))


def _invariants(exercise, fn, path):
    if type(exercise).invariants is Exercise.invariants:
        return None, None  # this exercise has none
    cases = exercise.awkward()
    for case in cases:
        got, problem = call(exercise, fn, case, path)
        if problem:  # nothing to check on this input: not a pass (as for the future's check)
            return Check("properties of any right answer", False, problem.what,
                         len(cases)), (case, problem)
        broken = exercise.invariants(case, got)
        if broken:
            what = f"{case.label}: {broken}"
            return Check("properties of any right answer", False, what, len(cases)), \
                (case, Mismatch(None, broken))
    return Check("properties of any right answer", True, _INVARIANT_TEXT.get(
        exercise.swap, "hold"), len(cases)), None


_INVARIANT_TEXT = {
    "quantize": "cells in [0, 2^bits - 1], never lower for a larger coordinate",
    "sort_keys": "key_perm is a permutation",
    "insertion_points": "every insertion point inside its pool",
    "neighbour_window": "every candidate inside its pool, none twice, min(W, L_i) of them, "
                        "empty slots last",
    "topk_attention": "empty slots weigh 0, the weights and the mean term's add up to 1",
}


# ==================================================================== whole passes


@contextlib.contextmanager
def student_backend(swaps: dict):
    """A registry entry whose stages are the specification's with ``swaps`` replacing some:
    its name, for ``zeta_attention(..., backend=name)``; removed again afterwards."""
    number = next(_counter)
    module_name = f"zeta_ref.course._student_backend_{number}"
    module = types.ModuleType(module_name)
    module.STAGES = dataclasses.replace(SPEC, **swaps)
    module.available = lambda: True
    sys.modules[module_name] = module
    name = f"student-{number}"
    register(Backend(name, module_name, False, "the specification with a student's stage"))
    try:
        yield name
    finally:
        REGISTRY.pop(name, None)
        sys.modules.pop(module_name, None)


def pass_inputs(n, d_k, d_v, dtype, lead, coarse, seed):
    rng = np.random.default_rng(seed)
    q, k = (rng.standard_normal(lead + (n, d_k)) for _ in range(2))
    v = rng.standard_normal(lead + (n, d_v))
    if coarse:  # a coarse grid: equal cells, codes and distances
        q, k = np.round(q * 2) / 2, np.round(k * 2) / 2
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _run(q, k, v, cfg, backend):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return zeta_attention(q, k, v, cfg, backend=backend, return_intermediates=True)


def _passes(exercise, fn, path):
    """Every pass of :data:`PASSES` through the registry with the student's stage swapped in;
    the recall of both selections."""
    failures, recall = [], {"yours": [], "specification": []}
    with student_backend({exercise.swap: fn}) as backend:
        for number, (label, n, d_k, d_v, dtype, lead, fields, coarse) in enumerate(PASSES):
            cfg = ZetaConfig(**fields)
            q, k, v = pass_inputs(n, d_k, d_v, dtype, lead, coarse, seed=100 + number)
            _, ours = _run(q, k, v, cfg, "numpy")
            exact = exact_topk(q, k, cfg.k_for(n), cfg.score, cfg.causal,
                               chunk_size=ours.chunk_size)
            recall["specification"].append(recall_at_k(ours.candidates, exact))
            # the case for naming a mistake: outside "strict" the chunk changes no pool, and
            # one chunk of all N keys lets "the window cut from the whole chunk" mean all keys
            chunk = ours.chunk_size if cfg.causal == "strict" else n
            case = Case({}, dataclasses.replace(cfg, chunk_size=chunk), q=q, k=k, v=v,
                        label=label)
            try:
                _, theirs = _run(q, k, v, cfg, backend)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - the student's stage raised inside
                recall["yours"].append(None)
                failures.append((case, Mismatch(None, f"raised {_error_line(err, path)}")))
                continue
            try:
                recall["yours"].append(recall_at_k(theirs.candidates, exact))
            except Exception:  # noqa: BLE001 - candidates of the wrong shape
                recall["yours"].append(None)
            problem = _compare_pass(exercise, case, ours, theirs)
            if problem is not None:
                failures.append((case, problem))
    if failures:
        case, problem = failures[0]
        check = Check("whole pass (backend registry)", False, f"{len(failures)} of "
                      f"{len(PASSES)} passes differ; first: {case.label}: {problem.what}",
                      len(PASSES))
    else:
        check = Check("whole pass (backend registry)", True, f"{len(PASSES)} passes of "
                      f"zeta_attention with your {exercise.function} swapped in: every "
                      f"intermediate and the output as the specification's", len(PASSES))
    return check, failures, recall


def _compare_pass(exercise, case, ours, theirs) -> Mismatch | None:
    names = list(dict.fromkeys(exercise.pipeline_fields + ("candidates", "output")))
    for name in names:
        a, b = getattr(ours, name), getattr(theirs, name)
        if a is None:
            continue
        b = np.asarray(b) if b is not None else None
        if b is None or b.shape != a.shape:
            return Mismatch(name, f"{name} has shape {None if b is None else b.shape}; "
                                  f"expected {a.shape}")
        if a.dtype.kind == "f":
            tol = tolerance(case.q.dtype)
            scale = (1.0 if name in ("weights", "mean_weight") else
                     float(np.abs(case.k if name == "mean_k" else case.v).max()))
            with np.errstate(invalid="ignore"):
                err = np.abs(b.astype(np.float64) - a)
                bad = ~(err <= tol["rtol"] * np.abs(a) + tol["atol"] * scale)
        else:
            bad = b != a
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            given = {f: getattr(ours, f) for f in upstream(name) if f != "pool_len"}
            case.given = {f: a_ for f, a_ in given.items() if a_ is not None}
            return Mismatch(name, f"{int(bad.sum())} of {bad.size} entries of {name} differ",
                            index, got=short_row(b, index), expected=short_row(a, index),
                            n_differ=int(bad.sum()), theirs=b, ours=a)
    return None


def _dense(exercise, fn, path):
    """k = W = N, the mean term off: the pass must give dense attention (D8)."""
    with student_backend({exercise.swap: fn}) as backend:
        for number, (n, causal, score) in enumerate(DENSE):
            q, k, v = pass_inputs(n, 3, 4, np.float64, (), False, seed=200 + number)
            cfg = ZetaConfig(k=n, causal=causal, score=score, history_mean=False)
            label = f"N={n}, k = W = N, causal={causal!r}, {score}, no mean term"
            try:
                _, theirs = _run(q, k, v, cfg, backend)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - the student's stage raised inside
                what = f"{label}: raised {_error_line(err, path)}"
                return Check("k = W = N is dense attention", False, what, len(DENSE)), \
                    (Case({}, cfg, q=q, k=k, v=v, label=label), Mismatch(None, what))
            dense = dense_attention(q, k, v, score, causal, gamma=cfg.gamma)
            out = np.asarray(theirs.output, dtype=np.float64)
            err = np.abs(out - dense) if out.shape == dense.shape else np.array([np.inf])
            bad = ~(err <= DENSE_ATOL * np.abs(v).max())
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                what = (f"{label}: the output differs from dense attention "
                        f"(zeta_ref.oracles) by up to {float(np.nanmax(err)):.3g}")
                mismatch = Mismatch("output", what, index,
                                    got=short_row(out, index) if out.shape == dense.shape else
                                    f"shape {out.shape}", expected=short_row(dense, index))
                return Check("k = W = N is dense attention", False, what, len(DENSE)), \
                    (Case({}, cfg, q=q, k=k, v=v, label=label), mismatch)
    return Check("k = W = N is dense attention", True, f"{len(DENSE)} passes within "
                 f"{DENSE_ATOL:g} of the values' size (float64)", len(DENSE)), None


def _compiled(module):
    """For the Numba exercise: a Numba-compiled function of the file ran."""
    import numba
    from numba.core.dispatcher import Dispatcher

    if numba.config.DISABLE_JIT:
        return Check("compiled with Numba", True, "not checked: NUMBA_DISABLE_JIT is set")
    kernels = {name: obj for name, obj in vars(module).items() if isinstance(obj, Dispatcher)}
    if not kernels:
        return Check("compiled with Numba", False, "the file defines no Numba-compiled "
                     "function: decorate your kernel with @numba.njit")
    ran = [name for name, obj in kernels.items() if obj.signatures]
    if not ran:
        return Check("compiled with Numba", False, f"{', '.join(kernels)} never ran compiled: "
                     f"call your kernel from your function")
    return Check("compiled with Numba", True, f"{', '.join(ran)} ran compiled")


# ==================================================================== a grade


@dataclass
class Grade:
    """One file's grade."""

    exercise: str
    file: str
    checks: list = field(default_factory=list)
    failure: Failure | None = None
    recall: dict | None = None
    error: str | None = None  # the file could not be graded at all
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    @property
    def status(self) -> int:
        return 0 if self.passed else 1

    def summary(self) -> str:
        """The first problem, in one line ('' when it passes)."""
        if self.error:
            return self.error
        if self.failure is not None:
            head = f"{self.failure.check}: {self.failure.mismatch.what}"
            m = self.failure.mistake
            if m and m.get("text"):
                head = f"{m['text']} ({m['decision']}); {head}"
            return head
        failed = [c for c in self.checks if not c.passed]
        return f"{failed[0].name}: {failed[0].detail}" if failed else ""

    def as_dict(self) -> dict:
        return {"exercise": self.exercise, "file": self.file, "passed": self.passed,
                "status": self.status, "error": self.error,
                "checks": [c.as_dict() for c in self.checks],
                "failure": None if self.failure is None else self.failure.as_dict(),
                "recall": self.recall, "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        ex = EXERCISES[self.exercise]
        lines = [f"zeta-ref grade {self.exercise}: {self.file}",
                 f"  {ex.title}; {ex.difficulty}, about {ex.minutes} minutes"]
        if self.error:
            lines += [f"  ERROR  {self.error}", "", "result: FAIL (the file cannot be graded)"]
            return "\n".join(lines)
        width = max(len(c.name) for c in self.checks)
        for c in self.checks:
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        if self.failure is not None:
            f = self.failure
            lines += ["", f"the smallest failing input ({f.check}):"]
            lines += [f"    {line}" for line in f.input]
            m = f.mismatch
            if m.field is not None and m.index is not None:
                lines.append(f"  {m.field}{list(m.index)}:")
            lines.append(f"    {m.what}")
            if m.expected or m.got:
                lines += [f"    expected  {m.expected}", f"    got       {m.got}"]
            mistake = f.mistake or {}
            if m.field is None and not mistake:
                pass  # it raised, or broke a property: no result to trace to a mistake
            elif mistake.get("text"):
                inputs, of = mistake["inputs"], mistake["of"]
                how = ("it reproduces your result exactly" if of == 1 else
                       f"it reproduces your results exactly on {inputs} of the {of} failing "
                       f"inputs tried")
                lines.append(f"  mistake   {mistake['text']} ({mistake['decision']}): {how}")
            else:
                lines.append("  mistake   none of zeta_ref's catalogue of common mistakes "
                             "reproduces it")
            if mistake.get("note"):
                lines.append(f"  note      {mistake['note']}")
            for i, d in enumerate(f.decisions):
                lines.append(f"  {'decision' if i == 0 else '':<8}  {d}")
            if f.decisions:
                lines.append("            (docs/decisions.md explains each)")
        if self.recall:
            yours, spec = self.recall["yours"], self.recall["specification"]
            lines += ["", f"recall@k over the {self.recall['passes']} whole passes (the exact "
                      f"top-k of zeta_ref.oracles found by the candidates): yours "
                      f"{'-' if yours is None else f'{yours:.3f}'}, the specification's "
                      f"{spec:.3f}"]
        ok = sum(c.passed for c in self.checks)
        lines += ["", f"result: {'PASS' if self.passed else 'FAIL'} ({ok} of "
                      f"{len(self.checks)} checks pass; {self.seconds:.1f} s)"]
        return "\n".join(lines)


def grade_file(exercise_name: str, path, *, examples: int = EXAMPLES, seed: int = 0) -> Grade:
    """Grade the student's file ``path`` for the exercise ``exercise_name``."""
    exercise = get_exercise(exercise_name)
    start = time.perf_counter()
    grade = Grade(exercise.name, str(path))
    try:
        module, fn = load_student(path, exercise)
    except StudentFileError as err:
        grade.error = str(err)
        grade.seconds = time.perf_counter() - start
        return grade
    checks, failures = grade.checks, []  # failures: (check name, case, mismatch) in order

    problem = signature_problem(fn, exercise)
    checks.append(Check("signature", problem is None, "the specification's" if problem is None
                        else f"{exercise.function}{problem}"))
    own = borrowed(path, fn, exercise)
    checks.append(Check("own work", own is None, f"does not call zeta_ref's "
                        f"{exercise.function}" if own is None else own))

    check, awkward = _awkward(exercise, fn, path)
    checks.append(check)
    check, found = _search(exercise, fn, path, examples, seed)
    checks.append(check)
    if found:
        failures.append(("hypothesis inputs", *found))
    if awkward:
        case, mismatch = min(awkward, key=lambda f: f[0].q.size)
        failures.append(("awkward inputs", case, mismatch))
    if exercise.future_property:
        check, found = _future(exercise, fn, path)
        checks.append(check)
        if found:
            failures.append((check.name, *found))
    check, found = _invariants(exercise, fn, path)
    if check is not None:
        checks.append(check)
        if found:
            failures.append((check.name, *found))
    if exercise.dense_property:
        check, found = _dense(exercise, fn, path)
        checks.append(check)
        if found:
            failures.append((check.name, *found))
    check, passes, recall = _passes(exercise, fn, path)
    checks.append(check)
    failures += [(check.name, c, m) for c, m in passes]
    if exercise.numba:
        checks.append(_compiled(module))
    known = [r for r in recall["yours"] if r is not None and r == r]
    spec_known = [r for r in recall["specification"] if r == r]
    grade.recall = {"passes": len(PASSES),
                    "yours": float(np.mean(known)) if len(known) == len(PASSES) else None,
                    "specification": float(np.mean(spec_known))}

    if failures:
        grade.failure = _feedback(exercise, failures)
    grade.seconds = time.perf_counter() - start
    return grade


def _feedback(exercise, failures) -> Failure:
    """The detailed feedback of the first failure, with the first mistake that any of the
    first few failures can be traced to."""
    check, case, mismatch = failures[0]
    index = mismatch.index
    if case.args:
        lines = [f"({case.label})"] if case.label else []
        lines += exercise.describe(case, mismatch.field, index)
    else:
        lines = [case.label]
    mistake = name_mistake([(c, m) for _, c, m in failures])
    ids = decisions_of(mistake["decision"]) if mistake and mistake.get("decision") else []
    ids = ids or (decisions_of(mistake["note"]) if mistake else []) or list(exercise.decisions)
    return Failure(check, lines, mismatch, mistake, decision_lines(ids))


# ==================================================================== many students


#: Seconds a file may take, by default, when a folder is graded (``zeta-ref grade --all``): a
#: right solution takes well under a minute even on two cores.
TIME_LIMIT = 600.0


def _grade_in_child(conn, exercise_name, path, kwargs) -> None:
    """The child's side of :func:`grade_file_limited`: the grade, or why there is none."""
    try:
        conn.send(("grade", grade_file(exercise_name, path, **kwargs)))
    except BaseException as err:  # the grader's own failure: said, not hung on
        conn.send(("error", f"the grader failed: {type(err).__name__}: {err}"))
    finally:
        conn.close()


def grade_file_limited(exercise_name: str, path, time_limit: float, **kwargs) -> Grade:
    """:func:`grade_file` in a child process given ``time_limit`` seconds (its start
    included). A file whose function never returns (an endless loop, in Python or compiled by
    Numba, which no signal interrupts) is stopped there, and its grade is an error that says
    so, instead of the grader waiting for ever; a file that kills its process gets an error
    too. The child is started fresh ("spawn"), so it shares no state with this process."""
    exercise = get_exercise(exercise_name)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    child = context.Process(target=_grade_in_child, daemon=True,
                            args=(theirs, exercise.name, str(path), kwargs))
    child.start()
    theirs.close()  # the child holds the only writing end: its end of file is ours
    try:
        kind, value = ours.recv() if ours.poll(time_limit) else ("late", None)
    except EOFError:  # the child ended without sending
        kind, value = "lost", None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        ours.close()
    if kind == "grade":
        return value
    grade = Grade(exercise.name, str(path), seconds=time.perf_counter() - start)
    if kind == "late":
        grade.error = (f"stopped after {time_limit:g} s: {exercise.function} did not return "
                       f"in time (an endless loop?); nothing was graded")
    elif kind == "lost":
        grade.error = (f"the grading process ended without a grade (exit status "
                       f"{child.exitcode}): the file may have crashed Python")
    else:
        grade.error = value
    return grade


def grade_folder(exercise_name: str, folder, *, time_limit: float | None = TIME_LIMIT,
                 **kwargs) -> list:
    """Grade every ``*.py`` file of ``folder`` (one per student) for one exercise, each in a
    child process given ``time_limit`` seconds (:func:`grade_file_limited`; None: each in
    this process, without a limit)."""
    files = sorted(p for p in Path(folder).glob("*.py") if p.name != "__init__.py")
    if time_limit is None:
        return [grade_file(exercise_name, p, **kwargs) for p in files]
    return [grade_file_limited(exercise_name, p, time_limit, **kwargs) for p in files]


def table(grades: list) -> str:
    """One line per student: name, checks passed, result, recall, the first problem."""
    rows = [("student", "checks", "result", "recall", "seconds", "first problem")]
    for g in grades:
        ok = sum(c.passed for c in g.checks)
        recall = "-"
        if g.recall and g.recall["yours"] is not None:
            recall = f"{g.recall['yours']:.3f}"
        rows.append((Path(g.file).stem, f"{ok}/{len(g.checks)}" if g.checks else "-",
                     "PASS" if g.passed else ("ERROR" if g.error else "FAIL"), recall,
                     f"{g.seconds:.1f}", _clip(g.summary(), 110)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(r[:5], widths)) + "  " + r[5]
             for r in rows]
    passed = sum(g.passed for g in grades)
    spec = next((g.recall["specification"] for g in grades if g.recall), None)
    foot = f"{passed} of {len(grades)} pass"
    if spec is not None:
        foot += f"; the specification's recall on the same passes: {spec:.3f}"
    return "\n".join(lines + ["", foot])


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def to_json(obj, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
