"""Time the CPU backends of ZETA against dense causal softmax attention in NumPy (issue 3).

For each sequence length N: one head, d_k = 3, d_v = 64, k = 32, float32, the default
ZetaConfig (causal "inclusive", Cauchy score, mean term on). Reported per backend ("numpy",
the specification, and "numba", the twins) and for dense attention (float32 BLAS: q @ k.T,
causal mask, softmax, @ v):

  - the median over --repeats runs of the end-to-end forward pass and of every stage
    (after one warm-up call, which also compiles or loads the Numba kernels),
  - tokens per second, and ratios between backends measured in the same run,
  - peak memory: the peak resident set size (VmHWM) that one forward call adds, measured in a
    fresh subprocess per configuration after resetting the kernel's high-water mark
    (/proc/self/clear_refs); it sees every allocation, NumPy's, Numba's and BLAS's.

Morton encoding alone (3-D, 10-bit coordinates, uint64 (n, 3) as quantize returns them) is timed
separately, in codes per second, at two sizes: --morton-n codes per call (65536, the keys of one
forward pass at N = 65536; input and output stay in cache, so it times the encoding itself: the
target's number) and --morton-stream-n (4 Mi codes: 96 MiB in, 32 MiB of fresh output, so it
times the memory system and the page faults of the output as much as the encoding).
Page faults: every end-to-end row also reports the minor page faults and the system time per
call. The Numba twins take their large outputs from zeta_ref.host_memory, which reuses buffers
that nothing refers to any more; without it, each call would fault in and zero-fill its ~60 MiB
of outputs afresh (the C library hands blocks this large back to the kernel), and on a virtual
machine a fault costs microseconds. A diagnostic line repeats the largest Numba run with the
pool off, in the same process, right after the timed run: it shows what the reuse buys.

Configurations that would take too long or too much memory are skipped with the reason
(--numpy-max-n, --dense-max-n). A progress bar goes to stderr; the table to stdout.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

STAGE_NAMES = ("quantize", "morton", "sort", "window", "means", "topk")
TARGET_TOKENS_PER_S = 1_000_000  # numba, N = 65536
TARGET_DENSE_RATIO = 50.0  # numba vs dense, N = 16384
TARGET_MORTON_PER_S = 200e6  # 3-D, 10-bit codes


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536],
                        metavar="N", help="sequence lengths (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement; the median is reported (default 5)")
    parser.add_argument("--backends", nargs="+", default=["numpy", "numba"],
                        help="CPU backends to time (default: numpy numba)")
    parser.add_argument("--numpy-max-n", type=int, default=4096,
                        help="skip the numpy backend above this N: its 'inclusive' window "
                             "filters the keys once per query, O(N^2) (default 4096)")
    parser.add_argument("--dense-max-n", type=int, default=16384,
                        help="skip dense attention above this N: it holds N x N float32 "
                             "scores (default 16384, 1 GiB)")
    parser.add_argument("--morton-n", type=int, default=1 << 16,
                        help="codes per call in the Morton-only timing, the target's number "
                             "(default 65536: one forward pass's keys at N = 65536, in cache)")
    parser.add_argument("--morton-stream-n", type=int, default=1 << 22,
                        help="codes per call in a second, memory-bound Morton timing, reported "
                             "but not the target (default 4194304: 96 MiB of uint64 input)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba threads (default: all cores, numba.get_num_threads())")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a log-log plot of time vs N")


# ------------------------------------------------------------------ inputs and workloads


def make_inputs(n: int, seed: int, d_k: int = 3, d_v: int = 64):
    """q, k (1, N, d_k) and v (1, N, d_v), float32, standard normal."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, n, d_k)).astype(np.float32)
    k = rng.standard_normal((1, n, d_k)).astype(np.float32)
    v = rng.standard_normal((1, n, d_v)).astype(np.float32)
    return q, k, v


def dense_causal_attention(q, k, v):
    """Softmax attention with a causal mask, float32, all N x N scores at once (BLAS)."""
    n, d_k = q.shape[-2], q.shape[-1]
    scores = q[0] @ k[0].T  # (N, N)
    scores *= np.float32(1.0 / math.sqrt(d_k))
    for i in range(n - 1):  # key j > query i is masked (row by row: no N x N index arrays)
        scores[i, i + 1:] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores @ v[0])[None]  # (1, N, d_v)


def stage_calls(backend: str, q, k, v, cfg, res: dict | None = None):
    """The composer's stage calls for a forward pass without intermediates, one closure per
    stage, each fed the previous results.

    The results land in ``res`` (a new dict unless one is given) under short names.
    """
    from zeta_ref.backends import get_backend
    from zeta_ref.window import pool_lengths

    s = get_backend(backend).stages()
    n = q.shape[-2]
    res = {} if res is None else res

    def quantize():
        res["qc"] = s.quantize(q, cfg.bits, cfg.squash, cfg.clip_range)
        res["kc"] = s.quantize(k, cfg.bits, cfg.squash, cfg.clip_range)

    def morton():
        res["qz"] = s.morton_encode(res["qc"], cfg.bits)
        res["kz"] = s.morton_encode(res["kc"], cfg.bits)

    def sort():
        res["perm"], res["sorted"] = s.sort_keys(res["kz"])
        res["q_order"] = s.sort_keys(res["qz"])[0]

    def window():
        pool = pool_lengths(n, cfg.causal, cfg.chunk_size_for(n))
        res["cand"] = s.neighbour_window(res["qz"], res["perm"], res["sorted"], pool,
                                         cfg.window_width, order=res["q_order"])

    def means():
        res["mk"], res["mv"] = s.history_means(k, v, cfg.causal)

    def topk():
        res["out"] = s.topk_attention(q, k, v, res["cand"], cfg.score, cfg.gamma, res["mk"],
                                      res["mv"], order=res["q_order"],
                                      with_weights=False)[0]

    return dict(zip(STAGE_NAMES, (quantize, morton, sort, window, means, topk)))


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------ peak memory


_PROBE = r"""
import json, sys
sys.path.insert(0, {root!r})
from zeta_ref.bench import _memory_probe
print(json.dumps(_memory_probe({method!r}, {n}, {seed})))
"""


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _memory_probe(method: str, n: int, seed: int) -> dict:
    """Run in a fresh process: the peak RSS that one forward call adds (KiB)."""
    from zeta_ref import ZetaConfig, zeta_attention

    q, k, v = make_inputs(n, seed)
    cfg = ZetaConfig(k=32)
    if method == "dense":
        call = lambda: dense_causal_attention(q, k, v)  # noqa: E731
    else:
        call = lambda: zeta_attention(q, k, v, cfg, backend=method)  # noqa: E731
        if method == "numba":
            zeta_attention(q[:, :64], k[:, :64], v[:, :64], cfg, backend=method)  # load kernels
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark VmHWM to the current RSS
        how = "VmHWM after clear_refs"
    except OSError:
        how = "VmHWM since process start (clear_refs unavailable)"
    call()
    return {"peak_extra_kib": _status_kib("VmHWM") - before, "how": how}


def measure_memory(method: str, n: int, seed: int) -> dict | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _PROBE.format(root=root, method=method, n=n, seed=seed)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_without_pool(forward, repeats: int) -> dict:
    """The forward pass timed again with the output pool off (zeta_ref.host_memory.limit(0)):
    every call then gets fresh memory, as it would from NumPy alone (a diagnostic)."""
    from zeta_ref import host_memory

    saved = host_memory.limit()
    host_memory.limit(0)
    host_memory.release()
    try:
        forward()
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = median_time(forward, repeats)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        host_memory.limit(saved)
    return {"total_s": t, "faults_per_call": (after.ru_minflt - before.ru_minflt) / repeats}


# ------------------------------------------------------------------ progress and output


class Progress:
    """A one-line progress bar on stderr: [#####.....] done/total label."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.t0 = time.perf_counter()

    def step(self, label: str):
        self.done += 1
        self.show(label)

    def show(self, label: str):
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.t0
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:6.1f}s  {label:<40.40}")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


def _fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ------------------------------------------------------------------ the run


def run(args):
    from zeta_ref import ZetaConfig, zeta_attention
    from zeta_ref.backends import backends as available

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1; got {args.repeats}")
    if any(n < 1 for n in args.sizes):
        raise ValueError(f"--sizes must be >= 1; got {args.sizes}")
    for b in args.backends:
        if b not in available():
            raise ValueError(f"--backends: {b!r} is not usable here; available: {available()}")
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)  # validates the value itself
    cfg = ZetaConfig(k=32)
    methods = list(args.backends) + ["dense"]
    results = {"machine": machine(), "command": " ".join(["zeta-ref", "bench"] + sys.argv[2:]),
               "config": {"d_k": 3, "d_v": 64, "k": 32, "dtype": "float32",
                          "causal": cfg.causal, "score": cfg.score,
                          "history_mean": cfg.history_mean, "heads": 1},
               "runs": [], "morton": None, "morton_stream": None}

    def skip_reason(method, n):
        if method == "numpy" and n > args.numpy_max_n:
            return f"N > --numpy-max-n={args.numpy_max_n} (O(N^2) window filtering)"
        if method == "dense" and n > args.dense_max_n:
            return (f"N > --dense-max-n={args.dense_max_n} "
                    f"(N x N float32 scores = {n * n * 4 / 2**30:.0f} GiB)")
        return None

    plan = [(n, m) for n in args.sizes for m in methods]
    per_run = (1 + len(STAGE_NAMES)) + (0 if args.no_memory else 1)
    bar = Progress(1 + sum(per_run if skip_reason(m, n) is None else 1 for n, m in plan))

    # Morton encoding alone: 3-D, 10-bit coordinates
    if "numba" in args.backends:
        from zeta_ref.morton_numba import morton_encode

        bar.show("morton encoding alone")
        for key, m in (("morton", args.morton_n), ("morton_stream", args.morton_stream_n)):
            u = np.random.default_rng(args.seed).integers(0, 1024, size=(m, 3), dtype=np.uint64)
            morton_encode(u, 10)  # compile or load (the serial or the parallel kernel)
            # a call takes well under a millisecond at the default size: many repeats
            t = median_time(lambda: morton_encode(u, 10),
                            max(args.repeats, 5 if m > 1 << 20 else 101))
            results[key] = {"codes": m, "median_s": t, "codes_per_s": m / t}
    bar.step("morton")

    for n, method in plan:
        row = {"n": n, "method": method, "skipped": skip_reason(method, n)}
        results["runs"].append(row)
        if row["skipped"]:
            bar.step(f"{method} N={n} skipped")
            continue
        q, k, v = make_inputs(n, args.seed)
        bar.show(f"{method} N={n} end to end")
        if method == "dense":
            forward = lambda: dense_causal_attention(q, k, v)  # noqa: E731
        else:
            forward = lambda: zeta_attention(q, k, v, cfg, backend=method)  # noqa: E731
        forward()  # warm-up (and the JIT's compile or cache load)
        before = resource.getrusage(resource.RUSAGE_SELF)
        row["total_s"] = median_time(forward, args.repeats)
        after = resource.getrusage(resource.RUSAGE_SELF)
        row["tokens_per_s"] = n / row["total_s"]
        row["faults_per_call"] = (after.ru_minflt - before.ru_minflt) / args.repeats
        row["sys_s_per_call"] = (after.ru_stime - before.ru_stime) / args.repeats
        if method == "numba" and n == max(args.sizes):
            bar.show(f"{method} N={n} end to end, output pool off")
            results["pool_off"] = dict(measure_without_pool(forward, args.repeats), n=n,
                                       pool_on_s=row["total_s"])
        bar.step(f"{method} N={n} end to end")
        if method != "dense":
            calls = stage_calls(method, q, k, v, cfg)
            row["stages_s"] = {}
            for name, fn in calls.items():  # in pipeline order: each feeds the next
                fn()
                row["stages_s"][name] = median_time(fn, args.repeats)
                bar.step(f"{method} N={n} {name}")
        if not args.no_memory:
            bar.show(f"{method} N={n} peak memory (subprocess)")
            row["memory"] = measure_memory(method, n, args.seed)
            bar.step(f"{method} N={n} memory")
    bar.close()

    _add_ratios(results)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _add_ratios(results):
    by = {(r["n"], r["method"]): r for r in results["runs"] if not r["skipped"]}
    for r in results["runs"]:
        if r["skipped"] or r["method"] == "numba":
            continue
        fast = by.get((r["n"], "numba"))
        if fast:
            r["slower_than_numba"] = r["total_s"] / fast["total_s"]


def format_table(results) -> str:
    m = results["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, numba threads {m['numba_threads']}; "
             f"numpy {m['numpy']}, numba {m['numba']}; {m['date']}",
             "one head, d_k=3, d_v=64, k=32, float32, causal inclusive, cauchy, mean term on",
             "times are medians in ms; x numba = this row's time / numba's time in this run", ""]
    head = (f"{'N':>6} {'method':<6} {'total':>9} {'tokens/s':>11} {'x numba':>8} "
            + " ".join(f"{s:>8}" for s in STAGE_NAMES) + f" {'peak MiB':>9} {'faults':>7}")
    lines += [head, "-" * len(head)]
    for r in results["runs"]:
        if r["skipped"]:
            lines.append(f"{r['n']:>6} {r['method']:<6} skipped: {r['skipped']}")
            continue
        stages = r.get("stages_s", {})
        mem = r.get("memory")
        ratio = r.get("slower_than_numba", 1.0)
        lines.append(
            f"{r['n']:>6} {r['method']:<6} {_fmt_ms(r['total_s']):>9} {r['tokens_per_s']:>11,.0f} "
            f"{ratio:>8.1f} " + " ".join(f"{_fmt_ms(stages.get(s)):>8}" for s in STAGE_NAMES)
            + (f" {mem['peak_extra_kib'] / 1024:>9.1f}" if mem else f" {'-':>9}")
            + f" {r['faults_per_call']:>7.0f}")
    lines.append("")
    lines.append("peak MiB: peak RSS added by one forward call, fresh subprocess, VmHWM after "
                 "clear_refs (includes outputs and temporaries)")
    lines.append("faults: minor page faults per end-to-end call (fresh pages for temporaries "
                 "and outputs)")
    lines += ["", "targets (issue 3):"] + [f"  {t}" for t in targets(results)]
    return "\n".join(lines)


def targets(results) -> list[str]:
    out = []
    by = {(r["n"], r["method"]): r for r in results["runs"] if not r["skipped"]}
    r = by.get((65536, "numba"))
    out.append("numba tokens/s at N=65536 >= 1,000,000: " + (
        f"{r['tokens_per_s']:,.0f} -> {'met' if r['tokens_per_s'] >= TARGET_TOKENS_PER_S else 'MISSED'}"
        if r else "not measured"))
    r = by.get((16384, "dense"))
    ratio = r.get("slower_than_numba") if r else None
    out.append("numba >= 50x faster than dense at N=16384: " + (
        f"{ratio:.1f}x -> {'met' if ratio >= TARGET_DENSE_RATIO else 'MISSED'}"
        if ratio else "not measured"))
    mo = results.get("morton")
    out.append("Morton 3-D 10-bit >= 200 M codes/s: " + (
        f"{mo['codes_per_s'] / 1e6:.0f} M/s at {mo['codes']:,} codes per call -> "
        f"{'met' if mo['codes_per_s'] >= TARGET_MORTON_PER_S else 'MISSED'}" if mo else "not measured"))
    ms = results.get("morton_stream")
    if ms:
        out.append(f"Morton, memory-bound (not the target): {ms['codes_per_s'] / 1e6:.0f} M/s at "
                   f"{ms['codes']:,} codes per call")
    off = results.get("pool_off")
    if off:
        out.append(f"diagnostic, not a target: numba at N={off['n']} with the output pool off "
                   f"(host_memory.limit(0)): {off['n'] / off['total_s']:,.0f} tokens/s, "
                   f"{off['faults_per_call']:.0f} faults per call; "
                   f"{off['total_s'] / off['pool_on_s']:.2f}x the time with it on")
    mems = [(r["n"], r["memory"]["peak_extra_kib"]) for r in results["runs"]
            if not r["skipped"] and r["method"] == "numba" and r.get("memory")]
    if len(mems) >= 2:
        per_token = ", ".join(f"N={n}: {kib * 1024 / n:.0f} B/token" for n, kib in mems)
        out.append(f"numba peak memory per token (linear if flat): {per_token}")
    return out


def plot(results, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ns_all = sorted({r["n"] for r in results["runs"]})
    for method, style in (("numba", "o-"), ("numpy", "s-"), ("dense", "^-")):
        pts = [(r["n"], r["total_s"]) for r in results["runs"]
               if r["method"] == method and not r["skipped"]]
        if pts:
            ax.plot(*zip(*pts), style, label=method)
    ref = [r for r in results["runs"] if r["method"] == "numba" and not r["skipped"]]
    if ref and len(ns_all) > 1:
        n0, t0 = ref[0]["n"], ref[0]["total_s"]
        xs = np.array(ns_all, dtype=float)
        ax.plot(xs, t0 * xs * np.log2(xs) / (n0 * math.log2(n0)), "k:", label="N log N")
        dense = [r for r in results["runs"] if r["method"] == "dense" and not r["skipped"]]
        n1, t1 = (dense[0]["n"], dense[0]["total_s"]) if dense else (n0, t0)
        ax.plot(xs, t1 * (xs / n1) ** 2, "k--", label="N^2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("forward time (s, median)")
    m = results["machine"]
    ax.set_title(f"ZETA forward, 1 head, d_v=64, k=32, float32\n{m['cpu']}, {m['cores']} cores",
                 fontsize=9)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
