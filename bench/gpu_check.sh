#!/usr/bin/env bash
# One call on the GPU machine for the CUDA kernels (issue 3): build once, GPU
# tests (outputs poisoned with NaN), compute-sanitizer memcheck + racecheck on a
# small case, then the attention benchmark (swaa vs flex vs sdpa).  Logs and
# JSON go to $OUT (default ./gpu_out); the whole output is also in $OUT/log.
#
#   bash bench/gpu_check.sh [all|test|sanitize|tune|bench|ring]   (default: all)
# The GPU machine gets the tree without .git: pass SWAA_COMMIT=<hash> so the
# benchmark rows name their commit.
# test: the whole test suite (CPU and GPU tests), one process per file.
# Env: BENCH=lead (bench/bench_attention.py, default) or mine
#      (bench/bench_cuda_kernels.py: inputs made on the GPU, SDPA timed once per
#      (D, N), so the issue's whole grid fits one short device call);
#      BENCH_ARGS overrides the benchmark's arguments (default: the issue's shapes).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
STEP=${1:-all}
status=0

python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

gpu_build

if [[ $STEP == all || $STEP == test ]]; then
  # Every test file (CPU and GPU tests) in its own process, with faulthandler,
  # so a crash names its file and test; outputs poisoned with NaN.
  for f in tests/test_*.py; do
    step "tests: $f (SWAA_POISON_OUTPUTS=1)"
    SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-300} python -X faulthandler -m pytest -q -ra \
      --maxfail=10 -p no:cacheprovider "$f" \
      > "$OUT/pytest_$(basename "$f" .py).log" 2>&1
    rc=$?
    tail -15 "$OUT/pytest_$(basename "$f" .py).log"
    echo "$f exit code $rc"
    [[ $rc == 0 ]] || status=1
  done
fi

if [[ $STEP == all || $STEP == sanitize ]]; then
  SAN=${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    timeout ${SAN_TIMEOUT:-240} "$SAN" --tool "$tool" --error-exitcode 3 \
      python bench/sanitize_case.py > "$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    tail -6 "$OUT/sanitizer_$tool.log"
    echo "$tool exit code $rc"
    [[ $rc == 0 ]] || status=1
  done
fi

if [[ $STEP == all || $STEP == tune ]]; then
  step "tuning knobs and per-kernel times"
  timeout ${TUNE_TIMEOUT:-120} python bench/tune_cuda_kernels.py --out "$OUT/cuda_tuning.jsonl" || status=1
fi

if [[ $STEP == all || $STEP == bench ]]; then
  step "benchmark"
  if [[ ${BENCH:-lead} == lead && -f bench/bench_attention.py ]]; then
    # The lead's benchmark with the issue's shapes (gpu preset).
    timeout ${BENCH_TIMEOUT:-400} python bench/bench_attention.py ${BENCH_ARGS:---preset gpu} \
      --name cuda_kernels --plot "$OUT/attention.png" || status=1
    cp bench/results/cuda_kernels.jsonl "$OUT/" 2>/dev/null || true
  else
    timeout ${BENCH_TIMEOUT:-400} python bench/bench_cuda_kernels.py ${BENCH_ARGS:-} \
      --out "$OUT/cuda_kernels.jsonl" || status=1
  fi
fi
if [[ $STEP == all || $STEP == ring ]]; then
  step "ring cache: decode step and streaming memory"
  timeout ${RING_TIMEOUT:-300} python bench/bench_decode.py --out "$OUT/decode.jsonl" || status=1
  timeout ${RING_TIMEOUT:-300} python bench/bench_memory.py --out "$OUT/memory.jsonl" || status=1
fi

step "done, status $status"
# The device tool returns at most 8 files: keep the log, pack everything else.
(cd "$OUT" && find . -type f ! -name log ! -name results.tgz | tar czf results.tgz -T - \
  && find . -type f ! -name log ! -name results.tgz -delete && echo "packed into $OUT/results.tgz")
exit $status
