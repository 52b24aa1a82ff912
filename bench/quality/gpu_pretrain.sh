#!/usr/bin/env bash
# One GPU call for issue 6: pretrain several recipes of the quality model side by side on one GPU
# (the model is small: one process leaves most of the GPU idle), keep the one whose value-digit
# loss ends lowest, then evaluate it untrained on the benchmark grid with the time left.
#
#   SWAA_COMMIT=<hash> bash bench/quality/gpu_pretrain.sh
# Env: SKIP_BUILD=1 (use the build in place, e.g. a CPU smoke run), BUDGET_S (pretraining seconds
#      per recipe, default 360), EVAL_S (evaluation time limit, default 150), SEQ_LEN (longest
#      pretraining length, default 16384).
# Session 2 ran it on an H200 (commit de4dd4e): recipe b won; bench/results/quality/ has the logs.
# Writes to $OUT: log, one tgz per recipe (model + pretrain_log.jsonl), best.txt, the eval rows.
source "$(dirname "$0")/../gpu_lib.sh"
gpu_setup
BUDGET_S=${BUDGET_S:-360}
EVAL_S=${EVAL_S:-150}
SEQ_LEN=${SEQ_LEN:-16384}
RUNS=runs/pretrain
mkdir -p "$RUNS"
# pretrain.py imports swaa_ext (its byte tokenizer), so the extension is built first
gpu_build

# recipe name -> pretrain.py arguments
declare -A RECIPES=(
  [a]="--retrieval-frac 0.5 --dense-frac 0.5 --lr 1e-3 --min-seq-len 512"
  [b]="--retrieval-frac 0.8 --dense-frac 0.8 --lr 2e-3 --min-seq-len 256"
  [c]="--retrieval-frac 0.8 --dense-frac 0.8 --lr 1e-3 --min-seq-len 256 --answer-weight 8"
)
step "pretraining ${!RECIPES[*]} side by side, ${BUDGET_S} s each, up to ${SEQ_LEN} tokens"
pids=()
for r in "${!RECIPES[@]}"; do
  python bench/quality/pretrain.py --out "$RUNS/$r" --seq-len "$SEQ_LEN" --max-steps 40000 \
    --time-budget-s "$BUDGET_S" --checkpoint-every 0 --no-progress ${RECIPES[$r]} \
    > "$RUNS/$r.txt" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || { echo "a pretraining process failed (pid $p)"; status=1; }; done
step "pretraining done"
python - "$RUNS" "${!RECIPES[@]}" <<'PY' | tee "$OUT/best.txt"
import json, math, sys
from pathlib import Path
runs, names = Path(sys.argv[1]), sys.argv[2:]
best = None
for n in sorted(names):
    rows = [json.loads(l) for l in open(runs / n / "pretrain_log.jsonl")]
    vals = [r["value_loss"] for r in rows[-300:] if not math.isnan(r["value_loss"])]
    v = sum(vals) / max(1, len(vals))
    lm = sum(r["lm_loss"] for r in rows[-300:]) / max(1, len(rows[-300:]))
    def mean_value(part):
        part = [x["value_loss"] for x in part if not math.isnan(x["value_loss"])]
        return round(sum(part) / len(part), 3) if part else float("nan")
    marks = {r["step"]: mean_value(rows[i:i + 100])
             for i, r in enumerate(rows) if i % max(1, len(rows) // 8) == 0}
    print(f"recipe {n}: {len(rows)} steps, {rows[-1]['seq_len']} tokens last, lm_loss {lm:.3f}, "
          f"value_loss {v:.3f}; value loss along the run {marks}")
    if best is None or v < best[1]:
        best = (n, v)
print(f"best {best[0]}")
PY
BEST=$(tail -1 "$OUT/best.txt" | awk '{print $2}')
for r in "${!RECIPES[@]}"; do tail -2 "$RUNS/$r.txt"; tar czf "$OUT/pretrain_$r.tgz" -C "$RUNS" "$r" "$r.txt"; done

step "evaluation of recipe $BEST (untrained configurations), ${EVAL_S} s at most"
SWAA_RESULTS_DIR=$OUT timeout "$EVAL_S" python bench/quality/evaluate.py --model "$RUNS/$BEST" \
  --window 512 --per-cell 4 --no-progress --no-plot
rc=$?
echo "eval exit $rc (124: the time limit; rows are appended per configuration)"
[[ $rc == 0 || $rc == 124 ]] || status=1
exit $status
