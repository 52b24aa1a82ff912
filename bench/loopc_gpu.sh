#!/usr/bin/env bash
# One GPU call for generate(compile=True) (branch loopc, issue 7): build the extension, run
# tests/test_generate.py (CPU + CUDA: compiled graph vs uncompiled graph), count the kernels of
# one decode step with and without compile, then bench_decode_loop with and without compile
# (ours-graph-full / -naive, ours-eager-full, ours-graph-compiled-full / -naive; Qwen3-4B shape,
# 36 layers, prompt 4096, 64 new tokens, batch 1 and 8).  Logs and JSONL go to $OUT.
#
#   SWAA_COMMIT=$(git rev-parse --short HEAD) OUT=$OUT bash bench/loopc_gpu.sh
# Env: LOOPC_HF=1 also runs the transformers rows (hf-sdpa, hf-static-compile: +~3 min);
#      BENCH_ARGS overrides the benchmark's shape arguments.
# Estimate (H100/H200, cold machine): build ~60 s, tests ~90 s, kernel count ~40 s, bench
# ~150 s (of which inductor compiles ~60-90 s): ~5.5 min; each step has a time limit so that
# the whole fits one 600 s call and a slow step leaves the others their rows.
set -o pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
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
python -c "import swaa_ext, torch; print(swaa_ext.__file__, swaa_ext.build_info(), torch.__version__)"

step "tests/test_generate.py"
timeout 200 python -X faulthandler -m pytest -q -rs tests/test_generate.py \
  --junitxml="$OUT/test_generate.xml" || status=1

step "bench/count_step_kernels.py"
timeout 90 python bench/count_step_kernels.py --out "$OUT/step_kernels.jsonl" || status=1

HF_ARGS="--only-ours"
[[ ${LOOPC_HF:-0} == 1 ]] && HF_ARGS=""
step "bench/bench_decode_loop.py --compile $HF_ARGS ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
timeout 260 python bench/bench_decode_loop.py --layers 36 --prompt 4096 --new 64 --batch 1 8 \
  --presets naive --reps 2 --compile $HF_ARGS ${BENCH_ARGS:-} --out "$OUT/decode_loop.jsonl" \
  || status=1
step "done (status $status)"
exit $status
