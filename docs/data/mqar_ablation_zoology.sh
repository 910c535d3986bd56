#!/bin/bash
# The launcher of the d_K and score ablation at Zoology's batch (docs/experiments.md, "Claims 2
# and 3 on Zoology's 12,500-step schedule" and "The first try"), as it ran on one H200: NVIDIA
# MPS, the kernels compiled once, then one run of docs/data/mqar_zoology_budget.py per
# (d_K, score) in the background (setsid: they outlive the shell that started them), all with
# the same wall-clock deadline, BUDGET seconds (default 840) from the launch. N = 128,
# d_model = 256, batch 512, STEPS steps (default 3000, the first try; Zoology's budget is
# 12500) with an evaluation every EVAL_EVERY steps (default 500), lr 1e-3, seed 0; and seed 1
# of d_K = 3, Cauchy. RUNS (default: those 13) picks runs by tag, dk<D_K>_<score>_s<seed>;
# STOP_AT (default: none) stops a run after its first evaluation at or above that accuracy.
# The 12,500-step runs of docs/experiments.md: STEPS=12500 EVAL_EVERY=250 STOP_AT=0.99 and
# RUNS without dk3_cauchy_s0 (seed 0), then RUNS = the 11 other cells' tags with _s1 (seed 1).
# Logs and results go to out/abl/; merge with
#     python docs/data/mqar_zoology_budget.py --merge out/abl/*.json
set -u
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p out/abl
nvidia-cuda-mps-control -d && echo "mps started"
python3 - > out/abl/warmup.log 2>&1 <<'PY'
from zeta_ref.mqar.grid import warm_up
from zeta_ref.mqar.train import RunConfig
warm_up([(s, RunConfig(attention="zeta", backend="cupy", score=s)) for s in ("cauchy", "neg_euclidean", "inv_euclidean")])
PY
echo "warm-up rc=$?"
DEADLINE=$(( $(date +%s) + ${BUDGET:-840} ))
echo "$DEADLINE" > out/abl_deadline
STEPS=${STEPS:-3000} EVAL_EVERY=${EVAL_EVERY:-500}
ALL=""
for dk in 1 2 3 8; do
  for score in cauchy neg_euclidean inv_euclidean; do ALL="$ALL dk${dk}_${score}_s0"; done
done
for tag in ${RUNS:-$ALL dk3_cauchy_s1}; do  # dk<D_K>_<score>_s<seed>
  [[ $tag =~ ^dk([0-9]+)_([a-z_]+)_s([0-9]+)$ ]] || { echo "bad run tag: $tag"; exit 2; }
  setsid nohup python3 docs/data/mqar_zoology_budget.py "$tag" \
    "{\"seq_len\": 128, \"batch\": 512, \"steps\": $STEPS, \"lr\": 1e-3, \"eval_every\": $EVAL_EVERY, \"seed\": ${BASH_REMATCH[3]}, \"d_k\": ${BASH_REMATCH[1]}, \"score\": \"${BASH_REMATCH[2]}\"}" \
    --deadline "$DEADLINE" --json "out/abl/$tag.json" --checkpoint "out/abl/$tag.npz" \
    ${STOP_AT:+--stop-at "$STOP_AT"} > "out/abl/$tag.log" 2>&1 < /dev/null &
done
sleep 2; echo "launched: $(pgrep -f mqar_zoology_budget | wc -l) processes; deadline in ${BUDGET:-840} s"
