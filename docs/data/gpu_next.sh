#!/usr/bin/env bash
# The plan of the next GPU session for issue 10 (docs/benchmarks.md, the sections "Prepared for
# the next GPU session"), as six device calls of under ten minutes each, run from the
# repository root on the lent GPU machine, in this order (a session's 30 minutes of device
# time will not hold all six: the tests come first, as the library's pools kernels changed
# on 2026-12-04 without a GPU; then the experiments by what they could take off; the
# benchmark is needed only once a variant is adopted):
#
#   bash docs/data/gpu_next.sh tests      # the whole GPU test suite (pytest -m gpu)
#   bash docs/data/gpu_next.sh attend     # the window and the attention in one kernel
#   bash docs/data/gpu_next.sh graph      # the whole call as one CUDA graph (4 minutes at most)
#   bash docs/data/gpu_next.sh window     # the merged window's A/B, and it sanitized
#   bash docs/data/gpu_next.sh attention  # the attention kernel's two A/Bs, one sanitized
#   bash docs/data/gpu_next.sh bench      # the forward kernels sanitized, then the benchmark
#
# Each step's output goes to a log under $OUT (the device copies back at most eight files; each
# call writes at most six), and a line per step to $OUT/summary.txt, printed last.
set -u
case "${1:-}" in
    attend | graph | window | attention | tests | bench) ;;
    *) echo "usage: bash docs/data/gpu_next.sh tests|attend|graph|window|attention|bench" >&2
       exit 2 ;;
esac
OUT=${OUT:-out/gpu_next}
mkdir -p "$OUT" out
export PYTHONPATH=$PWD CUPY_CACHE_DIR=$PWD/out/cupy_cache

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, summarise it
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >> "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: rc $rc in $((SECONDS - t0)) s: $(tail -n 1 "$OUT/$name.log")" >> "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/summary.txt"
case "${1:-}" in
    attend)
        step attend 300 python3 docs/data/window_attend_ab.py "$OUT/attend.json" \
            1x8x4096 1x8x16384 1x8x65536 16x8x65536 1x8x131072
        for tool in memcheck racecheck synccheck; do
            step sanitizer 90 compute-sanitizer --tool "$tool" \
                python3 docs/data/window_attend_ab.py --check-only
        done
        ;;
    graph)
        step graph 240 python3 docs/data/graph_plan_ab.py "$OUT/graph.json" \
            1x8x4096 1x8x8192 1x8x16384 1x8x65536
        ;;
    window)
        step merged 300 python3 docs/data/window_merged_ab.py "$OUT/merged.json" \
            1x8x4096 1x8x16384 1x8x65536 16x8x65536 1x8x131072
        for tool in memcheck racecheck synccheck; do
            step sanitizer 80 compute-sanitizer --tool "$tool" \
                python3 docs/data/window_merged_ab.py --check-only
        done
        ;;
    attention)
        step ahead 250 python3 docs/data/attention_ahead_ab.py "$OUT/ahead.json" \
            1x3x1000 1x8x16384 1x8x65536 16x8x65536
        step narrow 240 python3 docs/data/attention_narrow_ab.py "$OUT/narrow.json" \
            1x3x1000 1x8x16384 1x8x65536 16x8x65536
        for tool in memcheck racecheck; do
            step sanitizer 40 compute-sanitizer --tool "$tool" \
                python3 docs/data/attention_narrow_ab.py --check-only
        done
        ;;
    tests)
        step gpu_tests 560 python3 -m pytest -m gpu -q -p no:cacheprovider --maxfail=10
        ;;
    bench)
        step sanitizer 120 compute-sanitizer --tool memcheck python3 docs/data/forward_sanitizer.py
        step sanitizer 120 compute-sanitizer --tool racecheck \
            python3 docs/data/forward_sanitizer.py race
        step bench 300 python3 -m zeta_ref bench --backends cupy --repeats 10 --no-memory \
            --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png"
        ;;
esac
cat "$OUT/summary.txt"
