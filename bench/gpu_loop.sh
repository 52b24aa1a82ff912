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
set -o pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEP=${1:-all}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log") 2>&1
cd "$(dirname "$0")/.."
status=0
step() { echo "=== $(date -u +%H:%M:%S) $*"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total --format=csv || true

step "build (MAX_JOBS=16)"
t0=$SECONDS
if ! python -c "import swaa_ext, sys; sys.exit(0 if swaa_ext.build_info()['cuda'] else 1)" 2>/dev/null; then
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} SWAA_ENABLE_CUDA=ON SWAA_CUDA_ARCHS=${SWAA_CUDA_ARCHS:-9.0} \
    MAX_JOBS=16 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || {
    tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
fi
echo "build took $((SECONDS - t0)) s"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python -c "import swaa_ext; print(swaa_ext.__file__, swaa_ext.build_info())"

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
