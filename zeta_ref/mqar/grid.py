"""The paper's MQAR grid: the runs, a parallel runner, and the table of results against the
paper's claims.

The grid ``"paper"`` (:func:`paper_grid`) has two parts:

- **main**: sequence length N in {64, 128, 256} x model dimension d in {64, 128, 256}, each
  with full attention and with ZETA (k = 32, d_K = 3, Cauchy score); P = N / 16 pairs (4, 8,
  16: the pairing of Zoology's main MQAR figure);
- **ablation**: at N = 256, d = 256 (the size where the paper reports 100 %), ZETA with d_K in
  {1, 2, 3, 8} x score in {cauchy, neg_euclidean, inv_euclidean}, the paper's three, and
  softmax (the dot product), which the paper does not report: a control with the same
  selection and a score that is not a distance (docs/experiments.md says why it is there).

Every configuration runs with each of ``seeds`` (two by default). The grid ``"smoke"`` is a
minute-long version (two tiny sizes, one seed, a few steps) that checks the machinery.

:func:`run_grid` runs the configurations in ``jobs`` parallel processes (spawned, so that each
has its own CUDA context on a GPU) and rewrites the JSON file after every finished run, so an
interrupted grid keeps what it finished. With a ``time_limit`` a sitting ends on time without
losing work: at the limit every run in flight saves a checkpoint beside the JSON
(:func:`checkpoint_path`) and stops, no new run starts, and the next sitting's runs go on
from those checkpoints. :func:`render_table` turns that JSON into the tables
of docs/experiments.md: the paper's claim beside the measured accuracy, with verdicts computed
from the numbers.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, replace

from .train import RunConfig

GRIDS = ("paper", "smoke")
MAIN_SEQ_LENS = (64, 128, 256)
MAIN_D_MODELS = (64, 128, 256)
ABLATION_SIZE = (256, 256)  # (N, d)
ABLATION_D_KS = (1, 2, 3, 8)
#: The scores of the paper's ablation, then the control it does not have (the dot product).
PAPER_SCORES = ("cauchy", "neg_euclidean", "inv_euclidean")
ABLATION_SCORES = PAPER_SCORES + ("softmax",)
#: Defaults of the paper grid, per run (sized for 25 minutes on one H200 with 14 jobs; see
#: docs/experiments.md for the measured time).
PAPER_DEFAULTS = {"steps": 1500, "batch": 128, "lr": 1e-3, "test_size": 1000,
                  "eval_every": 500}


def paper_grid(base: RunConfig, seeds=(0, 1)) -> list[tuple[str, RunConfig]]:
    """The (group, config) pairs of the paper grid; every config is ``base`` with the grid's
    knobs (seq_len, d_model, pairs, attention, d_k, score, k) replaced, and each seed."""
    runs = []
    for seed in seeds:
        for n in MAIN_SEQ_LENS:
            for d in MAIN_D_MODELS:
                common = dict(seq_len=n, d_model=d, pairs=None, seed=seed, k=32)
                runs.append(("main", replace(base, attention="full", **common)))
                runs.append(("main", replace(base, attention="zeta", d_k=3, score="cauchy",
                                             **common)))
        n, d = ABLATION_SIZE
        for d_k in ABLATION_D_KS:
            for score in ABLATION_SCORES:
                if d_k == 3 and score == "cauchy":
                    continue  # the main grid's run at this size
                runs.append(("ablation", replace(base, attention="zeta", seq_len=n,
                                                 d_model=d, pairs=None, d_k=d_k,
                                                 score=score, k=32, seed=seed)))
    return [(group, _fresh(cfg)) for group, cfg in runs]


def smoke_grid(base: RunConfig, seeds=(0,)) -> list[tuple[str, RunConfig]]:
    """A tiny grid with the paper grid's structure: a check of the machinery, not a result."""
    runs = []
    for seed in seeds:
        for n, d in ((32, 32), (64, 32)):
            runs.append(("main", replace(base, seq_len=n, d_model=d, pairs=None,
                                         attention="full", seed=seed)))
            runs.append(("main", replace(base, seq_len=n, d_model=d, pairs=None,
                                         attention="zeta", d_k=3, score="cauchy", seed=seed)))
        for d_k in (1, 3):
            for score in ("cauchy", "neg_euclidean"):
                if d_k == 3 and score == "cauchy":
                    continue
                runs.append(("ablation", replace(base, seq_len=64, d_model=32, pairs=None,
                                                 attention="zeta", d_k=d_k, score=score,
                                                 seed=seed)))
    return [(group, _fresh(cfg)) for group, cfg in runs]


def _fresh(cfg: RunConfig) -> RunConfig:
    """``cfg`` built again from its fields, so that the derived defaults (pairs = N / 16,
    warm-up) follow the replaced sizes."""
    fields = asdict(cfg)
    return RunConfig(**fields)


def make_grid(name: str, base: RunConfig, seeds) -> list[tuple[str, RunConfig]]:
    """The runs of the grid ``name`` ("paper" or "smoke")."""
    if name == "paper":
        return paper_grid(base, seeds)
    if name == "smoke":
        return smoke_grid(base, seeds)
    raise ValueError(f"grid must be one of {GRIDS}; got {name!r}")


def _cost(cfg: RunConfig) -> float:
    """A rough relative cost, to start the longest runs first (better packing)."""
    per_step = cfg.batch * cfg.seq_len * (cfg.d_model + (cfg.seq_len if cfg.attention ==
                                                         "full" else 64))
    return cfg.steps * per_step * (3.0 if cfg.attention == "zeta" else 1.0)


def checkpoint_path(folder: str, group: str, cfg: RunConfig) -> str:
    """Where the run (``group``, ``cfg``) saves its checkpoint in ``folder``: a file named by
    a hash of the group and the whole config, so that a sitting finds its own runs' files."""
    import hashlib

    key = json.dumps([group, asdict(cfg)], sort_keys=True).encode()
    return os.path.join(folder, hashlib.sha256(key).hexdigest()[:20] + ".npz")


def checkpoint_folder(json_path: str) -> str:
    """The folder of a grid's checkpoints: beside its JSON, named after it."""
    return json_path + ".checkpoints"


def _run_one(payload):
    """Worker: one run (in a spawned process: imports happen here). With a deadline (seconds
    since the epoch) the run saves its checkpoint and stops there, and the worker returns
    ``{"stopped": label}`` instead of a result; a run that was not started by then does not
    start, unless ``starts`` (the sitting's first runs: every sitting moves on)."""
    group, fields, threads, checkpoint, deadline, starts = payload
    if threads:
        try:
            import numba

            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        except ImportError:
            pass
    import time

    from .train import RunConfig as Config
    from .train import train

    cfg = Config(**fields)
    if deadline is not None and not starts and time.time() >= deadline:  # too late: not at all
        return {"stopped": cfg.label(), "group": group}
    result = train(cfg, checkpoint=checkpoint,
                   should_stop=None if deadline is None else lambda step: time.time() >= deadline)
    if result is None:
        return {"stopped": cfg.label(), "group": group}
    result["group"] = group
    return result


def _as_written_now(config: dict) -> dict:
    """A result's config with the fields RunConfig gained since it was written, at their
    defaults (see :func:`pending`)."""
    return {**asdict(RunConfig()), **config}


def pending(runs, finished: list) -> list:
    """The (group, config) pairs of ``runs`` that no result of ``finished`` holds (a result
    holds a run when its group and its whole config are the run's). A field that RunConfig
    gained after a result was written is read as its default there: every field is added
    with the default that computes what the code computed before it existed (so the results
    of docs/data/mqar_grid.json, written before ``qk_projection``, still count)."""
    done = {(r.get("group"), json.dumps(_as_written_now(r["config"]), sort_keys=True))
            for r in finished}
    return [(group, cfg) for group, cfg in runs
            if (group, json.dumps(asdict(cfg), sort_keys=True)) not in done]


def option_differences(runs, finished: list) -> dict:
    """{field: (values in ``finished``, values in ``runs``)} for every RunConfig field whose
    values in the finished results and in the runs have nothing in common (read as
    :func:`pending` reads them): the options that set a results file apart from a grid."""
    theirs = [_as_written_now(r["config"]) for r in finished]
    ours = [asdict(cfg) for _, cfg in runs]
    differ = {}
    for name in asdict(RunConfig()):
        a = {json.dumps(c.get(name)) for c in theirs}
        b = {json.dumps(c[name]) for c in ours}
        if a and b and not a & b:
            differ[name] = (sorted(json.loads(x) for x in a), sorted(json.loads(x) for x in b))
    return differ


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def warm_up(runs) -> None:
    """Compile, once and here, every kernel the runs will use: a two-step run of a tiny model
    for each attention and score among ``runs``, on their backend. CuPy keeps what it
    compiles in its cache on disk, so the parallel processes load the kernels rather than
    each compiling them at the same time in their first steps (how long that takes on a
    fresh machine has not been measured)."""
    from .train import train

    seen = set()
    for _, cfg in runs:
        kind = (cfg.backend, cfg.attention, cfg.score if cfg.attention == "zeta" else None)
        if kind in seen:
            continue
        seen.add(kind)
        train(replace(cfg, seq_len=32, d_model=16, pairs=None, vocab=64, steps=2, batch=2,
                      test_size=2, eval_every=0, log_every=1, warmup=1))


def write_json(results: dict, path: str) -> None:
    """Write ``results`` to ``path`` through a temporary file (never half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def run_grid(runs, jobs: int, header: dict, json_path: str | None = None, progress=None,
             on_result=None, previous: dict | None = None,
             time_limit: float | None = None) -> dict:
    """Run every (group, config) of ``runs``, ``jobs`` at a time; return the results.

    ``header``: what the JSON records besides the runs (machine, command, date). The JSON is
    rewritten after every finished run (runs in the order they finished). ``progress``: an
    optional tqdm-like bar counting runs. ``on_result(result)`` is called for each run.
    With ``jobs`` = 1 the runs go one after another in this process.

    ``previous``: the results of an earlier, interrupted call on the same grid (its JSON):
    its finished runs are kept and not run again (see :func:`pending`), and its header stays.
    Every call appends to ``"sessions"`` when it started, how many runs it finished and its
    wall-clock seconds, so a grid run in several sittings still says how long it took.

    ``time_limit`` (seconds, needs ``json_path``): the sitting ends on time. At the limit,
    counted from this call, the runs in flight save checkpoints (in
    :func:`checkpoint_folder`) and stop, the runs not yet started do not start (but the
    first ``jobs`` runs always take a step: every sitting moves the grid on), and the
    session records how many stopped; every run, here or in a later call, goes on from its
    checkpoint where one exists.
    """
    import time

    started, t0 = _now(), time.perf_counter()
    folder = None
    if json_path is not None:
        folder = checkpoint_folder(json_path)
        os.makedirs(folder, exist_ok=True)
    elif time_limit is not None:
        raise ValueError("time_limit needs json_path (the checkpoints go beside it)")
    deadline = None if time_limit is None else time.time() + time_limit
    if previous is None:
        results = dict(header, runs=[], sessions=[])
    else:
        results = dict(previous)
        results["runs"] = list(previous.get("runs", []))
        results["sessions"] = list(previous.get("sessions", []))
        runs = pending(runs, results["runs"])
    session = {"started": started, "command": header.get("command"), "runs": 0,
               "wall_seconds": 0.0}
    if time_limit is not None:
        session.update(time_limit=time_limit, stopped=0)
    results["sessions"].append(session)
    ordered = sorted(runs, key=lambda gc: -_cost(gc[1]))
    cpu_threads = max(1, (os.cpu_count() or 1) // max(1, jobs))

    def payload(index, group, cfg, threads):
        checkpoint = None if folder is None else checkpoint_path(folder, group, cfg)
        return group, asdict(cfg), threads, checkpoint, deadline, index < jobs

    def done(result):
        if "stopped" in result:  # saved at the time limit (or never started)
            session["stopped"] += 1
            return
        results["runs"].append(result)
        session["runs"] += 1
        session["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if json_path:
            write_json(results, json_path)
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress.update(1)

    import signal

    def stop(signum, frame):  # `timeout` or a scheduler ends the grid: say so in the JSON
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, stop)
    try:
        if jobs == 1:
            for i, (group, cfg) in enumerate(ordered):
                done(_run_one(payload(i, group, cfg, 0)))
        else:
            _in_processes([payload(i, group, cfg, cpu_threads)
                           for i, (group, cfg) in enumerate(ordered)], jobs, done)
    except KeyboardInterrupt:
        session["interrupted"] = True  # the runs in flight are lost; their time counts
        raise
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        session["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if json_path:
            write_json(results, json_path)
    return results


def _in_processes(payloads, jobs: int, done) -> None:
    """The runs (:func:`_run_one`'s payloads) in ``jobs`` spawned processes, the kernels
    compiled once first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    warm_up([(group, RunConfig(**fields)) for group, fields, *_ in payloads])
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, p) for p in payloads]
        try:
            for future in as_completed(futures):
                done(future.result())
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()  # the runs in flight stop too
            raise


# ------------------------------------------------------------------ the table


def _accuracies(runs, **match) -> list[float]:
    """The accuracies of the runs that match, seed by seed (not in the order they finished)."""
    return [r["accuracy"] for r in sorted(runs, key=lambda r: r["config"]["seed"])
            if all(r["config"].get(key) == value for key, value in match.items())]


def _gap(runs, **match) -> str:
    """ZETA's mean accuracy minus full attention's, over the seeds both have run (a partial
    grid may hold a seed for one and not the other: compared only seed for seed)."""
    by_seed = {att: {r["config"]["seed"]: r["accuracy"] for r in runs
                     if r["config"]["attention"] == att
                     and all(r["config"].get(key) == value for key, value in match.items())}
               for att in ("full", "zeta")}
    common = sorted(set(by_seed["full"]) & set(by_seed["zeta"]))
    if not common:
        return "—"
    gap = statistics.fmean(by_seed["zeta"][s] - by_seed["full"][s] for s in common)
    every = set(by_seed["full"]) == set(by_seed["zeta"])
    return f"{100 * gap:+.1f} points" + ("" if every else
                                         f" (seeds {', '.join(map(str, common))} only)")


def _fmt(accs: list[float]) -> str:
    """'99.8 % (99.6, 100.0)': the mean over seeds and each seed (seed 0 first); '—' when not
    run."""
    if not accs:
        return "—"
    mean = 100 * statistics.fmean(accs)
    each = ", ".join(f"{100 * a:.1f}" for a in accs)
    return f"{mean:.1f} %" + (f" ({each})" if len(accs) > 1 else "")


def _mean(accs):
    return statistics.fmean(accs) if accs else None


def on_plateau(accuracy: float, pairs: int) -> bool:
    """Whether an accuracy is still on MQAR's plateau: below twice 1/P. A model there names
    one of the context's P values, not the right one (guessing among them gives 1/P)."""
    return accuracy < 2 / pairs


def _cauchy_verdict(means: dict, pairs: int) -> str:
    """Whether Cauchy beats the paper's other scores, from the mean accuracies by score.

    Only among the paper's scores (the control is not part of its claim), and only where
    one of them left the plateau: below twice 1/P (guessing among the context's P values)
    no score has learned to recall, and which guess is luckiest says nothing."""
    cauchy = means.get("cauchy")
    others = [m for s, m in means.items() if s in PAPER_SCORES and s != "cauchy"
              and m is not None]
    if cauchy is None or not others:
        return "—"
    if on_plateau(max(others + [cauchy]), pairs):
        return "— (none left the plateau)"
    return ("yes" if cauchy > max(others) else "tie" if cauchy == max(others) else "no")


def render_table(results: dict) -> str:
    """The grid's results as Markdown: the paper's claim beside the measured accuracy.

    Two tables: the main grid (one row per N and d: full attention, ZETA and the claim), and
    the ablation (one row per d_K: each score, the claims about d_K and about the Cauchy
    score, and whether the numbers bear them out). Accuracies are means over the seeds run
    (each seed in brackets); nothing here is typed in by hand.
    """
    runs = results.get("runs", [])
    lines = []
    main = [r for r in runs if r.get("group") == "main"]
    if main:
        lines += ["| N | pairs | d_model | full attention | ZETA (k=32, d_K=3, Cauchy) | "
                  "paper's claim | ZETA - full |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        sizes = sorted({(r["config"]["seq_len"], r["config"]["d_model"]) for r in main})
        for n, d in sizes:
            full = _accuracies(main, seq_len=n, d_model=d, attention="full")
            zeta = _accuracies(main, seq_len=n, d_model=d, attention="zeta")
            pairs = next(r["config"]["pairs"] for r in main
                         if r["config"]["seq_len"] == n)
            claim = ("100 % for both" if d == 256 else "ZETA matches attention")
            gap = _gap(main, seq_len=n, d_model=d)
            lines.append(f"| {n} | {pairs} | {d} | {_fmt(full)} | {_fmt(zeta)} | {claim} | "
                         f"{gap} |")
    ablation = [r for r in runs if r["config"]["attention"] == "zeta"]
    sizes = sorted({(r["config"]["seq_len"], r["config"]["d_model"])
                    for r in runs if r.get("group") == "ablation"})
    for n, d in sizes:
        at = [r for r in ablation if r["config"]["seq_len"] == n
              and r["config"]["d_model"] == d]
        scores = [s for s in ABLATION_SCORES if any(r["config"]["score"] == s for r in at)]
        d_ks = sorted({r["config"]["d_k"] for r in at})
        if lines:
            lines.append("")
        pairs = next(r["config"]["pairs"] for r in at)
        heads = [s if s in PAPER_SCORES else f"{s} (not in the paper)" for s in scores]
        lines += [f"Ablation at N = {n}, d_model = {d} (ZETA, k = 32):", "",
                  "| d_K | " + " | ".join(heads) + " | paper's claim | Cauchy best? |",
                  "| --- | " + " | ".join("---" for _ in scores) + " | --- | --- |"]
        for d_k in d_ks:
            means = {s: _mean(_accuracies(at, d_k=d_k, score=s)) for s in scores}
            cells = [_fmt(_accuracies(at, d_k=d_k, score=s)) for s in scores]
            claim = ("slightly below d_K >= 2" if d_k == 1 else "near perfect") + \
                "; Cauchy best"
            lines.append(f"| {d_k} | " + " | ".join(cells) + f" | {claim} | "
                         f"{_cauchy_verdict(means, pairs)} |")
    if not lines:
        return "(no runs in these results)"
    steps = sorted({r["config"]["steps"] for r in runs})
    batches = sorted({r["config"]["batch"] for r in runs})
    lines += ["", f"Accuracy: exact answers on {runs[0]['config']['test_size']} held-out "
                  f"sequences per run; {', '.join(map(str, steps))} steps of batch "
                  f"{', '.join(map(str, batches))}; backend {runs[0]['config']['backend']}."]
    sessions = results.get("sessions") or []
    if sessions:
        wall = sum(x.get("wall_seconds", 0.0) for x in sessions)
        gpu = (results.get("machine") or {}).get("gpu")
        lines.append(f"Time: {wall / 60:.1f} minutes of wall clock for {len(runs)} runs, in "
                     f"{len(sessions)} sitting{'s' if len(sessions) > 1 else ''}"
                     + (f", on {gpu}" if gpu else "") + ".")
    return "\n".join(lines)
