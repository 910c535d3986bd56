"""How many dependent rounds of loads the GPU's window kernel makes per query (docs/benchmarks.md,
"How far each stage is from its floor"): a count on the CPU, no timing.

    python docs/data/window_rounds.py [N] [LANES] [QUERIES] [SEED]

zeta_fused_window_group<LANES> (fused.cu, window_walk.cuh) serves each query with a group of
LANES threads. Every step of its search and of its walks reads LANES neighbouring entries of
the query's prefix pool at once, and the next step cannot start before those loads arrive:
the kernel's time per query is about the number of such rounds times the latency of a load.
This script replays the kernel's steps, round for round, on the benchmark's inputs (one row
of q and k standard normal, d_k = 3, ZetaConfig() defaults: 10 bits, k = W = 32, inclusive
causal mask, S_0 = 256 for the smallest prefix pool) for a sample of queries, and prints
the mean rounds of each step:

- search: group_find, a LANES-ary search of the pool (the first entry not before the query);
- walks: group_walk to the left for W / 2 visible keys, to the right for the rest, and to
  the left again when the right runs out (D11);
- output: the loop that writes the visible keys between the farthest two taken, in Z order
  (it reads entries the walks read just before, so its loads mostly hit the cache). With
  the walks writing their keys to their slots as they find them (the library since
  2026-12-05), that loop runs only where the left walk ran out of keys or went on for D11:
  the last line says for how many queries, and its rounds then.

Defaults: N = 65536, LANES = 8, 4000 queries drawn uniformly from the row, seed 0.
"""
import sys

import numpy as np

from zeta_ref import ZetaConfig
from zeta_ref.stages.morton import morton_encode
from zeta_ref.stages.quantize import quantize
from zeta_ref.stages.sort import sort_keys

S0_BITS = 8  # zeta_ref.cupy.fused.S0_BITS


def pool_of(codes: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The prefix pool of the keys at positions < limit: (codes, positions) in Z order, ties
    by position (D10): stage 4 of the specification on those keys."""
    positions, sorted_codes = sort_keys(codes[:limit])
    return sorted_codes, positions


def search_rounds(pool_codes: np.ndarray, qz: int, lanes: int) -> tuple[int, int]:
    """group_find: (the first index whose code is >= qz, the rounds it took)."""
    lo, hi, rounds = 0, len(pool_codes), 0
    while lo < hi:
        rounds += 1
        step = (hi - lo + lanes - 1) // lanes
        probes = lo + np.arange(lanes) * step
        before = int(np.sum((probes < hi) & (pool_codes[np.minimum(probes, hi - 1)] < qz)))
        if before == 0:
            hi = lo
        else:
            cap = lo + before * step
            lo += (before - 1) * step + 1
            hi = min(cap, hi)
    return lo, rounds


def walk_rounds(pool_pos: np.ndarray, start: int, direction: int, limit: int, want: int,
                lanes: int) -> tuple[int, int | None, int]:
    """group_walk: (visible keys found, the farthest one's index or None, rounds)."""
    got, last, rounds, e0 = 0, None, 0, start
    while got < want and 0 <= e0 < len(pool_pos):
        rounds += 1
        entries = e0 + direction * np.arange(lanes)
        inside = (entries >= 0) & (entries < len(pool_pos))
        seen = np.flatnonzero(inside & (pool_pos[np.clip(entries, 0, len(pool_pos) - 1)]
                                        < limit))
        if got + len(seen) >= want:
            return want, int(entries[seen[want - got - 1]]), rounds
        if len(seen):
            last = int(entries[seen[-1]])
        got += len(seen)
        e0 += direction * lanes
    return got, last, rounds


def main() -> None:
    args = [int(x) for x in sys.argv[1:]]
    n, lanes, queries, seed = args + [65536, 8, 4000, 0][len(args):]
    cfg = ZetaConfig()
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 3)).astype(np.float32)
    k = rng.standard_normal((n, 3)).astype(np.float32)
    q_codes = morton_encode(quantize(q, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    k_codes = morton_encode(quantize(k, cfg.bits, cfg.squash, cfg.clip_range), cfg.bits)
    width = cfg.window_for(n)
    pools = {}  # level size -> pool
    totals = np.zeros(4)  # search, walks, output, pool size
    rewrites = rewrite_rounds = 0  # queries whose window is written again, and its rounds
    sample = rng.choice(n, size=min(queries, n), replace=False)
    for i in sample:
        limit = i + 1  # the inclusive causal mask: positions 0 .. i
        size = 1 << S0_BITS
        while size < limit:
            size *= 2
        size = min(size, n)
        if size not in pools:
            pools[size] = pool_of(k_codes, size)
        codes, pos = pools[size]
        ip, r_search = search_rounds(codes, int(q_codes[i]), lanes)
        n_left, left_end, r1 = walk_rounds(pos, ip - 1, -1, limit, width // 2, lanes)
        n_right, right_end, r2 = walk_rounds(pos, ip, +1, limit, width - n_left, lanes)
        r3 = 0
        rewrite = n_left < width // 2 or n_left + n_right < width
        if n_left == width // 2 and n_left + n_right < width:  # D11: more on the left
            more, far, r3 = walk_rounds(pos, (left_end if n_left else ip) - 1, -1, limit,
                                        width - n_left - n_right, lanes)
            left_end = far if far is not None else left_end
        lo = left_end if left_end is not None else ip
        hi = right_end if right_end is not None else ip - 1
        out_rounds = max(0, -(-(hi - lo + 1) // lanes))
        totals += (r_search, r1 + r2 + r3, out_rounds, size)
        rewrites += rewrite
        rewrite_rounds += out_rounds if rewrite else 0
    mean = totals / len(sample)
    rounds = mean[0] + mean[1]
    print(f"N = {n}, {lanes} lanes a query, {len(sample)} queries (seed {seed}); mean pool "
          f"size {mean[3]:.0f}")
    print(f"rounds of dependent loads per query: search {mean[0]:.2f}, walks {mean[1]:.2f} "
          f"(search + walks {rounds:.2f}; the search {100 * mean[0] / rounds:.0f} % of them), "
          f"then output {mean[2]:.2f} (re-reads)")
    print(f"with the walks writing their keys: the window written again for "
          f"{100 * rewrites / len(sample):.1f} % of queries, output "
          f"{rewrite_rounds / len(sample):.2f} rounds per query")


if __name__ == "__main__":
    main()
