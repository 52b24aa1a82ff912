#!/usr/bin/env bash
# Device calls for the Hopper forward v5.1 (docs/cuda_kernels.md, "v5.1"):
# SWAA_FWD_HOPPER=3 (v5.1), 4 (+ ping-pong), 5 (3 with persistent CTAs),
# 6 (4 with persistent CTAs), all written without a GPU.
#
#   SWAA_COMMIT=<hash> SWAA_GIT_COMMIT=<hash> bash bench/fwd51_gpu.sh [all|check|speed]
#   (device call: timeout 600)
#
#   all    (default, one call) smoke, variants side by side, tests, benchmark
#          D=128, memcheck, synccheck, benchmark D=64, forward tests of
#          test_attention_cuda.py: ~5.5 min incl. ~70 s build (from session 3's
#          timings: 457 Hopper tests in 13 s, the 12-shape benchmark with flex
#          and sdpa in 90 s, memcheck 5 s)
#   check  only the correctness steps (smoke, tests, memcheck, synccheck of the
#          ping-pong variants (informational), cuda tests): ~3.5 min
#   speed  only smoke, variants side by side, benchmark vs flex/sdpa: ~4 min
# Every step runs under its own timeout and is skipped when it would not fit
# in FWD51_BUDGET seconds from the start (default 560).  A variant whose
# smoke test (`timeout 60`) hangs or fails is dropped from every later step.
# Everything lands in $OUT (default ./gpu_out), packed into $OUT/fwd51.tgz at
# the end; the combined output is in $OUT/log.
source "$(dirname "$0")/gpu_lib.sh"
PART=${1:-all}
case $PART in all|check|speed) ;; *) echo "usage: fwd51_gpu.sh [all|check|speed]"; exit 2;; esac
gpu_setup
T0=$SECONDS
BUDGET=${FWD51_BUDGET:-560}
status=0
fits() {  # fits <seconds>: true when a step of that length still fits the budget
  if (( SECONDS - T0 + $1 > BUDGET )); then
    echo "SKIPPED (needs ~$1 s, $((BUDGET - SECONDS + T0)) s left)"; return 1
  fi
}
want() { [[ $PART == all || $PART == "$1" ]]; }
pack() {
  step "pack $OUT/fwd51.tgz"
  (cd "$OUT" && tar czf fwd51.tgz --exclude fwd51.tgz ./*) || true
  ls -la "$OUT"
}
trap pack EXIT

step "GPU ($PART)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

gpu_build
CUOBJDUMP=${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump
if [[ -x $CUOBJDUMP ]]; then
  step "SASS of the v5.1 kernels (HGMMA = wgmma, UTMALDG/UTMASTG = TMA load/store)"
  $CUOBJDUMP -sass swaa_ext/_C*.so 2>/dev/null | awk '/Function : .*fwd51_sm90/{on=1} /Function : /&&!/fwd51_sm90/{on=0} on' \
    > "$OUT/fwd51_sm90.sass" || true
  grep -o -E "HGMMA[.0-9a-zA-Z]*|UTMALDG[.0-9A-Z]*|UTMASTG[.0-9A-Z]*|USETMAXREG[.A-Z]*|BAR.(SYNC|ARV)[.A-Z_]*" \
    "$OUT/fwd51_sm90.sass" | sort | uniq -c
fi

variants=""
for v in 3 4 5 6; do
  step "smoke: SWAA_FWD_HOPPER=$v (60 s limit)"
  timeout --kill-after=5 60 python bench/fwd51_smoke.py $v 2>&1 | tee "$OUT/smoke_$v.log"
  rc=$?
  echo "smoke $v exit code $rc"
  if [[ $rc == 0 ]]; then variants="${variants:+$variants,}$v"; else status=1; fi
done
echo "variants that passed the smoke test: ${variants:-none}"

variants_side_by_side() {
  step "variants side by side: SWAA_FWD_HOPPER=1 2 ${variants//,/ } on the 12 shapes (S=4)"
  fits 90 || return 0
  timeout --kill-after=5 90 python bench/fwd51_compare.py --variants 1 2 ${variants//,/ } \
    --out "$OUT/fwd51_variants.jsonl" --best-out "$OUT/best_variant.txt" || status=1
}
hopper_tests() {
  step "tests: tests/test_attention_hopper.py, SWAA_TEST_HOPPER_VARIANTS=$variants"
  fits 200 || return 0
  SWAA_TEST_HOPPER_VARIANTS=$variants SWAA_POISON_OUTPUTS=1 timeout --kill-after=5 200 \
    python -X faulthandler -m pytest -q -ra --maxfail=10 -p no:cacheprovider \
    tests/test_attention_hopper.py > "$OUT/pytest_hopper_fwd51.log" 2>&1
  local rc=$?; tail -25 "$OUT/pytest_hopper_fwd51.log"; echo "exit code $rc"
  [[ $rc == 0 ]] || status=1
}
memcheck() {
  step "compute-sanitizer memcheck of SWAA_FWD_HOPPER=$variants"
  fits 90 || return 0
  SANITIZE_VARIANTS=$variants timeout --kill-after=5 90 \
    ${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer --tool memcheck --error-exitcode 3 \
    python -c "
import os, torch, swaa_ext
for knob in os.environ['SANITIZE_VARIANTS'].split(','):
    os.environ['SWAA_FWD_HOPPER'] = knob
    for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 2, 1, 97, 300, 40, 3, 128), (2, 4, 2, 257, 257, None, 0, 64),
                                          (1, 2, 2, 385, 385, 1, 1, 64), (2, 64, 8, 700, 700, 100, 4, 128)]:
        q = torch.randn(B, Hq, Lq, D, device='cuda', dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, Lk, D, device='cuda', dtype=torch.bfloat16)
        print(knob, torch.ops.swaa.fwd_path(q, k, k), flush=True)
        torch.ops.swaa.fwd(q, k, k, w, s, None, 0.1)
    torch.cuda.synchronize()
print('memcheck cases done')
" > "$OUT/sanitizer_memcheck_fwd51.log" 2>&1
  local rc=$?; tail -10 "$OUT/sanitizer_memcheck_fwd51.log"; echo "memcheck exit code $rc"
  [[ $rc == 0 ]] || status=1
}
synccheck() {  # informational: barrier misuse (divergent or mismatched bar.sync / bar.arrive)
  local pp; pp=$(echo "$variants" | tr ',' '\n' | grep -E '^(4|6)$' | paste -sd, -)
  step "compute-sanitizer synccheck of the ping-pong variants (${pp:-none}; informational)"
  [[ -n $pp ]] || return 0
  fits 60 || return 0
  SANITIZE_VARIANTS=$pp timeout --kill-after=5 60 \
    ${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer --tool synccheck --error-exitcode 3 \
    python -c "
import os, torch, swaa_ext
for knob in os.environ['SANITIZE_VARIANTS'].split(','):
    os.environ['SWAA_FWD_HOPPER'] = knob
    for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 2, 1, 97, 300, 40, 3, 128), (1, 2, 2, 385, 385, 1, 1, 64),
                                          (2, 64, 8, 700, 700, 100, 4, 128)]:
        q = torch.randn(B, Hq, Lq, D, device='cuda', dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, Lk, D, device='cuda', dtype=torch.bfloat16)
        torch.ops.swaa.fwd(q, k, k, w, s, None, 0.1)
    torch.cuda.synchronize()
print('synccheck cases done')
" > "$OUT/sanitizer_synccheck_fwd51.log" 2>&1
  local rc=$?; tail -10 "$OUT/sanitizer_synccheck_fwd51.log"; echo "synccheck exit code $rc (informational)"
}
best_of() {  # best_of <D>: the fastest variant of that head dim (1 when unknown)
  local b; b=$(awk -v d="$1" '$1 == d {print $2}' "$OUT/best_variant.txt" 2>/dev/null)
  echo "${b:-1}"
}
benchmark() {  # benchmark <D>
  local D=$1 best; best=$(best_of "$1")
  step "forward benchmark D=$D: swaa (SWAA_FWD_HOPPER=$best) vs flex vs sdpa, N 8k/32k/128k, W 1024/4096, S=4"
  fits 110 || return 0
  SWAA_FWD_HOPPER=$best timeout --kill-after=5 110 python bench/bench_cuda_kernels.py --passes fwd \
    --D "$D" --N 8192 32768 131072 --W 1024 4096 --S 4 --out "$OUT/cuda_kernels_fwd51.jsonl" \
    || status=1
}
cuda_tests() {
  step "tests: forward tests of tests/test_attention_cuda.py, SWAA_TEST_HOPPER_VARIANTS=$variants"
  fits 90 || return 0
  SWAA_TEST_HOPPER_VARIANTS=$variants SWAA_POISON_OUTPUTS=1 timeout --kill-after=5 90 \
    python -X faulthandler -m pytest -q -ra --maxfail=10 -p no:cacheprovider \
    tests/test_attention_cuda.py -k "test_matches_reference or test_strided_inputs" \
    > "$OUT/pytest_cuda_fwd51.log" 2>&1
  local rc=$?; tail -15 "$OUT/pytest_cuda_fwd51.log"; echo "exit code $rc"
  [[ $rc == 0 ]] || status=1
}

if [[ -n $variants ]]; then
  want speed && variants_side_by_side
  want check && hopper_tests
  want speed && benchmark 128
  want check && memcheck
  want check && synccheck
  want speed && benchmark 64
  want check && cuda_tests
fi

step "done, status $status ($((SECONDS - T0)) s)"
exit $status
