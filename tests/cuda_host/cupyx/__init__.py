"""The stand-in for ``cupyx`` beside tests/cuda_host's ``cupy``: what zeta_ref calls of it."""

from __future__ import annotations

import numpy as np


def scatter_add(a, slices, value):
    """a[slices] += value, repeated indices adding up (cupyx.scatter_add)."""
    from cupy import _unwrap

    np.add.at(_unwrap(a), _unwrap(slices), _unwrap(value))
