#!/usr/bin/env bash
# One GPU call for generate(compile=True) (branch loopc, issue 7): build the extension, run
# tests/test_generate.py (CPU + CUDA: compiled graph vs uncompiled graph), count the kernels of
# one decode step with and without compile, then bench_decode_loop with and without compile
# (ours-graph-full / -naive, ours-eager-full, ours-graph-compiled-full / -naive; Qwen3-4B shape,
# 36 layers, prompt 4096, 64 new tokens, batch 1 and 8).  Logs and JSONL go to $OUT.
#
#   SWAA_COMMIT=$(git rev-parse --short HEAD) OUT=$OUT bash bench/loopc_gpu.sh
# Env: LOOPC_HF=1 also runs the transformers rows (hf-sdpa, hf-static-compile: +~3 min);
#      LOOPC_STEP=1 also the whole step compiled as one graph (ours-graph-compiled-step-full,
#      batch 1 only: a 36-layer graph compiles for minutes; better in a call of its own:
#      `LOOPC_STEP=1 LOOPC_ONLY_STEP=1 bash bench/loopc_gpu.sh`);
#      BENCH_ARGS overrides the benchmark's shape arguments.
# Estimate (H100/H200, cold machine; compile times are guesses): build ~60 s, tests ~100 s,
# kernel count ~40 s, bench ~200 s (inductor compiles 4 layer graphs + heads, ~100 s of it):
# ~6.5 min; each step has a time limit so that the whole fits one 600 s call and a slow step
# leaves the others their rows.  Shorter: BENCH_ARGS="--batch 1" (~-80 s).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

gpu_build

if [[ ${LOOPC_ONLY_STEP:-0} != 1 ]]; then
step "tests/test_generate.py"
timeout 200 python -X faulthandler -m pytest -q -rs tests/test_generate.py \
  --junitxml="$OUT/test_generate.xml" || status=1

step "bench/count_step_kernels.py"
# 4 layers of the Qwen3-4B shape: kernels per layer are what matter, the build is quick
timeout 100 python bench/count_step_kernels.py --layers 4 --out "$OUT/step_kernels.jsonl" \
  || status=1

HF_ARGS="--only-ours" LIMIT=260
[[ ${LOOPC_HF:-0} == 1 ]] && HF_ARGS="" LIMIT=480
step "bench/bench_decode_loop.py --compile $HF_ARGS ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
timeout $LIMIT python bench/bench_decode_loop.py --layers 36 --prompt 4096 --new 64 --batch 1 8 \
  --presets naive --reps 2 --compile $HF_ARGS ${BENCH_ARGS:-} --out "$OUT/decode_loop.jsonl" \
  || status=1
fi

if [[ ${LOOPC_STEP:-0} == 1 ]]; then
  step "bench/bench_decode_loop.py --compile --compile-scope step (batch 1)"
  timeout 420 python bench/bench_decode_loop.py --layers 36 --prompt 4096 --new 64 --batch 1 \
    --presets --reps 2 --compile --compile-scope step --only-ours --out "$OUT/decode_loop.jsonl" \
    || status=1
fi
step "done (status $status)"
exit $status
