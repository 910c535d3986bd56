#!/bin/bash
# The launcher of docs/data/mqar_zoology_budget.py as it ran on one H200, 2026-12-04
# (docs/experiments.md, "Zoology's batch"): start NVIDIA MPS, compile the kernels once, then
# the four runs in the background (setsid: they outlive the shell that started them), each with
# the same wall-clock deadline, BUDGET seconds (default 1500) from the start. Their logs and
# results go to out/zoo/; merge them with
#     python docs/data/mqar_zoology_budget.py --merge out/zoo/n*.json
set -u
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=$((START + ${BUDGET:-1500}))
mkdir -p out/zoo
echo "$DEADLINE" > out/zoo_deadline
nvidia-cuda-mps-control -d && echo "mps started"
python3 - > out/zoo/warmup.log 2>&1 <<'PY'
from zeta_ref.mqar.grid import warm_up
from zeta_ref.mqar.train import RunConfig
warm_up([("x", RunConfig(attention="zeta", backend="cupy"))])
PY
echo "warm-up rc=$? took $(( $(date +%s) - START )) s; deadline in $((DEADLINE - $(date +%s))) s"
launch() {
  setsid nohup python3 docs/data/mqar_zoology_budget.py "$1" "$2" --deadline "$DEADLINE" \
    --json "out/zoo/$1.json" --checkpoint "out/zoo/$1.npz" > "out/zoo/$1.log" 2>&1 < /dev/null &
}
launch n128_lr1e-3   '{"seq_len": 128, "batch": 512, "steps": 12500, "lr": 1e-3, "eval_every": 1250}'
launch n128_lr4.6e-4 '{"seq_len": 128, "batch": 512, "steps": 12500, "lr": 4.6416e-4, "eval_every": 1250}'
launch n256_lr1e-3   '{"seq_len": 256, "batch": 256, "steps": 25000, "lr": 1e-3, "eval_every": 2500}'
launch n256_lr4.6e-4 '{"seq_len": 256, "batch": 256, "steps": 25000, "lr": 4.6416e-4, "eval_every": 2500}'
sleep 2; echo "launched: $(pgrep -f mqar_zoology_budget | wc -l) processes"
