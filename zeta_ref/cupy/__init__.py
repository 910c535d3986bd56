"""Registry entry "cupy": the CuPy RawKernel twins of every stage, and a fused fast pass.

One module per stage, named as the specification's (``quantize``, ``morton``, ``sort``,
``window``, ``topk_softmax``, and ``backward`` for the gradients), each launcher beside its CUDA
source (``quantize.cu``, ...); ``fused`` is the fast forward pass. Importing this package imports CuPy; the registry only does
so when the backend is asked for, and the backend is available only where CuPy imports and sees
a GPU.
"""

from __future__ import annotations

from ..backends import Stages

#: Why the backend cannot run here ("" where it can), with how to install what is missing.
UNAVAILABLE = ""
try:
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        UNAVAILABLE = "CuPy sees no GPU"
except ImportError:
    UNAVAILABLE = ("CuPy is not installed; install the extra matching your CUDA: "
                   "pip install 'zeta_ref[cuda12]' or 'zeta_ref[cuda13]'")
except Exception as error:  # noqa: BLE001 - no driver or no device: the backend is absent
    UNAVAILABLE = f"CuPy finds no usable GPU ({type(error).__name__}: {error})"

STAGES = None
if not UNAVAILABLE:
    from . import backward, fused, morton, quantize, sort, topk_softmax, window

    # through the modules, so that zeta_ref.cupy.quantize & co. stay the modules
    STAGES = Stages.from_modules(quantize, morton, sort, window, topk_softmax, backward,
                                 forward=fused.forward, xp=cupy)


def available() -> bool:
    """True where CuPy imports and sees at least one GPU."""
    return STAGES is not None
