"""Registry entry "numpy": the specification's own stage functions."""

from .backends import Stages
from .morton import morton_encode
from .quantize import quantize
from .sort import sort_keys
from .topk_softmax import history_means, topk_attention
from .window import insertion_points, neighbour_window, rerank

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
    return True
