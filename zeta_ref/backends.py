"""The backend registry: one entry per implementation of the six stages.

The composed forward pass (:mod:`zeta_ref.attention`) never asks which backend it runs on; it
calls the stage functions of the entry it is given. A backend is a :class:`Stages` bundle with
the same signatures and output dtypes as the NumPy specification. Tests and benchmarks loop over
:func:`backends`; an entry says whether it needs a GPU and what it is, and loads lazily, so
importing zeta_ref never imports Numba or CuPy. :func:`describe_backends` lists every entry
with its description and whether it runs here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Stages:
    """The stage functions one backend provides (signatures of the NumPy specification)."""

    quantize: Callable  # (x, bits, squash_method, clip_range) -> uint64 (..., N, d)
    morton_encode: Callable  # (u, bits, *, check) -> uint64 (...)
    sort_keys: Callable  # (key_codes) -> (int64 perm, uint64 sorted codes)
    insertion_points: Callable  # (q_codes, perm, sorted_codes, pool_len) -> int64 (..., N)
    # (q_codes, perm, sorted_codes, pool_len, width, *, order) -> int64 (..., N, W)
    neighbour_window: Callable
    rerank: Callable  # (q, k, window_idx, k_top, score) -> int64 (..., N, k)
    history_means: Callable  # (k, v, causal) -> (mean_k, mean_v)
    # (q, k, v, candidates, score, gamma, mean_k, mean_v, *, order, with_weights)
    #   -> (out, weights or None, mean_weight)
    topk_attention: Callable
    # optional: (q, k, v, config, *, largest=None) -> output, the whole pass fused, used when
    # no intermediates are asked for; it must compute what the stages compute. ``largest``,
    # a zeroed uint64 array of 3 in the backend's memory, receives max |q|, |k|, |v| as the
    # bits of float64s, for the call's checks of the values after the pass
    forward: Callable | None = None
    # the array module of the stages' inputs and outputs: numpy, or cupy for the GPU
    xp: Any = np
    # optional, the backward pass (zeta_ref.backward); None: this backend has none
    # (q, k, v, candidates, score, gamma, mean_k, mean_v, grad_output, *, order, key_order)
    #   -> (dq, dk, dv, dmean_k or None, dmean_v or None, dgamma)
    topk_attention_backward: Callable | None = None
    # (dmean_k, dmean_v, causal) -> (dk, dv)
    history_means_backward: Callable | None = None

    @classmethod
    def from_modules(cls, quantize, morton, sort, window, topk_softmax, backward=None,
                     **extra) -> "Stages":
        """The bundle of a backend whose stage modules carry the specification's names
        (``quantize.quantize``, ``window.rerank``, ...); ``backward``, optional, the module of
        its backward pass (``backward.topk_attention_backward``,
        ``backward.history_means_backward``); ``extra``: forward, xp."""
        if backward is not None:
            extra = dict(extra, topk_attention_backward=backward.topk_attention_backward,
                         history_means_backward=backward.history_means_backward)
        return cls(
            quantize=quantize.quantize,
            morton_encode=morton.morton_encode,
            sort_keys=sort.sort_keys,
            insertion_points=window.insertion_points,
            neighbour_window=window.neighbour_window,
            rerank=window.rerank,
            history_means=topk_softmax.history_means,
            topk_attention=topk_softmax.topk_attention,
            **extra,
        )


@dataclass(frozen=True)
class Backend:
    """A registry entry.

    ``module`` must expose ``STAGES`` (a :class:`Stages`) and ``available() -> bool``; it may
    expose ``UNAVAILABLE``, a one-line reason for ``available()`` being False.
    """

    name: str
    module: str
    needs_gpu: bool
    description: str  # what it is, in one line (shown by describe_backends)

    def problem(self) -> str | None:
        """None when this backend can run here, else why not, in one line.

        Any failure to load the module counts (a missing dependency, but also, say, Numba
        finding no folder to cache its kernels in): the backend is then simply not available.
        """
        try:
            mod = importlib.import_module(self.module)
            usable = bool(mod.available())
        except Exception as err:  # whatever goes wrong, one backend never breaks the registry
            return f"loading {self.module} failed: {type(err).__name__}: {_first_line(err)}"
        if not usable:
            return getattr(mod, "UNAVAILABLE", None) or (
                "needs CuPy and a GPU" if self.needs_gpu else "its dependencies are missing")
        return None

    def available(self) -> bool:
        return self.problem() is None

    def stages(self) -> Stages:
        return importlib.import_module(self.module).STAGES


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add (or replace) a registry entry."""
    REGISTRY[backend.name] = backend


register(Backend("numpy", "zeta_ref.stages", False,
                 "the NumPy specification: readable, exact, the reference for all others"))
register(Backend("numba", "zeta_ref.numba", False,
                 "Numba CPU kernels, parallel over rows and queries"))
register(Backend("cupy", "zeta_ref.cupy", True,
                 "CuPy RawKernels on an NVIDIA GPU, stage by stage and one fused fast pass"))


def backends(include_unavailable: bool = False) -> list[str]:
    """Names of the backends usable on this machine (all registered ones if asked).

    Never raises: a backend that cannot be loaded here is left out (:func:`get_backend` says
    why).
    """
    return [name for name, b in REGISTRY.items() if include_unavailable or b.available()]


def describe_backends() -> str:
    """Every registered backend in one line each: its name, what it is (its
    :attr:`Backend.description`) and whether it runs here, or why not, e.g. ::

        numba  Numba CPU kernels, parallel over rows and queries (runs here)
        cupy   CuPy RawKernels on an NVIDIA GPU, ... (not here: CuPy is not installed; ...)

    For a reader choosing a backend: ``print(describe_backends())``. Never raises.
    """
    width = max(len(name) for name in REGISTRY)
    lines = []
    for name, entry in REGISTRY.items():
        problem = entry.problem()
        state = "runs here" if problem is None else f"not here: {problem}"
        lines.append(f"{name:<{width}}  {entry.description} ({state})")
    return "\n".join(lines)


def get_backend(name: str) -> Backend:
    """The registry entry ``name``, or a ValueError that lists what is available (and, for a
    registered backend that cannot run here, why not)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(
            f"backend must be one of {backends()} (available here); got {name!r}"
        )
    entry = REGISTRY[name]
    problem = entry.problem()
    if problem is not None:
        raise ValueError(
            f"backend {name!r} is registered but not usable on this machine ({problem}); "
            f"available: {backends()}"
        )
    return entry
