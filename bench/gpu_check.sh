#!/usr/bin/env bash
# The one script that runs on the GPU machine: builds once, runs the GPU tests, the
# sanitizers and the benchmarks, and writes logs and JSON rows to $OUT.
#
#   bash bench/gpu_check.sh STEP [STEP ...]
#   SWAA_COMMIT=$(git rev-parse --short HEAD) OUT=$OUT bash bench/gpu_check.sh all
#
# Steps, with their time on one H200 (from the session-3/4 logs in bench/results/logs/) and the
# numbers they back:
#   build     build the extension in place (incremental), print build_info, count kernels that
#             use local memory (cuobjdump -res-usage).  ~85 s from scratch, ~5 s when built.
#             Every run starts with it unless SKIP_BUILD=1.
#   test      every tests/test_*.py in its own process (a crash names its file), outputs poisoned
#             with NaN (SWAA_POISON_OUTPUTS=1).  Every file: ~8 min (estimate: never run as one;
#             test_attention_cuda + test_attention_hopper ~2 min, test_generate ~2 min, the CPU
#             tests ~3 min); TEST_ARGS="-m cuda" (the GPU tests only): ~4.5 min.  A run of
#             every file and a build from scratch may not fit one call's budget: the files left
#             over are SKIPPED (listed in the log); run them with TESTS=... in a second call.
#             Backs: README "Tests" and docs/cuda_kernels.md "Correctness" (the GPU test counts).
#   sanitize  compute-sanitizer memcheck and racecheck of bench/sanitize_case.py (forward,
#             backward, ring prefill + split decode with both combines, the global one also
#             fused, and the fused combine in every tiling; default kernels), and
#             synccheck of its forward.  ~1 min.  Racecheck may flag TMA / async-proxy or
#             cluster (DSMEM) accesses: read before believing.
#             Backs: README "CUDA attention" / docs/cuda_kernels.md "Correctness" (memcheck clean).
#   tune      bench/tune_cuda_kernels.py, one process per part: fwd-variants (SWAA_FWD_HOPPER=1..11
#             side by side, ~15 s), bwd-variants (SWAA_BWD_HOPPER=0..3, per-kernel times, ~25 s),
#             knobs (the sm_80 kernels' tile knobs, ~1.5 min).  ~2.5 min.
#             Backs: docs/cuda_kernels.md "Measured: session 4" (the forward variants, the
#             backward knobs, the v6 per-kernel times), docs/cuda_kernels_history.md "v4 measured";
#             bench/results/cuda_tuning_h200.jsonl, fwd_variants_h200.jsonl.
#   fused     the single-pass Hopper backward (SWAA_BWD_HOPPER=4, docs/cuda_kernels.md "v7";
#             the default by shape since session 8): the host check of its schedule (nvcc, no GPU), a smoke test
#             under 60 s (bench/fused_smoke.py: a deadlock cannot eat the call; the step stops
#             when it fails), tests/test_bwd_fused.py (turn watchdog 2^22 polls, ~2-4 s, in
#             both), compute-sanitizer memcheck, racecheck and synccheck of the backward with
#             the knob, both dQ splits (SWAA_BWD_FUSED_DQ=0/1; watchdog off: the tools stretch
#             the waits), per-kernel times (tune --parts bwd-fused), fwd+bwd swaa (the default's
#             choice) vs swaa-v6 (two passes) vs swaa-fused vs swaa-fused-cols vs flex at N=32768
#             (FUSED_BENCH_ARGS).  ~5 min (236 s + build in session 5).
#             Backs: docs/cuda_kernels.md "v7".
#   profile   Nsight Compute (ncu --clock-control none) of one backward call of the Hopper
#             kernels (bench/ncu_case.py), v6 (SWAA_BWD_HOPPER=1) and v7 (4) at each of
#             PROFILE_SHAPES ("D,N,W,S ...", default "128,32768,4096,0 64,32768,4096,0"): speed of
#             light, occupancy, launch, warp-state and scheduler statistics, memory and compute
#             workload, as text in profile/ncu_bwd<knob>_d<D>_n<N>_w<W>_s<S>.log; then, for v7
#             at the last shape, the per-instruction stall sampling (SourceCounters) as a
#             report (profile/v7_source_*.ncu-rep) and its source page as CSV (.csv).  47 s for
#             the sections at two shapes (session 6); the source part is new (~30 s estimate).
#             Backs: docs/cuda_kernels.md "v7" (where its kernel loses time).
#             PROFILE_FWD=1: one forward call instead, ours and SDPA's full causal, at each
#             of PROFILE_SHAPES (default "128,8192,4096,0", where the two tie), sections of
#             every kernel, then our kernel's stall sampling per instruction
#             (profile/fwd_source_*.csv).  Backs: docs/cuda_kernels.md "Next steps" (the
#             SDPA goal at N=8192, W=4096).
#             PROFILE_BWD_SDPA=1: one backward instead, ours with the two passes (v6) and
#             SDPA's full causal, at each of PROFILE_SHAPES (default "64,8192,4096,0"),
#             sections of every kernel, then our dk/dv kernel's per-instruction sampling
#             (profile/dkdv_source_*.csv).  Written in session 9, not yet run.
#             PROFILE_DECODE=B: one ring decode step at batch B instead (ncu_case.py --decode):
#             sections of the split kernel and the combine, then the split kernel's stall
#             sampling per instruction (profile/decode_source_b<B>.csv).  Backs:
#             docs/ring_cache.md "Open items" (where the B=8 split kernel loses time).
#   bench     issue 3's grid: bench/bench_cuda_kernels.py, swaa vs flex vs sdpa, fwd and fwd+bwd,
#             D 128/64, N 8k/32k/128k, W 1024/4096, S 0/4/128; then the plot, and the tables
#             and figures to paste (bench/grid_tables.py on the saved rows).  ~6 min (session 12:
#             346 s).
#             Backs: README "CUDA attention" (table, plot, vs Flex/SDPA), docs/cuda_kernels.md
#             "Measured: session N", "Goals of the issue" (docs/cuda_kernels_history.md: "The two
#             numbers"); bench/results/cuda_kernels_h200.jsonl.
#   ceiling   the dense-causal ceiling: bench/bench_attention.py with W=0 (full causal) and
#             W=4096, S=0, D 64/128, N 8k/32k: swaa beside Flex and SDPA forced onto each backend
#             (sdpa_cudnn, sdpa_flash = FlashAttention-2, sdpa_efficient; the backward without
#             the slow efficient one), forward, then forward+backward.  ~3.5 min (session 18:
#             ~120 s + ~55 s).  Backs: README "Dense causal: the ceiling", docs/cuda_kernels.md
#             "Measured: the ceiling"; bench/results/ceiling_h200.jsonl.
#   decode    issue 4: bench/bench_decode.py with the automatic plan (every impl), the plan knobs
#             A/B (combine cluster / global / global without PDL, 66 and 132 splits), the B=8 split sweep, the
#             split kernel's variants at B=8 (bench/bench_decode_sweep.py: combine kernel / fused
#             x tiling x balanced splits x split count, ~30 s), the fused combine at B=1/8/64, and
#             the planner's two cost models; bench/bench_memory.py; a summary of every run.
#             ~3.5 min (auto plan + memory alone, DECODE_AB=0: ~40 s; DECODE_AB=decode4: the
#             auto plan, decode4's combine-kernel knobs instead of the older A/B runs
#             (decode4_parts: staged loads x advance in the kernel x PDL at B=1/8/64, all on,
#             profiles), memory, ~3.5 min; DECODE_AB=decode5: the auto plan, the split kernel's
#             gather per tile vs per key (bench_decode_sweep.py --set decode5, 5 rounds) and the
#             per-key ring / ring_full rows, memory, ~2 min (estimate)).
#             The auto part times every impl twice: each replay queued behind a spin kernel
#             (`launch: queued`, GPU time only, the README's numbers) and as sessions 1-6 did
#             (`host`: the idle GPU waits for the replay's submission).
#             Backs: README "Decode step with the ring cache", "Streaming memory",
#             docs/ring_cache.md "Measured"; bench/results/decode_H200.jsonl, memory_H200.jsonl.
#   loop      issue 7's decode loop in ms/token: bench/count_step_kernels.py (kernels per step)
#             and bench/bench_decode_loop.py with and without compile (Qwen3-4B shape, 36 layers,
#             prompt 4096, 64 new tokens, batch 1 and 8).  ~1.5 min; LOOPC_HF=1 ~+3 min.
#             Backs: README "Decode loop", docs/generate.md "GPU run and numbers";
#             bench/results/decode_loop_H200.jsonl, step_kernels_H200.jsonl.
#   e2e       issue 7: bench/bench_e2e.py (default --preset quick: Qwen3-4B, 128k and 32k prompts,
#             batch 1, 512 new tokens, every configuration), then table, goals and plot again from
#             the saved rows (they exist when the time limit cut the benchmark).  ~4 min
#             (session 4: Llama-3.1-8B 128k 2.5 min, Qwen3-4B 32k batch 8 3.6 min).
#             Backs: README "End to end at a 128k prompt", docs/e2e.md "Results".
#   pack      issue 6 --pack: bench/bench_pack.py padded vs packed rows (one forward + backward of
#             the LoRA model), presets sink, sink --answer-full, full.  ~1 min.
#             Backs: docs/finetune.md "Packed rows"; bench/results/pack_H200.jsonl.
#   quality   issue 6, bench/quality/ (QUALITY=finetune (default), pretrain or ddp):
#             finetune  fine-tuned rows of CONFIGS on the packaged model, FT_S s at most (~8 min)
#             pretrain  three pretraining recipes side by side for BUDGET_S s, the best by
#                       value-digit loss, then its untrained grid, EVAL_S s (~9 min: use a warm
#                       machine or a smaller BUDGET_S); each recipe's model in $OUT/pretrain_<r>.tgz
#             ddp       LoRA fine-tuning under torchrun, 2 processes (kind nvidia-h200-x2), ~1 min
#             Backs: README "Quality", docs/quality.md; bench/results/quality_H200*.jsonl.
#   all       build test sanitize decode bench, sized for one 10-minute device call: the GPU tests
#             only (TESTS: the files with pytest.mark.cuda, TEST_ARGS="-m cuda": CI runs the CPU
#             ones), decode without the A/B runs (DECODE_AB=0), the grid at S=4 and N 8k/32k
#             (BENCH_ARGS); set any of them to override.  Estimate: ~8.5 min with a build from
#             scratch (85 + 260 + 60 + 40 + 75 s); the bench step comes last and is the one cut
#             short (rows are written per shape) if the estimate is off.
#
# Output: $OUT (default ./gpu_out) holds `log` (one line per step: result, seconds, detail),
# `console.txt` (everything printed) and <name>.tgz (default gpu_check_<steps>.tgz; PACK_NAME)
# with both and one folder per step (each part's full output in <step>/<part>.log, its rows,
# plots).  A step's folder lives in $OUT/<step>/ while it runs and moves into the archive when it
# ends (the device tool returns at most 8 files).  The archive is rewritten after every step, so a
# run cut short keeps the steps it finished.
#
# Env (all optional):
#   SWAA_COMMIT       commit recorded in the rows (the GPU machine gets the tree without .git)
#   OUT               output folder (default ./gpu_out)
#   GPU_CHECK_BUDGET  seconds for the whole run (default 570: one device call of 600 s); each part
#                     runs under its own limit cut to what is left, and is skipped when < 20 s are
#                     left (the step's line then says `partial`)
#   SKIP_BUILD=1      use the build in place (0 or unset: build); MAX_JOBS (16), SWAA_CUDA_ARCHS (9.0), CUDA_HOME,
#                     BUILD_TIMEOUT (400)
#   TESTS             test files (default tests/test_*.py); TEST_ARGS extra pytest arguments
#                     (e.g. "-m cuda", "-k pack"; split into words, so no spaces inside one);
#                     TEST_K a -k expression passed as one argument (e.g. "a or b");
#                     TEST_TIMEOUT per file (300)
#   SAN_TIMEOUT       per sanitizer tool (240)
#   TUNE_AB           the bwd-ab part's settings, space-separated KNOB=V[,KNOB=V] (the first is
#                     the baseline; default: v6 and v7, each unpipelined and as default)
#   TUNE_SHAPES       the bwd-ab part's shapes, space-separated D,N,W,S[,FULL_FROM] (default: the
#                     bwd-fused part's ten)
#   TUNE_TIMEOUT      per tuning part (240); TUNE_PARTS the parts of `tune` (default
#                     "fwd-variants bwd-variants knobs"; bwd-fused: v6/v7 and their knobs, ~1.5 min;
#                     bwd-rule: v6 / v7 / the default at N = 2-8 windows, ~0.5 min, estimate);
#                     PROFILE_TIMEOUT per ncu run of `profile` (180)
#   BENCH=mine|lead   bench/bench_cuda_kernels.py (default) or bench/bench_attention.py --preset gpu;
#                     BENCH_ARGS replaces the benchmark's shape arguments; BENCH_TIMEOUT (540)
#   DECODE_AB=0       decode: only the automatic plan and the memory benchmark (~40 s)
#   DECODE_AB=decode4 decode: the automatic plan, decode4's parts (decode4_parts) and the memory
#                     benchmark, without the older A/B runs (~3.5 min; the default DECODE_AB=1
#                     does not run decode4's parts); LEGACY=1 adds the session-1 CUDA-core decode
#                     kernel (SWAA_RING_DECODE=legacy); DECODE_TIMEOUT per bench_decode run (240)
#   LOOPC_HF=1        loop: also transformers' rows (hf-sdpa, hf-static-compile); LOOPC_STEP=1 also
#                     the whole step compiled as one graph (batch 1, minutes of compile: better in
#                     a call of its own with LOOPC_ONLY_STEP=1); LOOP_ARGS extra bench_decode_loop.py
#                     arguments (was BENCH_ARGS of gpu_loop.sh / loopc_gpu.sh)
#   E2E_ARGS          replaces "--preset quick"; E2E_TIMEOUT (540)
#   PACK_ARGS         extra bench_pack.py arguments (was BENCH_ARGS of pack_gpu.sh)
#   QUALITY           finetune | pretrain | ddp; finetune: CONFIGS, FT_S (480); pretrain: BUDGET_S
#                     (360), EVAL_S (150), SEQ_LEN (16384); ddp: DDP_STEPS (100)

STEPS_KNOWN=(build test sanitize tune profile bench ceiling decode loop e2e pack quality fused all)

usage() {
  echo "usage: bash bench/gpu_check.sh STEP [STEP ...]"
  echo "steps: ${STEPS_KNOWN[*]} (see the header of bench/gpu_check.sh)"
}

# --- set-up: output folder, budget, console copy -------------------------------------------

setup() {
  set -o pipefail
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 1
  OUT=$(realpath -m "${OUT:-$root/gpu_out}")
  cd "$root" || exit 1
  mkdir -p "$OUT"
  STAGE=$(mktemp -d)  # finished step folders, packed into the archive after every step
  export OUT PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  BUDGET=${GPU_CHECK_BUDGET:-570}
  STAMP=$(date -u +%Y%m%dT%H%M%S)  # prefix of the run labels this call writes into rows
  exec > >(tee -a "$OUT/console.txt") 2>&1
}

# log_line <text>: one line of $OUT/log, also printed.
log_line() {
  echo "$*" | tee -a "$OUT/log"
}

header() {
  log_line "gpu_check $STAMP: steps ${STEPS[*]}; commit ${SWAA_COMMIT:-unknown}; budget ${BUDGET} s"
  log_line "gpu: $(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader \
    2>/dev/null || echo 'no nvidia-smi')"
  log_line "$(python -c 'import torch, transformers; print("torch", torch.__version__,
    "transformers", transformers.__version__)' 2>&1 | tail -1)"
}

# limit <seconds>: what a part may take: its own limit, cut to what is left of the budget less
# 20 s for packing; fails when less than 20 s are left.
limit() {
  local left=$((BUDGET - SECONDS - 20))
  ((left >= 20)) || return 1
  echo $(($1 < left ? $1 : left))
}

# run_part <name> <seconds> <command ...>: one command of the current step under its time limit;
# its whole output in $STEP_DIR/<name>.log, the last lines here.  Exit codes in OK_CODES (default
# 0) count as success; others add the part to FAILED, a part without time left to SKIPPED.
run_part() {
  local name=$1 seconds=$2 lim rc
  shift 2
  if ! lim=$(limit "$seconds"); then
    echo "--- $name: SKIPPED (the run's budget of $BUDGET s is spent)"
    SKIPPED+=("$name")
    return 1
  fi
  echo "--- $(date -u +%H:%M:%S) $name (at most $lim s): $*"
  timeout --kill-after=10 "$lim" "$@" > "$STEP_DIR/$name.log" 2>&1
  rc=$?
  tail -n "${TAIL_LINES:-15}" "$STEP_DIR/$name.log"
  echo "--- $name: exit code $rc$([[ $rc == 124 ]] && echo ' (time limit)')"
  [[ " ${OK_CODES:-0} " == *" $rc "* ]] && return 0
  FAILED+=("$name")
  return 1
}

# pack: the archive of everything finished so far (written aside, then moved: never half there).
pack() {
  tar czf "$OUT/.pack.tgz" -C "$STAGE" . -C "$OUT" log console.txt \
    && mv "$OUT/.pack.tgz" "$OUT/$PACK"
}

# run_step <step>: runs step_<step>, writes its line to $OUT/log, packs its folder.
run_step() {
  local step=$1 t0=$SECONDS result
  STEP_DIR=$OUT/$step
  mkdir -p "$STEP_DIR"
  FAILED=() SKIPPED=() DETAIL=""
  echo "=== $(date -u +%H:%M:%S) $step"
  "step_$step"
  result=ok
  ((${#SKIPPED[@]})) && result=partial DETAIL="${DETAIL:+$DETAIL }skipped: ${SKIPPED[*]};"
  ((${#FAILED[@]})) && result=FAILED DETAIL="${DETAIL:+$DETAIL }failed: ${FAILED[*]};"
  log_line "$(printf '%-9s %-8s %5d s  %s' "$step" "$result" $((SECONDS - t0)) "$DETAIL")"
  [[ $result == ok ]] || STATUS=1
  mv "$STEP_DIR" "$STAGE/"
  pack
  [[ $result != FAILED || $step != build ]]  # nothing runs without a build
}

# --- steps -----------------------------------------------------------------------------------

step_build() {
  if [[ -n ${SKIP_BUILD:-} && ${SKIP_BUILD} != 0 ]]; then  # SKIP_BUILD=0 builds (session 19 lost a call to it)
    DETAIL="not built (SKIP_BUILD=1);"
  else
    run_part build "${BUILD_TIMEOUT:-400}" env SWAA_ENABLE_CUDA=ON \
      SWAA_CUDA_ARCHS="${SWAA_CUDA_ARCHS:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
      python setup.py build_ext --inplace || return
  fi
  run_part build_info 120 \
    python -c "import swaa_ext; print(swaa_ext.__file__, swaa_ext.build_info())" || return
  "$CUDA_HOME/bin/cuobjdump" -res-usage swaa_ext/_C*.so > "$STEP_DIR/res_usage.txt" 2>&1
  local spilling
  spilling=$(grep -c 'LOCAL:[1-9]' "$STEP_DIR/res_usage.txt")
  DETAIL="${DETAIL:+$DETAIL }$spilling kernels use local memory (res_usage.txt);"
}

step_test() {
  local f OK_CODES="0 5"  # 5: no test of the file selected (TEST_ARGS)
  for f in ${TESTS:-tests/test_*.py}; do
    # shellcheck disable=SC2086
    run_part "$(basename "$f" .py)" "${TEST_TIMEOUT:-300}" env SWAA_POISON_OUTPUTS=1 \
      python -X faulthandler -m pytest -q -ra --maxfail=10 -p no:cacheprovider ${TEST_ARGS:-} \
      ${TEST_K:+-k "$TEST_K"} "$f"
  done
  DETAIL="$(for log in "$STEP_DIR"/*.log; do tail -n 1 "$log"; done \
    | grep -Eo '[0-9]+ (passed|failed|skipped|deselected|errors?)' \
    | awk '{n[$2] += $1} END {for (k in n) {printf "%s%d %s", sep, n[k], k; sep = ", "}
                               if (sep) print ";"}')"
}

step_sanitize() {
  local san=$CUDA_HOME/bin/compute-sanitizer
  run_part memcheck "${SAN_TIMEOUT:-240}" "$san" --tool memcheck --error-exitcode 3 \
    python bench/sanitize_case.py
  run_part racecheck "${SAN_TIMEOUT:-240}" "$san" --tool racecheck --error-exitcode 3 \
    python bench/sanitize_case.py
  run_part synccheck "${SAN_TIMEOUT:-240}" "$san" --tool synccheck --error-exitcode 3 \
    python bench/sanitize_case.py --parts fwd
}

step_tune() {
  local part
  for part in ${TUNE_PARTS:-fwd-variants bwd-variants knobs}; do  # the most telling first
    # shellcheck disable=SC2086  # TUNE_AB, TUNE_SHAPES: bwd-ab's settings and shapes
    run_part "$part" "${TUNE_TIMEOUT:-240}" python bench/tune_cuda_kernels.py --parts "$part" \
      ${TUNE_AB:+--ab $TUNE_AB} ${TUNE_SHAPES:+--shapes $TUNE_SHAPES} \
      --out "$STEP_DIR/cuda_tuning.jsonl"
  done
}

step_profile() {
  local ncu shape D N W S knob
  ncu=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
  if [[ -n ${PROFILE_DECODE:-} ]]; then  # the ring decode step at batch PROFILE_DECODE instead
    profile_decode "$ncu" "$PROFILE_DECODE"
    return
  fi
  if [[ -n ${PROFILE_FWD:-} ]]; then  # the forward (ours and SDPA's) at PROFILE_SHAPES instead
    profile_forward "$ncu"
    return
  fi
  if [[ -n ${PROFILE_BWD_SDPA:-} ]]; then  # our two-pass backward and SDPA's instead
    profile_backward_vs_sdpa "$ncu"
    return
  fi
  for shape in ${PROFILE_SHAPES:-128,32768,4096,0 64,32768,4096,0}; do
    IFS=, read -r D N W S <<< "$shape"
    for knob in 1 4; do
      TAIL_LINES=5 run_part "ncu_bwd${knob}_d${D}_n${N}_w${W}_s${S}" "${PROFILE_TIMEOUT:-180}" \
        "$ncu" --profile-from-start off --clock-control none -k regex:bwd_ \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
        --section ComputeWorkloadAnalysis \
        python bench/ncu_case.py --bwd "$knob" --D "$D" --N "$N" --W "$W" --S "$S"
    done
  done
  # v7's stall sampling per instruction at the last shape (which instruction its warps wait
  # on): the report (SourceCounters) and its source page as CSV, SASS with the CUDA lines
  local rep=$STEP_DIR/v7_source_d${D}_n${N}_w${W}_s${S}
  run_part "ncu_source_bwd4_d${D}" "${PROFILE_TIMEOUT:-180}" \
    "$ncu" --profile-from-start off --clock-control none -k regex:bwd_fused_sm90 \
    --section SourceCounters --section WarpStateStats --import-source yes --export "$rep" \
    python bench/ncu_case.py --bwd 4 --D "$D" --N "$N" --W "$W" --S "$S" || return
  source_page "$ncu" "$rep" ncu_source_page
}

# ncu sections of the forward and backward comparisons (profile_forward, profile_backward_vs_sdpa)
NCU_SECTIONS=(--section SpeedOfLight --section Occupancy --section LaunchStats
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis
  --section ComputeWorkloadAnalysis --section InstructionStats)

# source_page <ncu> <report without .ncu-rep> <part name>: the report's source page as CSV (SASS
# with the CUDA lines; SASS alone where the CUDA lines cannot be printed).
source_page() {
  local ncu=$1 rep=$2
  run_part "$3" 120 bash -c "'$ncu' --import '$rep.ncu-rep' --page source --csv \
    --print-source cuda,sass > '$rep.csv' || '$ncu' --import '$rep.ncu-rep' --page source \
    --csv --print-source sass > '$rep.csv'"
}

# One forward call at each of PROFILE_SHAPES (default "128,8192,4096,0": where ours ties SDPA's
# full causal), ours and SDPA's (bench/ncu_case.py --fwd): the sections of every kernel of the
# call as text; then our kernel's stall sampling per instruction (SourceCounters) at the last
# shape as a report and its source page as CSV.
profile_forward() {
  local ncu=$1 shape D N W S impl rep
  for shape in ${PROFILE_SHAPES:-128,8192,4096,0}; do
    IFS=, read -r D N W S <<< "$shape"
    for impl in swaa sdpa; do
      TAIL_LINES=5 run_part "ncu_fwd_${impl}_d${D}_n${N}_w${W}_s${S}" "${PROFILE_TIMEOUT:-180}" \
        "$ncu" --profile-from-start off --clock-control none "${NCU_SECTIONS[@]}" \
        python bench/ncu_case.py --fwd "$impl" --D "$D" --N "$N" --W "$W" --S "$S"
    done
  done
  rep=$STEP_DIR/fwd_source_d${D}_n${N}_w${W}_s${S}
  run_part "ncu_source_fwd_d${D}" "${PROFILE_TIMEOUT:-180}" \
    "$ncu" --profile-from-start off --clock-control none -k regex:fwd \
    --section SourceCounters --section WarpStateStats --import-source yes --export "$rep" \
    python bench/ncu_case.py --fwd swaa --D "$D" --N "$N" --W "$W" --S "$S" || return
  source_page "$ncu" "$rep" ncu_source_page_fwd
}

# One backward at each of PROFILE_SHAPES (default "64,8192,4096,0": the one shape group whose
# forward+backward still loses to SDPA's), ours with the two passes (v6, what the default takes
# there) and SDPA's full causal (bench/ncu_case.py --sdpa-bwd): the sections of every kernel of
# the call as text; then our dk/dv kernel's stall sampling per instruction at the last shape.
profile_backward_vs_sdpa() {
  local ncu=$1 shape D N W S rep
  for shape in ${PROFILE_SHAPES:-64,8192,4096,0}; do
    IFS=, read -r D N W S <<< "$shape"
    TAIL_LINES=5 run_part "ncu_bwd1_vs_sdpa_d${D}_n${N}_w${W}_s${S}" "${PROFILE_TIMEOUT:-180}" \
      "$ncu" --profile-from-start off --clock-control none "${NCU_SECTIONS[@]}" \
      python bench/ncu_case.py --bwd 1 --D "$D" --N "$N" --W "$W" --S "$S"
    TAIL_LINES=5 run_part "ncu_sdpa_bwd_d${D}_n${N}" "${PROFILE_TIMEOUT:-180}" \
      "$ncu" --profile-from-start off --clock-control none "${NCU_SECTIONS[@]}" \
      python bench/ncu_case.py --sdpa-bwd --D "$D" --N "$N"
  done
  rep=$STEP_DIR/dkdv_source_d${D}_n${N}_w${W}_s${S}
  run_part "ncu_source_dkdv_d${D}" "${PROFILE_TIMEOUT:-180}" \
    "$ncu" --profile-from-start off --clock-control none -k regex:bwd_dkdv_sm90 \
    --section SourceCounters --section WarpStateStats --import-source yes --export "$rep" \
    python bench/ncu_case.py --bwd 1 --D "$D" --N "$N" --W "$W" --S "$S" || return
  source_page "$ncu" "$rep" ncu_source_page_dkdv
}

# One ring decode step at batch $2 (bench/ncu_case.py --decode): the sections of the split
# kernel and the combine as text, then the split kernel's stall sampling per instruction
# (SourceCounters) as a report and its source page as CSV (SASS with the CUDA lines).
profile_decode() {
  local ncu=$1 B=$2 rep=$STEP_DIR/decode_source_b$2
  TAIL_LINES=5 run_part "ncu_decode_b$B" "${PROFILE_TIMEOUT:-180}" \
    "$ncu" --profile-from-start off --clock-control none -k regex:ring_decode \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    python bench/ncu_case.py --decode "$B" || return
  run_part "ncu_source_decode_b$B" "${PROFILE_TIMEOUT:-180}" \
    "$ncu" --profile-from-start off --clock-control none -k regex:ring_decode_split \
    --section SourceCounters --section WarpStateStats --import-source yes --export "$rep" \
    python bench/ncu_case.py --decode "$B" || return
  source_page "$ncu" "$rep" ncu_source_page_decode
}

step_bench() {
  local rows=$STEP_DIR/cuda_kernels.jsonl
  # shellcheck disable=SC2086
  if [[ ${BENCH:-mine} == lead ]]; then
    run_part bench_attention "${BENCH_TIMEOUT:-540}" env SWAA_RESULTS_DIR="$STEP_DIR" \
      python bench/bench_attention.py ${BENCH_ARGS:---preset gpu} --name cuda_kernels
  else
    run_part bench_cuda_kernels "${BENCH_TIMEOUT:-540}" \
      python bench/bench_cuda_kernels.py ${BENCH_ARGS:-} --out "$rows"
  fi
  [[ -s $rows ]] || return
  TAIL_LINES=40 run_part plot 120 \
    python bench/bench_attention.py --plot-from "$rows" --plot "$STEP_DIR/attention.png"
  # the tables and figures to paste into the README and docs/cuda_kernels.md
  TAIL_LINES=80 run_part grid_tables 60 python bench/grid_tables.py --rows "$rows"
}

step_ceiling() {
  local common=(--D 64 128 --N 8192 32768 --S 0 --name ceiling_h200)
  run_part ceiling_fwd "${BENCH_TIMEOUT:-300}" env SWAA_RESULTS_DIR="$STEP_DIR" \
    python bench/bench_attention.py "${common[@]}" --W 0 4096 --passes fwd \
    --impls swaa flex sdpa sdpa_flash sdpa_cudnn sdpa_efficient
  run_part ceiling_fwd_bwd "${BENCH_TIMEOUT:-300}" env SWAA_RESULTS_DIR="$STEP_DIR" \
    python bench/bench_attention.py "${common[@]}" --W 0 --passes fwd+bwd \
    --impls swaa flex sdpa sdpa_flash sdpa_cudnn
}

step_fused() {
  run_part schedule_check 120 bash -c "'$CUDA_HOME/bin/nvcc' -std=c++20 -O2 \
    -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Icsrc -Icsrc/include \
    tests/native/fused_schedule_check.cu -o '$STEP_DIR/fused_schedule_check' \
    && '$STEP_DIR/fused_schedule_check' v && rm -f '$STEP_DIR/fused_schedule_check'"
  "$CUDA_HOME/bin/cuobjdump" -sass swaa_ext/_C*.so 2>/dev/null \
    | awk '/Function : .*bwd_fused_sm90_kernel/{on=1} /Function : /&&!/bwd_fused_sm90_kernel/{on=0} on' \
    | grep -o -E "HGMMA[.0-9a-zA-Z]*|UBLKRED[.A-Z0-9]*|UBLKCP[.A-Z]*|LDL|STL" | sort | uniq -c \
    > "$STEP_DIR/sass_counts.txt" 2>&1
  local watchdog=$((1 << 22))  # polls of one turn before the writer traps: ~2-4 s
  TAIL_LINES=30 run_part smoke 60 env SWAA_BWD_FUSED_WATCHDOG=$watchdog \
    python bench/fused_smoke.py || return
  run_part test_bwd_fused "${TEST_TIMEOUT:-300}" env SWAA_POISON_OUTPUTS=1 \
    SWAA_BWD_FUSED_WATCHDOG=$watchdog python -X faulthandler -m pytest -q -ra --maxfail=10 \
    -p no:cacheprovider tests/test_bwd_fused.py
  # the sanitizers, keys split (the default) and columns split, the watchdog off (0)
  local san=$CUDA_HOME/bin/compute-sanitizer tool cols
  for cols in 0 1; do
    for tool in memcheck racecheck synccheck; do
      run_part "${tool}$([[ $cols == 1 ]] && echo _cols)" "${SAN_TIMEOUT:-240}" env \
        SWAA_BWD_HOPPER=4 SWAA_BWD_FUSED_DQ=$cols SWAA_BWD_FUSED_WATCHDOG=0 "$san" \
        --tool "$tool" --error-exitcode 3 python bench/sanitize_case.py --parts bwd
    done
  done
  run_part tune_bwd_fused "${TUNE_TIMEOUT:-240}" python bench/tune_cuda_kernels.py \
    --parts bwd-fused --out "$STEP_DIR/cuda_tuning.jsonl"
  # shellcheck disable=SC2086
  run_part bench_fused "${BENCH_TIMEOUT:-540}" python bench/bench_cuda_kernels.py \
    --impls swaa swaa-v6 swaa-fused swaa-fused-cols swaa-fused-keys flex --passes fwd+bwd \
    ${FUSED_BENCH_ARGS:---N 32768 --S 0 4} --out "$STEP_DIR/cuda_kernels.jsonl"
  [[ -s $STEP_DIR/cuda_kernels.jsonl ]] || return
  TAIL_LINES=20 run_part ratios 60 python - "$STEP_DIR/cuda_kernels.jsonl" <<'PY'
import json, sys
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    by.setdefault((r["D"], r["N"], r["W"], r["S"]), {})[r["impl"]] = r["ms"]
impls = ("swaa", "swaa-v6", "swaa-fused", "swaa-fused-cols", "swaa-fused-keys")
print("fwd+bwd ms (flex / impl)  D N W S | " + " | ".join(impls) + " | flex")
for key, m in sorted(by.items()):
    if "flex" in m:
        print(f"{key}: " + " | ".join(f"{m[i]:.3f} ({m['flex'] / m[i]:.2f}x)" for i in impls
                                      if i in m) + f" | {m['flex']:.3f}")
PY
}

# decode4's knobs of the global combine kernel (staged loads, the position update in the kernel,
# PDL; on by default since session 6, staged above 8 splits; the plain values serial / op / 0
# give the same bits): every combination at B=1, 8, 64 in one process (3 interleaved rounds,
# medians, speed-up over the plain path), the plain path against the `auto` part's defaults for
# the ring and ring_full rows, and per-kernel device times and the step span of the defaults,
# each knob off alone, all three off and staged forced (bench/profile_decode.py; under PDL
# compare the span, not the kernels' sum).  B=64 plans a cluster (no combine kernel: every knob is inert), so its rows are
# the no-regression / noise row: 8 variants of identical code show the sweep's spread.  Only with
# DECODE_AB=decode4 (it would push the default decode step past one call's budget).
# ~2.5 min (estimate).
decode4_parts() {
  local rows=$1 t=$2
  run_part decode4_sweep "$t" env SWAA_DECODE_VERBOSE=1 python bench/bench_decode_sweep.py \
    --set decode4 --batches 1,8,64 --rounds 3 --run "${STAMP}_decode4_sweep" --out "$rows"
  run_part decode4_plain "$t" env SWAA_DECODE_COMBINE_LOADS=serial SWAA_DECODE_ADVANCE=op \
    SWAA_DECODE_PDL=0 python bench/bench_decode.py --impls ring,ring_full --batches 1,8,64 \
    --run "${STAMP}_decode4_plain" --out "$rows"
  TAIL_LINES=70 run_part decode4_profile "$t" python bench/profile_decode.py --batches 1,8,64 \
    --variant default --variant SWAA_DECODE_COMBINE_LOADS=serial \
    --variant SWAA_DECODE_ADVANCE=op --variant SWAA_DECODE_PDL=0 \
    --variant SWAA_DECODE_COMBINE_LOADS=serial,SWAA_DECODE_ADVANCE=op,SWAA_DECODE_PDL=0 \
    --variant SWAA_DECODE_COMBINE_LOADS=staged
}

step_decode() {
  local rows=$STEP_DIR/decode.jsonl t=${DECODE_TIMEOUT:-240} splits cost
  # both timings in one process (rows carry `launch`): queued (GPU time, the README's) and host
  # (the host's launch latency included, as sessions 1-6 timed)
  run_part auto "$t" env SWAA_DECODE_VERBOSE=1 \
    python bench/bench_decode.py --launch queued,host --run "${STAMP}_auto" --out "$rows"
  if [[ ${DECODE_AB:-1} == decode4 ]]; then
    decode4_parts "$rows" "$t"
  elif [[ ${DECODE_AB:-1} == decode5 ]]; then
    # decode5: the split kernel's gather, one slot per tile (default) against one per key,
    # 5 interleaved rounds at B=1/8/64; then the per-key path's ring and ring_full rows beside
    # the auto part's (same bits either way: tests/test_decode_advance.py)
    run_part decode5_sweep "$t" env SWAA_DECODE_VERBOSE=1 python bench/bench_decode_sweep.py \
      --set decode5 --batches 1,8,64 --rounds 5 --run "${STAMP}_decode5_sweep" --out "$rows"
    run_part decode5_per_key "$t" env SWAA_DECODE_TILE_GATHER=0 python bench/bench_decode.py \
      --impls ring,ring_full --batches 1,8,64 --run "${STAMP}_decode5_per_key" --out "$rows"
  elif [[ ${DECODE_AB:-1} == 1 ]]; then
    # the plan's knobs forced, ring rows only (csrc/cuda/ring.cu lists them)
    run_part ab_cluster "$t" env SWAA_DECODE_COMBINE=cluster python bench/bench_decode.py \
      --impls ring,ring_full --batches 1,8,64 --run "${STAMP}_combine_cluster" --out "$rows"
    run_part ab_global "$t" env SWAA_DECODE_COMBINE=global python bench/bench_decode.py \
      --impls ring,ring_full --batches 1,8,64 --run "${STAMP}_combine_global" --out "$rows"
    run_part ab_global_nopdl "$t" env SWAA_DECODE_COMBINE=global SWAA_DECODE_PDL=0 \
      python bench/bench_decode.py --impls ring,ring_full --batches 1,8 \
      --run "${STAMP}_global_nopdl" --out "$rows"
    for splits in 66 132; do  # B=1: 2 and 4 waves of CTAs on 132 SMs at Hkv=8
      run_part "ab_splits_$splits" "$t" env SWAA_DECODE_SPLITS=$splits python bench/bench_decode.py \
        --impls ring,ring_full --batches 1 --run "${STAMP}_splits_$splits" --out "$rows"
    done
    # B=8: every split count with each combine (session 4: bw_fraction 0.74 with the auto plan)
    for splits in 1 2 3 4 5 6 7 8; do
      run_part "b8_cluster_$splits" "$t" env SWAA_DECODE_COMBINE=cluster SWAA_DECODE_SPLITS=$splits \
        python bench/bench_decode.py --impls ring --batches 8 --budget 1 \
        --run "${STAMP}_b8_cluster_$splits" --out "$rows"
    done
    for splits in 2 3 4 6 8 12 16; do
      run_part "b8_global_$splits" "$t" env SWAA_DECODE_COMBINE=global SWAA_DECODE_SPLITS=$splits \
        python bench/bench_decode.py --impls ring --batches 8 --budget 1 \
        --run "${STAMP}_b8_global_$splits" --out "$rows"
    done
    # B=8: the split kernel's off-by-default variants in one process (decode3: combine kernel |
    # fused x tiling x balanced splits x split count, 3 interleaved rounds, medians printed)
    run_part b8_sweep "$t" env SWAA_DECODE_VERBOSE=1 python bench/bench_decode_sweep.py \
      --batch 8 --rounds 3 --run "${STAMP}_b8_sweep" --out "$rows"
    run_part ab_fused "$t" env SWAA_DECODE_GLOBAL_COMBINE=fused python bench/bench_decode.py \
      --impls ring,ring_full --batches 1,8,64 --run "${STAMP}_fused" --out "$rows"
    for cost in slots sm; do  # the planner's cost models (SWAA_DECODE_COST)
      run_part "cost_$cost" "$t" env SWAA_DECODE_VERBOSE=1 SWAA_DECODE_COST=$cost \
        python bench/bench_decode.py --impls ring,ring_full --batches 1,8,64 --budget 1 \
        --run "${STAMP}_cost_$cost" --out "$rows"
    done
  fi
  if [[ -n ${LEGACY:-} ]]; then  # the session-1 CUDA-core kernel as a same-run baseline
    run_part legacy "$t" env SWAA_RING_DECODE=legacy python bench/bench_decode.py --impls ring \
      --run "${STAMP}_legacy" --out "$rows"
  fi
  run_part memory "$t" python bench/bench_memory.py --out "$STEP_DIR/memory.jsonl"
  [[ -s $rows ]] || return
  TAIL_LINES=80 run_part summary 60 python bench/bench_decode.py --summary-from "$rows"
}

step_loop() {
  local rows=$STEP_DIR/decode_loop.jsonl
  if [[ ${LOOPC_ONLY_STEP:-0} != 1 ]]; then
    # 4 layers of the Qwen3-4B shape: kernels per layer are what matter
    run_part count_step_kernels 100 python bench/count_step_kernels.py --layers 4 \
      --out "$STEP_DIR/step_kernels.jsonl"
    # shellcheck disable=SC2086
    if [[ ${LOOPC_HF:-0} == 1 ]]; then
      run_part decode_loop 480 python bench/bench_decode_loop.py --layers 36 --prompt 4096 \
        --new 64 --batch 1 8 --presets naive --reps 2 --compile ${LOOP_ARGS:-} --out "$rows"
    else
      run_part decode_loop 260 python bench/bench_decode_loop.py --layers 36 --prompt 4096 \
        --new 64 --batch 1 8 --presets naive --reps 2 --compile --only-ours ${LOOP_ARGS:-} \
        --out "$rows"
    fi
  fi
  if [[ ${LOOPC_STEP:-0} == 1 ]]; then
    run_part decode_loop_step_scope 420 python bench/bench_decode_loop.py --layers 36 \
      --prompt 4096 --new 64 --batch 1 --presets --reps 2 --compile --compile-scope step \
      --only-ours --out "$rows"
  fi
}

step_e2e() {
  local rows
  # shellcheck disable=SC2086
  run_part bench_e2e "${E2E_TIMEOUT:-540}" env SWAA_RESULTS_DIR="$STEP_DIR" \
    python bench/bench_e2e.py ${E2E_ARGS:---preset quick} --plot "$STEP_DIR/e2e.png"
  # table, goals and plot again from the saved rows (appended after each configuration)
  for rows in "$STEP_DIR"/e2e_*.jsonl; do
    [[ -f $rows ]] || continue
    TAIL_LINES=40 run_part e2e_table 60 python bench/bench_e2e.py --plot-from "$rows" \
      --run latest --plot "$STEP_DIR/e2e.png"
  done
}

step_pack() {
  # shellcheck disable=SC2086
  run_part pack_sink 150 python bench/bench_pack.py --preset sink ${PACK_ARGS:-} \
    --out "$STEP_DIR/pack.jsonl"
  # shellcheck disable=SC2086
  run_part pack_sink_answer_full 150 python bench/bench_pack.py --preset sink --answer-full \
    ${PACK_ARGS:-} --out "$STEP_DIR/pack.jsonl"
  # shellcheck disable=SC2086
  run_part pack_full 150 python bench/bench_pack.py --preset full ${PACK_ARGS:-} \
    --out "$STEP_DIR/pack.jsonl"
}

QUALITY_MODEL=swaa_ext/data/demo_model  # the packaged model = recipe b of session 2
# quality finetune's default CONFIGS: the ten configurations session 2 left without fine-tuned rows
FINETUNE_CONFIGS=full,sink,quarter_full,sink+half_full,sink+quarter_full,fa_decode+half_full,\
fa_decode+quarter_full,sink+fa_decode+half_full,sink+fa_decode+quarter_full,full_tail

step_quality() {
  case ${QUALITY:-finetune} in
  finetune) quality_finetune ;;
  pretrain) quality_pretrain ;;
  ddp) quality_ddp ;;
  *) DETAIL="unknown QUALITY=$QUALITY (finetune, pretrain or ddp)"; FAILED+=(quality) ;;
  esac
}

# LoRA fine-tuned rows (200 steps at 2k/4k/8k, window 512), the settings of session 2's run
# 20261128T062640Z-1ed536; rows are appended per configuration, so the time limit keeps them.
quality_finetune() {
  local configs=${CONFIGS:-$FINETUNE_CONFIGS}
  OK_CODES="0 124" run_part finetune "${FT_S:-480}" env SWAA_RESULTS_DIR="$STEP_DIR" \
    python bench/quality/evaluate.py --model "$QUALITY_MODEL" --window 512 --per-cell 4 \
    --finetune --no-untrained --ft-steps 200 --ft-contexts 2048,4096,8192 --configs "$configs" \
    --no-progress --no-plot
}

# Three recipes side by side (the model is small: one process leaves most of the GPU idle), the
# one whose value-digit loss ends lowest, then its untrained grid.
quality_pretrain() {
  local runs=$STEP_DIR/runs budget=${BUDGET_S:-360} seq=${SEQ_LEN:-16384} lim r best pids=()
  if ! lim=$(limit $((budget + 120))); then
    SKIPPED+=(pretrain)
    return
  fi
  echo "--- $(date -u +%H:%M:%S) pretraining a, b, c side by side, $budget s each (at most $lim s)"
  timeout --kill-after=10 "$lim" python bench/quality/pretrain.py --out "$runs/a" --seq-len "$seq" \
    --max-steps 40000 --time-budget-s "$budget" --checkpoint-every 0 --no-progress \
    --retrieval-frac 0.5 --dense-frac 0.5 --lr 1e-3 --min-seq-len 512 > "$STEP_DIR/pretrain_a.log" 2>&1 &
  pids+=($!)
  timeout --kill-after=10 "$lim" python bench/quality/pretrain.py --out "$runs/b" --seq-len "$seq" \
    --max-steps 40000 --time-budget-s "$budget" --checkpoint-every 0 --no-progress \
    --retrieval-frac 0.8 --dense-frac 0.8 --lr 2e-3 --min-seq-len 256 > "$STEP_DIR/pretrain_b.log" 2>&1 &
  pids+=($!)
  timeout --kill-after=10 "$lim" python bench/quality/pretrain.py --out "$runs/c" --seq-len "$seq" \
    --max-steps 40000 --time-budget-s "$budget" --checkpoint-every 0 --no-progress \
    --retrieval-frac 0.8 --dense-frac 0.8 --lr 1e-3 --min-seq-len 256 --answer-weight 8 \
    > "$STEP_DIR/pretrain_c.log" 2>&1 &
  pids+=($!)
  for r in "${pids[@]}"; do wait "$r" || FAILED+=("pretrain(pid $r)"); done
  for r in a b c; do tail -n 2 "$STEP_DIR/pretrain_$r.log"; done
  TAIL_LINES=5 run_part best 60 python - "$runs" a b c <<'PY' || return
import json, math, sys
from pathlib import Path
runs, names = Path(sys.argv[1]), sys.argv[2:]
best = None
for n in names:
    rows = [json.loads(l) for l in open(runs / n / "pretrain_log.jsonl")]
    vals = [r["value_loss"] for r in rows[-300:] if not math.isnan(r["value_loss"])]
    v = sum(vals) / max(1, len(vals))
    lm = sum(r["lm_loss"] for r in rows[-300:]) / max(1, len(rows[-300:]))
    print(f"recipe {n}: {len(rows)} steps, {rows[-1]['seq_len']} tokens last, lm_loss {lm:.3f}, "
          f"value_loss {v:.3f}")
    if best is None or v < best[1]:
        best = (n, v)
print(f"best {best[0]}")
PY
  best=$(tail -n 1 "$STEP_DIR/best.log" | awk '{print $2}')
  OK_CODES="0 124" run_part eval "${EVAL_S:-150}" env SWAA_RESULTS_DIR="$STEP_DIR" \
    python bench/quality/evaluate.py --model "$runs/$best" --window 512 --per-cell 4 \
    --no-progress --no-plot
  for r in a b c; do  # the models stay out of the step's archive: too big for one file
    tar czf "$OUT/pretrain_$r.tgz" -C "$runs" "$r" && rm -rf "${runs:?}/$r"
  done
  DETAIL="best recipe $best; models in \$OUT/pretrain_<recipe>.tgz;"
}

# LoRA fine-tuning under torchrun, 2 processes (nccl), one per GPU: same losses and weights?
quality_ddp() {
  run_part data 120 python bench/quality/data.py --out "$STEP_DIR/ft.jsonl" --contexts 2048,4096 \
    --per-cell 20 || return
  run_part torchrun 400 torchrun --nproc-per-node 2 -m swaa_ext.cli finetune \
    --model "$QUALITY_MODEL" --tokenizer bytes --data "$STEP_DIR/ft.jsonl" --out "$STEP_DIR/ddp" \
    --preset sink+fa_decode --window 512 --max-steps "${DDP_STEPS:-100}" --batch-size 1 \
    --grad-accum 2 --bf16 --no-progress --rank-summary || return
  run_part compare_ranks 60 python - "$STEP_DIR/ddp" <<'PY'
import json, sys
from pathlib import Path
r = [json.loads((Path(sys.argv[1]) / f"rank{i}.json").read_text()) for i in (0, 1)]
print("world", r[0]["world"], r[1]["world"], "steps", r[0]["steps"], r[1]["steps"])
same = r[0]["losses"] == r[1]["losses"] and r[0]["weights"] == r[1]["weights"]
print("same losses on both ranks:", r[0]["losses"] == r[1]["losses"],
      "same weights:", r[0]["weights"] == r[1]["weights"])
print("loss first/last:", r[0]["losses"][0], r[0]["losses"][-1])
sys.exit(0 if same else 1)
PY
}

# --- main --------------------------------------------------------------------------------------

# expand_steps <arg ...>: STEPS, in order, once each, the build first (it skips itself with
# SKIP_BUILD=1).
expand_steps() {
  local arg
  STEPS=(build)
  for arg in "$@"; do
    if [[ $arg == all ]]; then
      # what fits one 10-minute device call (header); set a variable to override its default
      : "${TESTS=$(grep -l 'pytest.mark.cuda' tests/test_*.py)}" "${TEST_ARGS=-m cuda}"
      : "${DECODE_AB=0}" "${BENCH_ARGS=--S 4 --N 8192 32768}"
      add_steps test sanitize decode bench
    else
      add_steps "$arg"
    fi
  done
}

add_steps() {
  local s
  for s in "$@"; do
    [[ " ${STEPS[*]} " == *" $s "* ]] || STEPS+=("$s")
  done
}

main() {
  local arg
  (($#)) || { usage; exit 2; }
  for arg in "$@"; do
    [[ " ${STEPS_KNOWN[*]} " == *" $arg "* ]] || { echo "unknown step: $arg"; usage; exit 2; }
  done
  setup
  expand_steps "$@"
  PACK=${PACK_NAME:-gpu_check_$(IFS=_; echo "${*}").tgz}
  header
  STATUS=0
  local step
  for step in "${STEPS[@]}"; do
    run_step "$step" || break
  done
  log_line "done, status $STATUS, $SECONDS s; everything in $OUT/$PACK"
  pack
  rm -rf "$STAGE"
  exit $STATUS
}

main "$@"
