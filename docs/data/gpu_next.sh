#!/usr/bin/env bash
# The plan of the next GPU session for issue 10 (docs/benchmarks.md): the steps below, run from
# the repository root on the lent GPU machine, several in one device call where they fit its
# ten minutes (the machine is given back after half a minute idle, and a fresh one takes
# minutes to start, out of the session's 30):
#
#   bash docs/data/gpu_next.sh tests attend graph sanitize   # ran 2026-12-05 02:03 UTC
#   bash docs/data/gpu_next.sh window attention              # ran 2026-12-05 02:10 UTC
#   (the one-kernel and merged-window experiments, attend / sanitize / window, were removed
#   once run: the first dropped, the second taken into fused.cu)
#   BUDGET=590 bash docs/data/gpu_next.sh tests targets sanitize ab   # ran 04:47 UTC
#   BUDGET=200 bash docs/data/gpu_next.sh profile                     # ran 04:57 UTC
#   BUDGET=570 bash docs/data/gpu_next.sh ncu profile targets         # ran 05:40 UTC on 1fd29da
#   on the branch gpu-pending (seven changes prepared without a GPU), merged into main after:
#   BUDGET=560 bash docs/data/gpu_next.sh tests sanitize             # ran 10:40 UTC, an H100
#   TREES=out/trees/before,out/trees/reorder \
#       BUDGET=585 bash docs/data/gpu_next.sh ab targets              # ran 10:46 UTC
#   BUDGET=520 bash docs/data/gpu_next.sh knobs ncu                   # ran 10:51 UTC
#   BUDGET=430 bash docs/data/gpu_next.sh stalls narrow               # ran 10:53 UTC
#   (the older trees for `ab` made first and carried: for t in before:REV ...; do mkdir -p
#   out/trees/$t; git archive REV zeta_ref | tar -x -C out/trees/$t; done).
#   on the branch gpu-pending again (the attention kernel compiled for d_k = 3), merged after:
#   BUDGET=585 bash docs/data/gpu_next.sh forward_tests sanitize narrow   # ran 12:45 UTC, H100
#   BUDGET=585 bash docs/data/gpu_next.sh knobs bench other_tests         # ran 12:51 UTC
#   BUDGET=420 bash docs/data/gpu_next.sh ncu stalls                      # ran 12:56 UTC
#   on the branch gpu-pending (the running means' quotient, the codes of d_K = 3, the window's
#   walks in int), merged after (out/trees/before = main's zeta_ref, carried):
#   BUDGET=585 bash docs/data/gpu_next.sh forward_tests sanitize means knobs   # ran 14:38, H100
#   BUDGET=580 bash docs/data/gpu_next.sh means_tests bench other_tests ab      # ran 14:46
#   BUDGET=430 bash docs/data/gpu_next.sh forward_tests sanitize ncu           # ran 14:53
#   BUDGET=330 bash docs/data/gpu_next.sh targets                              # ran 14:55
#   on the branch gpu-pending again (subnormals kept in the integer stages; the float means 4
#   ahead), before its comparisons' fix:
#   BUDGET=300 bash docs/data/gpu_next.sh forward_tests other_tests targets ab # ran ~16:10:
#   the new test failed (docs/data/gpu_tests_2026-12-05_1610_h100.txt), other_tests ran out
#   next, on the branch gpu-pending (docs/benchmarks.md "Prepared for the next GPU session:
#   subnormals kept in the integer stages"; merged into main since, and its bundle
#   removed), two device calls:
#     BUDGET=585 bash docs/data/gpu_next.sh forward_tests other_tests sanitize
#     (first: mkdir -p out/trees/before && git archive main zeta_ref | tar -x -C
#      out/trees/before; the second call carries out/trees)
#     BUDGET=585 bash docs/data/gpu_next.sh ab targets ncu
#   then merge the branch if the tests pass and the A/B says it costs nothing; run `bench`
#   for the record.   (ran ~15:50 and ~16:00 UTC, an H100: passed, 0.996x, merged; `bench`
#   not run: the session's device time went to the next)
#   the mean term in one pass in the library (commit 39450ba, whose `one_pass` step timed it):
#   BUDGET=560 bash docs/data/gpu_next.sh one_pass forward_tests sanitize_forward targets \
#       other_tests                                                     # ran ~16:13 UTC, H100:
#   slower than the scan and 10 tests failed at its launch; reverted (docs/benchmarks.md)
#   its second form, an experiment in docs/data (means_one_pass.cu):
#   BUDGET=250 bash docs/data/gpu_next.sh one_pass                    # ran 16:34 UTC, H100:
#   checks and sanitizers passed, 1.12x-2.7x the scan's time; dropped (docs/benchmarks.md)
#   on the branch gpu-pending (the mean term on a second stream), merged into main after:
#   BUDGET=585 bash docs/data/gpu_next.sh knobs forward_tests other_tests sanitize_forward
#                                                          # ran 17:41 UTC, H100: passed
#   (then fused.MEANS_STREAM_MIN, and the knobs step at six more shapes:)
#   BUDGET=585 bash docs/data/gpu_next.sh knobs targets    # ran 17:49 UTC
#   BUDGET=585 bash docs/data/gpu_next.sh bench            # ran 17:53 UTC
#   BUDGET=560 bash docs/data/gpu_next.sh warmup targets   # ran 18:03 UTC (targets with a
#       0.2 s warm-up, not kept); BUDGET=200 bash docs/data/gpu_next.sh profile  # 18:06 UTC
#   (a last call named the kind nvidia-h200 and got an H100; its bench of three shapes ran
#   past its 140 s limit on the bare machine, the kernels compiled first, and left nothing)
#   next: the GPU tests of e5ff599 (an error beside the other stages: the current stream
#   waits) and the targets on the card they name, if an H200 comes (the stages bound by
#   memory should gain from its bandwidth; docs/benchmarks.md, "What is left for the targets"):
#     BUDGET=585 bash docs/data/gpu_next.sh forward_tests targets
#   then (2026-12-05, evening, three calls, H100s): the second stream's work queued after
#   the sort (knob SIDE_AFTER_SORT), the checks' passes over q and k after the attention,
#   the mean term waiting for the sort (knob MEANS_AFTER_SORT); both knobs timed and dropped
#   (docs/benchmarks.md, "the host's time in one call"):
#     BUDGET=585 bash docs/data/gpu_next.sh timeline order forward_tests          # 19:21 UTC
#     ORDERS=True BUDGET=585 bash docs/data/gpu_next.sh host_costs order forward_tests \
#         timeline targets                                                        # 19:28 UTC
#     ORDERS=True BUDGET=570 bash docs/data/gpu_next.sh order targets forward_tests timeline \
#         sanitize_forward other_tests                                            # 19:35 UTC
#   (`order` was the A/B of whichever knob the tree had; it is gone with them)
#   (a last call, for the final tree's forward_tests and sanitize_forward, was refused: the
#   session's device time was spent)
#   next: the GPU tests of the final tree (without the knob MEANS_AFTER_SORT: its False
#   path, which those tests covered, and the mean term's allocations after the codes' launch,
#   not yet run), the mean term's long kernels on fewer blocks beside the other stages
#   (topk_softmax.MEANS_SIDE_BLOCKS), this tree against 4528b0d (out/trees/before: `git
#   archive 4528b0d zeta_ref`, carried), then the targets on the card they name, if an H200
#   comes:
#     BUDGET=585 bash docs/data/gpu_next.sh forward_tests sanitize_forward side_blocks ab
#                                              # ran 21:31 UTC, an H100: passed; the cap dropped
#
#   timeline   when the host queues each launch of one call and when the GPU gets to it
#              (docs/data/timeline.py); and whether cupy's sort waits for the GPU
#   host_costs what each host-side piece of one call costs (docs/data/host_costs.py)
#   tests      the whole GPU test suite (pytest -m gpu)
#   forward_tests, other_tests   the same in two parts: tests/test_cupy.py, and the rest
#   means_tests  the tests of tests/test_cupy.py on the mean term alone
#   graph      the whole call as one CUDA graph
#   attention  the attention kernel's two A/Bs, one sanitized
#   narrow     the narrow attention A/B alone (with the library kernel's two forms: any d_k,
#              and compiled for d_k = 3)
#   one_pass   the mean term in one pass (docs/data/means_one_pass.cu, an experiment) against
#              the library's scan, in its variants, and its checks under compute-sanitizer
#   means      the running means kernel's variants (docs/data/means_ab.py: fewer positions
#              loaded ahead, the quotient from a reciprocal; fewer registers, the same bits)
#   sanitize   the forward kernels under memcheck, racecheck and synccheck, and both forms of
#              the narrow attention kernel under memcheck and racecheck
#   sanitize_forward   the forward kernels' three alone (not the narrow kernel's experiment)
#   bench      the benchmark of every default shape
#   targets    the benchmark at the targets' shapes (B = 1, N = 8192 to 131072; 16 x 8 x 65536;
#              SDPA fp32 only to N = 16384)
#   profile    where the host's time goes in one call (docs/data/host_profile.py)
#   ncu        every kernel of one call at 1 x 8 x 65536 and 16 x 8 x 65536 under Nsight
#              Compute: its GPU time, achieved occupancy, registers and throughputs (CSV)
#   stalls     the two largest kernels (attention, window) of one call at 1 x 8 x 65536 under
#              Nsight Compute's sections on what their warps wait for (WarpStateStats,
#              SchedulerStats, MemoryWorkloadAnalysis, ...): what to change in them next
#   ab         this tree's call against older trees', in turns (docs/data/tree_ab.py; the
#              older packages under out/trees, carried to the device: `git archive REV zeta_ref
#              | tar -x -C out/trees/NAME`; TREES, comma-separated, names them: out/trees/before
#              unless set)
#   warmup     one warm-up call against 0.2 s of them, and after 0.5 s idle (ZETA and SDPA
#              bf16; docs/data/warmup_check.py)
#   knobs      the mean term on a second stream beside the other stages (MEANS_STREAM_MIN =
#              0: always, against never), at its values in turns (docs/data/knob_ab.py;
#              the library's own value restored after; WINDOW_INT was timed 2026-12-05 14:38,
#              NARROW_DK 12:50, NARROW 10:51)
#
# The steps run in the order given, within BUDGET seconds for the call (570 unless set): each
# command gets its own limit or what is left of the budget, and one that cannot have 20
# seconds is skipped (the summary says so). Each step's output goes to a log under $OUT (the
# device copies back at most eight files), and a line per command to $OUT/summary.txt,
# printed last.
set -u
STEPS="host_costs timeline warmup tests forward_tests other_tests means_tests graph attention narrow means one_pass sanitize sanitize_forward bench targets profile ncu stalls ab knobs"
[ $# -gt 0 ] || { echo "usage: bash docs/data/gpu_next.sh STEP... (of: $STEPS)" >&2; exit 2; }
for name in "$@"; do
    case " $STEPS " in
        *" $name "*) ;;
        *) echo "usage: bash docs/data/gpu_next.sh STEP... (of: $STEPS); got $name" >&2
           exit 2 ;;
    esac
done
BUDGET=${BUDGET:-570}
OUT=${OUT:-out/gpu_next}
mkdir -p "$OUT" out
export PYTHONPATH=$PWD CUPY_CACHE_DIR=$PWD/out/cupy_cache

step() {  # step NAME SECONDS COMMAND...: run it within its limit and the budget, log it
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped, $left s of the budget left" >> "$OUT/summary.txt"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    timeout "$limit" "$@" >> "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: rc $rc in $((SECONDS - t0)) s: $(tail -n 1 "$OUT/$name.log")" >> "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv >> "$OUT/summary.txt"
for name in "$@"; do
case "$name" in
    graph)
        step graph 240 python3 docs/data/graph_plan_ab.py "$OUT/graph.json" \
            1x8x4096 1x8x8192 1x8x16384 1x8x65536
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
    narrow)
        step narrow 240 python3 docs/data/attention_narrow_ab.py "$OUT/narrow.json" \
            1x8x65536 16x8x65536
        ;;
    means)
        step means 200 python3 docs/data/means_ab.py "$OUT/means.json" 1x8x65536 16x8x65536
        ;;
    one_pass)
        step one_pass 200 python3 docs/data/means_one_pass_ab.py "$OUT/one_pass.json" \
            1x8x65536 16x8x65536
        for tool in memcheck racecheck synccheck; do
            step sanitizer 60 compute-sanitizer --tool "$tool" \
                python3 docs/data/means_one_pass_ab.py --check-only
        done
        ;;
    targets)
        step bench 300 python3 -m zeta_ref bench --backends cupy --repeats 10 --no-memory \
            --gpu-shapes 1x8x8192 1x8x16384 1x8x65536 1x8x131072 16x8x65536 \
            --sdpa-fp32-max-pairs 2000000000 \
            --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png"
        ;;
    stalls)
        step stalls 200 ncu --profile-from-start off --clock-control none \
            -k "regex:zeta_topk_narrow|zeta_fused_window_group" --section SpeedOfLight \
            --section Occupancy --section LaunchStats --section SchedulerStats \
            --section WarpStateStats --section MemoryWorkloadAnalysis \
            --section MemoryWorkloadAnalysis_Tables --section InstructionStats \
            python3 docs/data/forward_profile.py ncu 1x8x65536
        ;;
    ab)
        step ab 300 python3 docs/data/tree_ab.py "${TREES:-out/trees/before}" "$OUT/tree_ab.json" \
            1x8x4096 1x8x16384 1x8x65536 16x8x65536
        ;;
    knobs)
        step knobs 240 python3 docs/data/knob_ab.py "$OUT/knobs.json" 1x8x8192 1x8x16384 \
            1x8x32768 1x8x131072 16x8x4096 16x8x16384 \
            -- fused.MEANS_STREAM_MIN=0,4611686018427387904
        ;;
    timeline)
        step timeline 100 python3 docs/data/timeline.py "$OUT/timeline.json" \
            1x8x16384 1x8x65536 16x8x65536
        ;;
    host_costs)
        step host_costs 120 python3 docs/data/host_costs.py "$OUT/host_costs.json" 1x8x65536
        ;;
    warmup)
        step warmup 120 python3 docs/data/warmup_check.py "$OUT/warmup.json" 1x8x8192 \
            1x8x65536 16x8x65536
        ;;
    profile)
        step profile 120 python3 docs/data/host_profile.py
        ;;
    ncu)
        for shape in 1x8x65536 16x8x65536; do
            step ncu 150 ncu --profile-from-start off --clock-control none --csv --metrics \
gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,\
dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors.avg.pct_of_peak_sustained_elapsed,\
l1tex__t_sector_hit_rate.pct,lts__t_sector_hit_rate.pct,sm__throughput.avg.pct_of_peak_sustained_elapsed \
                python3 docs/data/forward_profile.py ncu "$shape"
        done
        ;;
    tests)
        step gpu_tests 560 python3 -m pytest -m gpu -q -p no:cacheprovider --maxfail=10
        ;;
    forward_tests)  # tests, split in two where one device call cannot hold them all
        step gpu_tests 400 python3 -m pytest -m gpu -q -p no:cacheprovider --maxfail=10 \
            tests/test_cupy.py
        ;;
    means_tests)  # the mean term's GPU tests alone
        step gpu_tests 200 python3 -m pytest -m gpu -q -p no:cacheprovider --maxfail=10 \
            tests/test_cupy.py -k "mean"
        ;;
    other_tests)
        step gpu_tests 400 python3 -m pytest -m gpu -q -p no:cacheprovider --maxfail=10 \
            --ignore=tests/test_cupy.py
        ;;
    sanitize|sanitize_forward)
        step sanitizer 120 compute-sanitizer --tool memcheck python3 docs/data/forward_sanitizer.py
        for tool in racecheck synccheck; do
            step sanitizer 120 compute-sanitizer --tool "$tool" \
                python3 docs/data/forward_sanitizer.py race
        done
        [ "$name" = sanitize ] || continue
        for tool in memcheck racecheck; do  # both forms of the narrow attention kernel
            step sanitizer 150 compute-sanitizer --tool "$tool" \
                python3 docs/data/attention_narrow_ab.py --check-only
        done
        ;;
    bench)
        step bench 560 python3 -m zeta_ref bench --backends cupy --repeats 10 --no-memory \
            --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png"
        ;;
esac
done
cat "$OUT/summary.txt"
