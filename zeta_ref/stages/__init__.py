"""The specification: one NumPy module per stage of ZETA, and the registry entry "numpy".

1. :mod:`.projection`   queries and keys to d_k dimensions (paper section 3.2)
2. :mod:`.quantize`     squash to [0, 1] and keep B bits per coordinate (Eq. 4; D1, D2, D13)
3. :mod:`.morton`       interleave the bits into Z-order codes (Eq. 4; D3)
4. :mod:`.sort`         sort the keys by code (D10)
5. :mod:`.window`       causal pools, binary search, neighbour window, re-rank (D4-D6, D9, D11)
6. :mod:`.topk_softmax` weights over the candidates and the output (Eq. 6; D7-D9)

and :mod:`.backward`, the gradients of stage 6 with the selection held fixed.

Every other backend (``zeta_ref.numba``, ``zeta_ref.cupy``) has a module of the same name per
stage, with the same signatures, checked against these.
"""

from ..backends import Stages
from . import backward, morton, projection, quantize, sort, topk_softmax, window  # noqa: F401

# through the modules, so that zeta_ref.stages.quantize & co. stay the modules
STAGES = Stages.from_modules(quantize, morton, sort, window, topk_softmax, backward)


def available() -> bool:
    return True
