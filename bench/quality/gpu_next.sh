#!/usr/bin/env bash
# The GPU work of issue 6 left for the next session, one call each (nothing of it has run yet).
#
#   bash bench/quality/gpu_next.sh finetune   # one H100/H200: fine-tuned rows of the configurations
#                                             # session 2 did not reach (~40 s each on an H200)
#   bash bench/quality/gpu_next.sh ddp        # nvidia-h100-x2: LoRA fine-tuning under torchrun
#                                             # with 2 processes (nccl), one per GPU
#
# Env: SKIP_BUILD=1 (the extension is already built in place), FT_S (time limit of the fine-tuning
# grid, default 480), CONFIGS (comma-separated; default the ten configurations without fine-tuned
# rows in bench/results/quality_H200.jsonl), DDP_STEPS (default 100).
# Writes to $OUT: log, build.log, the rows (quality_<GPU>.jsonl, quality_<GPU>_depth.jsonl) or the
# DDP run (ddp/rank0.json, ddp/rank1.json, ddp.txt).  Append the rows to bench/results/ of the branch.
MODE=${1:?usage: gpu_next.sh finetune|ddp}
source "$(dirname "$0")/../gpu_lib.sh"
gpu_setup
gpu_build
status=0
MODEL=swaa_ext/data/demo_model   # the packaged model = recipe b of session 2 (pretrain.json)

case $MODE in
finetune)
  CONFIGS=${CONFIGS:-full,sink,quarter_full,sink+half_full,sink+quarter_full,fa_decode+half_full,fa_decode+quarter_full,sink+fa_decode+half_full,sink+fa_decode+quarter_full,full_tail}
  step "fine-tuned rows: $CONFIGS (LoRA 200 steps at 2k/4k/8k, window 512), ${FT_S:-480} s at most"
  # same settings as session 2's fine-tuned run 20261128T062640Z-1ed536; rows are appended per
  # configuration, so a timeout keeps the finished ones
  SWAA_RESULTS_DIR=$OUT timeout "${FT_S:-480}" python bench/quality/evaluate.py --model "$MODEL" \
    --window 512 --per-cell 4 --finetune --no-untrained --ft-steps 200 \
    --ft-contexts 2048,4096,8192 --configs "$CONFIGS" --no-progress --no-plot
  rc=$?
  echo "evaluate exit $rc (124: the time limit; rows are appended per configuration)"
  [[ $rc == 0 || $rc == 124 ]] || status=1
  ;;
ddp)
  step "DDP: 2 processes, $(nvidia-smi -L | wc -l) GPUs"
  python bench/quality/data.py --out "$OUT/ft.jsonl" --contexts 2048,4096 --per-cell 20
  timeout 400 torchrun --nproc-per-node 2 -m swaa_ext.cli finetune --model "$MODEL" \
    --tokenizer bytes --data "$OUT/ft.jsonl" --out "$OUT/ddp" --preset sink+fa_decode \
    --window 512 --max-steps "${DDP_STEPS:-100}" --batch-size 1 --grad-accum 2 --bf16 \
    --no-progress --rank-summary 2>&1 | tee "$OUT/ddp.txt"
  rc=$?
  echo "torchrun exit $rc"
  [[ $rc == 0 ]] || status=1
  python - "$OUT/ddp" <<'PY'
import json, sys
from pathlib import Path
r = [json.loads((Path(sys.argv[1]) / f"rank{i}.json").read_text()) for i in (0, 1)]
print("world", r[0]["world"], r[1]["world"], "steps", r[0]["steps"], r[1]["steps"])
print("same losses on both ranks:", r[0]["losses"] == r[1]["losses"],
      "same weights:", r[0]["weights"] == r[1]["weights"])
print("loss first/last:", r[0]["losses"][0], r[0]["losses"][-1])
PY
  ;;
*) echo "unknown mode $MODE (finetune or ddp)"; exit 2 ;;
esac
step "done"
exit $status
