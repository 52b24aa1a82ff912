#!/usr/bin/env bash
# One GPU call for the decode loop (swaa_ext/generate.py, issue 7): build the
# extension, run tests/test_generate.py (CPU and CUDA tests), then the decode
# ms/token benchmark (ours with/without CUDA graph vs transformers' generate,
# sdpa and static cache + torch.compile).  Logs and JSONL go to $OUT.
#
#   bash bench/gpu_loop.sh [all|test|bench]        (default: all)
# Env: SWAA_COMMIT=<hash> names the commit in benchmark rows (no .git on the GPU
#      machine); BENCH_ARGS overrides the benchmark's arguments
#      (default: Qwen3-4B shape, 36 layers, prompt 4096, 128 new, batch 1 and 8).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
STEP=${1:-all}
status=0


gpu_build

if [[ $STEP == all || $STEP == test ]]; then
  step "tests/test_generate.py"
  python -X faulthandler -m pytest -q -rs tests/test_generate.py --junitxml="$OUT/test_generate.xml" \
    || status=1
fi

if [[ $STEP == all || $STEP == bench ]]; then
  step "bench/bench_decode_loop.py ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  python bench/bench_decode_loop.py ${BENCH_ARGS:-} --out "$OUT/decode_loop.jsonl" || status=1
fi
step "done (status $status)"
exit $status
