"""zeta_ref: a readable reference implementation of ZETA (Z-order top-k attention).

ZETA (Zeng et al., ICLR 2025, arXiv 2501.14577) selects, for every query, k keys that are near it
along a Z-order (Morton) curve, under a causal mask, and weights them with an Adaptive
Cauchy-Softmax. One module per stage:

1. :mod:`zeta_ref.stages.projection`   queries and keys to d_k dimensions
2. :mod:`zeta_ref.stages.quantize`     squash to [0, 1] and keep B bits per coordinate
3. :mod:`zeta_ref.stages.morton`       interleave the bits into Z-order codes
4. :mod:`zeta_ref.stages.sort`         sort the keys by code
5. :mod:`zeta_ref.stages.window`       causal pools, binary search, neighbour window, re-rank
6. :mod:`zeta_ref.stages.topk_softmax` weights over the candidates and the output

:func:`zeta_attention` composes stages 2-6 and :func:`zeta_attention_backward` gives their
gradients (the selection held fixed); :mod:`zeta_ref.oracles` holds brute-force answers;
:func:`compare` holds another implementation's dump (:func:`save_dump`) against every stage
(:mod:`zeta_ref.crosscheck`).
"""

from . import oracles
from ._version import __version__
from .attention import Intermediates, zeta_attention
from .backward import Gradients, zeta_attention_backward
from .backends import backends, get_backend
from .config import ZetaConfig
from .crosscheck import DumpError, compare, load_dump, save_dump
from .stages.morton import morton_decode, morton_encode
from .stages.window import SlowSpecificationWarning


__all__ = [
    "DumpError",
    "Gradients",
    "Intermediates",
    "SlowSpecificationWarning",
    "ZetaConfig",
    "backends",
    "compare",
    "get_backend",
    "load_dump",
    "morton_decode",
    "morton_encode",
    "oracles",
    "save_dump",
    "zeta_attention",
    "zeta_attention_backward",
    "__version__",
]
