"""One pipeline run, field by field, where any field may be taken as given.

:class:`Chain` computes every field of :data:`~zeta_ref.crosscheck.schema.FIELDS` lazily,
each from the fields it depends on, with the stage functions of a backend (the NumPy
specification unless told otherwise). Three uses, one mechanism:

- ``Chain(dump)``: zeta_ref's own answer from the dump's q, k, v, end to end;
- ``Chain(dump, given=dump.results)``: the *local* answer: each field recomputed from the
  dump's own values of the fields it depends on (``chain.fresh("key_perm")`` sorts the
  dump's ``k_codes``), so an early disagreement does not hide the later stages;
- ``Chain(dump, given=..., rules={...})``: the same with some rules replaced by a common
  mistake (:mod:`zeta_ref.crosscheck.variants`), to name the mistake a dump shows.

The gradients (``dq``, ``dk``, ``dv``, ``dgamma``) are those of
:func:`~zeta_ref.zeta_attention_backward` on the chain's candidates and mean term, for the
dump's ``grad_output``: the specification's backward steps and the mean term's share.
"""

from __future__ import annotations

import numpy as np

from ..stages import STAGES as SPEC
from ..stages.window import gather_rows, pool_lengths


class Chain:
    """Every field of one run, computed on first use.

    Parameters
    ----------
    dump : Dump
        Supplies q, k, v and the config.
    given : dict, optional
        Fields taken as they are instead of computed.
    rules : dict, optional
        ``{field: function(chain) -> array}`` replacing the rule of a field.
    stages : Stages, optional
        The backend's stage functions (default: the NumPy specification).
    """

    def __init__(self, dump, given=None, rules=None, stages=None, cfg=None):
        self.dump = dump
        self.q, self.k, self.v = dump.q, dump.k, dump.v
        self.cfg = dump.config if cfg is None else cfg
        self.given = dict(given or {})
        self.rules = dict(rules or {})
        self.s = SPEC if stages is None else stages
        self._memo: dict = {}

    @property
    def n(self) -> int:
        return self.q.shape[-2]

    def __getitem__(self, name: str):
        """The given value of ``name`` if there is one, else the computed one."""
        if name in self.given:
            return self.given[name]
        if name not in self._memo:
            self._memo[name] = self.fresh(name)
        return self._memo[name]

    def fresh(self, name: str):
        """``name`` computed by its rule from the chain's inputs, even where it is given."""
        rule = self.rules.get(name) or RULES[name]
        return rule(self)

    # ---------------------------------------------------------------- shared pieces

    def width(self) -> int:
        return self.cfg.window_for(self.n)

    def k_top(self) -> int:
        return self.cfg.k_for(self.n)

    def chunk(self) -> int:
        return self.cfg.chunk_size_for(self.n)

    def means(self):
        """(mean_k, mean_v) in the inputs' dtype, or (None, None) with the mean term off: a
        dump's own may be of another float dtype, which the stage functions do not take."""
        if not self.cfg.history_mean:
            return None, None
        return tuple(np.ascontiguousarray(self[name], dtype=self.q.dtype)
                     for name in ("mean_k", "mean_v"))

    def backward(self):
        """(dq, dk, dv, dgamma) on the chain's candidates and means, for the dump's
        grad_output: the composer's steps (zeta_ref.backward)."""
        if "_backward" not in self._memo:
            c = self.cfg
            mean_k, mean_v = self.means()
            g = self.dump.grad_output
            if g is None:
                raise ValueError("the gradients need grad_output in the dump")
            with np.errstate(over="ignore", invalid="ignore"):
                dq, dk, dv, dmk, dmv, dgamma = self.s.topk_attention_backward(
                    self.q, self.k, self.v, np.ascontiguousarray(self["candidates"]), c.score,
                    c.gamma, mean_k, mean_v, g)
                if c.history_mean:
                    dk, dv = self.s.history_means_backward(dmk, dmv, c.causal, add_to=(dk, dv))
            self._memo["_backward"] = (dq, dk, dv, np.float64(dgamma))
        return self._memo["_backward"]

    def attention(self):
        """(output, weights, mean_weight) of stage 6 on the chain's candidates and means."""
        if "_attention" not in self._memo:
            c = self.cfg
            mean_k, mean_v = self.means()
            self._memo["_attention"] = self.s.topk_attention(
                self.q, self.k, self.v, np.ascontiguousarray(self["candidates"]), c.score,
                c.gamma, mean_k, mean_v)
        return self._memo["_attention"]


def _coords(x_name: str):
    def rule(ch: Chain):
        c = ch.cfg
        return ch.s.quantize(getattr(ch, x_name), c.bits, c.squash, c.clip_range)
    return rule


def _codes(coords_name: str):
    def rule(ch: Chain):
        return ch.s.morton_encode(np.ascontiguousarray(ch[coords_name]), ch.cfg.bits,
                                  check=False)
    return rule


def _key_perm(ch: Chain):
    return ch.s.sort_keys(np.ascontiguousarray(ch["k_codes"]))[0]


def _sorted_key_codes(ch: Chain):
    # the codes in sorted order do not depend on how ties are broken: sort the chain's codes
    return np.sort(ch["k_codes"], axis=-1)


def _pool_len(ch: Chain):
    return pool_lengths(ch.n, ch.cfg.causal, ch.chunk())


def _search_inputs(ch: Chain):
    return (np.ascontiguousarray(ch["q_codes"]), np.ascontiguousarray(ch["key_perm"]),
            np.ascontiguousarray(ch["sorted_key_codes"]), ch["pool_len"])


def _insertion(ch: Chain):
    return ch.s.insertion_points(*_search_inputs(ch))


def _window(ch: Chain):
    return ch.s.neighbour_window(*_search_inputs(ch), ch.width())


def _candidates(ch: Chain):
    window = np.ascontiguousarray(ch["window_idx"])
    if ch.width() > ch.k_top():
        return ch.s.rerank(ch.q, ch.k, window, ch.k_top(), ch.cfg.score)
    return window


def _means(index: int):
    def rule(ch: Chain):
        if "_means" not in ch._memo:
            ch._memo["_means"] = ch.s.history_means(ch.k, ch.v, ch.cfg.causal)
        return ch._memo["_means"][index]
    return rule


def _weights(ch: Chain):
    return ch.attention()[1]


def _mean_weight(ch: Chain):
    return ch.attention()[2]


def _output(ch: Chain):
    if "weights" not in ch.given and "mean_weight" not in ch.given \
            and "weights" not in ch.rules and "mean_weight" not in ch.rules:
        return ch.attention()[0]  # exactly zeta_attention's output
    return weighted_sum(ch)


def weighted_sum(ch: Chain, with_mean: bool = True):
    """Eq. 6's sum from the chain's weights: sum_j w_j v_j + mean_weight * mean_v (the mean
    term's share only with the mean term on and ``with_mean``)."""
    cand = ch["candidates"]
    values = gather_rows(ch.v, cand)  # (..., N, k, d_v)
    w = np.where(cand >= 0, ch["weights"], 0).astype(ch.v.dtype)  # (..., N, k)
    out = (w[..., None] * values).sum(axis=-2)  # (..., N, d_v)
    if ch.cfg.history_mean and with_mean:
        out = out + ch["mean_weight"][..., None].astype(ch.v.dtype) * ch["mean_v"]
    return out.astype(ch.v.dtype, copy=False)


def _gradient(index: int):
    def rule(ch: Chain):
        return ch.backward()[index]
    return rule


RULES = {
    "q_coords": _coords("q"),
    "k_coords": _coords("k"),
    "q_codes": _codes("q_coords"),
    "k_codes": _codes("k_coords"),
    "key_perm": _key_perm,
    "sorted_key_codes": _sorted_key_codes,
    "pool_len": _pool_len,
    "insertion": _insertion,
    "window_idx": _window,
    "candidates": _candidates,
    "mean_k": _means(0),
    "mean_v": _means(1),
    "weights": _weights,
    "mean_weight": _mean_weight,
    "output": _output,
    "dq": _gradient(0),
    "dk": _gradient(1),
    "dv": _gradient(2),
    "dgamma": _gradient(3),
}
