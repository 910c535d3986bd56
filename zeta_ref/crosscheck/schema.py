"""What a dump may hold: the inputs, the config, each stage's results in pipeline order, and
the gradients of the backward pass (with the gradient of the output they come from).

One table, used by the loader (names, shapes, dtypes, ranges), by :func:`compare` (which
stage a field belongs to, what it is computed from) and by docs/compare.md (which documents
it; tests/test_crosscheck.py holds the page to this table).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The dump format this zeta_ref writes and reads. A dump without ``format_version`` is read
#: as this version (a foreign implementation need not write it).
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Field:
    """One array a dump may hold."""

    name: str
    stage: str  # the stage that computes it (a key of STAGES)
    shape: str  # in the README's legend; "..." the leading (batch, head) dims
    kind: str  # "float": float16/32/64; "index": integers, -1 for empty; "uint": integers >= 0
    decisions: str  # the decisions of docs/decisions.md that govern it
    meaning: str
    inputs: tuple = ()  # what it is computed from: q, k, v and earlier fields


@dataclass(frozen=True)
class Stage:
    """A stage as the report names it, and the fields it computes."""

    name: str
    title: str  # its number in the pipeline and what it does
    fields: tuple[str, ...]


INPUTS = ("q", "k", "v")

FORWARD_FIELDS = (
    Field("q_coords", "quantize", "(..., N, d_k)", "uint", "D1, D2, D12, D13",
          "queries' cells: min(floor(squash(q) * 2^B), 2^B - 1)",
          inputs=('q',)),
    Field("k_coords", "quantize", "(..., N, d_k)", "uint", "D1, D2, D13",
          "keys' cells, the same rule",
          inputs=('k',)),
    Field("q_codes", "morton", "(..., N)", "uint", "D2, D3, D12",
          "queries' Z-order codes: bits interleaved, most significant group first, "
          "dimension 0 first in each group",
          inputs=('q_coords',)),
    Field("k_codes", "morton", "(..., N)", "uint", "D2, D3", "keys' Z-order codes",
          inputs=('k_coords',)),
    Field("key_perm", "sort", "(..., N)", "uint", "D10",
          "key positions in Z order: key_perm[r] is the key of rank r (stable: equal codes "
          "by position)",
          inputs=('k_codes',)),
    Field("sorted_key_codes", "sort", "(..., N)", "uint", "D10", "k_codes[key_perm]",
          inputs=('k_codes',)),
    Field("pool_len", "pools", "(N,)", "uint", "D4, D5",
          "query i may see the keys at positions 0 .. pool_len[i] - 1",
          inputs=()),
    Field("insertion", "search", "(..., N)", "uint", "D4",
          "how many keys of query i's pool have a smaller code (searchsorted, side 'left')",
          inputs=('q_codes', 'key_perm', 'sorted_key_codes', 'pool_len')),
    Field("window_idx", "window", "(..., N, W)", "index", "D6, D9, D11",
          "the W keys at pool ranks p - W//2 ... slid inside the pool, in Z order; -1 empty",
          inputs=('q_codes', 'key_perm', 'sorted_key_codes', 'pool_len')),
    Field("candidates", "rerank", "(..., N, k)", "index", "D6, D9",
          "the k window keys nearest by the score's nearness, in window order; -1 empty "
          "(the window itself when W = k)",
          inputs=('q', 'k', 'window_idx')),
    Field("mean_k", "means", "(..., N, d_k)", "float", "D8",
          "mean of the keys at positions j <= i (all N with causal='none')",
          inputs=('k',)),
    Field("mean_v", "means", "(..., N, d_v)", "float", "D8", "the same mean of the values",
          inputs=('v',)),
    Field("weights", "weights", "(..., N, k)", "float", "D7, D8, D9",
          "each candidate slot's weight, normalised with the mean term; 0 for empty slots",
          inputs=('q', 'k', 'candidates', 'mean_k')),
    Field("mean_weight", "weights", "(..., N)", "float", "D8",
          "the mean term's weight (0 when it is off)",
          inputs=('q', 'k', 'candidates', 'mean_k')),
    Field("output", "output", "(..., N, d_v)", "float", "Eq. 6, D8, D9",
          "sum of weight x value over the candidates, plus mean_weight x mean_v",
          inputs=('v', 'candidates', 'weights', 'mean_weight', 'mean_v')),
)
#: The backward pass's results (docs/backward.md): gradients of L = sum(grad_output * output)
#: with the selection (the candidates) held fixed; a dump holding one holds ``grad_output``.
GRADIENT_INPUTS = ('q', 'k', 'v', 'grad_output', 'candidates', 'mean_k', 'mean_v')
GRADIENT_FIELDS = (
    Field("dq", "backward", "(..., N, d_k)", "float", "b1-b5",
          "dL/dq: each query's slots' shares through their scores",
          inputs=GRADIENT_INPUTS),
    Field("dk", "backward", "(..., N, d_k)", "float", "b1-b5, D8",
          "dL/dk: the shares of every (query, slot) that chose the key, added, and the mean "
          "term's share of the keys it averages",
          inputs=GRADIENT_INPUTS),
    Field("dv", "backward", "(..., N, d_v)", "float", "b1, D8",
          "dL/dv: weight x grad_output over every (query, slot) that chose the value, added, "
          "and the mean term's share",
          inputs=GRADIENT_INPUTS),
    Field("dgamma", "backward", "()", "float", "b4, D7",
          "dL/dgamma, summed over every query (0 for the scores without gamma)",
          inputs=GRADIENT_INPUTS),
)
FIELDS = FORWARD_FIELDS + GRADIENT_FIELDS
FIELD_BY_NAME = {f.name: f for f in FIELDS}

STAGES = (
    Stage("quantize", "2 quantise", ("q_coords", "k_coords")),
    Stage("morton", "3 interleave", ("q_codes", "k_codes")),
    Stage("sort", "4 sort keys", ("key_perm", "sorted_key_codes")),
    Stage("pools", "5a causal pools", ("pool_len",)),
    Stage("search", "5b binary search", ("insertion",)),
    Stage("window", "5c window", ("window_idx",)),
    Stage("rerank", "5d re-rank", ("candidates",)),
    Stage("means", "6a mean term", ("mean_k", "mean_v")),
    Stage("weights", "6b weights", ("weights", "mean_weight")),
    Stage("output", "6c output", ("output",)),
    Stage("backward", "7 gradients", ("dq", "dk", "dv", "dgamma")),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}
STAGE_OF = {f: s.name for s in STAGES for f in s.fields}

#: Names a dump may hold besides the fields: the inputs, the gradient of the output (needed by
#: the gradients), the config and bookkeeping.
OTHER_NAMES = INPUTS + ("grad_output", "config", "format_version", "zeta_ref_version")
KNOWN_NAMES = OTHER_NAMES + tuple(FIELD_BY_NAME)


def upstream(field: str) -> tuple[str, ...]:
    """Every field computed before ``field`` that it depends on, directly or not."""
    seen: list[str] = []
    todo = list(FIELD_BY_NAME[field].inputs)
    while todo:
        name = todo.pop()
        if name in FIELD_BY_NAME and name not in seen:
            seen.append(name)
            todo.extend(FIELD_BY_NAME[name].inputs)
    order = [f.name for f in FIELDS]
    return tuple(sorted(seen, key=order.index))


def nearest_given(field: str, given) -> tuple[str, ...]:
    """The fields of ``given`` that ``field`` is computed from when each field missing from
    ``given`` is computed in turn: its direct inputs where given, else theirs, and so on."""
    found: list[str] = []
    todo = [x for x in FIELD_BY_NAME[field].inputs if x in FIELD_BY_NAME]
    while todo:
        name = todo.pop(0)
        if name in given:
            if name not in found:
                found.append(name)
        else:
            todo.extend(x for x in FIELD_BY_NAME[name].inputs if x in FIELD_BY_NAME)
    order = [f.name for f in FIELDS]
    return tuple(sorted(found, key=order.index))
