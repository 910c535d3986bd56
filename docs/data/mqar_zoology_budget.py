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
to its last step.

    python docs/data/mqar_zoology_budget.py --merge out/*.json > docs/data/mqar_zoology_budget.json

merges the runs' files into one, with the machine and the date.
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

import numpy as np

# the module (zeta_ref.mqar's own name `train` is its function of that name)
T = importlib.import_module("zeta_ref.mqar.train")

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
        checkpoint: str) -> None:
    cfg = T.RunConfig(**dict(DEFAULTS, **overrides))
    t0 = time.time()
    evaluate = T.evaluate

    def logged(cfg_, *args):  # train() calls evaluate by its module's name
        acc = evaluate(cfg_, *args)
        print(f"{tag} eval accuracy {acc:.4f} t={time.time() - t0:.0f}s", flush=True)
        return acc

    T.evaluate = logged
    print(f"{tag} start {now()} {cfg.label()} batch={cfg.batch} steps={cfg.steps} "
          f"lr={cfg.lr}", flush=True)
    stop = None if deadline is None else (lambda step: time.time() >= deadline)
    result = T.train(cfg, progress=Lines(tag, t0), checkpoint=checkpoint, should_stop=stop)
    if result is None:  # stopped at the deadline: the checkpoint holds the progress
        with np.load(checkpoint) as saved:
            meta = json.loads(str(saved["meta"]))
        result = {"label": cfg.label(), "config": meta["config"],
                  "stopped_at_step": meta["step"], "curve": meta["curve"],
                  "evals": meta["evals"], "train_seconds": meta["train_seconds"],
                  "gammas": {name.replace(".log_gamma", ".gamma"): math.exp(value)
                             for name, value in meta["log_gammas"].items()},
                  "seconds_per_step": meta["train_seconds"] / max(1, meta["step"]),
                  "total_seconds": meta["total_seconds"]}
    result.update(tag=tag, finished=now())
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
    machine = {"python": platform.python_version(), "host": platform.node()}
    try:
        import cupy

        machine.update(cupy=cupy.__version__,
                       gpu=cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    except Exception as exc:  # merged on a machine without a GPU
        machine["gpu"] = f"(not read here: {type(exc).__name__})"
    json.dump({"script": "docs/data/mqar_zoology_budget.py", "merged": now(),
               "machine": machine, "runs": runs}, sys.stdout, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", nargs="?")
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--json")
    parser.add_argument("--checkpoint")
    parser.add_argument("--merge", nargs="+")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    if not (args.tag and args.json and args.checkpoint):
        parser.error("a run needs TAG, --json and --checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    run(args.tag, json.loads(args.overrides), args.deadline, args.json, args.checkpoint)


if __name__ == "__main__":
    main()
