#!/usr/bin/env bash
# The GPU work left open after session 3, one device call per part (each under 600 s on an
# H100/H200; the first call of a session also pays ~70 s of build and ~40 s of machine start).
# In order of what it settles:
#
#   First, on branch `wgmma_bwd` (the Hopper backward, written in session 3 without a GPU, off by
#   default; its own call, timeout 600): SWAA_COMMIT=<hash> bash bench/wgmma_bwd_gpu.sh (~70 s
#   build + 5-6 min: smoke, tests, tuning rows, memcheck + racecheck, fwd+bwd vs flex at 8k/32k).
#   Merge it and flip kBwdHopperDefault (csrc/cuda/attention.cpp) only if it passes; then:
#   SWAA_COMMIT=<hash> bash bench/session4_gpu.sh kernels   # compute-sanitizer memcheck +
#       racecheck of bench/sanitize_case.py (not rerun since the v4 backward), ~2 min; with the
#       Hopper backward merged this is part of bench/wgmma_bwd_gpu.sh already
#   SWAA_COMMIT=<hash> bash bench/session4_gpu.sh bench     # issue 3: the issue's whole grid
#       swaa vs flex vs sdpa, forward AND forward+backward (BENCH=mine; SWAA_BWD_HOPPER=1 once the
#       Hopper backward is merged and passed), ~4 min;
#       issue 4: the B=8 decode-plan sweep below, ~2 min
#   SWAA_COMMIT=<hash> bash bench/session4_gpu.sh e2e_llama # issue 7: Llama-3.1-8B at 128k, all
#       configurations but hf-swa, ~4 min, then Qwen3-4B at 32k batch 1, ~3 min
#   SWAA_COMMIT=<hash> bash bench/session4_gpu.sh e2e_b8    # issue 7: Qwen3-4B 32k batch 8 incl. hf-swa, ~5 min
#
# The decode sweep: bw_fraction at B=8 is 0.74 (goal 0.8) with the automatic plan (4 splits,
# global combine, 256 CTAs of 64-key tiles); the sweep times every split count 1-16 with each
# combine, then the planner's default cost model (`slots`) against the per-SM one (`sm`,
# SWAA_DECODE_COST=sm: predicts 2 splits in a cluster at B=8, ~35 tile-units on the busiest SM
# against ~40 for today's 4 global splits), so the default can be chosen from measurements.
# Each part writes into its own folder under $OUT, packed into $OUT/<part>.tgz at the end (the
# device tool returns at most 8 files); the combined output is in $OUT/log.
source "$(dirname "$0")/gpu_lib.sh"
PART=${1:?usage: session4_gpu.sh kernels|bench|e2e_llama|e2e_b8}
gpu_setup
ROOT_OUT=$OUT
gpu_build
status=0

run_script() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  step "$name (at most $limit s): $*"
  mkdir -p "$ROOT_OUT/$name"
  OUT=$ROOT_OUT/$name SKIP_BUILD=1 timeout --kill-after=10 "$limit" "$@" \
    > "$ROOT_OUT/$name/stdout.txt" 2>&1
  local rc=$?
  tail -30 "$ROOT_OUT/$name/stdout.txt"
  echo "$name exit code $rc"
  [[ $rc == 0 ]] || status=1
}

decode_b8_sweep() {  # one row per (combine, splits) at B=8, plus the automatic plan
  local rows=$OUT/decode_b8_sweep.jsonl
  SWAA_DECODE_VERBOSE=1 python bench/bench_decode.py --impls ring --batches 8 --run b8_auto \
    --out "$rows" || return 1
  for splits in 1 2 3 4 5 6 7 8; do
    SWAA_DECODE_COMBINE=cluster SWAA_DECODE_SPLITS=$splits python bench/bench_decode.py \
      --impls ring --batches 8 --run "b8_cluster_$splits" --out "$rows" --budget 1 || return 1
  done
  for splits in 2 3 4 6 8 12 16; do
    SWAA_DECODE_COMBINE=global SWAA_DECODE_SPLITS=$splits python bench/bench_decode.py \
      --impls ring --batches 8 --run "b8_global_$splits" --out "$rows" --budget 1 || return 1
  done
  # the planner's two cost models side by side (SWAA_DECODE_COST, csrc/cuda/ring.cu), every B,
  # the window ring and the long never-wrapping rings of generate's full layers
  for cost in slots sm; do
    SWAA_DECODE_VERBOSE=1 SWAA_DECODE_COST=$cost python bench/bench_decode.py \
      --impls ring,ring_full --batches 1,8,64 --run "cost_$cost" --out "$rows" --budget 1 || return 1
  done
  python - "$rows" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    print(f"{r['run']:18s} {r['impl']:18s} B={r['B']:<3d} {r['ms']:.4f} ms  "
          f"bw_fraction {r['bw_fraction']:.3f}")
PY
}

case $PART in
kernels)
  run_script sanitize 200 bash bench/gpu_check.sh sanitize
  ;;
bench)
  run_script attention 330 env BENCH=mine bash bench/gpu_check.sh bench
  export -f decode_b8_sweep
  run_script decode_b8 240 bash -c decode_b8_sweep
  ;;
e2e_llama)
  run_script e2e_llama 300 env E2E_TIMEOUT=280 E2E_ARGS="--models llama-3.1-8b --prompts 131072 \
--batches 1 --configs full,swa,swa+half-full,swa+full-decode,swa+full-decode+quarter-full,\
swa+full-decode+half-full,hf-sdpa" bash bench/e2e_gpu.sh
  run_script e2e_qwen32k 220 env E2E_TIMEOUT=200 E2E_ARGS="--models qwen3-4b --prompts 32768 \
--batches 1 --configs full,swa,swa+half-full,swa+full-decode,swa+full-decode+quarter-full,\
swa+full-decode+half-full,hf-sdpa,hf-swa" bash bench/e2e_gpu.sh
  ;;
e2e_b8)
  run_script e2e_b8 540 env E2E_TIMEOUT=520 E2E_ARGS="--models qwen3-4b --prompts 32768 \
--batches 8 --configs full,swa,swa+half-full,swa+full-decode,swa+full-decode+quarter-full,\
swa+full-decode+half-full,hf-sdpa,hf-swa" bash bench/e2e_gpu.sh
  ;;
*) echo "unknown part $PART (kernels, bench, e2e_llama or e2e_b8)"; exit 2 ;;
esac
tar czf "$ROOT_OUT/$PART.tgz" -C "$ROOT_OUT" --exclude "$PART.tgz" --exclude log . 2>/dev/null
step "done, status $status; outputs in $ROOT_OUT/$PART.tgz"
exit $status
