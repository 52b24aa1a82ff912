#!/usr/bin/env bash
# One GPU call for packed fine-tuning batches (branch pack, issue 6 `--pack`): build the
# extension, run the packing tests of tests/test_train.py (CPU ones + the CUDA one: packed ==
# padded in bf16 through the CUDA kernels), then bench/bench_pack.py (one forward + backward of
# the LoRA model, padded rows against packed rows of the same examples) with and without
# --answer-full and with full attention in every layer.  Logs and JSONL go to $OUT.
#
#   SWAA_COMMIT=$(git rev-parse --short HEAD) OUT=$OUT bash bench/pack_gpu.sh
# Env: SKIP_BUILD=1 when the extension is already built in this tree; BENCH_ARGS adds/overrides
#      bench_pack.py arguments (default shape: embedded 8-layer model, bf16, 32 examples of
#      128-4096 prompt tokens per step, window 256, sink 4).
# Estimate (H100/H200, cold machine): build ~60 s (0 with SKIP_BUILD), tests ~30 s, bench
# 3 x ~20 s: ~2.5 min; every step has a time limit.
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

gpu_build

step "tests/test_train.py -k pack"
timeout 200 python -X faulthandler -m pytest -q -rs tests/test_train.py -k pack \
  --junitxml="$OUT/test_train_pack.xml" || status=1

for extra in "--preset sink" "--preset sink --answer-full" "--preset full"; do
  step "bench/bench_pack.py $extra ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  timeout 150 python bench/bench_pack.py $extra ${BENCH_ARGS:-} --out "$OUT/pack.jsonl" \
    || status=1
done

step "done (status $status)"
exit $status
