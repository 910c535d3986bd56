"""The specification: one NumPy module per stage of ZETA, and the registry entry "numpy".

1. :mod:`.projection`   queries and keys to d_k dimensions (paper section 3.2)
2. :mod:`.quantize`     squash to [0, 1] and keep B bits per coordinate (Eq. 4; D1, D2, D13)
3. :mod:`.morton`       interleave the bits into Z-order codes (Eq. 4; D3)
4. :mod:`.sort`         sort the keys by code (D10)
5. :mod:`.window`       causal pools, binary search, neighbour window, re-rank (D4-D6, D9, D11)
6. :mod:`.topk_softmax` weights over the candidates and the output (Eq. 6; D7-D9)

Every other backend (``zeta_ref.numba``, ``zeta_ref.cupy``) has a module of the same name per
stage, with the same signatures, checked against these.
"""

from ..backends import Stages
from . import morton, projection, quantize, sort, topk_softmax, window  # noqa: F401

# the bundle refers to the functions through their modules, so that the package's names
# (zeta_ref.stages.quantize, ...) stay the modules
STAGES = Stages(
    quantize=quantize.quantize,
    morton_encode=morton.morton_encode,
    sort_keys=sort.sort_keys,
    insertion_points=window.insertion_points,
    neighbour_window=window.neighbour_window,
    rerank=window.rerank,
    history_means=topk_softmax.history_means,
    topk_attention=topk_softmax.topk_attention,
)


def available() -> bool:
    return True
