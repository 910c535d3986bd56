"""Per-dtype tolerances for comparing float results, defined in one place.

Integer results (quantised coordinates, codes, permutations, windows, candidate indices) are
compared exactly; never with these. Float results of a twin backend (weights, outputs, means)
are compared with :func:`assert_close`.

The rule, per element::

    |actual - desired| <= rtol * |desired| + atol * scale

where ``scale`` is the largest magnitude in play (by default the largest ``|desired|`` of the
compared array; for attention outputs pass the largest ``|v|``, since an output is a weighted
average of value rows). The absolute part is therefore *relative to the data*: values of size
1e6 get the same relative slack as values of size 1. This is how FlashAttention reports its
error (against the size of the reference, not in absolute units), and it makes a comparison
independent of the units of v: multiplying v by 1000 multiplies both sides by 1000. For a
gradient whose terms cancel (a key very near its query under "inv_euclidean"), the magnitude
in play is that of the terms, not of their sum: pass the largest sum of their absolute
values (the tests' ``gradient_sizes`` computes it; docs/backward.md, "What is checked").

The float32 values allow for a different summation order over k + 1 candidates and d_v
products: a few units in the last place of the largest value in play (float32's unit is
6e-8, float64's 1.1e-16).
"""

from __future__ import annotations

import numpy as np

TOLERANCES = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13},
}


def tolerance(dtype) -> dict:
    """The ``rtol`` and (scale-relative) ``atol`` pair for comparing arrays of ``dtype``."""
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, desired, *, scale=None, dtype=None, err_msg: str = "") -> None:
    """Assert ``actual`` matches ``desired`` within the tolerance of ``dtype``.

    Parameters
    ----------
    actual, desired : float arrays of one shape
    scale : float, optional
        The size of the data (see the module docstring); default ``max |desired|``.
    dtype : optional
        Whose tolerance to use; default the dtype of ``desired``.
    err_msg : str
        Printed with a failure.
    """
    desired = np.asarray(desired)
    tol = tolerance(desired.dtype if dtype is None else dtype)
    if scale is None:
        scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=tol["rtol"], atol=tol["atol"] * float(scale),
                               err_msg=err_msg)
