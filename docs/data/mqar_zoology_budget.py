"""The script of docs/data/mqar_zoology_budget.json: ZETA on MQAR at N = 128 and 256 with
Zoology's own batch and budget (docs/experiments.md, "Zoology's batch: 99 % at N = 128 and
256").

Zoology's MQAR figure trains every model for 64 epochs of 100,000 sequences: batch 512 at
N = 64 and 128 (12,500 steps), batch 256 at N = 256 (25,000 steps), and reports the best of
four learning rates. The grid of docs/experiments.md ran 1500 steps of batch 128 (3 % of that)
and the longest runs 12000 steps of batch 128 (a quarter). This script runs one training of
zeta_ref.mqar at Zoology's batch and number of steps, with a wall-clock deadline:

    python docs/data/mqar_zoology_budget.py TAG '{"seq_len": 128, "batch": 512}' \\
        --deadline EPOCH_SECONDS --json out/TAG.json --checkpoint out/TAG.npz

The JSON argument overrides the defaults below (any RunConfig field). Every loss reading and
every evaluation prints one line (step, loss or test accuracy, seconds since the start). At
the deadline the run saves a checkpoint and stops; the JSON then holds what it had done (its
learning curve and evaluations so far, ``"stopped_at_step"``), so a run the device's time
cut short still says how far it got (the runs of 2026-12-04 were stopped by an earlier version
that did not yet copy the learned gammas from the checkpoint). Without a deadline the run goes
to its last step. With ``--stop-at ACC`` the run also stops (saving its checkpoint, as at the
deadline) after the first evaluation that reaches ACC, so that a run already recalling gives
its share of a shared GPU to the runs still on the plateau; the JSON then says
``"stopped_because": "reached ACC"`` (or ``"deadline"``; ``"finished"`` for a run that went to
its last step, in files written after docs/data/mqar_ablation_zoology_seed1.json, which, as
the files before it, leaves the field out then).

    python docs/data/mqar_zoology_budget.py --merge out/*.json > docs/data/mqar_zoology_budget.json

merges the runs' files into one, with the machine and the date, and

    python docs/data/mqar_zoology_budget.py --table docs/data/mqar_ablation_zoology_full.json

prints the rows of docs/experiments.md's table of such a file (tests/test_mqar.py checks
that the page holds them): each run's accuracy every 1000 steps, its last evaluation in bold,
the first steps at 50 % and 99 %, and the step it stopped at.
"""
import argparse
import datetime
import importlib
import json
import math
import os
import platform
import sys
import time
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

# the module (zeta_ref.mqar's own name `train` is its function of that name)
T = importlib.import_module("zeta_ref.mqar.train")
from zeta_ref.tools.common import source  # noqa: E402  (the version and commit run)
from zeta_ref.tools.mqar import machine as measured_on  # noqa: E402

#: Zoology's budget for ZETA at d_model = 256 (the size of the paper's 100 % claim), N = 128.
DEFAULTS = dict(attention="zeta", d_k=3, score="cauchy", k=32, seq_len=128, d_model=256,
                batch=512, steps=12500, lr=1e-3, seed=0, backend="cupy", test_size=1000,
                eval_every=1250, log_every=250)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Lines:
    """A progress object for zeta_ref.mqar.train.train that prints a line per loss reading."""

    def __init__(self, tag: str, t0: float):
        self.tag, self.t0, self.step = tag, t0, 0

    def update(self, n: int) -> None:
        self.step += n

    def set_postfix_str(self, s: str) -> None:
        print(f"{self.tag} step {self.step} {s} t={time.time() - self.t0:.0f}s", flush=True)


def run(tag: str, overrides: dict, deadline: float | None, json_path: str,
        checkpoint: str, stop_at: float | None = None) -> None:
    cfg = T.RunConfig(**dict(DEFAULTS, **overrides))
    t0 = time.time()
    evaluate = T.evaluate
    best = [0.0]  # the best evaluation so far

    def logged(cfg_, *args):  # train() calls evaluate by its module's name
        acc = evaluate(cfg_, *args)
        best[0] = max(best[0], acc)
        print(f"{tag} eval accuracy {acc:.4f} t={time.time() - t0:.0f}s", flush=True)
        return acc

    def reached() -> bool:
        return stop_at is not None and best[0] >= stop_at

    T.evaluate = logged
    print(f"{tag} start {now()} {cfg.label()} batch={cfg.batch} steps={cfg.steps} "
          f"lr={cfg.lr}", flush=True)
    def stop(step: int) -> bool:
        return reached() or (deadline is not None and time.time() >= deadline)

    result = T.train(cfg, progress=Lines(tag, t0), checkpoint=checkpoint, should_stop=stop)
    if result is None:  # stopped (deadline or --stop-at): the checkpoint holds the progress
        with np.load(checkpoint) as saved:
            meta = json.loads(str(saved["meta"]))
        result = {"label": cfg.label(), "config": meta["config"],
                  "stopped_at_step": meta["step"], "curve": meta["curve"],
                  "evals": meta["evals"], "train_seconds": meta["train_seconds"],
                  "gammas": {name.replace(".log_gamma", ".gamma"): math.exp(value)
                             for name, value in meta["log_gammas"].items()},
                  "seconds_per_step": meta["train_seconds"] / max(1, meta["step"]),
                  "total_seconds": meta["total_seconds"],
                  "stopped_because": f"reached {stop_at}" if reached() else "deadline"}
    result.setdefault("stopped_because", "finished")  # trained to its last step
    # the zeta_ref that trained (a merged file's machine says which one merged)
    result.update(tag=tag, finished=now(), zeta_ref=source())
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    last = result["evals"][-1]["accuracy"] if result["evals"] else float("nan")
    print(f"{tag} done {now()} last accuracy {last:.4f} "
          f"stopped_at={result.get('stopped_at_step')}", flush=True)


def merge(paths: list[str]) -> None:
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    # what `zeta-ref mqar` records of a machine (the zeta_ref, Python, NumPy, CuPy, the GPU)
    machine = {"host": platform.node(), **measured_on()}
    machine.setdefault("gpu", "(not read here: no CuPy or no GPU)")  # merged on a CPU
    json.dump({"script": "docs/data/mqar_zoology_budget.py", "merged": now(),
               "machine": machine, "runs": runs}, sys.stdout, indent=1)


SCORE_NAMES = {"cauchy": "Cauchy", "neg_euclidean": "negative Euclidean",
               "inv_euclidean": "inverse Euclidean"}


def pct(accuracy: float) -> str:
    """A percentage to one decimal, rounded half up from the exact fraction (as the docs)."""
    return str(Decimal(repr(accuracy * 100)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def table_rows(runs: list[dict], every: int = 1000) -> list[str]:
    """The Markdown rows of docs/experiments.md's table of an ablation, one per run, by d_K,
    score (the paper's order) and seed."""
    def order(r):
        c = r["config"]
        return c["d_k"], list(SCORE_NAMES).index(c["score"]), c["seed"]

    rows = []
    for r in sorted(runs, key=order):
        c, evals = r["config"], r["evals"]
        last = evals[-1]
        cells = [pct(e["accuracy"]) for e in evals
                 if e["step"] % every == 0 and e["step"] < last["step"]]
        cells.append(f"**{pct(last['accuracy'])} %**" if last["step"] % every == 0 and
                     r.get("stopped_because", "deadline") == "deadline"
                     else f"**{pct(last['accuracy'])} % at {last['step']}**")
        first = [next((str(e["step"]) for e in evals if e["accuracy"] >= mark), "-")
                 for mark in (0.5, 0.99)]
        name = f"d_K = {c['d_k']}, {SCORE_NAMES[c['score']]}" + (
            f", seed {c['seed']}" if c["seed"] else "")
        rows.append(f"| {name} | {' / '.join(cells)} | {' / '.join(first)} | "
                    f"{r.get('stopped_at_step') or c['steps']} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", nargs="?")
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--json")
    parser.add_argument("--checkpoint")
    parser.add_argument("--stop-at", type=float, default=None)
    parser.add_argument("--merge", nargs="+")
    parser.add_argument("--table")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print("\n".join(table_rows(json.load(f)["runs"])))
        return
    if args.merge:
        merge(args.merge)
        return
    if not (args.tag and args.json and args.checkpoint):
        parser.error("a run needs TAG, --json and --checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    if args.stop_at is not None and not 0 < args.stop_at <= 1:
        parser.error(f"--stop-at must be an accuracy in (0, 1], got {args.stop_at}")
    run(args.tag, json.loads(args.overrides), args.deadline, args.json, args.checkpoint,
        args.stop_at)


if __name__ == "__main__":
    main()
