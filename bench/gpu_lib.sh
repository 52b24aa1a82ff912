# Shared set-up of the scripts that run on the GPU machine (sourced, not run):
#   source "$(dirname "$0")/gpu_lib.sh"       (bench/quality/*: "$(dirname "$0")/../gpu_lib.sh")
#   gpu_setup            # pipefail, $OUT (default ./gpu_out), unbuffered Python, everything also
#                        # appended to $OUT/log, cd to the repository root, step() headers,
#                        # the GPU's name, memory and clock
#   gpu_build            # build the extension in place (incremental: a few seconds when nothing
#                        # changed) unless SKIP_BUILD is set; log in $OUT/build.log; PYTHONPATH
#                        # then points at the checkout
# The GPU machine gets the tree without .git: pass SWAA_COMMIT=<hash> so benchmark rows name it.

step() { echo "=== $(date -u +%H:%M:%S) $*"; }

gpu_setup() {
  set -o pipefail
  OUT=${OUT:-$PWD/gpu_out}
  mkdir -p "$OUT"
  export OUT PYTHONUNBUFFERED=1
  exec > >(tee -a "$OUT/log") 2>&1
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
  step "GPU"  # which machine the log and the rows come from
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
}

gpu_build() {
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  [[ -n ${SKIP_BUILD:-} ]] && return 0
  step "build (MAX_JOBS=${MAX_JOBS:-16})"
  local t0=$SECONDS
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} SWAA_ENABLE_CUDA=ON SWAA_CUDA_ARCHS=${SWAA_CUDA_ARCHS:-9.0} \
    MAX_JOBS=${MAX_JOBS:-16} python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || {
    tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
  echo "build took $((SECONDS - t0)) s"
  python -c "import swaa_ext; print(swaa_ext.__file__, swaa_ext.build_info())" || exit 1
}
