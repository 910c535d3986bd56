"""The GPU half of ``zeta-ref bench``: the CuPy backend against torch's
scaled_dot_product_attention (SDPA) on one NVIDIA GPU, in one run.

``zeta-ref bench --backends cupy`` calls :func:`run_gpu`. For every shape (B, H, N) of
--gpu-shapes, with float32 inputs already on the device (q, k (B, H, N, 3), v (B, H, N, 64)),
k = 32 and the default ZetaConfig:

  - end to end: ``zeta_attention(q, k, v, cfg, backend="cupy")`` (which takes the fused pass),
    the median over --repeats calls after one warm-up call, each timed by two CUDA events
    (``cupy.cuda.Event``) recorded before and after it on the current stream;
  - per stage: ``zeta_ref.cupy.fused.forward(q, k, v, cfg, marks=marks)`` records an event at its
    start and after each stage of ``fused.STAGE_NAMES``; stage t lasts from marks[t] to
    marks[t + 1]. Medians over --repeats calls, and "fused", the median from the first mark to
    the last (the pass without the input checks of ``zeta_attention``). With marks the pass
    runs on one stream, one stage after another; end to end, the mean term runs beside the
    other stages (``fused.MEANS_STREAM_MIN``), so "fused" may exceed the end-to-end time;
  - peak device memory of one end-to-end call: CuPy's default memory pool is emptied of free
    blocks (``free_all_blocks``), then ``total_bytes()`` after the call minus ``total_bytes()``
    before it. The pool keeps every block a call obtained from the device, so the difference is
    what the call had to allocate beyond the inputs, its output included, in the pool's 512-byte
    units: at least the call's peak of live bytes, possibly more where freed blocks did not fit
    later requests. Memory outside the pool (the CUDA context, the compiled kernels) is not
    counted;
  - achieved bandwidth: the fewest bytes a forward pass must move (read q, k and v once, write
    the output once: B·H·N·(3 + 3 + 64 + 64)·4 bytes) divided by the end-to-end time, beside a
    device-to-device copy measured in the same run (``cupy.copyto`` of --copy-mib MiB; bytes
    read + written);
  - the sort: one ``cupy.sort`` of 2·B·H·N uint64 keys (spread over 64 bits by a
    multiplicative hash), against the fused sort stage, which is one ``cupy.sort`` of the
    packed keys of every key and every query (2·B·H·N of them);
  - where torch imports and sees CUDA: SDPA with ``is_causal=True`` on q, k, v (B, H, N, 64) in
    bfloat16 and in float32, timed with ``torch.cuda.Event`` the same way, its peak memory from
    ``torch.cuda.max_memory_allocated``, and the ratio ZETA / SDPA. Shapes whose number of
    causal query-key pairs B·H·N(N + 1)/2 exceeds --sdpa-max-pairs (bf16) or
    --sdpa-fp32-max-pairs (fp32) are skipped with the reason: their time grows as N², and
    float32 has no tensor-core kernel.

  - the backward pass (:func:`measure_backward`, up to B·H·N = 2^20 positions):
    ``zeta_attention_backward`` with the intermediates of one forward pass, beside that
    forward pass with intermediates (the stage path) and the fused pass.

The GPU performance targets are evaluated from the same run (:func:`evaluate_targets`).
Before any work, :func:`validate` checks the GPU options' values and :func:`check_device` what
the device can hold (the copy's arrays, each shape's inputs and output).
Nothing here imports CuPy or torch at module level: the shape parsing, the target evaluation,
the table and the plot series work (and are tested) without a GPU.
"""

from __future__ import annotations

import shlex
import sys
import time

import numpy as np

D_K, D_V, K_TOP = 3, 64, 32
SDPA_HEAD_DIM = 64
DEFAULT_GPU_SHAPES = ("1x8x4096", "1x8x8192", "1x8x16384", "1x8x65536", "1x8x131072",
                      "1x8x1048576", "16x8x4096", "16x8x16384", "16x8x65536")

# the GPU performance targets (ZETA float32 against SDPA bfloat16, end to end)
TARGET_RATIO_B1_64K = 0.10  # B=1, H=8, N=65536: ZETA / SDPA bf16
STRETCH_RATIO_B1_64K = 0.05
TARGET_RATIO_B16_64K = 0.08  # B=16, H=8, N=65536
CROSSOVER_N = 8192  # B=1, H=8: faster than SDPA bf16 from this N up
STRETCH_CROSSOVER_N = 4096
TARGET_DOUBLING = 2.3  # B=1, H=8: time(131072) / time(65536)
TARGET_1M_S = 30e-3  # B=1, H=8, N=1048576
TARGET_SORT_RATIO = 1.5  # the sort stage per sort call / one cupy.sort of as many keys
TARGET_BACKWARD_RATIO = 3.0  # B=1, H=8, N=65536: backward / forward (the fused pass)
#: The backward pass is timed up to this many positions B*H*N (its forward with
#: intermediates, the stage path, is several times slower than the fused pass).
BACKWARD_MAX_POSITIONS = 1 << 20


def add_arguments(parser):
    g = parser.add_argument_group(
        "GPU (--backends cupy)",
        "ZETA on the CuPy backend against torch's scaled_dot_product_attention")
    g.add_argument("--gpu-shapes", nargs="+", default=list(DEFAULT_GPU_SHAPES), metavar="BxHxN",
                   help="batch x heads x sequence length of each GPU configuration "
                        f"(default: {' '.join(DEFAULT_GPU_SHAPES)})")
    g.add_argument("--sdpa-max-pairs", type=float, default=1e13,
                   help="skip SDPA bf16 where B*H*N(N+1)/2 causal query-key pairs exceed this "
                        "(default 1e13: every default shape; N = 1,048,576 at B=1, H=8 has "
                        "4.4e12, a few seconds per call)")
    g.add_argument("--sdpa-fp32-max-pairs", type=float, default=1e12,
                   help="skip SDPA fp32 where the pairs exceed this (default 1e12: B=16, H=8, "
                        "N=65536 (2.7e11, about 2 s per call on an H200) runs, N = 1,048,576 "
                        "(4.4e12, about half a minute per call) does not)")
    g.add_argument("--copy-mib", type=int, default=1024,
                   help="size of the array of the device-to-device copy that gives the "
                        "reference bandwidth (default 1024 MiB)")
    g.add_argument("--no-sdpa", action="store_true",
                   help="do not time torch's scaled_dot_product_attention (GPU or CPU) even "
                        "where torch is installed")


def parse_shape(text: str) -> tuple[int, int, int]:
    """'16x8x4096' -> (16, 8, 4096): batch, heads, sequence length (each >= 1)."""
    from .common import OptionError

    parts = str(text).lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise OptionError(f"--gpu-shapes: each shape must be BxHxN with three integers >= 1 "
                          f"(batch x heads x sequence length, e.g. 1x8x4096); got {text!r}")
    return shape


def validate(args) -> list[tuple[int, int, int]]:
    """Check the GPU options' values (without touching a GPU); return the parsed shapes."""
    from .common import check_range

    shapes = [parse_shape(s) for s in args.gpu_shapes]
    for name in ("sdpa_max_pairs", "sdpa_fp32_max_pairs"):
        check_range(getattr(args, name), "--" + name.replace("_", "-"), 0)  # also refuses nan
    check_range(args.copy_mib, "--copy-mib", 1)
    return shapes


def check_device(args, shapes) -> None:
    """Before any work: refuse a --copy-mib whose two arrays, or a shape whose inputs and
    output alone, exceed the device's memory (a shape that fits those but not the pass's
    intermediates is measured as "skipped: out of device memory")."""
    import cupy as cp

    from .common import OptionError, format_bytes

    props = cp.cuda.runtime.getDeviceProperties(0)
    total = props.get("totalGlobalMem", 0)
    name = _decode(props.get("name", b"the GPU"))
    if not total:
        return
    copy = 2 * args.copy_mib * 2**20
    if copy > total:
        raise OptionError(f"--copy-mib {args.copy_mib}: the copy's source and destination "
                          f"need {format_bytes(copy)} of device memory, more than the "
                          f"{format_bytes(total)} of {name}")
    for (b, h, n), text in zip(shapes, args.gpu_shapes):
        need = min_bytes(b, h, n)  # also what a call holds at the least
        if need > total:
            raise OptionError(f"--gpu-shapes {text}: the float32 inputs and output alone need "
                              f"{format_bytes(need)} of device memory, more than the "
                              f"{format_bytes(total)} of {name}")


def causal_pairs(b: int, h: int, n: int) -> int:
    """Query-key pairs that causal attention scores: B·H·N(N + 1)/2."""
    return b * h * n * (n + 1) // 2


def min_bytes(b: int, h: int, n: int, itemsize: int = 4) -> int:
    """The fewest bytes a ZETA forward pass moves: q, k, v read once, the output written once."""
    return b * h * n * (D_K + D_K + D_V + D_V) * itemsize


def sdpa_skip_reason(b, h, n, dtype: str, args) -> str | None:
    """Why SDPA in ``dtype`` ("bf16" or "fp32") is not timed at (B, H, N), or None."""
    pairs = causal_pairs(b, h, n)
    limit, option = ((args.sdpa_max_pairs, "--sdpa-max-pairs") if dtype == "bf16" else
                     (args.sdpa_fp32_max_pairs, "--sdpa-fp32-max-pairs"))
    if pairs > limit:
        return (f"B*H*N(N+1)/2 = {pairs:.2g} causal pairs > {option}={limit:.2g} "
                f"(time grows as N^2)")
    return None


# ------------------------------------------------------------------ measurements (need a GPU)


def _decode(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def load_torch():
    """torch, if it imports and sees CUDA; else None and the reason."""
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - no torch, or a broken one: no SDPA rows
        return None, f"torch does not import ({type(err).__name__})"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    return torch, None


def device_info(torch=None) -> dict:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    info = {"name": _decode(props["name"]),
            "memory_gib": props.get("totalGlobalMem", 0) / 2**30,
            "cupy": cp.__version__,
            "cuda_runtime": _cuda_version(cp.cuda.runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(cp.cuda.runtime.driverGetVersion()),
            "torch": None, "torch_cuda": None}
    if torch is not None:
        info["torch"], info["torch_cuda"] = torch.__version__, torch.version.cuda
    return info


def cuda_median(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` on the GPU: an event before and after each call, then wait
    for the second. The caller has warmed ``fn`` up."""
    import cupy as cp

    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)  # ms -> s
    return float(np.median(times))


def copy_bandwidth(mib: int, repeats: int) -> dict:
    """Device-to-device copy bandwidth: ``cupy.copyto`` of a float32 array of ``mib`` MiB,
    counting the bytes read and the bytes written."""
    import cupy as cp

    n = mib * 2**20 // 4
    src = cp.ones(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    cp.copyto(dst, src)  # warm-up
    t = cuda_median(lambda: cp.copyto(dst, src), max(repeats, 5))
    moved = 2 * n * 4
    del src, dst
    cp.get_default_memory_pool().free_all_blocks()
    return {"mib": mib, "bytes_moved": moved, "median_s": t, "bytes_per_s": moved / t,
            "how": f"cupy.copyto of a {mib} MiB float32 array, bytes read + written"}


def sort_reference(count: int, repeats: int) -> float:
    """Median seconds of one ``cupy.sort`` of ``count`` uint64 keys spread over 64 bits."""
    import cupy as cp

    keys = cp.arange(count, dtype=cp.uint64)  # (B*H*N,)
    keys *= np.uint64(0x9E3779B97F4A7C15)  # a multiplicative hash: every bit in use
    keys ^= keys >> np.uint64(29)
    cp.sort(keys)  # warm-up (and the sort's temporary storage in the pool)
    t = cuda_median(lambda: cp.sort(keys), repeats)
    del keys
    return t


def _pool_peak(call) -> int:
    """Bytes the default pool must hold beyond what it held before one ``call()`` (see the
    module docstring)."""
    import cupy as cp

    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    pool.free_all_blocks()
    before = pool.total_bytes()  # the live arrays: the inputs
    out = call()
    cp.cuda.Device().synchronize()
    after = pool.total_bytes()
    del out
    return after - before


def measure_zeta(b: int, h: int, n: int, repeats: int, seed: int = 0, cfg=None) -> dict:
    """One ZETA row: end-to-end and per-stage medians, peak pool memory, bytes/s."""
    import cupy as cp

    from .. import ZetaConfig, zeta_attention
    from ..cupy import fused

    cfg = ZetaConfig(k=K_TOP) if cfg is None else cfg
    rs = cp.random.RandomState(seed)
    q = rs.standard_normal((b, h, n, D_K), dtype=cp.float32)  # (B, H, N, d_k)
    k = rs.standard_normal((b, h, n, D_K), dtype=cp.float32)  # (B, H, N, d_k)
    v = rs.standard_normal((b, h, n, D_V), dtype=cp.float32)  # (B, H, N, d_v)
    call = lambda: zeta_attention(q, k, v, cfg, backend="cupy")  # noqa: E731
    call()  # warm-up: compiles or loads the kernels
    row = {"batch": b, "heads": h, "n": n, "method": "zeta", "skipped": None}
    row["total_s"] = cuda_median(call, repeats)
    # per stage, from the events the fused pass records
    stages = {name: [] for name in fused.STAGE_NAMES}
    spans = []
    for _ in range(repeats):
        marks = []
        fused.forward(q, k, v, cfg, marks=marks)
        marks[-1].synchronize()
        if len(marks) != len(fused.STAGE_NAMES) + 1:
            raise RuntimeError(f"fused.forward recorded {len(marks)} marks for "
                               f"{len(fused.STAGE_NAMES)} stages")
        for name, t0, t1 in zip(fused.STAGE_NAMES, marks, marks[1:]):
            stages[name].append(cp.cuda.get_elapsed_time(t0, t1) / 1e3)
        spans.append(cp.cuda.get_elapsed_time(marks[0], marks[-1]) / 1e3)
    row["stages_s"] = {name: float(np.median(ts)) for name, ts in stages.items()}
    row["fused_s"] = float(np.median(spans))
    row["peak_bytes"] = _pool_peak(call)
    row["input_bytes"] = q.nbytes + k.nbytes + v.nbytes
    row["output_bytes"] = b * h * n * D_V * 4
    row["min_bytes"] = min_bytes(b, h, n)
    row["bytes_per_s"] = row["min_bytes"] / row["total_s"]
    if b * h * n <= BACKWARD_MAX_POSITIONS:
        row.update(measure_backward(q, k, v, cfg, repeats, seed))
    else:
        row["backward_skipped"] = (f"B*H*N = {b * h * n} > {BACKWARD_MAX_POSITIONS} (the "
                                   f"forward with intermediates it needs is slow to time)")
    del q, k, v
    cp.get_default_memory_pool().free_all_blocks()
    # the sort stage is ONE cupy.sort of the packed keys of every key and every query
    row["sort_keys"] = 2 * b * h * n
    row["cupy_sort_s"] = sort_reference(row["sort_keys"], repeats)
    cp.get_default_memory_pool().free_all_blocks()
    if "sort" in row["stages_s"]:
        row["sort_per_call_s"] = row["stages_s"]["sort"]
        row["sort_ratio"] = row["sort_per_call_s"] / row["cupy_sort_s"]
    return row


def measure_backward(q, k, v, cfg, repeats: int, seed: int = 0) -> dict:
    """The backward pass beside the forward: ``zeta_attention_backward(backend="cupy")`` with
    the intermediates of one forward pass (the selection reused, as a training step does; the
    checks of the intermediates included) for a standard normal grad_output, and the forward
    pass that produces those intermediates (``return_intermediates=True``: the stage path, not
    the fused one). Medians of ``repeats`` calls after a warm-up."""
    import cupy as cp

    from .. import zeta_attention
    from ..backward import zeta_attention_backward

    grad = cp.random.RandomState(seed + 1).standard_normal(v.shape, dtype=cp.float32)
    staged = lambda: zeta_attention(q, k, v, cfg, backend="cupy",  # noqa: E731
                                    return_intermediates=True)
    _, inter = staged()
    backward = lambda: zeta_attention_backward(q, k, v, grad, cfg,  # noqa: E731
                                               intermediates=inter, backend="cupy")
    backward()  # warm-up: compiles or loads the kernels
    out = {"backward_s": cuda_median(backward, repeats),
           "forward_staged_s": cuda_median(staged, repeats)}
    del inter, grad
    cp.get_default_memory_pool().free_all_blocks()
    return out


def measure_sdpa(torch, b: int, h: int, n: int, dtype: str, repeats: int, seed: int = 0) -> dict:
    """One SDPA row: causal scaled_dot_product_attention on (B, H, N, 64) in bf16 or fp32."""
    row = {"batch": b, "heads": h, "n": n, "method": f"sdpa-{dtype}", "skipped": None}
    tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    shape = (b, h, n, SDPA_HEAD_DIM)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        q, k, v = (torch.randn(shape, device="cuda", dtype=tdtype, generator=gen)
                   for _ in range(3))
        with torch.inference_mode():
            sdpa(q, k, v, is_causal=True)  # warm-up
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                sdpa(q, k, v, is_causal=True)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)  # ms -> s
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = sdpa(q, k, v, is_causal=True)
            torch.cuda.synchronize()
            row["peak_bytes"] = torch.cuda.max_memory_allocated() - before
            del out
        row["total_s"] = float(np.median(times))
    except torch.cuda.OutOfMemoryError:
        row = {**row, "skipped": "out of device memory"}
    finally:
        q = k = v = None
        torch.cuda.empty_cache()
    return row


def run_gpu(args, results: dict, shapes, progress=None) -> None:
    """Time every shape on the GPU; the results land in ``results["gpu"]``.

    ``progress(total)``, optional, makes a progress bar (common.progress_bar: a tqdm bar).
    """
    from .. import ZetaConfig

    torch, why_no_torch = (None, "--no-sdpa") if args.no_sdpa else load_torch()
    cfg = ZetaConfig(k=K_TOP)
    gpu = results["gpu"] = {
        "device": device_info(torch), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join(["zeta-ref", "bench"] + sys.argv[2:]),
        "repeats": args.repeats, "sdpa": why_no_torch or "timed",
        "config": {"d_k": D_K, "d_v": D_V, "k": K_TOP, "dtype": "float32",
                   "causal": cfg.causal, "score": cfg.score, "history_mean": cfg.history_mean,
                   "sdpa_layout": f"(B, H, N, {SDPA_HEAD_DIM})"},
        "copy": None, "runs": []}
    plan = [(b, h, n, m) for b, h, n in shapes for m in ("zeta", "sdpa-bf16", "sdpa-fp32")]
    if progress is None:
        from .common import progress_bar

        progress = lambda total: progress_bar(total, "never")  # noqa: E731
    with progress(1 + len(plan)) as bar:
        bar.set_description_str("GPU copy bandwidth")
        gpu["copy"] = copy_bandwidth(args.copy_mib, args.repeats)
        bar.update(1)
        for b, h, n, method in plan:
            bar.set_description_str(f"{method} B={b} H={h} N={n}")
            if method == "zeta":
                row = _zeta_or_out_of_memory(b, h, n, args, cfg)
            else:
                dtype = method.split("-")[1]
                reason = why_no_torch or sdpa_skip_reason(b, h, n, dtype, args)
                row = ({"batch": b, "heads": h, "n": n, "method": method, "skipped": reason}
                       if reason else measure_sdpa(torch, b, h, n, dtype, args.repeats, args.seed))
            gpu["runs"].append(row)
            bar.update(1)
        bar.set_description_str("GPU rows done")
    add_ratios(gpu)
    gpu["targets"] = evaluate_targets(gpu)


def _zeta_or_out_of_memory(b, h, n, args, cfg) -> dict:
    import cupy as cp

    try:
        return measure_zeta(b, h, n, args.repeats, args.seed, cfg)
    except cp.cuda.memory.OutOfMemoryError:
        cp.get_default_memory_pool().free_all_blocks()
        return {"batch": b, "heads": h, "n": n, "method": "zeta",
                "skipped": "out of device memory"}


# ------------------------------------------------------------------ ratios, targets, table


def add_ratios(gpu: dict) -> None:
    """ZETA / SDPA (bf16 and fp32) for every ZETA row whose shape has the SDPA row."""
    by = {(r["batch"], r["heads"], r["n"], r["method"]): r for r in gpu["runs"]
          if not r["skipped"]}
    for (b, h, n, method), r in by.items():
        if method != "zeta":
            continue
        for dtype in ("bf16", "fp32"):
            ref = by.get((b, h, n, f"sdpa-{dtype}"))
            r[f"x_sdpa_{dtype}"] = r["total_s"] / ref["total_s"] if ref else None


def _zeta(gpu, b, h, n):
    for r in gpu["runs"]:
        if (r["batch"], r["heads"], r["n"], r["method"]) == (b, h, n, "zeta") and not r["skipped"]:
            return r
    return None


def _verdict(ok) -> str:
    return "not measured" if ok is None else ("met" if ok else "MISSED")


def evaluate_targets(gpu: dict) -> list[dict]:
    """The GPU performance targets, from one run's GPU results (``results["gpu"]``).

    Each entry: ``target`` (what is asked), ``measured`` (the numbers, as text), ``met`` (True,
    False, or None where the run did not measure it) and, where the target has one,
    ``stretch`` (the stretch goal's text) and ``stretch_met``.
    """
    out = []

    def ratio_target(b, n, limit, stretch=None):
        r = _zeta(gpu, b, 8, n)
        x = r.get("x_sdpa_bf16") if r else None
        t = {"target": f"ZETA fp32 / SDPA bf16 at B={b}, H=8, N={n} <= {limit:.2f}",
             "measured": (f"{x:.3f} ({r['total_s'] * 1e3:.3f} ms vs "
                          f"{r['total_s'] / x * 1e3:.3f} ms)" if x else "not measured"),
             "met": None if x is None else x <= limit}
        if stretch is not None:
            t["stretch"] = f"<= {stretch:.2f}"
            t["stretch_met"] = None if x is None else x <= stretch
        return t

    out.append(ratio_target(1, 65536, TARGET_RATIO_B1_64K, STRETCH_RATIO_B1_64K))
    out.append(ratio_target(16, 65536, TARGET_RATIO_B16_64K))

    # faster than SDPA bf16 from N = 8192 up (stretch: from 4096), B=1, H=8
    rows = sorted((r["n"], r["x_sdpa_bf16"]) for r in gpu["runs"]
                  if r["method"] == "zeta" and not r["skipped"] and r["batch"] == 1
                  and r["heads"] == 8 and r.get("x_sdpa_bf16"))

    def faster_from(n0):
        """True if ZETA is faster at every measured N >= n0 (n0 itself measured)."""
        if n0 not in dict(rows):
            return None
        return all(x < 1 for n, x in rows if n >= n0)

    # the crossover: the smallest measured N from which every larger measured N is faster
    crossover = None
    for n, x in reversed(rows):
        if x >= 1:
            break
        crossover = n
    measured = ", ".join(f"N={n}: {x:.2f}" for n, x in rows) if rows else "not measured"
    if rows:
        measured += (f"; faster from N={crossover} up" if crossover is not None
                     else "; not faster at the largest N")
    out.append({"target": f"ZETA faster than SDPA bf16 at B=1, H=8 from N={CROSSOVER_N} up "
                          f"(ZETA / SDPA < 1)",
                "measured": measured, "met": faster_from(CROSSOVER_N), "crossover_n": crossover,
                "stretch": f"from N={STRETCH_CROSSOVER_N}",
                "stretch_met": faster_from(STRETCH_CROSSOVER_N)})

    r64, r128 = _zeta(gpu, 1, 8, 65536), _zeta(gpu, 1, 8, 131072)
    doubling = r128["total_s"] / r64["total_s"] if r64 and r128 else None
    out.append({"target": f"time(N=131072) / time(N=65536) at B=1, H=8 <= {TARGET_DOUBLING}",
                "measured": (f"{doubling:.2f} ({r128['total_s'] * 1e3:.3f} / "
                             f"{r64['total_s'] * 1e3:.3f} ms)" if doubling else "not measured"),
                "met": None if doubling is None else doubling <= TARGET_DOUBLING})

    r1m = _zeta(gpu, 1, 8, 1 << 20)
    out.append({"target": f"N=1048576 at B=1, H=8 in under {TARGET_1M_S * 1e3:.0f} ms",
                "measured": f"{r1m['total_s'] * 1e3:.2f} ms" if r1m else "not measured",
                "met": None if r1m is None else r1m["total_s"] < TARGET_1M_S})

    r = _zeta(gpu, 1, 8, 65536)
    bwd = r.get("backward_s") if r else None
    out.append({"target": f"backward <= {TARGET_BACKWARD_RATIO:g}x forward (the fused pass) at "
                          f"B=1, H=8, N=65536",
                "measured": (f"{bwd / r['total_s']:.2f}x ({bwd * 1e3:.3f} vs "
                             f"{r['total_s'] * 1e3:.3f} ms); against the forward with "
                             f"intermediates ({r['forward_staged_s'] * 1e3:.3f} ms) "
                             f"{bwd / r['forward_staged_s']:.2f}x" if bwd else "not measured"),
                "met": None if bwd is None else bwd / r["total_s"] <= TARGET_BACKWARD_RATIO})

    sorts = [r for r in gpu["runs"] if r["method"] == "zeta" and not r["skipped"]
             and r.get("sort_ratio") is not None]
    worst = max(sorts, key=lambda r: r["sort_ratio"]) if sorts else None
    out.append({"target": f"sort stage per sort call within {TARGET_SORT_RATIO}x of one "
                          f"cupy.sort of as many keys, at every shape",
                "measured": (f"worst {worst['sort_ratio']:.2f}x at B={worst['batch']}, "
                             f"H={worst['heads']}, N={worst['n']} "
                             f"({worst['sort_per_call_s'] * 1e3:.3f} vs "
                             f"{worst['cupy_sort_s'] * 1e3:.3f} ms); "
                             f"{len(sorts)} shapes" if worst else "not measured"),
                "met": None if worst is None else worst["sort_ratio"] <= TARGET_SORT_RATIO})
    return out


def target_lines(targets: list[dict]) -> list[str]:
    lines = []
    for t in targets:
        line = f"{t['target']}: {t['measured']}"
        if t["measured"] != "not measured":
            line += f" -> {_verdict(t['met'])}"
        if "stretch" in t:
            line += f"; stretch ({t['stretch']}): {_verdict(t['stretch_met'])}"
        lines.append(line)
    return lines


def _ms(t, width=9, digits=3):
    return f"{'-':>{width}}" if t is None else f"{t * 1e3:>{width}.{digits}f}"


def _x(x, width=7):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.3f}"


def format_gpu_table(gpu: dict) -> str:
    """The GPU results as text: a header, the times, memory and bandwidth, the targets."""
    dev, cfg = gpu["device"], gpu["config"]
    torch_text = (f"torch {dev['torch']} (CUDA {dev['torch_cuda']})" if dev.get("torch")
                  else f"no SDPA ({gpu.get('sdpa')})")
    copy = gpu.get("copy")
    lines = [
        f"GPU: {dev['name']}, {dev.get('memory_gib', 0):.0f} GiB; CuPy {dev['cupy']}, "
        f"CUDA runtime {dev['cuda_runtime']}, driver {dev['cuda_driver']}; {torch_text}",
        f"date: {gpu['date']}; command: {gpu['command']}",
        f"ZETA: zeta_attention(backend='cupy') on CuPy inputs (the fused pass), d_k={cfg['d_k']}, "
        f"d_v={cfg['d_v']}, k={cfg['k']}, {cfg['dtype']}, causal {cfg['causal']}, {cfg['score']}, "
        f"mean term {'on' if cfg['history_mean'] else 'off'}",
        f"SDPA: torch scaled_dot_product_attention(is_causal=True), q, k, v "
        f"{cfg['sdpa_layout']}, bf16 and fp32",
        f"times: medians in ms of {gpu['repeats']} calls after a warm-up, CUDA events; "
        f"x bf16 = ZETA time / SDPA bf16 time in this run; fused = the fused pass without the "
        f"input checks; stage columns: the fused pass's stages; staged = the forward with "
        f"intermediates (the stage path); backward = zeta_attention_backward with those "
        f"intermediates; x fwd = backward / ZETA",
    ]
    if copy:
        lines.append(f"device-to-device copy ({copy['how']}): "
                     f"{copy['bytes_per_s'] / 1e12:.2f} TB/s")
    stage_names = []
    for r in gpu["runs"]:
        for s in r.get("stages_s", {}):
            if s not in stage_names:
                stage_names.append(s)
    shapes = []
    for r in gpu["runs"]:
        key = (r["batch"], r["heads"], r["n"])
        if key not in shapes:
            shapes.append(key)
    by = {(r["batch"], r["heads"], r["n"], r["method"]): r for r in gpu["runs"]}
    notes = []

    def t_of(key):
        r = by.get(key)
        if r is None:
            return None
        if r["skipped"]:
            notes.append(f"{key[3]} at B={key[0]}, H={key[1]}, N={key[2]} skipped: "
                         f"{r['skipped']}")
            return None
        return r["total_s"]

    head = (f"{'B':>3} {'H':>3} {'N':>8} | {'ZETA':>9} {'fused':>9} | {'SDPA bf16':>9} "
            f"{'fp32':>9} | {'x bf16':>7} {'x fp32':>7} | "
            + " ".join(f"{s:>9}" for s in stage_names)
            + f" | {'staged':>9} {'backward':>9} {'x fwd':>6}")
    lines += ["", head, "-" * len(head)]
    for b, h, n in shapes:
        z = by.get((b, h, n, "zeta"))
        zt = t_of((b, h, n, "zeta"))
        bf, fp = t_of((b, h, n, "sdpa-bf16")), t_of((b, h, n, "sdpa-fp32"))
        z = z if zt is not None else {}
        stages = z.get("stages_s", {})
        bwd = z.get("backward_s")
        lines.append(f"{b:>3} {h:>3} {n:>8} | {_ms(zt)} {_ms(z.get('fused_s'))} | {_ms(bf)} "
                     f"{_ms(fp)} | {_x(z.get('x_sdpa_bf16'))} {_x(z.get('x_sdpa_fp32'))} | "
                     + " ".join(_ms(stages.get(s)) for s in stage_names)
                     + f" | {_ms(z.get('forward_staged_s'))} {_ms(bwd)} "
                     + (f"{bwd / zt:>6.2f}" if bwd and zt else f"{'-':>6}"))
    lines += [f"  {note}" for note in notes]

    head = (f"{'B':>3} {'H':>3} {'N':>8} | {'ZETA MiB':>9} {'B/row':>6} | {'bf16 MiB':>9} "
            f"{'fp32 MiB':>9} | {'min MB':>8} {'GB/s':>7} {'% copy':>6} | {'sort/call':>9} "
            f"{'cupy.sort':>9} {'ratio':>6}")
    lines += ["", head, "-" * len(head)]
    copy_bw = copy["bytes_per_s"] if copy else None

    def mib(r):
        if not r or r.get("skipped") or r.get("peak_bytes") is None:
            return f"{'-':>9}"
        return f"{r['peak_bytes'] / 2**20:>9.1f}"

    for b, h, n in shapes:
        z = by.get((b, h, n, "zeta"))
        if not z or z["skipped"]:
            lines.append(f"{b:>3} {h:>3} {n:>8} | ZETA not measured")
            continue
        per_row = z["peak_bytes"] / (b * h * n)
        pct = f"{100 * z['bytes_per_s'] / copy_bw:>6.1f}" if copy_bw else f"{'-':>6}"
        ratio = z.get("sort_ratio")
        bf, fp = by.get((b, h, n, "sdpa-bf16")), by.get((b, h, n, "sdpa-fp32"))
        lines.append(f"{b:>3} {h:>3} {n:>8} | {mib(z)} {per_row:>6.0f} | {mib(bf)} {mib(fp)} | "
                     f"{z['min_bytes'] / 1e6:>8.1f} {z['bytes_per_s'] / 1e9:>7.1f} {pct} | "
                     f"{_ms(z.get('sort_per_call_s'))} {_ms(z.get('cupy_sort_s'))} "
                     + (f"{ratio:>6.2f}" if ratio is not None else f"{'-':>6}"))
    lines += [
        "",
        "ZETA MiB: device memory one end-to-end call adds to CuPy's default pool (emptied of "
        "free blocks first; total_bytes after minus before, so the inputs are not counted and "
        "the output is); B/row: the same per (batch, head, position)",
        "bf16/fp32 MiB: torch.cuda.max_memory_allocated during one SDPA call, minus what was "
        "allocated before it (the inputs)",
        "min MB: the bytes a pass must move at the least (read q, k, v, write the output once); "
        "GB/s: min MB / ZETA time; % copy: of the copy bandwidth above",
        "sort/call: the fused sort stage (one sort of the keys and the queries together); "
        "cupy.sort: one cupy.sort of 2*B*H*N uint64 keys; ratio: sort/call / cupy.sort",
    ]
    lines += ["", "GPU targets:"] + [f"  {t}" for t in target_lines(
        gpu.get("targets") or evaluate_targets(gpu))]
    return "\n".join(lines)


def plot_series(gpu: dict) -> list[tuple[str, list, list, dict]]:
    """The GPU lines of the time-vs-N plot: (label, N values, seconds, matplotlib style), one
    per (method, batch, heads)."""
    styles = {"zeta": dict(marker="o", color="tab:blue"),
              "sdpa-bf16": dict(marker="^", color="tab:red"),
              "sdpa-fp32": dict(marker="v", color="tab:purple")}
    names = {"zeta": "ZETA cupy fp32", "sdpa-bf16": "SDPA bf16", "sdpa-fp32": "SDPA fp32"}
    groups: dict = {}
    for r in gpu["runs"]:
        if r["skipped"]:
            continue
        groups.setdefault((r["method"], r["batch"], r["heads"]), []).append((r["n"], r["total_s"]))
    batches = sorted({b for _, b, _ in groups})
    dashes = ["-", "--", "-.", ":"]
    out = []
    for (method, b, h), pts in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        pts.sort()
        style = dict(styles.get(method, {}), ls=dashes[batches.index(b) % len(dashes)])
        out.append((f"GPU {names.get(method, method)}, B={b}, H={h}",
                    [n for n, _ in pts], [t for _, t in pts], style))
    return out
