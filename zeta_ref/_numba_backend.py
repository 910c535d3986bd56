"""Registry entry "numba": the Numba CPU twins of every stage (issue 3).

Each twin sits next to the NumPy function it accelerates (``quantize_numba.py`` beside
``quantize.py``, ...) with the same signature and output dtypes. Importing this module imports
Numba (and runs the set-up of :mod:`zeta_ref._jit_numba`: a writable kernel cache, a fork-safe
threading layer); the registry only does so when the backend is asked for.
"""

from .backends import Stages

try:
    import numba  # noqa: F401
except ImportError:  # pragma: no cover - numba is a dependency; kept for partial installs
    STAGES = None
    UNAVAILABLE = "Numba is not installed"
else:
    from .morton_numba import morton_encode
    from .quantize_numba import quantize
    from .sort_numba import sort_keys
    from .topk_softmax_numba import history_means, topk_attention
    from .window_numba import insertion_points, neighbour_window, rerank

    STAGES = Stages(
        quantize=quantize,
        morton_encode=morton_encode,
        sort_keys=sort_keys,
        insertion_points=insertion_points,
        neighbour_window=neighbour_window,
        rerank=rerank,
        history_means=history_means,
        topk_attention=topk_attention,
    )


def available() -> bool:
    """True when Numba imports."""
    return STAGES is not None
