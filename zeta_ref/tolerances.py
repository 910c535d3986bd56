"""Per-dtype tolerances for comparing float results, defined in one place.

Integer results (quantised coordinates, codes, permutations, windows, candidate indices) are
compared exactly; never with these. Float results of a twin backend (weights, outputs, means)
are compared with ``numpy.testing.assert_allclose(actual, desired, **TOLERANCES[dtype])``.

The float32 values allow for a different summation order over k + 1 candidates and d_v
products (a few units in the last place, relative to the largest value in play).
"""

import numpy as np

TOLERANCES = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13},
}


def tolerance(dtype) -> dict:
    """The ``rtol``/``atol`` pair for comparing arrays of ``dtype``."""
    return TOLERANCES[np.dtype(dtype)]
