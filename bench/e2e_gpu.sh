#!/usr/bin/env bash
# The end-to-end benchmark (issue 7) on the GPU machine, in one device call: builds the extension
# in place (incremental: seconds when it is built already; SKIP_BUILD=1 skips it), then runs
#   bench/bench_e2e.py --preset quick   (Qwen3-4B, prompts 128k and 32k, batch 1, 512 new tokens,
#                                        all configurations)
# then redoes table, goals and plot from the saved rows, so that they exist even when the
# benchmark is cut short by the time limit (rows are appended after each configuration).
#
#   OUT=/some/dir bash bench/e2e_gpu.sh                  # default OUT: ./gpu_out
# Env: E2E_ARGS   replaces "--preset quick" (e.g. "--preset full --models llama-3.1-8b")
#      E2E_TIMEOUT seconds for the benchmark (default 540)
#      SWAA_COMMIT  the commit to record in the rows (the GPU machine has no .git)
# Output in $OUT: log (everything), e2e_<gpu>.jsonl (rows), e2e.png (plot), e2e_table.md.
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
gpu_build
export SWAA_RESULTS_DIR=$OUT
status=0

step "e2e benchmark"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# shellcheck disable=SC2086
timeout --signal=TERM --kill-after=10 "${E2E_TIMEOUT:-540}" \
  python bench/bench_e2e.py ${E2E_ARGS:---preset quick} --plot "$OUT/e2e.png" || status=$?
echo "benchmark exit code $status"

step "table, goals and plot from the saved rows"
for rows in "$OUT"/e2e_*.jsonl; do
  [[ -f $rows ]] || { echo "no rows written"; status=1; break; }
  python bench/bench_e2e.py --plot-from "$rows" --run latest --plot "$OUT/e2e.png" | tee "$OUT/e2e_table.md" \
    || status=1
done
step "done, status $status"
exit $status
