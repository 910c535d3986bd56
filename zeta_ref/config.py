"""ZetaConfig: every choice of the ZETA forward pass, including those the paper leaves open.

Each field that settles a point the paper is silent on carries the id of that decision
(D1...D13); docs/decisions.md gives the question, the default, the alternatives and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._checks import is_integer, is_real

CAUSAL_MODES = ("inclusive", "strict", "none")
SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")
SQUASHES = ("sigmoid", "tanh", "clip")

#: Without an explicit ``chunk_size``, M = max(k, ceil(N / AUTO_CHUNKS)): about this many
#: chunks (D5).
AUTO_CHUNKS = 8
#: The largest k, window or chunk_size a config holds (sizes are int64 in every backend).
MAX_SIZE = 2**63 - 1


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")


@dataclass(frozen=True)
class ZetaConfig:
    """All settings of one ZETA forward pass; validated on construction.

    Parameters
    ----------
    k : int, default 32
        Number of keys each query attends to (the paper's top-k; section 3.3). A pool never
        holds more than N keys, so a pass over N positions uses ``min(k, N)`` slots
        (:meth:`k_for`); k itself may be anything from 1 to ``MAX_SIZE``.
    bits : int, default 10
        Bits per coordinate in the quantisation (D2). ``d_k * bits`` must be at most 63;
        that is checked when the dimension is known, at the call.
    chunk_size : int or None, default None
        Chunk length M of the causal pools (D5). None picks ``max(k, ceil(N / 8))``.
        It changes the answer only for ``causal="strict"``; see :func:`pool_lengths`.
    causal : {"inclusive", "strict", "none"}, default "inclusive"
        Which keys a query may see (D4). "inclusive": every key at or before its own
        position; "strict": keys of the earlier chunks only (paper-literal); "none": all.
    window : int or None, default None
        Width W of the neighbour window taken around the query's place in the sorted keys
        (D6). None means W = k, the window is the selection. W > k re-ranks the window
        exactly down to k. Like k, it is capped at N for a pass over N positions
        (:meth:`window_for`).
    score : {"cauchy", "softmax", "neg_euclidean", "inv_euclidean"}, default "cauchy"
        How the k candidates are weighted (section 3.4, Eq. 6 and the ablation's variants).
    gamma : float, default 0.5
        The Cauchy scale gamma of Eq. 6 (D7). Must be > 0 for ``score="cauchy"``.
    history_mean : bool, default True
        Append the cumulative mean of keys and values as an extra candidate (D8). A NumPy
        bool is accepted and stored as a Python bool; 0 and 1 are not bools.
    squash : {"sigmoid", "tanh", "clip"}, default "sigmoid"
        How real coordinates are mapped to [0, 1] before quantising (D1).
    clip_range : (float, float), default (-4.0, 4.0)
        The fixed range mapped linearly onto [0, 1] by ``squash="clip"`` (D1): finite, lo < hi,
        and hi - lo finite as a float.
    """

    k: int = 32
    bits: int = 10
    chunk_size: int | None = None
    causal: str = "inclusive"
    window: int | None = None
    score: str = "cauchy"
    gamma: float = 0.5
    history_mean: bool = True
    squash: str = "sigmoid"
    clip_range: tuple = field(default=(-4.0, 4.0))

    def __post_init__(self):
        if not is_integer(self.k) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1; got {self.k!r}")
        for name in ("k", "window", "chunk_size"):
            value = getattr(self, name)
            if is_integer(value) and value > MAX_SIZE:
                raise ValueError(f"{name} must be at most 2**63 - 1 (sizes are int64); "
                                 f"got {value!r}")
        if not is_integer(self.bits) or not 1 <= self.bits <= 63:
            raise ValueError(f"bits must be an integer in [1, 63]; got {self.bits!r}")
        if self.chunk_size is not None and (not is_integer(self.chunk_size) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be None or an integer >= 1; got {self.chunk_size!r}")
        _choice("causal", self.causal, CAUSAL_MODES)
        if self.window is not None and (not is_integer(self.window) or self.window < self.k):
            raise ValueError(
                f"window must be None or an integer >= k (= {self.k}); got {self.window!r}"
            )
        _choice("score", self.score, SCORES)
        try:  # an int too large for a float is not finite either
            gamma = float(self.gamma) if is_real(self.gamma) else math.nan
        except OverflowError:
            gamma = math.nan
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite real number; got {self.gamma!r}")
        if self.score == "cauchy" and gamma <= 0:  # as a float: a tiny longdouble rounds to 0
            raise ValueError(f"gamma must be > 0 for score='cauchy'; got {self.gamma!r}")
        if not isinstance(self.history_mean, (bool, np.bool_)):
            raise TypeError(f"history_mean must be True or False; got {self.history_mean!r}")
        _choice("squash", self.squash, SQUASHES)
        try:
            lo, hi = self.clip_range
        except (TypeError, ValueError):
            raise ValueError(f"clip_range must be a pair (lo, hi); got {self.clip_range!r}") from None
        try:  # an int too large for a float is not finite either
            finite = is_real(lo) and is_real(hi) and math.isfinite(lo) and math.isfinite(hi)
        except OverflowError:
            finite = False
        if not (finite and lo < hi):
            raise ValueError(f"clip_range must be finite numbers with lo < hi; got {self.clip_range!r}")
        if not float(lo) < float(hi):  # the stages compute in float64: two ints past 2^53 or
            raise ValueError(     # two close long doubles can round to one number
                f"clip_range must have lo < hi as float64 numbers (the squash divides by hi - "
                f"lo); got {self.clip_range!r}, which rounds to ({float(lo)!r}, {float(hi)!r})")
        if not math.isfinite(float(hi) - float(lo)):  # the squash divides by the width (D1)
            raise ValueError(f"clip_range must have a finite width hi - lo (the clip squash "
                             f"divides by it); got {self.clip_range!r}")
        # Store plain Python numbers so that equal configs compare and print equal, and so
        # that a NumPy integer never reaches the stages: 1 << np.int32(31) overflows.
        for name in ("k", "bits", "chunk_size", "window"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "clip_range", (float(lo), float(hi)))
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "history_mean", bool(self.history_mean))  # np.True_ -> True

    @property
    def window_width(self) -> int:
        """W, the number of keys the window takes before any re-rank (D6)."""
        return self.k if self.window is None else int(self.window)

    def k_for(self, n: int) -> int:
        """k as used for a sequence of length ``n``: ``min(k, n)``.

        No pool holds more than n keys, so slots beyond n would always be empty (-1, D9);
        capping k keeps the arrays (N, k) small whatever k is, and changes no selection (the
        outputs only by rounding, where a sum over the slots groups its terms by the number of
        slots: the NumPy specification's pairwise sums, the CuPy fast kernel's lanes).
        """
        return min(int(self.k), int(n))

    def window_for(self, n: int) -> int:
        """W as used for a sequence of length ``n``: ``min(W, n)``, for the same reason.

        A window of n or more ranks always covers the whole pool, so the cap changes no
        selection (and ``k_for(n) <= window_for(n)`` as k <= W).
        """
        return min(self.window_width, int(n))

    def chunk_size_for(self, n: int) -> int:
        """M for a sequence of length ``n``: the given ``chunk_size`` or the D5 rule.

        The rule is ``max(k, ceil(n / 8))``: about eight pools, and never a chunk shorter
        than k, so that in "strict" mode a chunk's queries can fill their k slots from the
        previous chunk alone.
        """
        if self.chunk_size is not None:
            return int(self.chunk_size)
        return max(int(self.k), -(-int(n) // AUTO_CHUNKS))
