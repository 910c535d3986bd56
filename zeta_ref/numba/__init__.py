"""Registry entry "numba": the Numba CPU twins of every stage.

One module per stage, named as the specification's (``zeta_ref.numba.quantize`` is the twin of
``zeta_ref.stages.quantize``, ...; ``backward`` that of ``zeta_ref.stages.backward``), with the
same signatures and output dtypes; ``host_memory`` holds their large outputs and ``_jit`` sets
Numba up. Importing this package imports
Numba (and runs the set-up of :mod:`zeta_ref.numba._jit`: a writable kernel cache, a fork-safe
threading layer); the registry only does so when the backend is asked for.
"""

from ..backends import Stages

try:
    import numba  # noqa: F401
except ImportError:  # pragma: no cover - numba is a dependency; kept for partial installs
    STAGES = None
    UNAVAILABLE = "Numba is not installed"
else:
    from . import backward, morton, quantize, sort, topk_softmax, window

    # through the modules, so that zeta_ref.numba.quantize & co. stay the modules
    STAGES = Stages.from_modules(quantize, morton, sort, window, topk_softmax, backward)


def available() -> bool:
    """True when Numba imports."""
    return STAGES is not None
