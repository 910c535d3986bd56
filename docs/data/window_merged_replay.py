"""A replay on the CPU, in NumPy, of docs/data/window_merged.cu's sort and scan (no GPU needed):
each query's place in its prefix pool taken from one sort of its row's keys and queries
together, instead of a binary search of the pool (docs/benchmarks.md, issue 10).

    python docs/data/window_merged_replay.py

The replay follows the kernels step for step on one row: the packing of zeta_merged_keys
(code, then a bit that is 0 for a query and 1 for a key, then the position), one sort, the
per-tile counts of zeta_merged_counts (the top level's from the tile's keys less the levels
below), the scan over the tiles (zeta_level_offsets), and zeta_merged_scatter's ranks. It
then checks what the GPU kernels rely on against the library's own definitions:

- level t holds the keys at positions < S_0 2^t (the top level: all N) in Z order, ties by
  position (the prefix pools of zeta_ref.cupy.fused, from the specification's sort_keys);
- each query's place is the first entry of its pool whose code is not below its own
  (np.searchsorted, side="left": what the window kernel's search finds);
- the queries come out in Z order, ties by position (the attention kernel's visiting order).

It prints one line per case and exits with 1 if any check fails. tests/test_cupy_sources.py
runs the same checks.
"""
from __future__ import annotations

import sys

import numpy as np

from zeta_ref import ZetaConfig
from zeta_ref.stages.morton import morton_encode
from zeta_ref.stages.quantize import quantize
from zeta_ref.stages.sort import sort_keys
from zeta_ref.stages.window import pool_lengths

S0_BITS = 8  # zeta_ref.cupy.fused.S0_BITS: the smallest prefix pool holds 256 keys
TILE = 1024  # fused.cu's ZETA_TILE


def level_count(n: int) -> int:
    """T (zeta_ref.cupy.fused.level_count): the levels below the top one."""
    t = 0
    while (1 << (S0_BITS + t)) < n:
        t += 1
    return t


def level_of(p: np.ndarray) -> np.ndarray:
    """fused.cu's level_of: the smallest t with p < S_0 2^t, the bit length of p >> S0_BITS."""
    b = p >> S0_BITS
    out = np.zeros(p.shape, dtype=np.int64)
    while np.any(b):
        out += b > 0
        b = b >> 1
    return out


def pool_level(lengths: np.ndarray, n_levels: int) -> np.ndarray:
    """fused.cu's pool_level: the smallest level t <= T whose size S_0 2^t is >= L."""
    t = np.zeros(lengths.shape, dtype=np.int64)
    for u in range(n_levels):
        t += lengths > (1 << (S0_BITS + u))
    return t


def replay(q_codes: np.ndarray, k_codes: np.ndarray, causal: str, chunk: int,
           key_bit: int = 1):
    """One row through the kernels: (levels, queries, places), where levels[t] is level t's
    packed entries, queries the row's query entries in the order they are written and places
    their places, as zeta_merged_scatter writes them. ``key_bit`` is the bit that marks a
    key (1, as in the kernels; 0 puts each query after the keys of its code, a mistake the
    checks must see)."""
    n = len(k_codes)
    pos_bits = (n - 1).bit_length()
    i = np.arange(n, dtype=np.uint64)
    one = np.uint64(1)
    shift = np.uint64(1 + pos_bits)
    # zeta_merged_keys: keys first, then queries (the sort mixes them)
    mark_key, mark_query = (np.uint64(b << pos_bits) for b in (key_bit, 1 - key_bit))
    entries = np.concatenate([(k_codes << shift) | mark_key | i,
                              (q_codes << shift) | mark_query | i])
    entries = np.sort(entries)  # the radix sort of the GPU: the same order
    mask = np.uint64((1 << pos_bits) - 1)
    pos = (entries & mask).astype(np.int64)
    is_key = ((entries >> np.uint64(pos_bits)) & one) == np.uint64(key_bit)
    n_levels = level_count(n)
    lvl = np.where(is_key, level_of(pos), n_levels + 1)
    q_level = np.where(is_key, -1, pool_level(pool_lengths(n, causal, chunk)[pos], n_levels))
    # the tiles of 1024 entries (the last one short: entries past 2N are in no level)
    tiles = -(-2 * n // TILE)
    pad = tiles * TILE - 2 * n
    lvl_t = np.concatenate([lvl, np.full(pad, n_levels + 1)]).reshape(tiles, TILE)
    key_t = np.concatenate([is_key, np.zeros(pad, bool)]).reshape(tiles, TILE)
    # zeta_merged_counts: the levels below the top by counting, the top by subtraction
    counts = np.stack([(lvl_t == t).sum(axis=1) for t in range(n_levels)] + [np.zeros(tiles, int)],
                      axis=1)
    counts[:, n_levels] = key_t.sum(axis=1) - counts[:, :n_levels].sum(axis=1)
    # zeta_level_offsets: keys of level <= t in the tiles before
    upto = np.cumsum(counts, axis=1)
    offsets = np.cumsum(upto, axis=0) - upto
    # zeta_merged_scatter, level by level
    levels, places = [], np.zeros(2 * n, dtype=np.int64)
    queries = np.zeros(n, dtype=np.uint64)
    query_places = np.zeros(n, dtype=np.int64)
    for t in range(n_levels + 1):
        inside = lvl_t <= t
        before = np.cumsum(inside, axis=1) - inside  # in the tile, before the entry
        rank = (offsets[:, t][:, None] + before).reshape(-1)[:2 * n]
        inside = inside.reshape(-1)[:2 * n]
        size = (1 << (S0_BITS + t)) if t < n_levels else n
        level = np.zeros(size, dtype=np.uint64)
        level[rank[inside]] = entries[inside]
        assert inside.sum() == min(size, n)  # every slot of the level written, once
        levels.append(level)
        at_pool = q_level == t
        places[at_pool] = rank[at_pool]
        if t == n_levels:
            query = ~is_key
            rank_q = np.arange(2 * n)[query] - rank[query]
            queries[rank_q] = entries[query]
            query_places[rank_q] = places[query]
    return levels, queries, query_places


def check(q, k, cfg: ZetaConfig, key_bit: int = 1) -> list[str]:
    """What replay() gives for one row of q and k, against the library's definitions: a list
    of failures (empty when all hold)."""
    n = len(k)
    if q.shape[-1] * cfg.bits + 1 + (n - 1).bit_length() > 64:  # one row: no row bits
        raise ValueError("code and position do not fit 64 bits: the library takes the stages")
    q_codes = morton_encode(quantize(q, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    k_codes = morton_encode(quantize(k, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    levels, queries, places = replay(q_codes, k_codes, cfg.causal, cfg.chunk_size_for(n),
                                     key_bit)
    pos_bits = (n - 1).bit_length()
    mask = np.uint64((1 << pos_bits) - 1)
    failures = []
    n_levels = level_count(n)
    for t, level in enumerate(levels):
        size = (1 << (S0_BITS + t)) if t < n_levels else n
        perm, codes = sort_keys(k_codes[:size])  # the prefix pool: keys at positions < size
        if not (np.array_equal((level & mask).astype(np.int64), perm)
                and np.array_equal(level >> np.uint64(1 + pos_bits), codes)):
            failures.append(f"level {t} is not the keys at positions < {size} in Z order")
    order, _ = sort_keys(q_codes)
    got_order = (queries & mask).astype(np.int64)
    if not np.array_equal(got_order, order):
        failures.append("the queries are not in Z order, ties by position")
    lengths = pool_lengths(n, cfg.causal, cfg.chunk_size_for(n))
    t_of = pool_level(lengths[got_order], n_levels)
    for t in np.unique(t_of):
        size = (1 << (S0_BITS + int(t))) if t < n_levels else n
        _, pool_codes = sort_keys(k_codes[:size])
        at = t_of == t
        want = np.searchsorted(pool_codes, q_codes[got_order[at]], side="left")
        if not np.array_equal(places[at], want):
            failures.append(f"places in level {t} differ from the search's in "
                            f"{int(np.sum(places[at] != want))} queries")
    return failures


CASES = [  # (N, bits, causal, seed): the extremes of N and bits (17 bits a coordinate at N =
    # 3000 fill all 64 bits: 51 of code, the key bit, 12 of position), every causal mode
    (1, 10, "inclusive", 0), (2, 1, "strict", 0), (255, 10, "inclusive", 1),
    (256, 10, "strict", 2), (257, 10, "inclusive", 3), (300, 1, "inclusive", 4),
    (1000, 10, "none", 5), (1000, 2, "strict", 6), (1025, 10, "inclusive", 7),
    (3000, 17, "inclusive", 8), (5000, 10, "strict", 9), (4097, 3, "none", 10),
    (70000, 10, "inclusive", 11),
]


def run_cases(cases=CASES) -> dict:
    """(N, bits, causal, seed) -> failures, for standard normal q and k with d_k = 3 (N =
    300 with bits = 1: many equal codes, ties between keys and between keys and queries)."""
    out = {}
    for n, bits, causal, seed in cases:
        rng = np.random.default_rng(seed)
        q, k = rng.standard_normal((2, n, 3))
        out[(n, bits, causal, seed)] = check(q, k, ZetaConfig(bits=bits, causal=causal))
    return out


def main() -> int:
    bad = 0
    for case, failures in run_cases().items():
        print(f"N = {case[0]:6d}, bits = {case[1]:2d}, {case[2]:9s}: "
              + ("the library's pools, places and query order" if not failures
                 else "; ".join(failures)))
        bad += bool(failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
