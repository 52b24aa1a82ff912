#!/usr/bin/env bash
# One device call for the Hopper forward v5.1 (docs/cuda_kernels.md, "v5.1"):
# SWAA_FWD_HOPPER=3 (v5.1) and 4 (v5.1 + ping-pong), both written without a GPU.
#
#   SWAA_COMMIT=<hash> SWAA_GIT_COMMIT=<hash> bash bench/fwd51_gpu.sh
#
# Steps (each under its own timeout; a step that would not fit in the call's
# budget, FWD51_BUDGET seconds from the start (default 560), is skipped and
# says so):
#   build (~70 s on 16 cores), SASS counts of the v5.1 kernels;
#   smoke of each new variant under `timeout 60` (a hang or a wrong result
#     drops that variant from every later step);
#   tests/test_attention_hopper.py for the surviving new variants (plus the
#     path test), SWAA_POISON_OUTPUTS=1;
#   compute-sanitizer memcheck of both new variants (one process, D=64/128);
#   bench/fwd51_compare.py: SWAA_FWD_HOPPER=1/2/3/4 side by side on the 12
#     shapes (S=4), fastest variant per head dim;
#   bench/bench_cuda_kernels.py --passes fwd --S 4: swaa (fastest variant of
#     that head dim) vs flex vs sdpa, D=128 then D=64;
#   if time is left: the forward tests of tests/test_attention_cuda.py with
#     the new variants.
# Everything lands in $OUT (default ./gpu_out) and is packed into
# $OUT/fwd51.tgz at the end; the combined output is in $OUT/log.
# Expected on an H100/H200: ~5 min (build 70 s, smoke 30 s, tests ~90 s,
# memcheck ~40 s, variants ~40 s, benchmark ~60 s).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
T0=$SECONDS
BUDGET=${FWD51_BUDGET:-560}
status=0
fits() {  # fits <seconds>: true when a step of that length still fits the budget
  if (( SECONDS - T0 + $1 > BUDGET )); then
    echo "SKIPPED (needs ~$1 s, $((BUDGET - SECONDS + T0)) s left)"; return 1
  fi
}
pack() {
  step "pack $OUT/fwd51.tgz"
  (cd "$OUT" && tar czf fwd51.tgz --exclude fwd51.tgz ./*) || true
  ls -la "$OUT"
}
trap pack EXIT

step "GPU"
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
for v in 3 4; do
  step "smoke: SWAA_FWD_HOPPER=$v (60 s limit)"
  timeout --kill-after=5 60 python bench/fwd51_smoke.py $v 2>&1 | tee "$OUT/smoke_$v.log"
  rc=$?
  echo "smoke $v exit code $rc"
  if [[ $rc == 0 ]]; then variants="${variants:+$variants,}$v"; else status=1; fi
done
echo "variants that passed the smoke test: ${variants:-none}"

if [[ -n $variants ]]; then
  step "tests: tests/test_attention_hopper.py, SWAA_TEST_HOPPER_VARIANTS=$variants"
  if fits 150; then
    SWAA_TEST_HOPPER_VARIANTS=$variants SWAA_POISON_OUTPUTS=1 timeout --kill-after=5 150 \
      python -X faulthandler -m pytest -q -ra --maxfail=10 -p no:cacheprovider \
      tests/test_attention_hopper.py > "$OUT/pytest_hopper_fwd51.log" 2>&1
    rc=$?; tail -25 "$OUT/pytest_hopper_fwd51.log"; echo "exit code $rc"; [[ $rc == 0 ]] || status=1
  fi

  step "compute-sanitizer memcheck of SWAA_FWD_HOPPER=$variants"
  if fits 100; then
    SANITIZE_VARIANTS=$variants timeout --kill-after=5 100 \
      ${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer --tool memcheck --error-exitcode 3 \
      python -c "
import os, torch, swaa_ext
for knob in os.environ['SANITIZE_VARIANTS'].split(','):
    os.environ['SWAA_FWD_HOPPER'] = knob
    for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 2, 1, 97, 300, 40, 3, 128), (2, 4, 2, 257, 257, None, 0, 64),
                                          (1, 2, 2, 385, 385, 1, 1, 64)]:
        q = torch.randn(B, Hq, Lq, D, device='cuda', dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, Lk, D, device='cuda', dtype=torch.bfloat16)
        print(knob, torch.ops.swaa.fwd_path(q, k, k), flush=True)
        torch.ops.swaa.fwd(q, k, k, w, s, None, 0.1)
    torch.cuda.synchronize()
print('memcheck cases done')
" > "$OUT/sanitizer_memcheck_fwd51.log" 2>&1
    rc=$?; tail -8 "$OUT/sanitizer_memcheck_fwd51.log"; echo "memcheck exit code $rc"
    [[ $rc == 0 ]] || status=1
  fi
fi

step "variants side by side: SWAA_FWD_HOPPER=1 2 ${variants//,/ } on the 12 shapes (S=4)"
if fits 90; then
  timeout --kill-after=5 90 python bench/fwd51_compare.py --variants 1 2 ${variants//,/ } \
    --out "$OUT/fwd51_variants.jsonl" --best-out "$OUT/best_variant.txt" || status=1
fi
best_of() {  # best_of <D>: the fastest variant of that head dim (1 when unknown)
  local b; b=$(awk -v d="$1" '$1 == d {print $2}' "$OUT/best_variant.txt" 2>/dev/null)
  echo "${b:-1}"
}

for D in 128 64; do
  best=$(best_of $D)
  step "forward benchmark D=$D: swaa (SWAA_FWD_HOPPER=$best) vs flex vs sdpa, N 8k/32k/128k, W 1024/4096, S=4"
  if fits 100; then
    SWAA_FWD_HOPPER=$best timeout --kill-after=5 100 python bench/bench_cuda_kernels.py --passes fwd \
      --D $D --N 8192 32768 131072 --W 1024 4096 --S 4 --out "$OUT/cuda_kernels_fwd51.jsonl" \
      || status=1
  fi
done

if [[ -n $variants ]]; then
  step "tests: forward tests of tests/test_attention_cuda.py, SWAA_TEST_HOPPER_VARIANTS=$variants"
  if fits 90; then
    SWAA_TEST_HOPPER_VARIANTS=$variants SWAA_POISON_OUTPUTS=1 timeout --kill-after=5 90 \
      python -X faulthandler -m pytest -q -ra --maxfail=10 -p no:cacheprovider \
      tests/test_attention_cuda.py -k "test_matches_reference or test_strided_inputs or test_poisoned" \
      > "$OUT/pytest_cuda_fwd51.log" 2>&1
    rc=$?; tail -15 "$OUT/pytest_cuda_fwd51.log"; echo "exit code $rc"; [[ $rc == 0 ]] || status=1
  fi
fi

step "done, status $status ($((SECONDS - T0)) s)"
exit $status
