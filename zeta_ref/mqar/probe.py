"""Look inside a trained MQAR model: does each layer attend where the recall circuit needs it?

MQAR is solved by two attention layers working together (docs/experiments.md, "The model"):

- **layer 1** looks one token back: the value v_i at position 2i + 1 attends to the key k_i at
  2i, and so picks it up;
- **layer 2** matches: the query position holding k_i attends to position 2i + 1 (which now
  carries k_i) and copies v_i from there.

:func:`recall_circuit` runs the model on a batch and measures, for each of the two steps,
where the attention goes: with ZETA, whether the position the circuit needs is among the
query's k candidates at all (the selection), and with any attention the weight it gets and
its rank among the weights (the score). That tells a plateau caused by the selection (the
needed key is not in the window) apart from one caused by the score (it is there, and gets
no more weight than the others).
"""

from __future__ import annotations

import numpy as np

from . import layers as L
from . import model as M


def _circuit_targets(tokens: np.ndarray, query_pos: np.ndarray, pairs: int):
    """(rows, positions, targets) of both steps of the circuit, as host int arrays.

    Layer 1: each context value position 2i + 1 -> its key's position 2i. Layer 2: each query
    position -> the value position 2i + 1 of the pair whose key it holds.
    """
    batch = tokens.shape[0]
    value_pos = np.arange(1, 2 * pairs, 2)  # (P,)
    l1 = (np.repeat(np.arange(batch), pairs), np.tile(value_pos, batch),
          np.tile(value_pos - 1, batch))
    keys = tokens[:, 0:2 * pairs:2]  # (B, P), the context's keys in order
    asked = np.take_along_axis(tokens, query_pos, axis=1)  # (B, P): the key at each query
    match = asked[:, :, None] == keys[:, None, :]  # (B, P, P): exactly one True per query
    if not match.any(axis=-1).all():
        raise ValueError("every query position must hold one of its context's keys")
    l2 = (np.repeat(np.arange(batch), pairs), query_pos.reshape(-1),
          (2 * match.argmax(axis=-1) + 1).reshape(-1))
    return l1, l2


def _step_report(layer_cache, rows, pos, target) -> dict:
    """What one attention layer (head 0) gives the circuit's target at each (row, pos)."""
    core = layer_cache[5]
    attn = layer_cache[3]
    if core == "full":
        p = L.to_host(attn[3])[:, 0]  # (B, N, N) softmax weights of head 0
        weights = p[rows, pos]  # (M, N): over every key position
        w_target = weights[np.arange(len(rows)), target]
        report = {"in_candidates": 1.0, "mean_term_weight": 0.0}
    else:
        inter = attn[4]
        cand = L.to_host(inter.candidates)[:, 0][rows, pos]  # (M, k)
        weights = L.to_host(inter.weights)[:, 0][rows, pos]  # (M, k)
        hit = cand == target[:, None]
        w_target = (weights * hit).sum(axis=-1)  # 0 where the target is not a candidate
        report = {"in_candidates": float(hit.any(axis=-1).mean()),
                  "mean_term_weight": float(L.to_host(inter.mean_weight)[:, 0][rows, pos].mean())}
        # rank among the candidates, only where it is one
        weights, w_target = weights[hit.any(axis=-1)], w_target[hit.any(axis=-1)]
    rank = (weights > w_target[:, None]).sum(axis=-1)
    report.update(target_weight=float(w_target.mean()) if w_target.size else 0.0,
                  largest_weight=float(weights.max(axis=-1).mean()) if weights.size else 0.0,
                  target_rank=float(rank.mean()) if rank.size else float("nan"),
                  target_first=float((rank == 0).mean()) if rank.size else 0.0)
    return report


def recall_circuit(model_config, params: dict, log_gammas: dict, batch,
                   backend: str = "numba") -> dict:
    """Where each layer of a two-layer MQAR model attends, for the recall circuit.

    ``batch``: an :class:`~zeta_ref.mqar.task.MQARBatch` (host arrays). The model runs on it
    (arrays of ``params``' namespace, ZETA through ``backend``); head 0 of each layer is read.
    Returns ``{"layer1": report, "layer2": report}``, each report averaged over the circuit's
    positions of the batch (layer 1: the P context value positions of each sequence; layer 2:
    its P query positions):

    - ``in_candidates``: share of positions whose target is among the ZETA candidates
      (1.0 for full attention, which weighs every key);
    - ``target_weight``: the weight the target gets (0 where it is not a candidate);
    - ``largest_weight``: the largest weight of any key (for comparison);
    - ``target_rank``: how many keys get more weight than the target (0: it gets the most),
      and ``target_first``: the share where none does; over the positions where it is a
      candidate;
    - ``mean_term_weight``: the weight of ZETA's mean term (0 for full attention).
    """
    if model_config.layers != 2:
        raise ValueError(f"the recall circuit needs a two-layer model; got {model_config.layers}")
    tokens, query_pos = np.asarray(batch.tokens), np.asarray(batch.query_pos)
    pairs = query_pos.shape[1]
    l1, l2 = _circuit_targets(tokens, query_pos, pairs)
    xp = L.array_module(params["wte"])
    _, _, caches = M.forward(model_config, params, log_gammas, xp.asarray(tokens),
                             xp.asarray(query_pos), xp.asarray(np.asarray(batch.answers)),
                             backend)
    return {"layer1": _step_report(caches["h0.attn"], *l1),
            "layer2": _step_report(caches["h1.attn"], *l2)}
