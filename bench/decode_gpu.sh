#!/usr/bin/env bash
# One GPU call for the ring decode kernel (issue 4): build, tests/test_cache.py
# with outputs poisoned (NaN), the kernels' resource usage, then
# bench/bench_decode.py twice in one process each: the split decode kernel
# (default) and the previous CUDA-core kernel (SWAA_RING_DECODE=legacy, ring
# rows only) as a same-run baseline.  Everything goes to $OUT (default
# ./gpu_out); the whole output is also in $OUT/log.
#
#   bash bench/decode_gpu.sh            # build + tests + benchmark
#   SKIP_BUILD=1 bash bench/decode_gpu.sh   # the extension is already built in place
# Env: SWAA_COMMIT=<hash> names the commit in the benchmark rows (no .git there).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

step "GPU"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
GPU=$(python -c "import torch; n = torch.cuda.get_device_name(); print('H200' if 'H200' in n else 'H100' if 'H100' in n else n.replace(' ', '_'))")
echo "gpu tag: $GPU"

gpu_build

step "resource usage of the decode kernels (registers, spills, shared memory)"
SO=$(python -c "import swaa_ext._C as c; print(c.__file__)")
${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump -res-usage "$SO" 2>/dev/null \
  | grep -A1 "ring_decode" | grep -v "^--" > "$OUT/decode_res_usage.txt" || true
cat "$OUT/decode_res_usage.txt"

step "tests/test_cache.py (SWAA_POISON_OUTPUTS=1)"
SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-300} python -X faulthandler -m pytest -q -ra \
  -p no:cacheprovider tests/test_cache.py > "$OUT/pytest_test_cache.log" 2>&1
rc=$?
tail -25 "$OUT/pytest_test_cache.log"
echo "tests/test_cache.py exit code $rc"
[[ $rc == 0 ]] || status=1

step "bench_decode: split decode kernel"
timeout ${BENCH_TIMEOUT:-240} python bench/bench_decode.py --run split_decode \
  --out "$OUT/decode_${GPU}.jsonl" || status=1

step "bench_decode: previous kernel (SWAA_RING_DECODE=legacy), ring rows only"
SWAA_RING_DECODE=legacy timeout ${BENCH_TIMEOUT:-240} python bench/bench_decode.py --impls ring \
  --run legacy_decode --out "$OUT/decode_${GPU}_legacy.jsonl" || status=1

step "done, status $status"
exit $status
