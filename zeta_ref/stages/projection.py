"""Stage 1: projection of queries and keys to d_k dimensions (paper section 3.2).

ZETA makes queries and keys very low-dimensional (d_k = 3 in the paper) while values keep the
full head width d_v. In a trained model the maps are learned (the paper's code uses small
networks; zeta_ref takes the linear case). The theory of section 3.2.1 analyses a random
Johnson-Lindenstrauss (JL) projection; :func:`random_projection` builds one, seeded.

:func:`zeta_ref.zeta_attention` starts after this stage: it takes q and k already at d_k.
The demo and the notebooks use this module to go from d_model-wide embeddings to q, k and v.
"""

from __future__ import annotations

import numpy as np

from .._checks import as_float_array, check_positive_int


def project(x, weight, bias=None) -> np.ndarray:
    """Linear map ``x @ weight + bias`` of the last axis.

    Parameters
    ----------
    x : float array (..., N, d_in)
    weight : float array (d_in, d_out)
    bias : float array (d_out,), optional

    Returns
    -------
    float array (..., N, d_out), in the dtype of ``x``.

    Notes
    -----
    Paper section 3.2: queries and keys go to d_k dimensions (d_k = 3 in the paper), values
    keep d_v. The paper's projections are learned; this is the linear case.
    """
    x = as_float_array(x, "x", min_ndim=1)
    weight = _real_array(weight, "weight")
    if weight.ndim != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weight must have shape (d_in, d_out) with d_in = {x.shape[-1]}; got {weight.shape}"
        )
    out = x @ weight.astype(x.dtype, copy=False)  # (..., N, d_out)
    if bias is not None:
        bias = _real_array(bias, "bias")
        if bias.shape != (weight.shape[1],):
            raise ValueError(f"bias must have shape ({weight.shape[1]},); got {bias.shape}")
        out = out + bias.astype(x.dtype, copy=False)
    return out


def _real_array(a, name: str) -> np.ndarray:
    """``a`` as a NumPy array of real numbers (integers are fine: they are cast to x's dtype),
    all finite: a NaN or inf in a weight would make every output it touches NaN."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array of real numbers; got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} contains NaN or Inf (first at index {bad})")
    return arr


def random_projection(d_in: int, d_out: int, *, rng, dtype=np.float64) -> np.ndarray:
    """A Johnson-Lindenstrauss map: i.i.d. N(0, 1/d_out) entries, shape (d_in, d_out).

    With this scaling E ||x R||^2 = ||x||^2, so squared distances are kept on average and,
    by Lemma 3.1 (JL), within a factor (1 +- eps) with eps ~ sqrt(C ln m / d_out) for m points.

    Parameters
    ----------
    d_in, d_out : int
        Input and output widths (d_model and d_k).
    rng : numpy.random.Generator or int
        Where the randomness comes from; an int is used as a seed.
    """
    d_in, d_out = check_positive_int(d_in, "d_in"), check_positive_int(d_out, "d_out")
    rng = np.random.default_rng(rng)
    return (rng.standard_normal((d_in, d_out)) / np.sqrt(d_out)).astype(dtype)
