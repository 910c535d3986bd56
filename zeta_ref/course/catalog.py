"""The exercises of the course pack: what each one asks for, and how its inputs are made.

An :class:`Exercise` is one function of the specification that a student writes again. It
knows

- its files: the teacher's solution (``solutions/NAME.py``) and the student's version
  (``exercises/NAME.py``, made from it by :mod:`zeta_ref.course.markers`), whose header gives
  the difficulty and the time it takes;
- how to call the function on a :class:`Case` and name its results by the fields of
  :data:`zeta_ref.crosscheck.schema.FIELDS` (``q_codes``, ``window_idx``, ...);
- how to draw inputs: a hypothesis strategy, and a list of awkward inputs (N in 1, 2, 3, 17,
  257; ties; float32 and float64; bits at 1 and at the maximum; k >= N);
- which properties hold for it (the future never changes the past; every candidate lies
  inside the pool; k = W = N gives dense attention);
- where it sits in a whole pass: every case carries a :class:`~zeta_ref.ZetaConfig` and the
  stage fields its inputs stand for, so that the common mistakes of
  :mod:`zeta_ref.crosscheck.variants` can be tried on a failing input.

The grader (:mod:`zeta_ref.course.grader`) runs all of this; nothing here judges.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..attention import zeta_attention
from ..config import CAUSAL_MODES, SCORES, SQUASHES, ZetaConfig
from ..stages import morton as spec_morton
from ..stages import quantize as spec_quantize
from ..stages import sort as spec_sort
from ..stages import topk_softmax as spec_topk
from ..stages import window as spec_window
from ..stages.quantize import squash
from ..stages.window import pool_lengths

HERE = Path(__file__).resolve().parent

#: The decisions of docs/decisions.md, by id: the question and zeta_ref's answer (the page's
#: summary table; tests/test_grade.py holds the two in step).
DECISIONS = {
    "D1": ("how reals reach [0, 1) before quantising", "sigmoid, elementwise"),
    "D2": ("bits per coordinate", "10 (30-bit codes for d_k = 3)"),
    "D3": ("order of dimensions inside a bit group", "dimension 0 most significant"),
    "D4": ("which keys a query may see", '"inclusive": every key j ≤ i'),
    "D5": ("chunk size M", "max(k, ⌈N / 8⌉)"),
    "D6": ("window width W", "W = k: the window is the selection"),
    "D7": ("γ of the Cauchy score", "an input, 0.5"),
    "D8": ("the mean term", "on: cumulative means of k and v as candidate k + 1"),
    "D9": ("fewer candidates than k", "empty slots: index −1, weight 0"),
    "D10": ("ties in the Z code", "stable sort, lower position first"),
    "D11": ("a window at the end of its pool", "slides to stay inside the pool"),
    "D12": ("how query codes are made", "exactly the key pipeline"),
    "D13": ("how the squash is computed, so that every backend gets the same cells",
            "exp from IEEE-exact operations only (no math library)"),
}

#: The awkward sequence lengths every exercise is tried at.
AWKWARD_N = (1, 2, 3, 17, 257)


def _hypothesis():
    """hypothesis's strategies and its NumPy strategies (imported when a grade needs them)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    return st, hnp


@dataclass
class Case:
    """One call of a stage function, and the pass it belongs to.

    ``args`` are the function's arguments by name. ``cfg``, ``q``, ``k``, ``v`` and ``given``
    describe a whole pass whose stage makes exactly this call when the fields of ``given``
    take those values (the codes an ``insertion_points`` call searches, the candidates a
    ``topk_attention`` call weighs): with them :mod:`zeta_ref.crosscheck.variants` recomputes
    the stage under each common mistake. ``mappable`` is False where no pass makes this call
    (a window wider than N keeps slots that a pass caps away), and no mistake is tried.
    """

    args: dict
    cfg: ZetaConfig
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    given: dict = field(default_factory=dict)
    label: str = ""
    mappable: bool = True
    notes: bool = True  # q, k, v are real inputs (not stand-ins for given codes)

    @property
    def n(self) -> int:
        return self.q.shape[-2]

    def copy_args(self) -> dict:
        """The arguments, arrays copied: a function that writes into its inputs changes no
        other call."""
        return {name: (a.copy() if isinstance(a, np.ndarray) else a)
                for name, a in self.args.items()}


def _zeros(lead, n, d, dtype=np.float64):
    return np.zeros(tuple(lead) + (n, d), dtype=dtype)


def binary(value: int, width: int, group: int = 0) -> str:
    """``0b`` and ``value`` in ``width`` binary digits, cut into groups of ``group`` digits
    from the least significant end (the bit groups of a Z-order code)."""
    digits = format(int(value), "b").zfill(width)
    if group > 1 and len(digits) > group:
        head = len(digits) % group
        parts = ([digits[:head]] if head else []) + [digits[i:i + group]
                                                      for i in range(head, len(digits), group)]
        digits = "_".join(parts)
    return f"0b{digits} ({int(value)})"


def short(a, limit: int = 16) -> str:
    """A small array in one line, or its first entries."""
    a = np.asarray(a)
    flat = a.reshape(-1)
    if flat.size <= limit:
        text = np.array2string(a, separator=", ", max_line_width=10**6, precision=6)
        return " ".join(text.split())
    head = ", ".join(np.format_float_positional(x, precision=6) if a.dtype.kind == "f"
                     else str(x) for x in flat[:limit])
    return f"[{head}, ...] ({a.dtype}, shape {a.shape})"


class Exercise:
    """One exercise; subclasses fill in what differs from one stage to the next."""

    name: str = ""  # the exercise's name (and its files' stem)
    function: str = ""  # the name of the function the student's file defines
    spec = None  # the specification's function
    swap: str = ""  # the field of zeta_ref.backends.Stages the student's function replaces
    fields: tuple = ()  # the names of its results, by the schema's field names
    pipeline_fields: tuple = ()  # the Intermediates fields its stage computes in a pass
    future_property = False  # positions after t never change the results at t and before
    dense_property = False  # k = W = N with the mean term off gives dense attention
    numba = False  # the student's file must run a Numba-compiled kernel

    # ---------------------------------------------------------------- files and header

    @property
    def solution_file(self) -> Path:
        return HERE / "solutions" / f"{self.name}.py"

    @property
    def exercise_file(self) -> Path:
        return HERE / "exercises" / f"{self.name}.py"

    @cached_property
    def header(self) -> dict:
        """The solution file's header: title, difficulty, minutes, decisions."""
        text = self.solution_file.read_text(encoding="utf-8")
        doc = text.split('"""', 2)[1]

        def field_of(key):
            m = re.search(rf"^{key}: (.+)$", doc, re.MULTILINE)
            if not m:
                raise ValueError(f"{self.solution_file.name}: the header has no '{key}:' line")
            return m.group(1).strip()

        minutes = re.fullmatch(r"about (\d+) minutes", field_of("Time"))
        if not minutes:
            raise ValueError(f"{self.solution_file.name}: 'Time:' must read 'about N minutes'")
        return {
            "title": doc.strip().splitlines()[0].removeprefix("Exercise: "),
            "difficulty": field_of("Difficulty"),
            "minutes": int(minutes.group(1)),
            "specification": field_of("Specification"),
            "decisions": tuple(d.strip() for d in field_of("Decisions").split(",")),
        }

    @property
    def difficulty(self) -> str:
        return self.header["difficulty"]

    @property
    def minutes(self) -> int:
        return self.header["minutes"]

    @property
    def decisions(self) -> tuple:
        return self.header["decisions"]

    @property
    def title(self) -> str:
        return self.header["title"]

    # ---------------------------------------------------------------- calls

    def call(self, fn, case: Case) -> dict:
        """``fn`` on ``case``: its results by field name (a wrong number of results raises
        :class:`ResultError`)."""
        raise NotImplementedError

    def unpack(self, result) -> dict:
        if len(self.fields) == 1:
            return {self.fields[0]: result}
        if not isinstance(result, (tuple, list)) or len(result) != len(self.fields):
            what = type(result).__name__
            if isinstance(result, (tuple, list)):
                what = f"{len(result)} values"
            raise ResultError(f"returned {what}; expected a tuple of {len(self.fields)} "
                              f"({', '.join(self.fields)})")
        return dict(zip(self.fields, result))

    def scale(self, name: str, case: Case) -> float:
        """The size of the data a float result is measured against (zeta_ref.tolerances)."""
        if name in ("weights", "mean_weight"):
            return 1.0
        source = case.k if name == "mean_k" else case.v
        return float(np.max(np.abs(source))) if source.size else 0.0

    def float_dtype(self, case: Case):
        return case.q.dtype

    # ---------------------------------------------------------------- inputs

    def strategy(self):
        """A hypothesis strategy of :class:`Case` (small N; hypothesis shrinks toward 1)."""
        raise NotImplementedError

    def awkward(self) -> list:
        """Hand-picked cases: the sizes and values where implementations go wrong."""
        raise NotImplementedError

    def perturb(self, case: Case, t: int, rng) -> Case:
        """``case`` with every input after position t redrawn (the future property)."""
        raise NotImplementedError

    def invariants(self, case: Case, results: dict) -> str | None:
        """What must hold of any right answer, whatever the specification says (None: all
        holds; else what does not)."""
        return None

    # ---------------------------------------------------------------- showing

    def describe(self, case: Case, name: str, index: tuple) -> list:
        """Lines that show the input of ``case``, near the entry ``index`` of ``name``."""
        return [f"{arg} = {short(value)}" for arg, value in case.args.items()]

    def show(self, name: str, value, case: Case, index: tuple) -> str:
        """The entry ``index`` of the result ``name`` (or the row it belongs to)."""
        value = np.asarray(value)
        return short(value[index])


class ResultError(ValueError):
    """A result that is not what the specification returns (its kind, not its values)."""


# -------------------------------------------------------------------- stage 2: quantize


class Quantize(Exercise):
    name = function = "quantize"
    spec = staticmethod(spec_quantize.quantize)
    swap = "quantize"
    fields = ("q_coords",)
    pipeline_fields = ("q_coords", "k_coords")
    future_property = True

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["x"], a["bits"], a["squash_method"], a["clip_range"]))

    def make(self, x, bits, method="sigmoid", clip_range=(-4.0, 4.0), label=""):
        lead, n = x.shape[:-2], x.shape[-2]
        cfg = ZetaConfig(bits=bits, squash=method, clip_range=clip_range)
        return Case({"x": x, "bits": bits, "squash_method": method, "clip_range": clip_range},
                    cfg, q=x, k=x, v=_zeros(lead, n, 1, x.dtype), label=label)

    def strategy(self):
        st, hnp = _hypothesis()
        ends = st.sampled_from([0.0, -4.0, 4.0, 40.0, -40.0, 1e6, -1e6])

        @st.composite
        def cases(draw):
            dtype = np.dtype(draw(st.sampled_from(["float64", "float32"])))
            d = draw(st.integers(1, 3))
            # the most bits allowed, or a few (booleans shrink to False: a few)
            bits = 63 // d if draw(st.booleans()) else draw(st.integers(1, 12))
            shape = draw(st.sampled_from([(), (2,)])) + (draw(st.integers(1, 20)), d)
            x = draw(hnp.arrays(dtype, shape, elements=st.one_of(
                st.floats(-6, 6, width=32), ends)))
            return self.make(x, bits, draw(st.sampled_from(SQUASHES)))
        return cases()

    def awkward(self):
        rng = np.random.default_rng(2)
        out = []
        for n, dtype, d, bits, method in [(1, np.float64, 3, 10, "sigmoid"),
                                          (2, np.float32, 3, 1, "sigmoid"),
                                          (3, np.float64, 1, 63, "sigmoid"),
                                          (17, np.float32, 3, 21, "tanh"),
                                          (257, np.float64, 2, 31, "clip"),
                                          (257, np.float32, 3, 10, "sigmoid")]:
            x = (rng.standard_normal((n, d)) * 3).astype(dtype)
            out.append(self.make(x, bits, method, label=f"N={n}, {np.dtype(dtype)}, "
                                                         f"d={d}, bits={bits}, {method}"))
        # the ends of the range: squashes of exactly 0 and 1, and the clip range's own ends
        ends = np.array([[-1e6, 0.0, 1e6], [-4.0, 4.0, 40.0], [-40.0, 2.0, 2.0]])
        for method, bits in [("sigmoid", 1), ("sigmoid", 21), ("clip", 4), ("tanh", 21)]:
            for dtype in (np.float32, np.float64):
                out.append(self.make(ends.astype(dtype), bits, method,
                                     label=f"the ends of the range, {method}, bits={bits}, "
                                           f"{np.dtype(dtype)}"))
        ties = np.repeat(rng.standard_normal((1, 3)), 17, axis=0)
        out.append(self.make(ties, 10, label="17 equal points (ties)"))
        return out

    def perturb(self, case, t, rng):
        x = case.args["x"].copy()
        x[..., t + 1:, :] = rng.standard_normal(x[..., t + 1:, :].shape) * 5
        a = case.args
        return self.make(x, a["bits"], a["squash_method"], a["clip_range"])

    def invariants(self, case, results):
        cells = np.asarray(results["q_coords"])
        x = case.args["x"]
        if cells.shape != x.shape:
            return None  # the comparison reports the shape
        top = (1 << case.args["bits"]) - 1
        if cells.size and (cells.astype(np.float64).max() > top or cells.min() < 0):
            return f"a cell outside [0, 2^bits - 1] = [0, {top}]"
        # larger coordinates never get lower cells (within one axis)
        flat_x = np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)
        flat_c = np.moveaxis(cells, -1, 0).reshape(x.shape[-1], -1)
        for j in range(x.shape[-1]):
            order = np.argsort(flat_x[j], kind="stable")
            if (np.diff(flat_c[j][order].astype(np.float64)) < 0).any():
                return "not monotone: a larger coordinate got a lower cell"
        return None

    def describe(self, case, name, index):
        x, bits = case.args["x"], case.args["bits"]
        lines = [f"x = {short(x)} ({x.dtype}, shape {x.shape})",
                 f"bits = {bits}, squash_method = {case.args['squash_method']!r}, "
                 f"clip_range = {case.args['clip_range']}"]
        if index is not None:
            s = float(squash(x[index], case.args["squash_method"], case.args["clip_range"]))
            lines.append(f"x{list(index)} = {float(x[index])!r} squashes to s = {s!r}; "
                         f"s * 2^bits = {s * math.ldexp(1.0, bits)!r}")
        return lines

    def show(self, name, value, case, index):
        return binary(np.asarray(value)[index], case.args["bits"])


# -------------------------------------------------------------------- stage 3: morton


class Morton(Exercise):
    name = function = "morton_encode"
    spec = staticmethod(spec_morton.morton_encode)
    swap = "morton_encode"
    fields = ("q_codes",)
    pipeline_fields = ("q_codes", "k_codes")

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["u"], a["bits"]))

    def make(self, u, bits, label=""):
        d = u.shape[-1]
        mappable = u.ndim >= 2
        lead, n = (u.shape[:-2], u.shape[-2]) if mappable else ((), 1)
        coords = u.astype(np.uint64).reshape(tuple(lead) + (n, d))  # (..., N, d)
        return Case({"u": u, "bits": bits}, ZetaConfig(bits=bits), q=_zeros(lead, n, d),
                    k=_zeros(lead, n, d), v=_zeros(lead, n, 1),
                    given={"q_coords": coords, "k_coords": coords}, label=label,
                    mappable=mappable, notes=False)

    def strategy(self):
        st, hnp = _hypothesis()

        @st.composite
        def cases(draw):
            d = draw(st.integers(1, 4))
            bits = 63 // d if draw(st.booleans()) else draw(st.integers(1, 6))
            shape = draw(st.sampled_from([(), (2,)])) + (draw(st.integers(1, 20)), d)
            dtype = np.dtype(draw(st.sampled_from(["uint64", "int64"])))
            u = draw(hnp.arrays(dtype, shape, elements=st.integers(0, (1 << bits) - 1)))
            return self.make(u, bits)
        return cases()

    def awkward(self):
        rng = np.random.default_rng(3)
        out = [self.make(np.array([3, 0], dtype=np.int64), 2,
                         label="one point of shape (d,): the docstring's example")]
        for n, d, bits in [(1, 3, 10), (2, 2, 1), (3, 1, 63), (17, 3, 21), (257, 2, 31),
                           (257, 3, 10), (17, 4, 15), (3, 7, 9)]:
            u = rng.integers(0, 1 << bits, size=(n, d), dtype=np.uint64, endpoint=False)
            out.append(self.make(u, bits, label=f"N={n}, d={d}, bits={bits}"))
        for d in (1, 2, 3):  # every bit set: the top of the range, at the most bits allowed
            bits = 63 // d
            u = np.full((2, d), (1 << bits) - 1, dtype=np.uint64)
            out.append(self.make(u, bits, label=f"every bit set, d={d}, bits={bits}"))
        out.append(self.make(np.tile(np.array([[5, 1, 7]], np.int64), (17, 1)), 3,
                             label="17 equal points (ties), int64"))
        return out

    def describe(self, case, name, index):
        u, bits = case.args["u"], case.args["bits"]
        lines = [f"u = {short(u)} ({u.dtype}, shape {u.shape}), bits = {bits}"]
        if index is not None:
            row = u[index] if u.ndim >= 2 else u
            bins = ", ".join(binary(c, bits).split(" ")[0] for c in row)
            lines.append(f"u{list(index)} = {short(row)} = ({bins})")
        return lines

    def show(self, name, value, case, index):
        u = case.args["u"]
        return binary(np.asarray(value)[index], u.shape[-1] * case.args["bits"], u.shape[-1])


class NumbaMorton(Morton):
    name = "numba_morton_encode"
    function = "morton_encode"
    numba = True


# -------------------------------------------------------------------- stage 4: sort


class SortKeys(Exercise):
    name = function = "sort_keys"
    spec = staticmethod(spec_sort.sort_keys)
    swap = "sort_keys"
    fields = ("key_perm", "sorted_key_codes")
    pipeline_fields = ("key_perm", "sorted_key_codes")

    def call(self, fn, case):
        return self.unpack(fn(case.copy_args()["key_codes"]))

    def make(self, codes, d, bits, label=""):
        lead, n = codes.shape[:-1], codes.shape[-1]
        return Case({"key_codes": codes}, ZetaConfig(bits=bits), q=_zeros(lead, n, d),
                    k=_zeros(lead, n, d), v=_zeros(lead, n, 1), given={"k_codes": codes},
                    label=label)

    def strategy(self):
        st, hnp = _hypothesis()

        @st.composite
        def cases(draw):
            d, bits = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            shape = draw(st.sampled_from([(), (2,)])) + (draw(st.integers(1, 24)),)
            codes = draw(hnp.arrays(np.uint64, shape,
                                    elements=st.integers(0, (1 << (d * bits)) - 1)))
            return self.make(codes, d, bits)
        return cases()

    def awkward(self):
        rng = np.random.default_rng(4)
        out = []
        for n, d, bits in [(1, 3, 10), (2, 3, 1), (3, 1, 63), (17, 3, 2), (257, 3, 10),
                           (257, 3, 1)]:
            codes = rng.integers(0, 1 << (d * bits), size=(n,), dtype=np.uint64)
            out.append(self.make(codes, d, bits, label=f"N={n}, codes of {d * bits} bits"))
        out.append(self.make(np.full((2, 17), 5, np.uint64), 3, 1,
                             label="17 equal codes in each of 2 rows (ties)"))
        top = np.array([(1 << 63) - 1, 0, (1 << 63) - 1, 1], dtype=np.uint64)
        out.append(self.make(top, 1, 63, label="the largest code, twice"))
        return out

    def invariants(self, case, results):
        perm = np.asarray(results["key_perm"])
        codes = case.args["key_codes"]
        if perm.shape != codes.shape or perm.dtype.kind not in "iu":
            return None
        if not (np.sort(perm, axis=-1) == np.arange(codes.shape[-1])).all():
            return "key_perm is not a permutation of 0 .. N-1"
        return None

    def describe(self, case, name, index):
        codes = case.args["key_codes"]
        return [f"key_codes = {short(codes, 24)} (shape {codes.shape})"]

    def show(self, name, value, case, index):
        value = np.asarray(value)
        row = value[index[:-1]] if value.ndim > 1 else value
        return f"{short(row, 24)} (entry {list(index)} = {value[index]})"


# -------------------------------------------------------------------- stage 5: search, window


class _Pools(Exercise):
    """Shared by the two exercises of stage 5: codes, sorted keys and causal pools."""

    future_property = True
    with_width = False

    def make(self, q_codes, k_codes, d, bits, causal, chunk, width=None, label=""):
        lead, n = k_codes.shape[:-1], k_codes.shape[-1]
        perm, sorted_codes = spec_sort.sort_keys(k_codes)
        pool = pool_lengths(n, causal, chunk)
        args = {"q_codes": q_codes, "key_perm": perm, "sorted_key_codes": sorted_codes,
                "pool_len": pool}
        k_top = 1
        if self.with_width:
            args["width"] = width
            k_top = width
        # in "inclusive" and "none" mode the chunk changes no pool: the pass's chunk is then
        # all N keys, so that "the window cut from the whole chunk" means all keys (D4)
        cfg = ZetaConfig(k=k_top, bits=bits, causal=causal,
                         chunk_size=chunk if causal == "strict" else max(n, 1))
        return Case(args, cfg, q=_zeros(lead, n, d), k=_zeros(lead, n, d), v=_zeros(lead, n, 1),
                    given={"q_codes": q_codes, "k_codes": k_codes, "key_perm": perm,
                           "sorted_key_codes": sorted_codes},
                    label=label, mappable=not self.with_width or width <= n)

    def strategy(self):
        st, hnp = _hypothesis()

        @st.composite
        def cases(draw):
            d, bits = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            n = draw(st.integers(1, 20))
            shape = draw(st.sampled_from([(), (2,)])) + (n,)
            codes = st.integers(0, (1 << (d * bits)) - 1)
            k_codes = draw(hnp.arrays(np.uint64, shape, elements=codes))
            q_codes = draw(hnp.arrays(np.uint64, shape, elements=codes))
            causal = draw(st.sampled_from(CAUSAL_MODES))
            chunk = draw(st.integers(1, n + 1))
            width = draw(st.integers(1, n + 2)) if self.with_width else None
            return self.make(q_codes, k_codes, d, bits, causal, chunk, width)
        return cases()

    def awkward(self):
        rng = np.random.default_rng(5)
        out = []
        for n, lead, bits, causal, chunk, width in [
                (1, (), 10, "inclusive", 1, 4), (2, (), 1, "inclusive", 1, 1),
                (3, (), 10, "strict", 1, 2), (17, (), 1, "inclusive", 4, 4),
                (17, (2,), 2, "strict", 4, 5), (17, (), 10, "none", 17, 8),
                (257, (), 10, "inclusive", 33, 32), (257, (), 2, "strict", 64, 16),
                (17, (), 10, "inclusive", 3, 17), (3, (), 10, "none", 3, 8)]:
            top = 1 << (3 * bits)
            k_codes = rng.integers(0, top, size=lead + (n,), dtype=np.uint64)
            q_codes = rng.integers(0, top, size=lead + (n,), dtype=np.uint64)
            label = f"N={n}, causal={causal!r}"
            label += f", chunk {chunk}" if causal == "strict" else ""
            if self.with_width:
                label += f", W={width}" + (" >= N" if width >= n else "")
            label += ", ties" if bits < 3 else ""
            out.append(self.make(q_codes, k_codes, 3, bits, causal, chunk, width, label=label))
        equal = np.full((17,), 9, dtype=np.uint64)
        out.append(self.make(equal, equal, 3, 2, "inclusive", 4, 4 if self.with_width else None,
                             label="every code equal (ties), queries too"))
        return out

    def perturb(self, case, t, rng):
        a, cfg = case.args, case.cfg
        k_codes = case.given["k_codes"].copy()
        q_codes = a["q_codes"].copy()
        top = 1 << (case.q.shape[-1] * cfg.bits)
        for codes in (k_codes, q_codes):
            codes[..., t + 1:] = rng.integers(0, top, size=codes[..., t + 1:].shape,
                                              dtype=np.uint64)
        chunk = cfg.chunk_size
        return self.make(q_codes, k_codes, case.q.shape[-1], cfg.bits, cfg.causal, chunk,
                         a.get("width"))

    def pool_of(self, case, index):
        """The row, query, and that query's pool (positions and codes in Z order)."""
        a = case.args
        row, i = tuple(index[:-1]), index[-1]
        if self.with_width:
            row, i = tuple(index[:-2]), index[-2]
        perm, codes = a["key_perm"][row], a["sorted_key_codes"][row]
        inside = perm < a["pool_len"][i]
        return row, i, perm[inside], codes[inside]

    def describe(self, case, name, index):
        a, cfg = case.args, case.cfg
        bits, d = cfg.bits, case.q.shape[-1]
        mode = f"causal={cfg.causal!r}" + (f", chunk {cfg.chunk_size}"
                                           if cfg.causal == "strict" else "")
        lines = [f"N = {case.n} ({mode}); leading dims {case.q.shape[:-2]}"
                 + (f"; width W = {a['width']}" if self.with_width else "")]
        lines.append(f"pool_len = {short(a['pool_len'], 24)}")
        if index is None:
            return lines
        row, i, pos, codes = self.pool_of(case, index)
        q = a["q_codes"][row + (i,)]
        lines.append(f"query {i}{' of row ' + str(list(row)) if row else ''}: code "
                     f"{binary(q, d * bits, d)}; its pool is the {pos.size} keys at positions "
                     f"0 .. {int(a['pool_len'][i]) - 1}")
        if pos.size:
            lines.append(f"  the pool in Z order (rank: position/code): "
                         + ", ".join(f"{r}: {p}/{c}" for r, (p, c) in
                                     enumerate(zip(pos[:24].tolist(), codes[:24].tolist())))
                         + (" ..." if pos.size > 24 else ""))
            p = int(np.searchsorted(codes, q, side="left"))
            lines.append(f"  the query's insertion point: p = {p} (keys with a smaller code)")
        return lines


class InsertionPoints(_Pools):
    name = function = "insertion_points"
    spec = staticmethod(spec_window.insertion_points)
    swap = "insertion_points"
    fields = ("insertion",)
    pipeline_fields = ("insertion",)

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["q_codes"], a["key_perm"], a["sorted_key_codes"],
                              a["pool_len"]))

    def invariants(self, case, results):
        p = np.asarray(results["insertion"])
        pool = case.args["pool_len"]
        if p.shape != case.args["q_codes"].shape or p.dtype.kind not in "iu":
            return None
        bad = np.argwhere((p < 0) | (p > pool))
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            return (f"insertion point {int(p[where])} of query {where[-1]} lies outside its "
                    f"pool of {int(pool[where[-1]])} keys")
        return None

    def show(self, name, value, case, index):
        return str(int(np.asarray(value)[index]))


class NeighbourWindow(_Pools):
    name = function = "neighbour_window"
    spec = staticmethod(spec_window.neighbour_window)
    swap = "neighbour_window"
    fields = ("window_idx",)
    pipeline_fields = ("window_idx",)
    with_width = True
    dense_property = True

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["q_codes"], a["key_perm"], a["sorted_key_codes"],
                              a["pool_len"], a["width"]))

    def invariants(self, case, results):
        win = np.asarray(results["window_idx"])
        a = case.args
        n, width = case.n, a["width"]
        if win.shape != a["q_codes"].shape + (width,) or win.dtype.kind not in "iu":
            return None
        rows = win.reshape(-1, n, width)
        for r, row in enumerate(rows):
            for i in range(n):
                slots, pool = row[i], int(a["pool_len"][i])
                keys = slots[slots >= 0]
                outside = np.concatenate([keys[keys >= pool], slots[slots < -1]])
                if outside.size:
                    return (f"query {i} (row {r}) holds key {int(outside[0])}, outside its "
                            f"pool, the positions 0 .. {pool - 1} (D4)")
                if len(set(keys.tolist())) != keys.size:
                    return f"query {i} (row {r}) holds one key twice: {short(slots)}"
                if keys.size != min(width, pool):
                    return (f"query {i} (row {r}) holds {keys.size} keys; its pool has {pool} "
                            f"and W = {width}, so it must hold {min(width, pool)} (D9, D11)")
                if (slots[keys.size:] != -1).any():
                    return f"query {i} (row {r}): empty slots (-1) must come last (D9)"
        return None

    def show(self, name, value, case, index):
        row_slots = np.asarray(value)[index[:-1]]
        _, _, pos, _ = self.pool_of(case, index)
        rank = {int(p): r for r, p in enumerate(pos.tolist())}
        ranks = ["-" if int(s) == -1 else str(rank[int(s)]) if int(s) in rank
                 else f"{int(s)}?" for s in row_slots]
        return (f"positions {short(row_slots, 24)} = pool ranks [{', '.join(ranks)}]"
                + ("  (?: not in the pool)" if any(r.endswith("?") for r in ranks) else ""))


# -------------------------------------------------------------------- stage 6


class HistoryMeans(Exercise):
    name = function = "history_means"
    spec = staticmethod(spec_topk.history_means)
    swap = "history_means"
    fields = ("mean_k", "mean_v")
    pipeline_fields = ("mean_k", "mean_v")
    future_property = True

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["k"], a["v"], a["causal"]))

    def make(self, k, v, causal, chunk, label=""):
        cfg = ZetaConfig(causal=causal, chunk_size=chunk)
        return Case({"k": k, "v": v, "causal": causal}, cfg, q=k, k=k, v=v, label=label)

    def strategy(self):
        st, hnp = _hypothesis()

        @st.composite
        def cases(draw):
            dtype = np.dtype(draw(st.sampled_from(["float64", "float32"])))
            lead = draw(st.sampled_from([(), (2,)]))
            n = draw(st.integers(1, 20))
            values = st.floats(-4, 4, width=32)
            k = draw(hnp.arrays(dtype, lead + (n, draw(st.integers(1, 3))), elements=values))
            v = draw(hnp.arrays(dtype, lead + (n, draw(st.integers(1, 3))), elements=values))
            return self.make(k, v, draw(st.sampled_from(CAUSAL_MODES)),
                             draw(st.integers(1, n + 1)))
        return cases()

    def awkward(self):
        rng = np.random.default_rng(6)
        out = []
        for n, dtype, causal in [(1, np.float64, "inclusive"), (2, np.float32, "strict"),
                                 (3, np.float64, "none"), (17, np.float32, "inclusive"),
                                 (257, np.float64, "inclusive"), (257, np.float32, "none")]:
            k = rng.standard_normal((n, 3)).astype(dtype)
            v = rng.standard_normal((n, 5)).astype(dtype)
            out.append(self.make(k, v, causal, max(1, n // 4),
                                 label=f"N={n}, {np.dtype(dtype)}, causal={causal!r}"))
        return out

    def perturb(self, case, t, rng):
        k, v = case.args["k"].copy(), case.args["v"].copy()
        k[..., t + 1:, :] = rng.standard_normal(k[..., t + 1:, :].shape)
        v[..., t + 1:, :] = rng.standard_normal(v[..., t + 1:, :].shape)
        return self.make(k, v, case.args["causal"], case.cfg.chunk_size)

    def describe(self, case, name, index):
        k, v = case.args["k"], case.args["v"]
        lines = [f"causal = {case.args['causal']!r}; k: {k.dtype}, shape {k.shape}; "
                 f"v: shape {v.shape}"]
        if index is not None:
            i = index[-2]
            x = k if name == "mean_k" else v
            lines.append(f"{'k' if name == 'mean_k' else 'v'}[..., 0 .. {i}, :] = "
                         f"{short(x[index[:-2]][:i + 1], 12)}")
        return lines

    def show(self, name, value, case, index):
        return f"row {list(index[:-1])} = {short(np.asarray(value)[index[:-1]])}"


class TopkAttention(Exercise):
    name = function = "topk_attention"
    spec = staticmethod(spec_topk.topk_attention)
    swap = "topk_attention"
    fields = ("output", "weights", "mean_weight")
    pipeline_fields = ("weights", "mean_weight")
    future_property = True
    dense_property = True

    def call(self, fn, case):
        a = case.copy_args()
        return self.unpack(fn(a["q"], a["k"], a["v"], a["candidates"], a["score"], a["gamma"],
                              a["mean_k"], a["mean_v"]))

    def make(self, q, k, v, cfg, label=""):
        _, im = zeta_attention(q, k, v, cfg, return_intermediates=True)
        args = {"q": q, "k": k, "v": v, "candidates": im.candidates, "score": cfg.score,
                "gamma": cfg.gamma, "mean_k": im.mean_k, "mean_v": im.mean_v}
        given = {"candidates": im.candidates}
        if cfg.history_mean:
            given.update(mean_k=im.mean_k, mean_v=im.mean_v)
        return Case(args, cfg, q=q, k=k, v=v, given=given, label=label)

    def strategy(self):
        st, hnp = _hypothesis()

        @st.composite
        def cases(draw):
            dtype = np.dtype(draw(st.sampled_from(["float64", "float32"])))
            lead = draw(st.sampled_from([(), (2,)]))
            n, d_k, d_v = draw(st.integers(1, 16)), draw(st.integers(1, 3)), draw(
                st.integers(1, 3))
            values = st.floats(-3, 3, width=32)
            q = draw(hnp.arrays(dtype, lead + (n, d_k), elements=values))
            k = draw(hnp.arrays(dtype, lead + (n, d_k), elements=values))
            v = draw(hnp.arrays(dtype, lead + (n, d_v), elements=values))
            k_top = draw(st.integers(1, n + 2))
            cfg = ZetaConfig(k=k_top, window=k_top + draw(st.integers(0, 3)),
                             causal=draw(st.sampled_from(CAUSAL_MODES)),
                             chunk_size=draw(st.integers(1, n + 1)), bits=3,
                             score=draw(st.sampled_from(SCORES)),
                             gamma=draw(st.floats(0.1, 3.0)),
                             history_mean=draw(st.booleans()))
            return self.make(q, k, v, cfg)
        return cases()

    def awkward(self):
        rng = np.random.default_rng(7)
        out = []
        for n, dtype, cfg in [
                (1, np.float64, ZetaConfig(k=4)),
                (2, np.float32, ZetaConfig(k=1, causal="strict", chunk_size=1)),
                (3, np.float64, ZetaConfig(k=8, causal="none", score="softmax")),
                (17, np.float32, ZetaConfig(k=4, window=8, score="neg_euclidean", bits=2)),
                (17, np.float64, ZetaConfig(k=4, causal="strict", chunk_size=4,
                                            history_mean=False, score="inv_euclidean")),
                (257, np.float32, ZetaConfig(k=16, gamma=0.2)),
                (257, np.float64, ZetaConfig(k=8, causal="none", history_mean=False,
                                             gamma=2.0))]:
            q, k = (rng.standard_normal((n, 3)).astype(dtype) for _ in range(2))
            v = rng.standard_normal((n, 5)).astype(dtype)
            label = (f"N={n}, {np.dtype(dtype)}, k={cfg.k}{' >= N' if cfg.k >= n else ''}, "
                     f"causal={cfg.causal!r}, {cfg.score}, mean term "
                     f"{'on' if cfg.history_mean else 'off'}")
            out.append(self.make(q, k, v, cfg, label=label))
        ties = np.tile(rng.standard_normal((1, 3)), (17, 1))
        out.append(self.make(ties, ties.copy(), rng.standard_normal((17, 2)),
                             ZetaConfig(k=4), label="17 equal keys and queries (ties)"))
        return out

    def perturb(self, case, t, rng):
        q, k, v = (x.copy() for x in (case.q, case.k, case.v))
        for x in (q, k, v):
            x[..., t + 1:, :] = rng.standard_normal(x[..., t + 1:, :].shape).astype(x.dtype)
        return self.make(q, k, v, case.cfg)

    def invariants(self, case, results):
        w, mw = results.get("weights"), results.get("mean_weight")
        if w is None or mw is None:
            return None
        w, mw = np.asarray(w, dtype=np.float64), np.asarray(mw, dtype=np.float64)
        cand = case.args["candidates"]
        if w.shape != cand.shape or mw.shape != cand.shape[:-1]:
            return None
        if ((cand < 0) & (w != 0)).any():
            return "an empty slot (index -1) got a weight other than 0 (D9)"
        has = (cand >= 0).any(axis=-1) | case.cfg.history_mean
        total = w.sum(axis=-1) + mw
        tol = 1e-4 if case.q.dtype == np.float32 else 1e-10
        off = has & (np.abs(total - 1) > tol)
        if off.any():
            where = tuple(int(i) for i in np.argwhere(off)[0])
            return (f"the weights of query {where[-1]} (its slots and the mean term) add up "
                    f"to {total[where]:.6g}, not 1")
        return None

    def describe(self, case, name, index):
        a, cfg = case.args, case.cfg
        lines = [f"N = {case.n}, {case.q.dtype}, score = {cfg.score!r}, gamma = {cfg.gamma:.6g}"
                 f", mean term {'on' if cfg.history_mean else 'off (mean_k = mean_v = None)'}"
                 f", causal={cfg.causal!r}"]
        if index is not None:
            # the query's position is the last index of mean_weight, the one before the last
            # of output and weights
            at = -1 if name == "mean_weight" else -2
            row, i = tuple(index[:at]), index[at]
            lines.append(f"query {i}: q = {short(a['q'][row + (i,)])}, candidates = "
                         f"{short(a['candidates'][row + (i,)])}")
            if cfg.history_mean:
                lines.append(f"  its mean term: mean_k = {short(a['mean_k'][row + (i,)])}, "
                             f"mean_v = {short(a['mean_v'][row + (i,)])}")
        return lines

    def show(self, name, value, case, index):
        value = np.asarray(value)
        if name == "mean_weight":
            return f"{value[index]!r}"
        return f"row {list(index[:-1])} = {short(value[index[:-1]])}"


#: Every exercise, in the order of the pass (the Numba twin last).
EXERCISES = {e.name: e for e in (Quantize(), Morton(), SortKeys(), InsertionPoints(),
                                  NeighbourWindow(), HistoryMeans(), TopkAttention(),
                                  NumbaMorton())}


def get_exercise(name: str) -> Exercise:
    """The exercise ``name``, or a ValueError that lists them."""
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]
