"""A replay on the CPU, in NumPy, of the fused GPU pass's sort and scan (zeta_ref/cupy/fused.cu;
no GPU needed): each query's place in its prefix pool taken from one sort of its row's keys and
queries together, instead of a binary search of the pool (docs/benchmarks.md, issue 10; an
experiment, docs/data/window_merged.cu, until the library took it on 2026-12-05).

    python docs/data/window_merged_replay.py

The replay follows the kernels step for step on one row: the packing of zeta_fused_keys
(code, then a bit that is 0 for a query and 1 for a key, then the position), one sort, the
per-tile counts of zeta_level_counts (the top level's from the tile's keys less the levels
below), the scan over the tiles (zeta_level_offsets), and zeta_level_scatter's ranks. It
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


def level_start(t: int, rows: int) -> int:
    """fused.cu's level_start: where level t begins in the levels buffer (R rows of S_u each,
    u < t, before it)."""
    return rows * ((1 << (S0_BITS + t)) - (1 << S0_BITS))


def replay(q_codes: np.ndarray, k_codes: np.ndarray, code_bits: int, causal: str, chunk: int,
           key_bit: int = 1):
    """R rows (q_codes, k_codes of shape (R, N)) through the kernels: (levels, queries,
    places), the flat buffers zeta_level_scatter writes (levels: level t of row r at
    level_start(t) + r S_t, the top level's row at level_start(T) + r N; queries and places
    at r N + the query's rank among its row's queries). Every slot is asserted written once.
    ``key_bit`` is the bit that marks a key (1, as in the kernels; 0 puts each query after
    the keys of its code, a mistake the checks must see)."""
    rows, n = k_codes.shape
    pos_bits = (n - 1).bit_length()
    row_shift = code_bits + 1 + pos_bits
    one = np.uint64(1)
    # zeta_fused_keys: keys first, then queries (the sort mixes them)
    r_bits = (np.arange(rows, dtype=np.uint64) << np.uint64(row_shift) if row_shift < 64
              else np.zeros(rows, np.uint64))[:, None]
    i = np.arange(n, dtype=np.uint64)
    shift = np.uint64(1 + pos_bits)
    mark_key, mark_query = (np.uint64(b << pos_bits) for b in (key_bit, 1 - key_bit))
    entries = np.concatenate([(r_bits | (k_codes << shift) | mark_key | i).ravel(),
                              (r_bits | (q_codes << shift) | mark_query | i).ravel()])
    entries = np.sort(entries)  # the radix sort of the GPU: the same order
    assert row_shift >= 64 or np.array_equal(  # row r's 2N entries at 2 r N .. 2 r N + 2N
        entries >> np.uint64(row_shift), np.repeat(np.arange(rows, dtype=np.uint64), 2 * n))
    n_levels = level_count(n)
    levels = np.zeros(level_start(n_levels, rows) + rows * n, dtype=np.uint64)
    queries = np.zeros(rows * n, dtype=np.uint64)
    places = np.zeros(rows * n, dtype=np.int64)
    written = [np.zeros(len(levels), int), np.zeros(rows * n, int)]
    mask = np.uint64((1 << pos_bits) - 1)
    lengths = pool_lengths(n, causal, chunk)
    tiles = -(-2 * n // TILE)
    pad = tiles * TILE - 2 * n  # the last tile is short: its last threads hold no entry
    for r in range(rows):
        mine = entries[2 * r * n:2 * r * n + 2 * n]
        pos = (mine & mask).astype(np.int64)
        is_key = ((mine >> np.uint64(pos_bits)) & one) == np.uint64(key_bit)
        lvl = np.where(is_key, level_of(pos), n_levels + 1)
        q_level = np.where(is_key, -1, pool_level(lengths[pos], n_levels))
        lvl_t = np.concatenate([lvl, np.full(pad, n_levels + 1)]).reshape(tiles, TILE)
        key_t = np.concatenate([is_key, np.zeros(pad, bool)]).reshape(tiles, TILE)
        # zeta_level_counts: the levels below the top by counting, the top by subtraction
        counts = np.zeros((tiles, n_levels + 1), dtype=np.int64)
        for t in range(n_levels):
            counts[:, t] = (lvl_t == t).sum(axis=1)
        counts[:, n_levels] = key_t.sum(axis=1) - counts[:, :n_levels].sum(axis=1)
        # zeta_level_offsets: the keys of level <= t in the tiles before
        upto = np.cumsum(counts, axis=1)
        offsets = np.cumsum(upto, axis=0) - upto
        # zeta_level_scatter, level by level; the count of keys of level <= t before each
        # entry in its tile (the kernel's ballots and warp totals) as a cumulative sum
        place = np.zeros(2 * n, dtype=np.int64)
        for t in range(n_levels + 1):
            inside = lvl_t <= t
            rank = (offsets[:, t][:, None] + np.cumsum(inside, axis=1) - inside).ravel()[:2 * n]
            inside = inside.ravel()[:2 * n]
            size = (1 << (S0_BITS + t)) if t < n_levels else n
            at = level_start(t, rows) + r * size + rank[inside]
            levels[at] = mine[inside]
            written[0][at] += 1
            place[q_level == t] = rank[q_level == t]
            if t == n_levels:
                query = ~is_key
                rank_q = r * n + np.arange(2 * n)[query] - rank[query]
                queries[rank_q] = mine[query]
                places[rank_q] = place[query]
                written[1][rank_q] += 1
    assert all(np.all(w == 1) for w in written), "a slot written twice or not at all"
    return levels, queries, places


def check(q, k, cfg: ZetaConfig, key_bit: int = 1) -> list[str]:
    """What replay() gives for q and k (R, N, d_k), against the library's definitions, row by
    row: a list of failures (empty when all hold)."""
    rows, n, d = k.shape
    code_bits = d * cfg.bits
    if (2 * rows - 1).bit_length() + code_bits + (n - 1).bit_length() > 64:  # fused.packing
        raise ValueError("rows, code and position do not fit 64 bits: the library takes the "
                         "stages")
    q_codes = morton_encode(quantize(q, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    k_codes = morton_encode(quantize(k, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    chunk = cfg.chunk_size_for(n)
    levels, queries, places = replay(q_codes, k_codes, code_bits, cfg.causal, chunk, key_bit)
    pos_bits = (n - 1).bit_length()
    mask = np.uint64((1 << pos_bits) - 1)
    code_mask = np.uint64((1 << code_bits) - 1)
    n_levels = level_count(n)
    lengths = pool_lengths(n, cfg.causal, chunk)
    failures = []
    for r in range(rows):
        for t in range(n_levels + 1):
            size = (1 << (S0_BITS + t)) if t < n_levels else n
            level = levels[level_start(t, rows) + r * size:][:size]
            perm, codes = sort_keys(k_codes[r, :size])  # the keys at positions < size
            if not (np.array_equal((level & mask).astype(np.int64), perm)
                    and np.array_equal((level >> np.uint64(1 + pos_bits)) & code_mask, codes)
                    and np.all((level >> np.uint64(pos_bits)) & np.uint64(1)
                               == np.uint64(key_bit))):
                failures.append(f"row {r}: level {t} is not its keys at positions < {size} "
                                f"in Z order")
        mine = queries[r * n:(r + 1) * n]
        order, _ = sort_keys(q_codes[r])
        got_order = (mine & mask).astype(np.int64)
        if not (np.array_equal(got_order, order)
                and np.all((mine >> np.uint64(pos_bits)) & np.uint64(1) != np.uint64(key_bit))):
            failures.append(f"row {r}: the queries are not in Z order, ties by position")
            continue
        # each query's pool: the smallest level holding its L positions (S_{t-1} < L <= S_t)
        t_of = pool_level(lengths[got_order], n_levels)
        size_of = np.where(t_of < n_levels, 1 << (S0_BITS + t_of), n)
        below = np.where(t_of > 0, 1 << (S0_BITS + t_of - 1), 0)
        if not np.all((lengths[got_order] <= size_of) & ((below < lengths[got_order])
                                                         | (t_of == 0))):
            failures.append(f"row {r}: a query's pool is not the smallest that holds it")
        for t in np.unique(t_of):
            _, pool_codes = sort_keys(k_codes[r, :int(size_of[t_of == t][0])])
            at = t_of == t
            want = np.searchsorted(pool_codes, q_codes[r, got_order[at]], side="left")
            got = places[r * n:(r + 1) * n][at]
            if not np.array_equal(got, want):
                failures.append(f"row {r}: places in level {t} differ from the search's in "
                                f"{int(np.sum(got != want))} queries")
    return failures


CASES = [  # (rows, N, bits, causal, seed): the extremes of N and bits (17 bits a coordinate
    # at N = 3000 in one row fill all 64 bits: 51 of code, the key bit, 12 of position: no row
    # bits), several rows, every causal mode
    (1, 1, 10, "inclusive", 0), (3, 2, 1, "strict", 0), (2, 255, 10, "inclusive", 1),
    (2, 256, 10, "strict", 2), (3, 257, 10, "inclusive", 3), (1, 300, 1, "inclusive", 4),
    (2, 1000, 10, "none", 5), (1, 1000, 2, "strict", 6), (5, 1025, 10, "inclusive", 7),
    (1, 3000, 17, "inclusive", 8), (2, 5000, 10, "strict", 9), (1, 4097, 3, "none", 10),
    (1, 70000, 10, "inclusive", 11),
]


def run_cases(cases=CASES) -> dict:
    """(rows, N, bits, causal, seed) -> failures, for standard normal q and k with d_k = 3
    (N = 300 with bits = 1: many equal codes, ties between keys and between keys and
    queries)."""
    out = {}
    for rows, n, bits, causal, seed in cases:
        rng = np.random.default_rng(seed)
        q, k = rng.standard_normal((2, rows, n, 3))
        out[(rows, n, bits, causal, seed)] = check(q, k, ZetaConfig(bits=bits, causal=causal))
    return out


def main() -> int:
    bad = 0
    for case, failures in run_cases().items():
        print(f"R = {case[0]}, N = {case[1]:6d}, bits = {case[2]:2d}, {case[3]:9s}: "
              + ("the library's pools, places and query order" if not failures
                 else "; ".join(failures)))
        bad += bool(failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
