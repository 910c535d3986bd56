"""Train a small transformer on multi-query associative recall (MQAR), with full attention or
with ZETA, forward and backward through zeta_ref (zeta_ref.mqar; docs/experiments.md).

One run: the options set the task (--seq-len, --pairs, --vocab, --query-dist, --filler), the
model (--d-model, --layers, --heads, --mlp-ratio, --attention full|zeta, and for ZETA --d-k,
--k, --score, --gamma) and the training (--steps, --batch, --lr, --seed, --backend). It prints
the learning curve and the accuracy on a held-out, seeded test set (the share of query
positions answered exactly). The same seed gives the same numbers on the same backend.

  zeta-ref mqar --attention zeta --seq-len 32 --d-model 64 --vocab 32 --steps 800

A grid: --grid paper runs the paper's configurations (sequence length 64, 128, 256 x model
dimension 64, 128, 256, full attention and ZETA with k = 32, d_K = 3, Cauchy; and the
ablation of d_K in 1, 2, 3, 8 x score in cauchy, neg_euclidean, inv_euclidean at N = d = 256)
for each of --seeds, --jobs at a time in parallel processes, and prints the table of results
beside the paper's claims. --steps, --batch, --lr, --backend and the other training options
apply to every run; the grid sets the sizes, the attention, d_K and the score itself.

  zeta-ref mqar --grid paper --backend cupy --jobs 8 --json mqar.json --out mqar/
  zeta-ref mqar --grid paper --backend cupy --jobs 8 --json mqar.json --resume  # the rest
  zeta-ref mqar --table mqar.json      # the tables again, from the JSON

--resume (with --json) goes on from an interrupted grid: only the runs the file lacks, given
the options of the command that wrote it (a file none of whose runs they describe is refused).
--time-limit SECONDS ends a sitting on time: at the limit the runs in flight save
checkpoints beside the JSON (PATH.checkpoints/) and stop, and the next --resume goes on from
them, so a grid split into sittings loses no work.

--json PATH writes every number (the results are rewritten after each run of a grid);
--out DIR writes the learning curves as a PNG. A progress bar goes to stderr (--progress).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

from .common import (OptionError, check_range, output_file, output_folder, progress_bar,
                     source)

#: Options a grid sets itself (a value given for one of them with --grid is refused).
GRID_SETS = ("seq_len", "d_model", "pairs", "attention", "d_k", "score", "k")
SEED_MAX = 2**32 - 1


def mps_note(backend: str, jobs: int, environ=None) -> str | None:
    """A line for a grid of several jobs on one GPU when NVIDIA's MPS daemon seems not to run
    (its pipe folder, $CUDA_MPS_PIPE_DIRECTORY or /tmp/nvidia-mps, is missing): without it
    the jobs' CUDA contexts take turns on the GPU (measured on an H200: 8 jobs ran 1.35 times
    as many steps as one; under MPS 3.6 times). None where no note is due."""
    environ = os.environ if environ is None else environ
    if backend != "cupy" or jobs < 2:
        return None
    pipe = environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"
    if os.path.isdir(pipe):
        return None
    return (f"note: {jobs} jobs will share the GPU; without NVIDIA MPS they take turns on it "
            f"(no MPS pipe at {pipe}). Start it first with `nvidia-cuda-mps-control -d` "
            f"(docs/experiments.md).")


def add_arguments(parser):
    from zeta_ref.mqar.grid import PAPER_DEFAULTS

    task = parser.add_argument_group("the task")
    task.add_argument("--seq-len", type=int, default=None,
                      help="sequence length N (default 64)")
    task.add_argument("--pairs", type=int, default=None,
                      help="key-value pairs P per sequence (default N / 16, as Zoology)")
    task.add_argument("--vocab", type=int, default=8192,
                      help="vocabulary size V: keys from the lower half, values from the upper "
                           "(default 8192, as Zoology)")
    task.add_argument("--query-dist", choices=("power", "uniform"), default="power",
                      help="where the queries go: a power law favouring positions near the "
                           "context (Zoology's) or uniform (default power)")
    task.add_argument("--power-a", type=float, default=0.01,
                      help="the power law's exponent a: weights (j+1)^(a-1) (default 0.01)")
    task.add_argument("--filler", choices=("zero", "random"), default="zero",
                      help="what the other positions hold: token 0 or random tokens "
                           "(default zero)")
    model = parser.add_argument_group("the model")
    model.add_argument("--d-model", type=int, default=None,
                       help="model dimension d (default 64)")
    model.add_argument("--layers", type=int, default=2, help="blocks (default 2)")
    model.add_argument("--heads", type=int, default=1,
                       help="attention heads per layer (default 1)")
    model.add_argument("--mlp-ratio", type=int, default=0,
                       help="each block's MLP width in units of d; 0: no MLP, as Zoology's "
                            "MQAR models (default 0)")
    model.add_argument("--positions", choices=("normal", "sinusoidal"), default="normal",
                       help="how the learned position embedding starts (default normal)")
    model.add_argument("--qk-projection", choices=("linear", "mlp"), default="linear",
                       help="queries and keys from one linear map, or from a two-layer MLP "
                            "(d -> d, GELU, d -> d_K per head) as one account of the paper "
                            "has it (default linear)")
    model.add_argument("--attention", choices=("full", "zeta"), default=None,
                       help="full causal softmax attention or ZETA (default full)")
    model.add_argument("--d-k", type=int, default=None,
                       help="ZETA's query/key width d_K per head (default 3)")
    model.add_argument("--k", type=int, default=None,
                       help="ZETA's top-k: keys per query (default 32)")
    model.add_argument("--score", default=None,
                       choices=("cauchy", "neg_euclidean", "inv_euclidean", "softmax"),
                       help="ZETA's score (default cauchy)")
    model.add_argument("--gamma", type=float, default=0.5,
                       help="initial gamma of the Cauchy score, trained within "
                            "[0.001, 1000] (default 0.5)")
    model.add_argument("--no-history-mean", action="store_true",
                       help="leave out ZETA's mean term (D8)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=None,
                       help="Adam steps (default 1000; with --grid paper "
                            f"{PAPER_DEFAULTS['steps']})")
    train.add_argument("--batch", type=int, default=None,
                       help="sequences per step (default 64; with --grid paper "
                            f"{PAPER_DEFAULTS['batch']})")
    train.add_argument("--lr", type=float, default=1e-3,
                       help="peak learning rate: linear warm-up, cosine decay to a tenth "
                            "(default 1e-3)")
    train.add_argument("--warmup", type=int, default=None,
                       help="warm-up steps (default 10 %% of the steps, at most 200)")
    train.add_argument("--seed", type=int, default=0,
                       help=f"seed of the initialisation, the training stream and the test "
                            f"set, 0 to {SEED_MAX} (default 0)")
    train.add_argument("--backend", choices=("numpy", "numba", "cupy"), default="numba",
                       help="numpy or numba: NumPy arrays on the CPU, ZETA through that "
                            "backend; cupy: CuPy arrays on the GPU (default numba)")
    train.add_argument("--engine", choices=("reference", "torch"), default="reference",
                       help="reference: the hand-written backward passes (NumPy or CuPy); "
                            "torch: the same model in PyTorch, autograd through zeta_ref's "
                            "PyTorch adapter, on the CPU or (--backend cupy) on CUDA: a "
                            "second path that should agree (one run, not a grid)")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="(default float32)")
    train.add_argument("--test-size", type=int, default=None,
                       help="held-out test sequences (default 1000)")
    train.add_argument("--eval-every", type=int, default=None,
                       help="steps between test evaluations; 0: only at the end "
                            f"(default 0; with --grid paper {PAPER_DEFAULTS['eval_every']})")
    train.add_argument("--log-every", type=int, default=50,
                       help="steps between loss readings (default 50)")
    grid = parser.add_argument_group("grids")
    grid.add_argument("--grid", choices=("paper", "smoke"), default=None,
                      help="run a grid of configurations instead of one (see above)")
    grid.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="seeds of a grid (default: 0 1 for paper, 0 for smoke)")
    grid.add_argument("--jobs", type=int, default=1,
                      help="runs of a grid at a time, each in its own process (default 1)")
    grid.add_argument("--resume", action="store_true",
                      help="with --json: keep the runs that file already holds (a grid "
                           "interrupted, or run in several sittings) and run only the others")
    grid.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                      help="with --grid and --json: end this sitting after SECONDS; the runs "
                           "in flight save checkpoints and --resume goes on from them")
    grid.add_argument("--dry-run", action="store_true",
                      help="list a grid's runs and stop")
    grid.add_argument("--table", metavar="JSON",
                      help="print the tables of a grid's results file and stop")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH",
                     help="write the results as JSON (missing folders are created)")
    out.add_argument("--out", metavar="DIR",
                     help="write the learning curves as DIR/mqar_curves.png")
    out.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                     help="the progress bar on stderr (default auto: on a terminal)")


# ------------------------------------------------------------------ checks, before any work


def _base_config(args):
    """The RunConfig the options describe (a grid's base), or an OptionError."""
    from zeta_ref.mqar.grid import PAPER_DEFAULTS
    from zeta_ref.mqar.train import RunConfig

    paper = args.grid == "paper"
    fields = dict(
        seq_len=args.seq_len or 64, d_model=args.d_model or 64, pairs=args.pairs,
        vocab=args.vocab, query_dist=args.query_dist, power_a=args.power_a,
        filler=args.filler, layers=args.layers, heads=args.heads, mlp_ratio=args.mlp_ratio,
        positions=args.positions, qk_projection=args.qk_projection,
        attention=args.attention or "full",
        d_k=3 if args.d_k is None else args.d_k, k=32 if args.k is None else args.k,
        score=args.score or "cauchy", gamma=args.gamma,
        history_mean=not args.no_history_mean,
        steps=args.steps or (PAPER_DEFAULTS["steps"] if paper else 1000),
        batch=args.batch or (PAPER_DEFAULTS["batch"] if paper else 64), lr=args.lr,
        warmup=args.warmup,
        seed=args.seed, backend=args.backend, dtype=args.dtype,
        test_size=args.test_size or 1000,
        eval_every=(args.eval_every if args.eval_every is not None else
                    PAPER_DEFAULTS["eval_every"] if paper else 0),
        log_every=args.log_every)
    try:
        return RunConfig(**fields)
    except ValueError as err:  # the task's or the model's own check, in its words
        raise OptionError(_option_words(str(err))) from None


def _option_words(message: str) -> str:
    """'seq_len must be ...' -> '--seq-len must be ...': name the options, not the fields."""
    import re

    fields = ("seq_len", "d_model", "pairs", "vocab", "heads", "steps", "batch", "test_size",
              "log_every", "layers", "d_k", "k", "query_dist", "filler", "backend", "dtype",
              "attention", "gamma")
    # a field's name where it names a field: before " must" or "=", not inside a word
    pattern = r"(?<![\w-])(" + "|".join(fields) + r")(?= must|=)"
    return re.sub(pattern, lambda m: "--" + m.group(1).replace("_", "-"), message)


def validate(args):
    """Check every option before any work; return the runs as (group, RunConfig) pairs."""
    if args.table:
        if not os.path.isfile(args.table):
            raise OptionError(f"--table {args.table}: no such file")
        return []
    for name in ("seq_len", "d_model", "pairs", "d_k", "k", "steps", "batch", "test_size"):
        value = getattr(args, name)
        if value is not None:
            check_range(value, "--" + name.replace("_", "-"), 1)
    for name in ("vocab", "layers", "heads", "log_every", "jobs"):
        check_range(getattr(args, name), "--" + name.replace("_", "-"), 1)
    check_range(args.vocab, "--vocab", 4)
    check_range(args.mlp_ratio, "--mlp-ratio", 0)
    if not args.lr > 0:
        raise OptionError(f"--lr must be > 0; got {args.lr}")
    if not args.gamma > 0:
        raise OptionError(f"--gamma must be > 0; got {args.gamma}")
    check_range(args.power_a, "--power-a", 0.0, 1.0)
    check_range(args.seed, "--seed", 0, SEED_MAX)
    if args.warmup is not None:
        check_range(args.warmup, "--warmup", 0)
    if args.eval_every is not None:
        check_range(args.eval_every, "--eval-every", 0)
    if args.d_k is not None and args.d_k > 63:
        raise OptionError(f"--d-k must be <= 63 (a Z code of d_K coordinates fits 63 bits); "
                          f"got {args.d_k}")
    if args.engine == "torch":
        if args.grid is not None:
            raise OptionError("--engine torch runs one configuration; a grid runs the "
                              "reference engine (leave --engine out)")
        _check_torch(args.backend)
    if args.resume and (args.grid is None or not args.json):
        raise OptionError("--resume needs --grid and --json (the results file to go on from)")
    if args.time_limit is not None:
        if args.grid is None or not args.json:
            raise OptionError("--time-limit needs --grid and --json (the checkpoints go "
                              "beside the results file)")
        if not args.time_limit > 0 or args.time_limit == float("inf"):
            raise OptionError(f"--time-limit must be a number of seconds > 0; got "
                              f"{args.time_limit}")
    if args.grid is None:
        for name in ("seeds", "dry_run"):
            if getattr(args, name):
                raise OptionError(f"--{name.replace('_', '-')} needs --grid")
        if args.jobs != 1:
            raise OptionError("--jobs needs --grid")
    else:
        given = [name for name in GRID_SETS if getattr(args, name) is not None]
        if given:
            raise OptionError(f"--{given[0].replace('_', '-')}: --grid {args.grid} sets it "
                              f"for every run; leave it out")
        for seed in args.seeds or ():
            check_range(seed, "--seeds", 0, SEED_MAX)
    _check_backend(args.backend)
    base = _base_config(args)
    if args.grid is None:
        runs = [("single", base)]
    else:
        from zeta_ref.mqar.grid import make_grid

        seeds = tuple(args.seeds) if args.seeds else ((0, 1) if args.grid == "paper" else (0,))
        try:
            runs = make_grid(args.grid, base, seeds)
        except ValueError as err:
            raise OptionError(f"--grid {args.grid}: {_option_words(str(err))}") from None
    if args.backend != "cupy":
        _check_memory(runs, args.jobs)
    if args.json:
        output_file(args.json, "--json")
    if args.resume:
        args.previous = _previous_results(args.json, args.grid)
        _check_resumes(args.previous, runs, args.json)
    if args.out:
        output_folder(args.out, "--out", ("mqar_curves.png",))
    return runs


def _previous_results(path: str, grid: str):
    """The results a --resume goes on from (None where the file does not exist yet)."""
    import json

    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as err:
        raise OptionError(f"--resume: cannot read {path}: {err}") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("runs"), list):
        raise OptionError(f"--resume: {path} holds no grid results")
    if previous.get("grid") != grid:
        raise OptionError(f"--resume: {path} holds the grid {previous.get('grid')!r}, not "
                          f"{grid!r}")
    return previous


def _check_resumes(previous, runs, path: str) -> None:
    """A --resume must go on with the grid the file holds: when none of its results is a
    run of this command's grid, say which options differ rather than start the grid anew
    in the same file."""
    from zeta_ref.mqar.grid import option_differences, pending

    if not previous or not previous["runs"] or len(pending(runs, previous["runs"])) < len(runs):
        return
    differ = option_differences(runs, previous["runs"])
    said = "; ".join(f"{name} {', '.join(map(str, there))} there, {', '.join(map(str, here))} "
                     f"here" for name, (there, here) in differ.items())
    raise OptionError(f"--resume: none of the {len(previous['runs'])} results in {path} is a "
                      f"run of this grid" + (f" ({said})" if said else "")
                      + "; give the options of the command that wrote it: "
                      + str(previous.get("command", "(not recorded)")))


def _check_torch(backend: str) -> None:
    """--engine torch needs PyTorch, and for --backend cupy a CUDA build with a GPU."""
    try:
        import torch
    except ImportError:
        raise OptionError("--engine torch needs PyTorch (pip install torch)") from None
    if backend == "cupy" and not torch.cuda.is_available():
        raise OptionError("--engine torch with --backend cupy needs PyTorch with CUDA and a "
                          "GPU; this torch sees none (use --backend numba for the CPU)")


def _check_backend(name: str) -> None:
    """The backend must run here (for cupy: CuPy and a GPU)."""
    from zeta_ref.backends import get_backend

    try:
        get_backend(name)
    except ValueError as err:
        raise OptionError(f"--backend: {err}") from None


def _check_memory(runs, jobs: int) -> None:
    """Refuse CPU runs whose largest arrays cannot fit: full attention holds B x H x N x N
    scores a few times over, and every run a few copies of the activations (an estimate)."""
    from .common import check_fits

    def need(cfg):
        item = 4 if cfg.dtype == "float32" else 8
        acts = 40 * cfg.batch * cfg.seq_len * cfg.d_model * cfg.layers
        scores = (6 * cfg.batch * cfg.heads * cfg.seq_len ** 2 * cfg.layers
                  if cfg.attention == "full" else 0)
        head = 4 * cfg.batch * cfg.pairs * cfg.vocab
        params = 4 * (cfg.vocab * cfg.d_model * 2 + cfg.layers * 6 * cfg.d_model ** 2)
        return item * (acts + scores + head + params)

    worst = max(need(cfg) for _, cfg in runs)
    check_fits(worst * min(jobs, len(runs)), "--batch", "the largest run" +
               (f" ({min(jobs, len(runs))} at a time)" if jobs > 1 else ""),
               "lower --batch or --jobs")


# ------------------------------------------------------------------ the run


def machine() -> dict:
    """What the results were measured on, and with which zeta_ref (:func:`common.source`)."""
    import numpy as np

    info = {"zeta_ref": source(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpus": os.cpu_count()}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        import cupy

        info["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else \
            str(props["name"])
    except Exception:  # noqa: BLE001 - no CuPy, or no GPU: a CPU machine
        pass
    return info


def format_run(result: dict) -> str:
    """One run in a few lines: its label, the learning curve, the accuracy (and a word on the
    plateau when the run is still on it)."""
    from zeta_ref.mqar.grid import on_plateau

    cfg = result["config"]
    curve = ", ".join(f"{p['step']}: {p['loss']:.3f}" for p in result["curve"][::max(
        1, len(result["curve"]) // 10)])
    lines = [f"{result['label']} (P={cfg['pairs']}, V={cfg['vocab']}, {cfg['steps']} steps "
             f"of batch {cfg['batch']}, lr {cfg['lr']:g}, backend {cfg['backend']})",
             f"  training loss by step: {curve}"]
    if len(result["evals"]) > 1:
        lines.append("  test accuracy by step: " + ", ".join(
            f"{e['step']}: {100 * e['accuracy']:.1f} %" for e in result["evals"]))
    gammas = ", ".join(f"{name} {g:.3g}" for name, g in result["gammas"].items())
    lines.append(f"  test accuracy {100 * result['accuracy']:.2f} % (chance "
                 f"{100 * result['chance']:.2f} %); final loss {result['final_loss']:.4f}"
                 + (f"; {gammas}" if gammas else "")
                 + f"; {1000 * result['seconds_per_step']:.1f} ms/step, "
                 f"{result['total_seconds']:.1f} s in all")
    pairs = cfg["pairs"]
    if pairs >= 4 and on_plateau(result["accuracy"], pairs):  # 2/P means little for P < 4
        lines.append(
            f"  not recalling yet: below 2/P = {200 / pairs:.1f} % (on the plateau, at 1/P = "
            f"{100 / pairs:.1f} %, a model names one of the context's {pairs} values, not the "
            "right one). A run can wait there for thousands of steps; more steps, a larger "
            "batch (Zoology trains with 512 at N <= 128), another seed or learning rate may "
            "take it off (docs/experiments.md, \"Zoology's batch\").")
    return "\n".join(lines)


def plot_curves(runs: list, path: str) -> None:
    """Training loss against step for every run (log scale), and the test accuracy at each
    evaluation; full attention solid, ZETA dashed. Up to 12 runs, a colour and a legend entry
    each; more (a grid), one colour per attention and a legend of the two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    many = len(runs) > 12
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        full = r["config"]["attention"] == "full"
        style = "-" if full else "--"
        shared = {"color": "C0" if full else "C1", "alpha": 0.5} if many else {}
        steps = [p["step"] for p in r["curve"]]
        line, = ax_loss.plot(steps, [p["loss"] for p in r["curve"]], style, lw=1,
                             label=r["label"], **shared)
        ax_acc.plot([e["step"] for e in r["evals"]],
                    [100 * e["accuracy"] for e in r["evals"]], style, marker="o", ms=3,
                    lw=1, color=line.get_color(), alpha=shared.get("alpha"))
    ax_loss.set(xlabel="step", ylabel="training loss (answer positions)", yscale="log",
                title="MQAR: learning curves")
    ax_acc.set(xlabel="step", ylabel="test accuracy (%)", ylim=(0, 101),
               title="held-out accuracy")
    if many:
        count = {a: sum(r["config"]["attention"] == a for r in runs) for a in ("full", "zeta")}
        ax_loss.legend(handles=[Line2D([], [], color="C0", ls="-",
                                       label=f"full attention ({count['full']} runs)"),
                                Line2D([], [], color="C1", ls="--",
                                       label=f"ZETA ({count['zeta']} runs)")], fontsize=7)
    else:
        ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args):
    runs = validate(args)  # nothing runs before this
    if args.table:
        import json

        from zeta_ref.mqar.grid import render_table

        with open(args.table) as f:
            print(render_table(json.load(f)))
        return 0
    if args.dry_run:
        for group, cfg in runs:
            print(f"{group:9s} {cfg.label()}  P={cfg.pairs} steps={cfg.steps} "
                  f"batch={cfg.batch}")
        print(f"{len(runs)} runs")
        return 0
    header = {"command": shlex.join(["zeta-ref", "mqar"] + sys.argv[2:]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "machine": machine(), "grid": args.grid}
    if args.grid is None:
        from zeta_ref.mqar.grid import write_json
        from zeta_ref.mqar.train import train

        (_, cfg), = runs
        with progress_bar(cfg.steps, args.progress) as bar:
            if args.engine == "torch":
                from zeta_ref.mqar.torch_model import train_torch

                result = train_torch(cfg, device="cuda" if cfg.backend == "cupy" else "cpu",
                                     progress=bar)
            else:
                result = train(cfg, progress=bar)
        results = dict(header, runs=[result])
        print(format_run(result))
        if args.json:
            write_json(results, args.json)
    else:
        from zeta_ref.mqar.grid import pending, render_table, run_grid

        previous = getattr(args, "previous", None)  # --resume: what the JSON holds already
        todo = runs if previous is None else pending(runs, previous["runs"])
        if previous is not None:
            from zeta_ref.mqar.grid import checkpoint_folder, checkpoint_path

            folder = checkpoint_folder(args.json)
            saved = sum(os.path.exists(checkpoint_path(folder, group, cfg))
                        for group, cfg in todo)
            print(f"--resume: {len(runs) - len(todo)} of the {len(runs)} runs are in "
                  f"{args.json} already; running the other {len(todo)}"
                  + (f" ({saved} of them from their checkpoints)" if saved else ""),
                  file=sys.stderr)
        note = mps_note(args.backend, args.jobs)
        if note:
            print(note, file=sys.stderr)
        with progress_bar(len(todo), args.progress) as bar:
            bar.unit = "run"
            results = run_grid(runs, args.jobs, header, json_path=args.json, progress=bar,
                               previous=previous, time_limit=args.time_limit,
                               on_result=lambda r: bar.write(
                                   f"{r['label']}: {100 * r['accuracy']:.1f} % "
                                   f"({1000 * r['seconds_per_step']:.1f} ms/step)",
                                   file=sys.stderr))
        print(render_table(results))
        stopped = results["sessions"][-1].get("stopped")
        if stopped:
            print(f"--time-limit: {stopped} runs unfinished, their progress saved in "
                  f"{args.json}.checkpoints/; go on with the same command and --resume",
                  file=sys.stderr)
    if args.json:
        print(f"wrote {args.json}")
    if args.out:
        path = os.path.join(args.out, "mqar_curves.png")
        plot_curves(results["runs"], path)
        print(f"wrote {path}")
    return 0
