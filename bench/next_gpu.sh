#!/usr/bin/env bash
# Session 3's validation of the branches merged into `next` (decode2, loopc, wgmma: written and
# CPU-checked in session 2, never run on a GPU), one device call per part, each well under 600 s:
#
#   SWAA_COMMIT=<hash> bash bench/next_gpu.sh part1   # build; wgmma (Hopper forward: smoke, tests,
#                                                     # memcheck, tuning, forward bench) ~5 min;
#                                                     # decode2 (ring decode plans) ~2 min
#   SWAA_COMMIT=<hash> bash bench/next_gpu.sh part2   # loopc (compiled decode step) ~6.5 min
#
# Each script writes into its own folder under $OUT; at the end everything is packed into
# $OUT/<part>.tgz (the device tool returns at most 8 files) next to the combined $OUT/log.
# A script that fails does not stop the next one; the exit status says whether all passed.
source "$(dirname "$0")/gpu_lib.sh"
PART=${1:?usage: next_gpu.sh part1|part2}
gpu_setup
ROOT_OUT=$OUT
step "GPU"; nvidia-smi --query-gpu=name,memory.total --format=csv || true
gpu_build
status=0
run_script() {  # name, time limit (s), script
  step "$1 (at most $2 s)"
  mkdir -p "$ROOT_OUT/$1"
  OUT=$ROOT_OUT/$1 SKIP_BUILD=1 timeout --kill-after=10 "$2" bash "$3" > "$ROOT_OUT/$1/stdout.txt" 2>&1
  local rc=$?
  tail -25 "$ROOT_OUT/$1/stdout.txt"
  echo "$1 exit code $rc"
  [[ $rc == 0 ]] || status=1
}
case $PART in
part1)
  run_script wgmma 330 bench/wgmma_gpu.sh
  run_script decode2 170 bench/decode2_gpu.sh
  ;;
part2)
  run_script loopc 540 bench/loopc_gpu.sh
  ;;
*) echo "unknown part $PART (part1 or part2)"; exit 2 ;;
esac
tar czf "$ROOT_OUT/$PART.tgz" -C "$ROOT_OUT" --exclude "$PART.tgz" --exclude log . 2>/dev/null
step "done, status $status; outputs in $ROOT_OUT/$PART.tgz"
exit $status
