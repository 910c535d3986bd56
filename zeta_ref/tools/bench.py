"""Time ZETA's backends against dense causal attention: the CPU backends (numpy and numba) and the
GPU backend (--backends cupy; zeta_ref/tools/bench_gpu.py says what is measured there).

CPU: for each sequence length N: one head, d_k = 3, d_v = 64, k = 32, float32, the default
ZetaConfig (causal "inclusive", Cauchy score, mean term on). Reported per backend ("numpy",
the specification, and "numba", the twins) and for two dense baselines: "dense", NumPy on the
same inputs (float32 BLAS: q @ k.T, causal mask, softmax, @ v), and, where torch is installed,
"sdpa", torch's scaled_dot_product_attention (causal, float32, q, k, v of width 64, as in a
transformer head; torch's own CPU threads):

  - the median over --repeats runs of the end-to-end forward pass and of every stage
    (after one warm-up call, which also compiles or loads the Numba kernels),
  - for the backends that have a backward pass, the median of the backward pass
    next to the forward's: zeta_attention_backward with the forward pass's intermediates (the
    selection reused, as a training step does), for a random grad_output, and its ratio to the
    forward pass's time in the same run,
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
call. The Numba twins take their large outputs from zeta_ref.numba.host_memory, which reuses buffers
that nothing refers to any more; without it, each call would fault in and zero-fill its ~60 MiB
of outputs afresh (the C library hands blocks this large back to the kernel), and on a virtual
machine a fault costs microseconds. A diagnostic line repeats the largest Numba run with the
pool off, in the same process, after the timed run: it shows what the reuse buys.

The header names the machine, the command and the date; the BLAS library, kernel and thread
count of the dense baseline's matrix products (from threadpoolctl), with a warning where
OPENBLAS_CORETYPE overrides OpenBLAS's choice of kernel; and Numba's threading layer and threads.

Configurations that would take too long are skipped with the reason (--numpy-max-n,
--dense-max-n, --sdpa-cpu-max-n). Every option is checked before any work starts: values out
of range, output paths that cannot be written (missing folders are created), and runs whose
estimated memory exceeds what this machine has available are refused in one line. A progress
bar goes to stderr (see --progress); the table to stdout.

GPU (--backends cupy, alone or with numpy and numba): for each --gpu-shapes B x H x N (float32,
d_k = 3, d_v = 64, k = 32, default ZetaConfig, inputs already on the device): the end-to-end
median of zeta_attention(..., backend="cupy") timed with CUDA events after a warm-up; the
median of every stage of the fused pass (events recorded between its stages); the peak device
memory of one call (bytes CuPy's default memory pool holds after the call beyond what it held
before it, with its free blocks released first: the call's allocations, output included, not
the inputs); the achieved bandwidth (the least bytes a pass moves: q, k, v read and the output
written once) beside a device-to-device copy measured in the same run; one cupy.sort of as many
packed uint64 keys as the fused sort stage sorts per call; and, where torch sees CUDA,
scaled_dot_product_attention (causal, bf16 and fp32, (B, H, N, 64)) on the same shapes, with the
ratio ZETA / SDPA. The performance targets are printed as met or missed from the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

from .common import progress_bar, source

STAGE_NAMES = ("quantize", "morton", "sort", "window", "means", "topk")
TARGET_TOKENS_PER_S = 1_000_000  # numba, N = 65536
TARGET_DENSE_RATIO = 50.0  # numba vs dense, N = 16384
TARGET_MORTON_PER_S = 200e6  # 3-D, 10-bit codes
TARGET_BACKWARD_RATIO = 3.0  # numba backward / forward, N = 65536


SEED_MAX = 2**32 - 1  # NumPy, torch and CuPy all take seeds this large


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536],
                        metavar="N", help="sequence lengths (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement; the median is reported (default 5)")
    parser.add_argument("--backends", nargs="+", default=["numpy", "numba"],
                        help="backends to time: numpy and numba (CPU, against the dense "
                             "baselines), cupy (GPU, against torch SDPA; see the GPU options) "
                             "(default: numpy numba)")
    parser.add_argument("--numpy-max-n", type=int, default=4096,
                        help="skip the numpy backend above this N: its 'inclusive' window "
                             "filters the keys once per query, O(N^2) (default 4096)")
    parser.add_argument("--dense-max-n", type=int, default=16384,
                        help="skip dense attention above this N: it holds N x N float32 "
                             "scores (default 16384, 1 GiB)")
    parser.add_argument("--sdpa-cpu-max-n", type=int, default=16384,
                        help="skip torch's scaled_dot_product_attention on the CPU above this N: "
                             "its work grows as N^2 (default 16384)")
    parser.add_argument("--morton-n", type=int, default=1 << 16,
                        help="codes per call in the Morton-only timing, the target's number "
                             "(default 65536: one forward pass's keys at N = 65536, in cache)")
    parser.add_argument("--morton-stream-n", type=int, default=1 << 22,
                        help="codes per call in a second, memory-bound Morton timing, reported "
                             "but not the target (default 4194304: 96 MiB of uint64 input)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba threads, from 1 to numba.config.NUMBA_NUM_THREADS "
                             "(default: all cores, numba.get_num_threads())")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"seed of the random inputs, 0 to {SEED_MAX} (default 0)")
    parser.add_argument("--json", metavar="PATH",
                        help="write the raw numbers as JSON (missing folders are created)")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a log-log plot of time vs N: every method, CPU and GPU, one "
                             "line per (method, batch); the format follows the extension "
                             "(.png, .pdf, .svg, ...; none: .png is added); missing folders "
                             "are created")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="the progress bar on stderr: auto shows it on a terminal and in a "
                             "Jupyter kernel, not in a pipe or a log file (default auto)")
    from . import bench_gpu

    bench_gpu.add_arguments(parser)


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


def load_torch():
    """torch where it imports, else None (the "sdpa" baseline is then left out)."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - not installed, or broken: no torch baseline
        return None
    return torch


def torch_sdpa_call(n: int, seed: int, head_dim: int = 64):
    """A closure running torch's scaled_dot_product_attention on the CPU: causal, float32,
    q, k, v (1, 1, N, head_dim) standard normal (torch's own layout and head width)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn((1, 1, n, head_dim), generator=gen) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        with torch.inference_mode():
            return sdpa(q, k, v, is_causal=True)  # (1, 1, N, head_dim)

    return call


def forward_call(method: str, n: int, seed: int, cfg=None):
    """The end-to-end call that a CPU row times: "dense", "sdpa" or a CPU backend's name."""
    if method == "sdpa":
        return torch_sdpa_call(n, seed)
    q, k, v = make_inputs(n, seed)
    if method == "dense":
        return lambda: dense_causal_attention(q, k, v)
    from zeta_ref import ZetaConfig, zeta_attention

    cfg = ZetaConfig(k=32) if cfg is None else cfg
    return lambda: zeta_attention(q, k, v, cfg, backend=method)


def has_backward(method: str) -> bool:
    """Whether the CPU row ``method`` is a ZETA backend with a backward pass."""
    if method in DENSE_METHODS:
        return False
    from zeta_ref.backends import get_backend

    return get_backend(method).stages().topk_attention_backward is not None


def backward_call(method: str, n: int, seed: int, cfg=None):
    """The backward pass that a CPU row times: :func:`zeta_ref.backward.zeta_attention_backward`
    on the inputs of :func:`forward_call`, with the intermediates of one forward pass (made
    here, untimed) and a standard normal grad_output."""
    from zeta_ref import ZetaConfig, zeta_attention
    from zeta_ref.backward import zeta_attention_backward

    cfg = ZetaConfig(k=32) if cfg is None else cfg
    q, k, v = make_inputs(n, seed)
    grad = np.random.default_rng([seed, 1]).standard_normal(v.shape).astype(np.float32)
    _, inter = zeta_attention(q, k, v, cfg, backend=method, return_intermediates=True)
    return lambda: zeta_attention_backward(q, k, v, grad, cfg, intermediates=inter,
                                           backend=method)


def stage_calls(backend: str, q, k, v, cfg, res: dict | None = None):
    """The composer's stage calls for a forward pass without intermediates, one closure per
    stage, each fed the previous results.

    The results land in ``res`` (a new dict unless one is given) under short names.
    """
    from zeta_ref.backends import get_backend
    from zeta_ref.stages.window import pool_lengths

    s = get_backend(backend).stages()
    n = q.shape[-2]
    res = {} if res is None else res

    def quantize():
        res["qc"] = s.quantize(q, cfg.bits, cfg.squash, cfg.clip_range)
        res["kc"] = s.quantize(k, cfg.bits, cfg.squash, cfg.clip_range)

    def morton():
        res["qz"] = s.morton_encode(res["qc"], cfg.bits, check=False)  # as the composer
        res["kz"] = s.morton_encode(res["kc"], cfg.bits, check=False)

    def sort():
        res["perm"], res["sorted"] = s.sort_keys(res["kz"])
        res["q_order"] = s.sort_keys(res["qz"])[0]

    def window():
        pool = pool_lengths(n, cfg.causal, cfg.chunk_size_for(n))
        res["cand"] = s.neighbour_window(res["qz"], res["perm"], res["sorted"], pool,
                                         cfg.window_for(n), order=res["q_order"])

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
from zeta_ref.tools.bench import _memory_probe
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
    call = forward_call(method, n, seed)
    if method in ("numba", "sdpa"):
        forward_call(method, 64, seed)()  # load the kernels (and torch's libraries)
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above zeta_ref/
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
    """The forward pass timed again with the output pool off (zeta_ref.numba.host_memory.limit(0)):
    every call then gets fresh memory, as it would from NumPy alone (a diagnostic)."""
    from zeta_ref.numba import host_memory

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


def _label(bar, text: str) -> None:
    if bar is not None:
        bar.set_description_str(f"{text:<36.36}")  # one width: the bar does not jump


def _step(bar) -> None:
    if bar is not None:
        bar.update(1)


def _fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def blas_libraries() -> list[dict]:
    """The BLAS behind NumPy's matrix products (the dense baseline's GEMM), as threadpoolctl
    finds it loaded: library, version, kernel (OpenBLAS's "architecture"; None for others),
    threads and file. Where several BLAS libraries are loaded (torch may bring its own), the
    ones shipped inside NumPy's folder, if any, are NumPy's."""
    from threadpoolctl import threadpool_info

    found = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    numpys = [i for i in found if "numpy" in (i.get("filepath") or "")]
    return [{"library": i.get("internal_api"), "version": i.get("version"),
             "kernel": i.get("architecture"), "threads": i.get("num_threads"),
             "file": os.path.basename(i.get("filepath") or "?")} for i in numpys or found]


def machine(torch=None) -> dict:
    """What ran the benchmark: which zeta_ref (:func:`common.source`), CPU, cores, versions,
    Numba's threading layer and threads, the BLAS of the dense baseline, OPENBLAS_CORETYPE if
    set, the date, torch and its threads."""
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

    from zeta_ref.numba._jit import threading_layer

    info = {"zeta_ref": source(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": threading_layer(),
            "blas": blas_libraries(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": None, "torch_threads": None}
    if torch is not None:
        info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
    return info


def blas_lines(m: dict) -> list[str]:
    """The header's lines on the dense baseline's BLAS, and the OPENBLAS_CORETYPE warning."""
    libs = m.get("blas")
    if libs is None:  # results recorded before the header said it
        return []
    if not libs:
        lines = ["dense baseline's BLAS: none found loaded by threadpoolctl"]
    else:
        lines = ["dense baseline's BLAS (threadpoolctl): " + "; ".join(
            f"{lib['library']} {lib['version']}"
            + (f", kernel {lib['kernel']}" if lib.get("kernel") else "")
            + f", {lib['threads']} threads ({lib['file']})" for lib in libs)]
    coretype = m.get("openblas_coretype")
    if coretype:
        openblas = any(lib["library"] == "openblas" for lib in libs)
        lines.append(
            f"note: OPENBLAS_CORETYPE={coretype} is set in the environment: "
            + ("OpenBLAS runs that kernel instead of the one it would pick for this CPU, which "
               "can make the dense baseline's GEMM slower than with the native kernel and so "
               "flatter ZETA's ratio against it; unset it to time the native kernel"
               if openblas else "it affects OpenBLAS only, and the BLAS here is not OpenBLAS"))
    return lines


# ------------------------------------------------------------------ the run

DENSE_METHODS = ("dense", "sdpa")  # the baselines: no stages, no "numba" in them

# Memory estimates, to refuse before starting what cannot fit (see cpu_memory_estimate).
ZETA_BYTES_PER_TOKEN = 2048  # measured: 1.7 KiB per token for a numba row at N = 2**17..2**19
MORTON_BYTES_PER_CODE = 40  # the (n, 3) uint64 input, its uint64 codes, and a spare output
SDPA_BYTES_PER_TOKEN = 4 * 64 * 4  # torch's q, k, v and output, (1, 1, N, 64) float32


def cpu_memory_estimate(method: str, n: int) -> int:
    """Bytes one CPU row at N = ``n`` holds at its peak, roughly: a ZETA backend keeps its
    inputs twice, one pass's outputs and every stage's intermediates (the measured figure,
    rounded up); dense attention its N x N float32 scores; SDPA its inputs and output (torch's
    CPU kernel keeps no N x N array)."""
    if method == "dense":
        return 4 * n * n + ZETA_BYTES_PER_TOKEN * n
    if method == "sdpa":
        return SDPA_BYTES_PER_TOKEN * n
    return ZETA_BYTES_PER_TOKEN * n


def measure_cpu(method: str, n: int, repeats: int, seed: int = 0, cfg=None,
                stages: bool = True, bar=None) -> dict:
    """One CPU row: the median end-to-end time over ``repeats`` calls after a warm-up call,
    tokens per second, minor page faults and system time per call, and, for a ZETA backend
    (``stages``), the median of every stage, timed in pipeline order, and for one with a
    backward pass the median backward time (:func:`backward_call`) and its ratio to the
    forward's.

    ``bar`` (a tqdm bar, optional) advances one step for the end-to-end time, one per stage
    and one for the backward pass.
    """
    from zeta_ref import ZetaConfig

    cfg = ZetaConfig(k=32) if cfg is None else cfg
    row = {"n": n, "method": method, "skipped": None}
    _label(bar, f"{method} N={n} end to end")
    forward = forward_call(method, n, seed, cfg)
    forward()  # warm-up (and the JIT's compile or cache load)
    before = resource.getrusage(resource.RUSAGE_SELF)
    row["total_s"] = median_time(forward, repeats)
    after = resource.getrusage(resource.RUSAGE_SELF)
    row["tokens_per_s"] = n / row["total_s"]
    row["faults_per_call"] = (after.ru_minflt - before.ru_minflt) / repeats
    row["sys_s_per_call"] = (after.ru_stime - before.ru_stime) / repeats
    _step(bar)
    if stages and method not in DENSE_METHODS:
        q, k, v = make_inputs(n, seed)
        row["stages_s"] = {}
        for name, fn in stage_calls(method, q, k, v, cfg).items():  # each feeds the next
            _label(bar, f"{method} N={n} {name}")
            fn()
            row["stages_s"][name] = median_time(fn, repeats)
            _step(bar)
    if stages and has_backward(method):
        _label(bar, f"{method} N={n} backward")
        backward = backward_call(method, n, seed, cfg)
        backward()  # warm-up (and the JIT's compile or cache load)
        row["backward_s"] = median_time(backward, repeats)
        row["backward_ratio"] = row["backward_s"] / row["total_s"]
        _step(bar)
    return row


def _check_numbers(args) -> None:
    """Every numeric CPU option in its range (the GPU's: bench_gpu.validate)."""
    from .common import check_range

    for n in args.sizes:
        check_range(n, "--sizes", 1, what=" (each N)")
    check_range(args.repeats, "--repeats", 1)
    for name in ("numpy_max_n", "dense_max_n", "sdpa_cpu_max_n"):
        check_range(getattr(args, name), "--" + name.replace("_", "-"), 0)
    for name in ("morton_n", "morton_stream_n"):
        check_range(getattr(args, name), "--" + name.replace("_", "-"), 1)
    check_range(args.seed, "--seed", 0, SEED_MAX)
    if args.threads is not None:
        import numba

        check_range(args.threads, "--threads", 1, numba.config.NUMBA_NUM_THREADS,
                    what=" (numba.config.NUMBA_NUM_THREADS)")


def _check_memory(args, cpu_backends, torch_wanted: bool) -> None:
    """Refuse what cannot fit in this machine's memory (rows run one after another, so the
    largest one counts)."""
    from .common import check_fits

    methods = list(cpu_backends) + ["dense"] + (["sdpa"] if torch_wanted else [])
    for n in sorted(set(args.sizes)):
        for method in methods:
            if skip_reason(args, method, n):
                continue
            need = cpu_memory_estimate(method, n)
            if method == "dense":
                check_fits(need, f"--dense-max-n {args.dense_max_n}",
                           f"dense attention at N={n:,} (N x N float32 scores)",
                           hint=f"lower --dense-max-n below {n}")
            else:
                check_fits(need, f"--sizes {n}", f"the {method} row at N={n:,}")
    if "numba" in cpu_backends:
        for name in ("morton_n", "morton_stream_n"):
            m = getattr(args, name)
            check_fits(MORTON_BYTES_PER_CODE * m, f"--{name.replace('_', '-')} {m}",
                       f"Morton encoding of {m:,} codes")


def validate(args):
    """Check every option before any work; return the parsed GPU shapes and the backends, CPU
    and GPU, each usable here.

    In this order: the numbers' ranges, the backends, memory (estimated), the GPU's device
    memory, then the output paths (whose missing folders are created last, once everything
    else passed). Each refusal is a :class:`zeta_ref.tools.common.OptionError` naming the option.
    """
    from zeta_ref.backends import get_backend
    from zeta_ref.tools import bench_gpu

    from .common import OptionError, output_file

    _check_numbers(args)
    shapes = bench_gpu.validate(args)
    cpu, gpu = [], []
    for name in dict.fromkeys(args.backends):  # in order, once each
        try:
            entry = get_backend(name)  # says why a backend cannot run here
        except ValueError as err:
            raise OptionError(f"--backends: {err}") from None
        (gpu if entry.needs_gpu else cpu).append(name)
    if cpu:
        _check_memory(args, cpu, torch_wanted=not args.no_sdpa and load_torch() is not None)
    if gpu:
        bench_gpu.check_device(args, shapes)
    if args.json:
        output_file(args.json, "--json")
    if args.plot:
        args.plot = output_file(_plot_path(args.plot), "--plot")
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
    return shapes, cpu, gpu


def _plot_path(path: str) -> str:
    """The file --plot writes: its format follows the extension, which must be one matplotlib
    writes; without one, matplotlib writes PNG and adds ".png" (said here, so that the check
    and the "wrote" line name the file that is written)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .common import OptionError

    ext = os.path.splitext(path)[1][1:].lower()
    formats = FigureCanvasAgg.get_supported_filetypes()
    if not ext:  # (a folder's name is left as it is, for output_file to refuse)
        folder = not path or path.endswith(("/", os.sep)) or os.path.isdir(path)
        return path if folder else path + ".png"
    if ext not in formats:
        raise OptionError(f"--plot {path}: matplotlib cannot write .{ext} files; use one of "
                          + ", ".join("." + f for f in sorted(formats)))
    return path


def run(args):
    from zeta_ref import ZetaConfig
    from zeta_ref.tools import bench_gpu

    shapes, cpu_backends, gpu_backends = validate(args)  # nothing is measured before this
    torch = None if (args.no_sdpa or not cpu_backends) else load_torch()
    cfg = ZetaConfig(k=32)
    results = {"machine": machine(torch),
               "command": shlex.join(["zeta-ref", "bench"] + sys.argv[2:]),
               "config": {"d_k": 3, "d_v": 64, "k": 32, "dtype": "float32",
                          "causal": cfg.causal, "score": cfg.score,
                          "history_mean": cfg.history_mean, "heads": 1},
               "sdpa_cpu": ("timed" if torch else
                            "--no-sdpa" if args.no_sdpa else "torch is not installed"),
               "runs": [], "morton": None, "morton_stream": None}
    if cpu_backends:
        run_cpu(args, cpu_backends, torch, cfg, results)
        add_ratios(results)
        print(format_table(results))
    if gpu_backends:  # "cupy", the one GPU backend
        bench_gpu.run_gpu(args, results, shapes,
                          progress=lambda total: progress_bar(total, args.progress))
        if cpu_backends:
            print()
        print(bench_gpu.format_gpu_table(results["gpu"]))
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def skip_reason(args, method: str, n: int) -> str | None:
    """Why the CPU row (``method``, N = ``n``) is not run, or None."""
    if method == "numpy" and n > args.numpy_max_n:
        return f"N > --numpy-max-n={args.numpy_max_n} (O(N^2) window filtering)"
    if method == "dense" and n > args.dense_max_n:
        return (f"N > --dense-max-n={args.dense_max_n} "
                f"(N x N float32 scores = {n * n * 4 / 2**30:.0f} GiB)")
    if method == "sdpa" and n > args.sdpa_cpu_max_n:
        return f"N > --sdpa-cpu-max-n={args.sdpa_cpu_max_n} (O(N^2) work)"
    return None


def cpu_plan(args, backends, torch) -> list[tuple[int, str, str | None, int]]:
    """The CPU rows in the order they run: (N, method, why skipped or None, progress steps).

    A row's steps: one for a skipped row; else the end-to-end time, one per stage (ZETA
    backends), one for the backward pass (backends that have one), one for the
    output-pool-off diagnostic (numba at the largest N) and one for the peak-memory
    subprocess (unless --no-memory).
    """
    methods = list(backends) + ["dense"] + (["sdpa"] if torch is not None else [])
    plan = []
    for n in args.sizes:
        for method in methods:
            reason = skip_reason(args, method, n)
            steps = 1 if reason else (
                1 + (0 if method in DENSE_METHODS else len(STAGE_NAMES))
                + has_backward(method)
                + (method == "numba" and n == max(args.sizes)) + (not args.no_memory))
            plan.append((n, method, reason, int(steps)))
    return plan


def run_cpu(args, backends, torch, cfg, results):
    """The CPU rows: every backend of ``backends``, then "dense" and (with torch) "sdpa"."""
    plan = cpu_plan(args, backends, torch)
    morton = [("morton", args.morton_n), ("morton_stream", args.morton_stream_n)]
    if "numba" not in backends:
        morton = []
    with progress_bar(len(morton) + sum(steps for *_, steps in plan), args.progress) as bar:
        for key, m in morton:  # Morton encoding alone: 3-D, 10-bit coordinates
            _label(bar, f"morton encoding alone, {m} codes")
            results[key] = measure_morton(m, args.repeats, args.seed)
            _step(bar)
        for n, method, reason, _ in plan:
            if reason:
                results["runs"].append({"n": n, "method": method, "skipped": reason})
                _step(bar)
                continue
            row = measure_cpu(method, n, args.repeats, args.seed, cfg, bar=bar)
            results["runs"].append(row)
            if method == "numba" and n == max(args.sizes):
                _label(bar, f"{method} N={n} end to end, output pool off")
                forward = forward_call(method, n, args.seed, cfg)
                results["pool_off"] = dict(measure_without_pool(forward, args.repeats), n=n,
                                           pool_on_s=row["total_s"])
                _step(bar)
            if not args.no_memory:
                _label(bar, f"{method} N={n} peak memory (subprocess)")
                row["memory"] = measure_memory(method, n, args.seed)
                _step(bar)
        _label(bar, "CPU rows done")


def measure_morton(m: int, repeats: int, seed: int) -> dict:
    """Codes per second of the Numba Morton encoder on ``m`` random 3-D 10-bit coordinates."""
    from zeta_ref.numba.morton import morton_encode

    u = np.random.default_rng(seed).integers(0, 1024, size=(m, 3), dtype=np.uint64)  # (m, 3)
    # the encoding itself: u comes from quantize, in range (as in the composer)
    morton_encode(u, 10, check=False)  # compile or load (the serial or parallel kernel)
    # a call takes well under a millisecond at the default size: many repeats
    t = median_time(lambda: morton_encode(u, 10, check=False),
                    max(repeats, 5 if m > 1 << 20 else 101))
    return {"codes": m, "median_s": t, "codes_per_s": m / t}


def write_json(results: dict, path: str) -> None:
    """The raw numbers of a run (CPU rows, and the GPU's under "gpu") as JSON."""
    def plain(x):  # NumPy scalars, should any slip in
        if isinstance(x, np.generic):
            return x.item()
        raise TypeError(f"not JSON serialisable: {type(x).__name__}")

    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=plain)
        f.write("\n")


def add_ratios(results):
    by = {(r["n"], r["method"]): r for r in results["runs"] if not r["skipped"]}
    for r in results["runs"]:
        if r["skipped"] or r["method"] == "numba":
            continue
        fast = by.get((r["n"], "numba"))
        if fast:
            r["slower_than_numba"] = r["total_s"] / fast["total_s"]


def format_table(results) -> str:
    m = results["machine"]
    sdpa = (f"torch {m['torch']} scaled_dot_product_attention, causal, float32, q, k, v "
            f"(1, 1, N, 64), {m['torch_threads']} torch threads"
            if results.get("sdpa_cpu") == "timed"
            else f"not timed ({results.get('sdpa_cpu', 'torch is not installed')})")
    layer = m.get("numba_threading_layer")
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; numpy {m['numpy']}, numba {m['numba']} "
             f"({m['numba_threads']} threads"
             + (f", threading layer {layer}" if layer else "") + f"); {m['date']}",
             f"command: {results.get('command', '?')}",
             *blas_lines(m),
             "one head, d_k=3, d_v=64, k=32, float32, causal inclusive, cauchy, mean term on",
             "dense: NumPy float32 on the same inputs (q @ k.T, causal mask, softmax, @ v)",
             f"sdpa: {sdpa}",
             "times are medians in ms; x numba = this row's time / numba's time in this run",
             "backward: zeta_attention_backward with the forward's intermediates (selection "
             "reused); x fwd = backward / total, same run", ""]
    head = (f"{'N':>6} {'method':<6} {'total':>9} {'tokens/s':>11} {'x numba':>8} "
            + " ".join(f"{s:>8}" for s in STAGE_NAMES)
            + f" {'backward':>9} {'x fwd':>6} {'peak MiB':>9} {'faults':>7}")
    lines += [head, "-" * len(head)]
    for r in results["runs"]:
        if r["skipped"]:
            lines.append(f"{r['n']:>6} {r['method']:<6} skipped: {r['skipped']}")
            continue
        stages = r.get("stages_s", {})
        mem = r.get("memory")
        ratio = 1.0 if r["method"] == "numba" else r.get("slower_than_numba")
        lines.append(
            f"{r['n']:>6} {r['method']:<6} {_fmt_ms(r['total_s']):>9} {r['tokens_per_s']:>11,.0f} "
            + (f"{ratio:>8.1f} " if ratio is not None else f"{'-':>8} ")
            + " ".join(f"{_fmt_ms(stages.get(s)):>8}" for s in STAGE_NAMES)
            + f" {_fmt_ms(r.get('backward_s')):>9}"
            + (f" {r['backward_ratio']:>6.2f}" if r.get("backward_ratio") else f" {'-':>6}")
            + (f" {mem['peak_extra_kib'] / 1024:>9.1f}" if mem else f" {'-':>9}")
            + f" {r['faults_per_call']:>7.0f}")
    lines.append("")
    lines.append("peak MiB: peak RSS added by one forward call, fresh subprocess, VmHWM after "
                 "clear_refs (includes outputs and temporaries)")
    lines.append("faults: minor page faults per end-to-end call (fresh pages for temporaries "
                 "and outputs)")
    lines += ["", "targets:"] + [f"  {t}" for t in targets(results)]
    return "\n".join(lines)


def targets(results) -> list[str]:
    out = []
    by = {(r["n"], r["method"]): r for r in results["runs"] if not r["skipped"]}
    r = by.get((65536, "numba"))
    out.append("numba tokens/s at N=65536 >= 1,000,000: " + (
        f"{r['tokens_per_s']:,.0f} -> {'met' if r['tokens_per_s'] >= TARGET_TOKENS_PER_S else 'MISSED'}"
        if r else "not measured"))
    r = by.get((65536, "numba"))
    ratio = r.get("backward_ratio") if r else None
    out.append(f"numba backward <= {TARGET_BACKWARD_RATIO:g}x forward at N=65536: " + (
        f"{ratio:.2f}x ({r['backward_s'] * 1e3:.1f} vs {r['total_s'] * 1e3:.1f} ms) -> "
        f"{'met' if ratio <= TARGET_BACKWARD_RATIO else 'MISSED'}" if ratio else "not measured"))
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


CPU_SERIES = (("numba", "CPU numba", dict(marker="o", color="tab:green")),
              ("numpy", "CPU numpy", dict(marker="s", color="tab:olive")),
              ("dense", "CPU dense (NumPy)", dict(marker="^", color="tab:orange")),
              ("sdpa", "CPU torch SDPA fp32", dict(marker="v", color="tab:brown")))


def series(results) -> list[tuple[str, list, list, dict]]:
    """Every line of the time-vs-N plot: (label, N values, seconds, matplotlib style); the CPU
    rows (one head) and, when the run had them, the GPU rows, one line per (method, batch)."""
    out = []
    for method, label, style in CPU_SERIES:
        pts = sorted((r["n"], r["total_s"]) for r in results.get("runs", [])
                     if r["method"] == method and not r["skipped"])
        if pts:
            out.append((label + ", 1 head", [n for n, _ in pts], [t for _, t in pts],
                        dict(style, ls="-")))
    if results.get("gpu"):
        from zeta_ref.tools import bench_gpu

        out += bench_gpu.plot_series(results["gpu"])
    return out


def plot_times(results, ax) -> None:
    """Draw the forward time against N, log-log, on ``ax``, with N log N and N^2 guides
    through the first ZETA and the first dense line."""
    lines = series(results)
    for label, ns, ts, style in lines:
        ax.plot(ns, ts, label=label, ms=4, lw=1.3, **style)
    ns_all = sorted({n for _, ns, _, _ in lines for n in ns})
    ts_all = [t for _, _, ts, _ in lines for t in ts]
    zeta = [s for s in lines if "numba" in s[0] or "ZETA" in s[0]]
    dense = [s for s in lines if "dense" in s[0] or "SDPA" in s[0]]
    # N log N is 0 at N = 1, where a log axis has no place for it: the guides start at N = 2,
    # each through the first point at N >= 2 of the first ZETA (or dense) line
    xs = np.array([n for n in ns_all if n >= 2], dtype=float)

    def anchor(line):
        return next(((n, t) for n, t in zip(line[1], line[2]) if n >= 2), None)

    zeta_at, dense_at = (anchor(group[0]) if group else None for group in (zeta, dense))
    if zeta_at and len(xs) > 1:
        n0, t0 = zeta_at
        ax.plot(xs, t0 * xs * np.log2(xs) / (n0 * math.log2(n0)), "k:", lw=0.8,
                label="N log N (guide)")
        if dense_at:
            n1, t1 = dense_at
            ax.plot(xs, t1 * (xs / n1) ** 2, "k--", lw=0.8, label="N^2 (guide)")
    if ts_all:
        ax.set_ylim(min(ts_all) / 2, max(ts_all) * 2)  # the data's range, not the guides'
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("forward time (s, median)")
    ax.grid(True, which="both", alpha=0.3)
    if lines:  # a run whose every row was skipped has nothing to label
        ax.legend(fontsize=7)


def plot(results, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    plot_times(results, ax)
    title = ["ZETA forward (d_k=3, d_v=64, k=32, float32) against dense attention"]
    if results.get("runs"):
        m = results["machine"]
        title.append(f"CPU: {m['cpu']}, {m['cores']} cores")
    if results.get("gpu"):
        title.append(f"GPU: {results['gpu']['device']['name']}")
    ax.set_title("\n".join(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
