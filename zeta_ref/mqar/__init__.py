"""MQAR trained through zeta_ref: does ZETA match standard attention on associative recall?

The paper reports, in its experiments, that on multi-query associative recall (MQAR; Zoology,
Arora et al. 2023) ZETA matches standard attention, reaching 100 % accuracy at model dimension 256; that
d_K >= 2 is near perfect while d_K = 1 drops slightly; and that the Cauchy score beats the
negative and the inverse Euclidean scores at every d_K. This package reproduces the experiment
with zeta_ref's forward and backward passes; docs/experiments.md describes it.

One stage, one module:

- :mod:`~zeta_ref.mqar.task`: the task generator (seeded, NumPy);
- :mod:`~zeta_ref.mqar.layers`: every layer's forward and hand-written backward, on NumPy or
  CuPy arrays alike (the full causal softmax attention, and ZETA through
  :func:`zeta_ref.zeta_attention` and :func:`zeta_ref.zeta_attention_backward`);
- :mod:`~zeta_ref.mqar.model`: the two-block transformer, its backward pass, Adam;
- :mod:`~zeta_ref.mqar.train`: one run (:class:`RunConfig`, :func:`train`);
- :mod:`~zeta_ref.mqar.grid`: the paper's grid, run in parallel processes, and the table of
  results against the paper's claims.
- :mod:`~zeta_ref.mqar.probe`: where a trained model's attention goes, step by step of the
  recall circuit (is the key it needs a ZETA candidate, and what weight does it get).

``zeta-ref mqar`` (:mod:`zeta_ref.tools.mqar`) runs it from the command line.
"""

from .task import MQARBatch, default_pairs, make_batch
from .train import RunConfig, train

__all__ = ["MQARBatch", "RunConfig", "default_pairs", "make_batch", "train"]
