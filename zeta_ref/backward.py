"""The composed ZETA backward pass: gradients of :func:`~zeta_ref.zeta_attention`.

The selection of stages 2 to 5 is discrete and has no gradient: it is held fixed, taken from the
forward pass's :class:`~zeta_ref.Intermediates` (or recomputed). Gradients flow through stage 6
only, for every leading (batch, head) slice independently::

    q, k, v, candidates, grad_output
        --top-k softmax backward-->  dq (complete), dk, dv through the candidate slots,
                                     dkbar, dvbar of the mean term, dgamma
    dkbar, dvbar
        --history means backward-->  dk, dv through the mean term (D8)
    dk = the two shares added, dv alike

Every arrow is one function of the chosen backend's :class:`~zeta_ref.backends.Stages`
(``topk_attention_backward``, ``history_means_backward``), so a twin backend is checked against
the specification (:mod:`zeta_ref.stages.backward`, which holds the derivation) with the same
inputs. docs/backward.md writes the derivation out.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, NamedTuple

import numpy as np

from ._checks import (as_float_array, as_host_array, check_bits_for_dim, check_gamma,
                      check_qkv, check_qkv_values, max_abs, on_device)
from .attention import Intermediates, zeta_attention
from .backends import backends, get_backend
from .config import ZetaConfig
from .tolerances import tolerance

#: How much looser than :mod:`zeta_ref.tolerances` the checks of ``intermediates`` against the
#: inputs are: they must never refuse the intermediates of another backend (whose float results
#: agree with the specification within the tolerances), and a mismatched input is off by far
#: more.
INTERMEDIATES_SLACK = 10.0
#: How many queries (spread evenly over all rows) the output check of ``intermediates`` reads.
CHECKED_QUERIES = 64


class Gradients(NamedTuple):
    """The gradients of a scalar loss L with respect to the inputs of
    :func:`~zeta_ref.zeta_attention`, from :func:`zeta_attention_backward`.

    A named tuple: ``grads.dq`` or ``dq, dk, dv, dgamma = grads``.

    Attributes
    ----------
    dq : array (..., N, d_k)
        dL/dq, the shape and dtype of q.
    dk : array (..., N, d_k)
        dL/dk: each key's contributions through every query that selected it, and through
        the mean term.
    dv : array (..., N, d_v)
        dL/dv, likewise.
    dgamma : float
        dL/dgamma, summed over every query of every slice (gamma is one number per config);
        0.0 for the scores other than "cauchy", which do not use gamma.
    """

    dq: Any
    dk: Any
    dv: Any
    dgamma: float


def zeta_attention_backward(q, k, v, grad_output, config: ZetaConfig | None = None, *,
                            intermediates: Intermediates | None = None,
                            backend: str = "numpy") -> Gradients:
    """Gradients of ZETA attention with respect to q, k, v and gamma, the selection held fixed.

    Parameters
    ----------
    q, k : float32 or float64 array (..., N, d_k)
    v : array (..., N, d_v) of the same dtype
        The inputs of the forward pass (as for :func:`~zeta_ref.zeta_attention`).
    grad_output : array (..., N, d_v), the dtype of q
        dL/do, the gradient of a scalar loss L with respect to the output.
    config : ZetaConfig, optional
        The configuration of the forward pass; ``ZetaConfig()`` when omitted.
    intermediates : Intermediates, optional
        The forward pass's ``zeta_attention(q, k, v, config, return_intermediates=True)[1]``,
        from any backend: its selection (``candidates``) is reused. It must come from the
        same config and the same inputs, which is checked (cheaply: the quantised
        coordinates of q and k, the mean term of k and v, and the outputs of a few queries).
        When omitted the selection is computed again.
    backend : str, default "numpy"
        One of :func:`zeta_ref.backends` that has a backward pass (the specification "numpy"
        and its twin "numba").

    Returns
    -------
    Gradients
        ``dq``, ``dk``, ``dv`` in the shapes and dtype of q, k, v (NumPy arrays; CuPy arrays
        for a GPU backend given device inputs) and ``dgamma``, a Python float.

    Notes
    -----
    Eq. 6 with the mean term of D8, ``o_i = sum_{j in I_i} w_ij v_j + w_i,mean vbar_i``, with
    ``w_ij`` proportional to ``(||q_i - k_j||^2 + gamma^2)^-1`` for "cauchy". With
    ``g_i = dL/do_i`` and ``t_ij = log a_ij``: ``dv_j += w_ij g_i``,
    ``dt_ij = w_ij (<g_i, v_j> - sum_l w_il <g_i, v_l>)``, then through the score to
    ``||q_i - k_j||^2`` (or ``-<q_i, k_j>``) and into q_i and k_j; the mean term's share
    flows into every key and value it averages. :mod:`zeta_ref.stages.backward` derives
    each step. Keys and values selected by several queries add up the contributions of all
    of them, in float64, in (query, slot) order.
    """
    cfg = ZetaConfig() if config is None else config
    if not isinstance(cfg, ZetaConfig):
        raise TypeError(f"config must be a ZetaConfig; got {type(cfg).__name__}")
    entry = get_backend(backend)
    s = entry.stages()
    if s.topk_attention_backward is None or s.history_means_backward is None:
        have = [name for name in backends()
                if get_backend(name).stages().topk_attention_backward is not None]
        raise ValueError(f"backend {entry.name!r} has no backward pass yet; use one of {have}")
    xp = s.xp  # numpy, or cupy for a GPU backend
    # as the forward pass: host inputs give host results, device inputs device results
    to_host = xp is not np and not on_device(q)
    # On a GPU the checks of values (of q, k, v, grad_output and the intermediates) wait until
    # the kernels are queued, so that their one transfer overlaps the work instead of stalling
    # before it; the kernels take a candidate outside 0 .. N - 1 for an empty slot, so a bad
    # selection is refused after, never read past the end of k or v. Nothing is returned
    # unless every check passes.
    late = xp is not np
    q, k, v = check_qkv(q, k, v, xp=xp, values=not late)
    n, d_k = q.shape[-2], q.shape[-1]
    check_bits_for_dim(cfg.bits, d_k, name="config.bits")
    if cfg.score == "cauchy":
        check_gamma(cfg.gamma, q.dtype, cfg.k_for(n) + cfg.history_mean)
    grad = _check_grad_output(grad_output, v, xp)  # its values: with the checks below
    q, k, v, grad = (xp.ascontiguousarray(x) for x in (q, k, v, grad))

    if intermediates is None:  # the selection again (the forward pass with intermediates)
        _, inter = zeta_attention(q, k, v, cfg, backend=entry.name, return_intermediates=True)
    else:
        inter = intermediates
        _check_intermediates_kind(inter, cfg, q, v)
    candidates = _as_xp(inter.candidates, xp)  # (..., N, k)
    # the mean term of these inputs (exactly the forward's: the same function of k and v)
    mean_k = mean_v = None
    if cfg.history_mean:
        mean_k, mean_v = s.history_means(k, v, cfg.causal)  # (..., N, d_k), (..., N, d_v)
    checks = (grad, intermediates, cfg, q, k, v, candidates, mean_k, mean_v, s, xp)
    if not late:
        _check_values(*checks)
    # Visiting orders, for speed only (they cannot change a result). On the CPU the queries
    # and keys go in Z order, as in the forward pass: neighbours in Z order share most of
    # their candidates. On the GPU in position order: at B = 1, H = 8, N = 65536 on the H200
    # the query pass took 3.55 ms so, against 3.33 ms in Z order plus 0.26 ms to sort the
    # queries and 0.40 ms to check the order (2026-12-02), and the key pass uses none.
    order = key_order = None
    if xp is np:
        order, _ = s.sort_keys(_as_xp(inter.q_codes, xp))  # (..., N)
        key_order = _as_xp(inter.key_perm, xp)  # (..., N)

    # (gradients too large for the dtype are refused after, in one line: no warnings here)
    with np.errstate(over="ignore", invalid="ignore"):
        dq, dk, dv, dmean_k, dmean_v, dgamma = s.topk_attention_backward(
            q, k, v, candidates, cfg.score, cfg.gamma, mean_k, mean_v, grad, order=order,
            key_order=key_order)
        if cfg.history_mean:  # the mean term's share, into every key and value it averages
            dk, dv = s.history_means_backward(dmean_k, dmean_v, cfg.causal,
                                              add_to=(dk, dv))  # (..., N, d_k), (..., N, d_v)
    if late:  # everything in one transfer: the inputs, the intermediates, the gradients
        dgamma = _check_values(*checks, inputs=True, gradients=(dq, dk, dv), dgamma=dgamma)
    else:
        _check_finite_gradients(max_abs([(x, None) for x in (dq, dk, dv)], xp),
                                float(dgamma), lambda: max_abs([(grad, None)], xp)[0],
                                grad.dtype)
    if to_host:
        dq, dk, dv = (x.get() for x in (dq, dk, dv))
    return Gradients(dq=dq, dk=dk, dv=dv, dgamma=float(dgamma))


# ------------------------------------------------------------------ checks


def _as_xp(x, xp):
    """An array of the intermediates as an array of ``xp`` (they may come from another
    backend: a GPU's arrays are copied to the host for a CPU backend, and back)."""
    if xp is np and on_device(x):
        return as_host_array(x, "intermediates")
    return xp.asarray(x)


def _check_grad_output(grad_output, v, xp):
    """``grad_output`` as an array of ``xp`` of the output's shape (that of v) and dtype; that
    its values are finite is checked with the intermediates (:func:`_check_values`)."""
    grad = as_float_array(grad_output, "grad_output", xp=xp, check_finite=False)
    if grad.dtype != v.dtype:
        raise TypeError(f"grad_output must have the dtype of q, k and v ({v.dtype}); "
                        f"got {grad.dtype}")
    if grad.shape != v.shape:
        raise ValueError(f"grad_output must have the shape of the output (..., N, d_v) = "
                         f"{tuple(v.shape)}; got {tuple(grad.shape)}")
    return grad


def _check_intermediates_kind(inter, cfg, q, v) -> None:
    """An :class:`Intermediates` of this config and of inputs of these shapes."""
    if not isinstance(inter, Intermediates):
        raise TypeError(f"intermediates must be the Intermediates of zeta_attention(..., "
                        f"return_intermediates=True); got {type(inter).__name__}")
    if not isinstance(inter.config, ZetaConfig) or inter.config != cfg:
        differ = [f"{f.name}={getattr(inter.config, f.name, None)!r} there, "
                  f"{getattr(cfg, f.name)!r} here" for f in fields(ZetaConfig)
                  if getattr(inter.config, f.name, None) != getattr(cfg, f.name)]
        raise ValueError("intermediates were computed with another config ("
                         + "; ".join(differ) + "); pass the config of the forward pass")
    n = q.shape[-2]
    expected = {"q_coords": tuple(q.shape), "k_coords": tuple(q.shape),
                "q_codes": tuple(q.shape[:-1]), "key_perm": tuple(q.shape[:-1]),
                "output": tuple(v.shape),
                "candidates": tuple(q.shape[:-1]) + (cfg.k_for(n),),
                "weights": tuple(q.shape[:-1]) + (cfg.k_for(n),),
                "mean_weight": tuple(q.shape[:-1])}
    if cfg.history_mean:
        expected.update(mean_k=tuple(q.shape), mean_v=tuple(v.shape))
    for name, shape in expected.items():
        got = getattr(inter, name)
        got = None if got is None else tuple(got.shape)
        if got != shape:
            raise ValueError(f"intermediates come from inputs of another shape: its {name} "
                             f"has shape {got}, these inputs need {shape}")


def _check_values(grad, inter, cfg, q, k, v, candidates, mean_k, mean_v, s, xp, *,
                  inputs: bool = False, gradients=None, dgamma=None):
    """The values of grad_output are finite, and the intermediates ``inter`` (None: computed
    here, nothing more to check) belong to these inputs:

    - the selection belongs to these q and k: their quantised coordinates (stage 2, exact on
      every backend, D13) are the intermediates' own, and every candidate is -1 (an empty
      slot) or a position 0 .. N - 1 (a GPU kernel would read past the end for one >= N);
    - the floats belong to these k and v: the mean term (every position of k and v counts in
      it), and the outputs of :data:`CHECKED_QUERIES` queries recomputed from the
      intermediates' own weights and these values.

    Every check is a largest absolute value or difference (:func:`~zeta_ref._checks.max_abs`),
    all of them taken in one pass over each array and, on a GPU, brought back in one transfer.

    After the gradients are computed (on a GPU), the same transfer takes the checks that
    would otherwise have come first and last: ``inputs`` the values of q, k and v
    (:func:`~zeta_ref._checks.check_qkv_values`), ``gradients`` (dq, dk, dv) and ``dgamma``
    (a 0-d array or a float) that they are finite; then dgamma comes back as a float. The
    errors come in the order they would have come in, q's first."""
    first = [(x, None) for x in (q, k, v)] if inputs else []
    checks, names = [(grad, None, None)], [None]  # (actual, desired, scale index) or a bound
    if inter is not None:
        for name, x in (("q", q), ("k", k)):
            mine = s.quantize(x, cfg.bits, cfg.squash, cfg.clip_range)  # (..., N, d_k)
            checks.append((mine, _as_xp(getattr(inter, f"{name}_coords"), xp), None))
            names.append(f"the quantised coordinates of {name} differ from its {name}_coords")
        # -1 <= c <= N - 1: |c - (N - 2) / 2| <= N / 2
        checks.append((candidates, (v.shape[-2] - 2) / 2, None))
        names.append(None)
        if cfg.history_mean:
            for which, (name, mine) in enumerate((("k", mean_k), ("v", mean_v))):
                checks.append((mine, _as_xp(getattr(inter, f"mean_{name}"), xp), which))
                names.append(f"the mean term of {name} differs from its mean_{name}")
        checks.append((_recomputed_outputs(inter, cfg, v, candidates, mean_v, xp)
                       + (1,)))
        names.append("the outputs it holds are not those of these values v")
    tol = tolerance(v.dtype)
    scaled = any(which is not None for _, _, which in checks)  # the mean term's checks
    # the scales of the mean term's checks, max |k| and max |v|, are the inputs' own checks
    # when those come in the same transfer (one pass over k and v fewer)
    compared = first + [(a, d) for a, d, _ in checks] + \
        (([] if inputs else [(k, None), (v, None)])
         + [(d, None) for a, d, which in checks if which is not None] if scaled else []) + \
        [(x, None) for x in gradients or ()]
    bounds = iter(max_abs(compared, xp, also=() if dgamma is None else (dgamma,)))
    largest = [next(bounds) for _ in first]  # of q, k and v, when inputs
    if inputs:
        check_qkv_values(q, k, v, largest, xp)
    found = [next(bounds) for _ in checks]
    scale_k, scale_v = ((largest[1], largest[2]) if inputs else (next(bounds), next(bounds))) \
        if scaled else (None, None)
    if not np.isfinite(found[0]):
        bad = xp.argwhere(~xp.isfinite(grad))[0]
        raise ValueError(f"grad_output contains NaN or Inf (first at index "
                         f"{tuple(int(i) for i in bad)})")
    for (actual, desired, which), name, got in zip(checks[1:], names[1:], found[1:]):
        if name is None:  # the candidates
            if not got <= v.shape[-2] / 2:
                raise ValueError(f"intermediates hold a candidate that is neither -1 (an "
                                 f"empty slot) nor a position 0 .. N - 1 = {v.shape[-2] - 1}")
        elif which is None:  # exact
            if got != 0:
                raise ValueError(f"intermediates come from another input: {name}")
        else:  # within the dtype's tolerance, times INTERMEDIATES_SLACK
            big = next(bounds)
            size = (scale_k, scale_v)[which]
            if not got <= INTERMEDIATES_SLACK * (tol["rtol"] * big + tol["atol"] * size):
                raise ValueError(f"intermediates come from another input: {name}")
    if gradients is None:
        return None
    grad_bounds = [next(bounds) for _ in gradients]
    dgamma = next(bounds) if dgamma is not None else 0.0
    _check_finite_gradients(grad_bounds, dgamma, lambda: found[0], grad.dtype)
    return dgamma


def _recomputed_outputs(inter, cfg, v, candidates, mean_v, xp):
    """(recomputed, held): the outputs of :data:`CHECKED_QUERIES` queries spread evenly over
    all rows, o_i = sum_s w_is v_cand + w_i,mean vbar_i from the intermediates' weights and
    these values, and the intermediates' own outputs of them, both in float64."""
    n, d_v, n_slots = v.shape[-2], v.shape[-1], candidates.shape[-1]
    total = int(np.prod(v.shape[:-1], dtype=np.int64))  # R N queries in all
    # (m,) flat query indices, made where they are used (no copy to a GPU): every query, or
    # CHECKED_QUERIES of them evenly spaced (at least 1 apart, so none twice)
    pick = (xp.arange(total, dtype=np.int64) if total <= CHECKED_QUERIES else
            xp.linspace(0, total - 1, CHECKED_QUERIES).astype(np.int64))
    cand = candidates.reshape(total, n_slots)[pick]  # (m, k)
    safe = xp.clip(cand, 0, n - 1)  # an out-of-range candidate is refused, not read
    rows = v.reshape(-1, n, d_v)[(pick // n)[:, None], safe]  # (m, k, d_v)
    w = _as_xp(inter.weights, xp).reshape(total, n_slots)[pick].astype(np.float64)  # (m, k)
    w = xp.where(cand >= 0, w, 0.0)
    out = (w[..., None] * rows.astype(np.float64)).sum(axis=-2)  # (m, d_v)
    if cfg.history_mean:
        w_mean = _as_xp(inter.mean_weight, xp).reshape(total)[pick].astype(np.float64)
        out = out + w_mean[:, None] * mean_v.reshape(total, d_v)[pick].astype(np.float64)
    theirs = _as_xp(inter.output, xp).reshape(total, d_v)[pick].astype(np.float64)
    return out, theirs


def _check_finite_gradients(bounds, dgamma: float, largest, dtype) -> None:
    """Gradients too large for the dtype are refused rather than returned as inf or NaN.
    ``bounds``: the largest |x| of dq, dk and dv; ``largest()``: that of grad_output, for
    the message (called only then: on the CPU it is one more pass over grad_output)."""
    if all(np.isfinite(bound) for bound in bounds) and np.isfinite(dgamma):
        return
    raise ValueError(f"the gradients overflow {dtype} (grad_output holds values up to "
                     f"{largest():.3g} in magnitude); rescale grad_output"
                     + (", or pass float64 inputs" if dtype == np.float32 else ""))
