"""The composed ZETA forward pass: stages 2 to 6 behind one call.

Stage 1 (projection) happens before: :func:`zeta_attention` takes queries and keys already
projected to d_k. The pass, for every leading (batch, head) slice independently::

    q, k (..., N, d_k)
        --quantize--> q_coords, k_coords (..., N, d_k) uint64       stage 2
        --morton-->   q_codes, k_codes (..., N) uint64               stage 3
    k_codes --sort--> key_perm (..., N) int64, sorted_key_codes      stage 4
    q_codes --sort--> query_order (..., N) int64: the order in which
                      stages 5 and 6 visit the queries (a schedule
                      for speed; it changes no result)
    q_codes, sorted keys, pools
        --window-->   window_idx (..., N, W) int64                   stage 5
        --rerank (W > k)--> candidates (..., N, k) int64
    q, k, v, candidates
        --top-k softmax--> output (..., N, d_v), weights (..., N, k) stage 6

Every arrow is one function of the chosen backend's :class:`~zeta_ref.backends.Stages`, so a
twin backend is checked stage by stage against the specification with the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ._checks import check_bits_for_dim, check_gamma, check_qkv, check_qkv_values, on_device
from .backends import get_backend
from .config import ZetaConfig
from .stages.window import pool_lengths


@dataclass(frozen=True)
class Intermediates:
    """Every stage's result of one forward pass (``return_intermediates=True``).

    Shapes use the README's legend: ``...`` the leading (batch, head) dims, N the sequence
    length, d_k, d_v the widths, W the window width, k the number of candidates.

    Attributes
    ----------
    config : ZetaConfig
        The configuration used.
    backend : str
        The backend that computed it.
    chunk_size : int
        M as resolved for this N (D5).
    q_coords, k_coords : uint64 (..., N, d_k)
        Stage 2: quantised coordinates.
    q_codes, k_codes : uint64 (..., N)
        Stage 3: Z-order codes.
    key_perm : int64 (..., N)
        Stage 4: key positions in Z order (stable).
    sorted_key_codes : uint64 (..., N)
        Stage 4: ``k_codes`` in that order.
    pool_len : int64 (N,)
        Stage 5: query i may see key positions ``0 .. pool_len[i] - 1``.
    insertion : int64 (..., N)
        Stage 5: the binary search's result, p_i = how many keys of query i's pool have a
        smaller code; the window starts at pool rank p_i - W//2 before sliding (D11).
    window_idx : int64 (..., N, W)
        Stage 5: the window around each query's insertion point; -1 = empty slot.
        W here is ``config.window_for(N) = min(W, N)``.
    candidates : int64 (..., N, k)
        Stage 5: the selected keys (the window itself when W = k); -1 = empty slot.
        k here is ``config.k_for(N) = min(k, N)``.
    mean_k, mean_v : (..., N, d_k), (..., N, d_v) or None
        Stage 6: the mean term's key and value (None when ``history_mean`` is off).
    weights : (..., N, k)
        Stage 6: normalised weight of each candidate slot.
    mean_weight : (..., N)
        Stage 6: weight of the mean term (zeros when it is off).
    output : (..., N, d_v)
        The attention output.
    """

    config: ZetaConfig
    backend: str
    chunk_size: int
    q_coords: np.ndarray
    k_coords: np.ndarray
    q_codes: np.ndarray
    k_codes: np.ndarray
    key_perm: np.ndarray
    sorted_key_codes: np.ndarray
    pool_len: np.ndarray
    insertion: np.ndarray
    window_idx: np.ndarray
    candidates: np.ndarray
    mean_k: np.ndarray | None
    mean_v: np.ndarray | None
    weights: np.ndarray
    mean_weight: np.ndarray
    output: np.ndarray

    def arrays(self) -> dict:
        """The array fields by name (for saving with ``np.savez`` or comparing); NumPy arrays,
        or CuPy arrays when the inputs were."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("config", "backend", "chunk_size")
                and getattr(self, f.name) is not None}


def zeta_attention(q, k, v, config: ZetaConfig | None = None, *, backend: str = "numpy",
                   return_intermediates: bool = False):
    """ZETA top-k attention of queries ``q`` over keys ``k`` and values ``v``.

    Parameters
    ----------
    q, k : float32 or float64 array (..., N, d_k)
        Queries and keys, already projected to d_k dimensions (d_k = 3 in the paper). Any
        array a framework can hand over (DLPack or ``__array__``: NumPy, torch, JAX, ...) is
        taken; the CPU backends read host memory in place and return NumPy arrays.
    v : array (..., N, d_v) of the same dtype
        Values. Every leading slice (batch, head) is independent.
    config : ZetaConfig, optional
        All settings; ``ZetaConfig()`` when omitted.
    backend : str, default "numpy"
        One of :func:`zeta_ref.backends`. With "cupy" (the GPU), host inputs are copied to the
        device and every result comes back as NumPy; device inputs (CuPy, torch CUDA tensors,
        ...) are read in place and give CuPy results, on the same device, with no copy to the
        host inside the pass.
    return_intermediates : bool, default False
        Also return an :class:`Intermediates` with every stage's result.

    Returns
    -------
    output : array (..., N, d_v), dtype of the inputs
    intermediates : Intermediates
        Only with ``return_intermediates=True``.

    Notes
    -----
    Output of query i (Eq. 6 with the mean term of D8):
    ``o_i = sum_{j in I_i} w_ij v_j + w_i,mean vbar_i``, where I_i are the k candidates that
    the Z-order window selects among the keys query i may see.
    """
    cfg = ZetaConfig() if config is None else config
    if not isinstance(cfg, ZetaConfig):
        raise TypeError(f"config must be a ZetaConfig; got {type(cfg).__name__}")
    if not isinstance(return_intermediates, bool):
        raise TypeError(f"return_intermediates must be True or False; got {return_intermediates!r}")
    entry = get_backend(backend)
    s = entry.stages()
    xp = s.xp  # numpy, or cupy for the GPU backend
    # a GPU backend gives NumPy results for NumPy inputs, device arrays for device arrays
    to_host = xp is not np and not on_device(q)
    # The fused pass on a GPU checks the values of q, k and v after its kernels are queued:
    # one transfer at the end instead of a wait before the work (its kernels are safe on any
    # values, NaN and inf included; what they compute is dropped when a check fails).
    late = xp is not np and not return_intermediates and s.forward is not None
    q, k, v = check_qkv(q, k, v, xp=xp, values=not late)
    n, d_k = q.shape[-2], q.shape[-1]
    check_bits_for_dim(cfg.bits, d_k, name="config.bits")
    # k and W beyond N would only add slots that are always empty: capped at N
    k_top, width = cfg.k_for(n), cfg.window_for(n)
    if cfg.score == "cauchy":
        check_gamma(cfg.gamma, q.dtype, k_top + cfg.history_mean)
    # The stage functions trust their inputs: hand them contiguous arrays.
    q, k, v = (xp.ascontiguousarray(x) for x in (q, k, v))

    if not return_intermediates and s.forward is not None:
        if not late:
            output = s.forward(q, k, v, cfg)  # the fused pass: the same result, fewer arrays
        else:  # ... which also finds max |q|, |k| and |v|, as the bits of float64s
            largest = xp.zeros(3, dtype=np.uint64)  # the bits of +0.0
            output = s.forward(q, k, v, cfg, largest=largest)
            check_qkv_values(q, k, v, [float(x) for x in largest.view(np.float64).get()], xp)
        return output.get() if to_host else output

    # stage 2: quantise queries and keys the same way (D1, D2, D12, D13)
    q_coords = s.quantize(q, cfg.bits, cfg.squash, cfg.clip_range)  # (..., N, d_k)
    k_coords = s.quantize(k, cfg.bits, cfg.squash, cfg.clip_range)  # (..., N, d_k)
    # stage 3: interleave the bits (D3); quantize's coordinates need no range check
    q_codes = s.morton_encode(q_coords, cfg.bits, check=False)  # (..., N)
    k_codes = s.morton_encode(k_coords, cfg.bits, check=False)  # (..., N)
    # stage 4: keys in Z order, ties by position (D10)
    key_perm, sorted_key_codes = s.sort_keys(k_codes)  # (..., N) each
    # ... and the queries: a visiting order for stages 5 and 6 that cannot change any result,
    # but lets a backend that works query by query find the keys and values it reads in cache
    # (queries next to each other in Z order have nearly the same candidates)
    query_order, _ = s.sort_keys(q_codes)  # (..., N)
    # stage 5: causal pools, binary search, window, optional re-rank (D4, D5, D6, D9, D11)
    chunk = cfg.chunk_size_for(n)
    pool_len = pool_lengths(n, cfg.causal, chunk)  # (N,)
    try:
        window_idx = s.neighbour_window(q_codes, key_perm, sorted_key_codes, pool_len,
                                        width, order=query_order)  # (..., N, W)
        if width > k_top:
            candidates = s.rerank(q, k, window_idx, k_top, cfg.score)  # (..., N, k)
        else:
            candidates = window_idx
    except MemoryError as err:  # W (or k) near N: the window is (N, N)
        raise MemoryError(
            f"the window of W = {width} keys for each of the {n} queries of "
            f"{math.prod(q.shape[:-2])} rows (config.window = {cfg.window}, config.k = {cfg.k}, "
            f"each capped at N) needs {8 * width * q.size // d_k / 2**30:.3g} GiB as int64 "
            f"alone, and the pass several times that; choose a smaller window or k ({err})"
        ) from None
    # stage 6: weights over the candidates and the mean term (D7, D8, D9)
    mean_k = mean_v = None
    if cfg.history_mean:
        mean_k, mean_v = s.history_means(k, v, cfg.causal)  # (..., N, d_k), (..., N, d_v)
    try:
        output, weights, mean_weight = s.topk_attention(
            q, k, v, candidates, cfg.score, cfg.gamma, mean_k, mean_v, order=query_order,
            with_weights=return_intermediates)  # (..., N, d_v), (..., N, k) or None, (..., N)
    except MemoryError as err:
        if entry.name != "numpy":  # the twins weigh a query at a time: nothing to explain
            raise
        # k near N: the specification gathers (..., N, k, d_v) value rows
        rows_n = q.size // d_k
        raise MemoryError(
            f"the weighted sum over k = {k_top} candidates for each of the {n} queries of "
            f"{rows_n // n} rows (config.k = {cfg.k}, capped at N) with d_v = {v.shape[-1]} "
            f"needs {rows_n * k_top * v.shape[-1] * v.itemsize / 2**30:.3g} GiB for the "
            f"gathered value rows alone on the numpy backend; choose a smaller k, or a "
            f"backend that weighs one query at a time (numba) ({err})"
        ) from None
    if not return_intermediates:
        return output.get() if to_host else output
    inter = Intermediates(
        config=cfg, backend=entry.name, chunk_size=chunk,
        q_coords=q_coords, k_coords=k_coords, q_codes=q_codes, k_codes=k_codes,
        key_perm=key_perm, sorted_key_codes=sorted_key_codes, pool_len=xp.asarray(pool_len),
        # the window does not need p_i as such: it is computed for the reader only
        insertion=s.insertion_points(q_codes, key_perm, sorted_key_codes, pool_len),
        window_idx=window_idx, candidates=candidates, mean_k=mean_k, mean_v=mean_v,
        weights=weights, mean_weight=mean_weight, output=output,
    )
    if to_host:  # every array back to the host, once, at the end
        inter = replace(inter, **{name: a.get() for name, a in inter.arrays().items()})
    return inter.output, inter
