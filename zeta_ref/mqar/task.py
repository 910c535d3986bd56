"""Multi-query associative recall (MQAR): the synthetic task of the paper's first experiment.

MQAR comes from Zoology (Arora et al. 2023, arXiv 2312.04927); ZETA's paper reports, in its
experiments, that ZETA matches standard attention on it. This module writes the task from
its description; it shares no code with Zoology.

One sequence of N tokens holds, in order:

1. a **context** of P key-value pairs, ``k_1 v_1 k_2 v_2 ... k_P v_P`` (2P tokens). The P keys
   are distinct tokens of the lower half of the vocabulary, ``1 .. V/2 - 1``; the values are
   distinct tokens of the upper half, ``V/2 .. V - 1``. Token 0 never is a key or a value;
2. a **query section** (the remaining N - 2P positions). Every key is asked once, in a random
   order: the key is written at a query position p and its value right after it, at p + 1
   (so a query costs two positions, and the sequence reads as it would in text). Every other
   position holds a filler: token 0 (``filler="zero"``, as Zoology's figures use), or a
   random token (``filler="random"``; it may repeat a key or a value, a harder task).

The model reads the sequence left to right (causally) and is scored at the query positions
only: after reading the key at p it must predict the value, which it has seen only in the
context. The answer at p is the next token, ``tokens[p + 1]``, so the target of position p is
what a language model would predict there.

Where the queries go. The query section has S = (N - 2P) // 2 slots, slot j at position
2P + 2j. P of them are drawn without replacement:

- ``query_dist="power"``: slot j with weight (j + 1)^(a - 1), a power law that favours the
  slots near the context (Zoology's choice; a = ``power_a``, 0.01 by default as in Zoology's
  figures, so the weights fall off about as 1 / (j + 1));
- ``query_dist="uniform"``: every slot alike.

Drawing P of S slots without replacement with given weights is done for the whole batch at
once with the Gumbel-top-k trick: add independent Gumbel noise to the log-weights and keep the
P largest, which draws the slots exactly as successive weighted draws without replacement would.

Every function takes its randomness as an explicit ``numpy.random.Generator``; the arrays are
NumPy (host) arrays; the training loop moves them to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_DISTS = ("power", "uniform")
FILLERS = ("zero", "random")


@dataclass(frozen=True)
class MQARBatch:
    """A batch of MQAR sequences (B sequences of N tokens, P queries each).

    Attributes
    ----------
    tokens : int64 (B, N)
        The input sequences.
    query_pos : int64 (B, P)
        The positions p where a key is asked, ascending in each row.
    answers : int64 (B, P)
        The value to predict at each query position (``tokens[b, query_pos[b, j] + 1]``).
    keys, values : int64 (B, P)
        The context's pairs, in context order (``tokens[b, 2i]``, ``tokens[b, 2i + 1]``).
    """

    tokens: np.ndarray
    query_pos: np.ndarray
    answers: np.ndarray
    keys: np.ndarray
    values: np.ndarray


def check_task(seq_len: int, pairs: int, vocab: int) -> None:
    """Refuse sizes the task cannot be built with, naming the argument."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1; got {pairs}")
    if seq_len < 4 * pairs:
        raise ValueError(f"seq_len must be >= 4 * pairs (2P context tokens and 2P for the "
                         f"queries and their answers); got seq_len={seq_len}, pairs={pairs}")
    if vocab // 2 - 1 < pairs or vocab - vocab // 2 < pairs:
        raise ValueError(f"vocab must hold P distinct keys in 1 .. V/2 - 1 and P distinct "
                         f"values in V/2 .. V - 1; got vocab={vocab}, pairs={pairs}")


def _distinct(rng, batch: int, count: int, low: int, high: int) -> np.ndarray:
    """(batch, count) integers in [low, high), distinct within each row.

    Rows with a repeat are drawn again (rejection); with count much smaller than high - low a
    repeat is rare, so this costs a few vectorised draws. When count is a large share of the
    range, each row is a slice of a permutation instead.
    """
    span = high - low
    if count * 4 > span:  # dense: permute each row's whole range
        return low + np.argsort(rng.random((batch, span)), axis=1)[:, :count]
    out = rng.integers(low, high, size=(batch, count))  # (B, count)
    while True:
        srt = np.sort(out, axis=1)
        bad = (srt[:, 1:] == srt[:, :-1]).any(axis=1)  # (B,) rows holding a repeat
        if not bad.any():
            return out
        out[bad] = rng.integers(low, high, size=(int(bad.sum()), count))


def query_slots(rng, batch: int, pairs: int, n_slots: int, query_dist: str = "power",
                power_a: float = 0.01) -> np.ndarray:
    """For each row, ``pairs`` distinct slots of ``0 .. n_slots - 1``, ascending: int64 (B, P).

    Weighted draws without replacement by the Gumbel-top-k trick (see the module docstring).
    """
    if query_dist == "power":
        logw = (power_a - 1.0) * np.log(np.arange(1, n_slots + 1, dtype=np.float64))  # (S,)
    elif query_dist == "uniform":
        logw = np.zeros(n_slots)
    else:
        raise ValueError(f"query_dist must be one of {QUERY_DISTS}; got {query_dist!r}")
    gumbel = -np.log(-np.log(rng.random((batch, n_slots))))  # (B, S)
    scores = logw + gumbel  # (B, S)
    top = np.argpartition(-scores, pairs - 1, axis=1)[:, :pairs]  # (B, P), any order
    return np.sort(top, axis=1)


def make_batch(rng, batch: int, seq_len: int, pairs: int, vocab: int, *,
               query_dist: str = "power", power_a: float = 0.01,
               filler: str = "zero") -> MQARBatch:
    """Draw ``batch`` MQAR sequences; see the module docstring for their layout.

    Parameters
    ----------
    rng : numpy.random.Generator
        All randomness comes from here (seeded by the caller).
    batch, seq_len, pairs, vocab : int
        B, N, P and V. Needs N >= 4P and P distinct tokens in each half of the vocabulary.
    query_dist : {"power", "uniform"}
        How the query positions are drawn.
    power_a : float
        The exponent a of the power law (weights (j + 1)^(a - 1)).
    filler : {"zero", "random"}
        What the positions that are neither context, query nor answer hold.
    """
    check_task(seq_len, pairs, vocab)
    if filler not in FILLERS:
        raise ValueError(f"filler must be one of {FILLERS}; got {filler!r}")
    half = vocab // 2
    rows = np.arange(batch)[:, None]  # (B, 1)
    # step 1: the context's pairs
    keys = _distinct(rng, batch, pairs, 1, half)  # (B, P) in 1 .. V/2 - 1
    values = _distinct(rng, batch, pairs, half, vocab)  # (B, P) in V/2 .. V - 1
    if filler == "zero":
        tokens = np.zeros((batch, seq_len), dtype=np.int64)  # (B, N)
    else:
        tokens = rng.integers(0, vocab, size=(batch, seq_len))  # (B, N)
    tokens[:, 0:2 * pairs:2] = keys
    tokens[:, 1:2 * pairs:2] = values
    # step 2: where the queries go, and which key each one asks (a random order of the keys)
    n_slots = (seq_len - 2 * pairs) // 2
    slots = query_slots(rng, batch, pairs, n_slots, query_dist, power_a)  # (B, P)
    query_pos = 2 * pairs + 2 * slots  # (B, P), ascending
    asked = np.argsort(rng.random((batch, pairs)), axis=1)  # (B, P): which pair, per query
    answers = values[rows, asked]  # (B, P)
    # step 3: write each query's key and, right after it, its value
    tokens[rows, query_pos] = keys[rows, asked]
    tokens[rows, query_pos + 1] = answers
    return MQARBatch(tokens=tokens, query_pos=query_pos.astype(np.int64),
                     answers=answers.astype(np.int64), keys=keys.astype(np.int64),
                     values=values.astype(np.int64))


def default_pairs(seq_len: int) -> int:
    """P = N / 16 (at least 1): 4, 8 and 16 pairs at N = 64, 128 and 256, the pairing of
    Zoology's main MQAR figure (and so, presumably, of ZETA's, which cites it)."""
    return max(1, seq_len // 16)
