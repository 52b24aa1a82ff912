#!/usr/bin/env bash
# One device call for the Hopper forward (docs/cuda_kernels.md, "v5"): build,
# a smoke test under a short timeout (a hang or crash there skips the rest of
# the Hopper steps), the Hopper tests, the forward tests with
# SWAA_FWD_HOPPER=1 and 0, compute-sanitizer memcheck of one Hopper call, the
# forward tuning rows (SWAA_FWD_HOPPER=1/2/0 side by side) and the forward
# benchmark (BENCH=mine: swaa vs flex vs sdpa, then swaa with the overlapped
# Hopper variant and with the sm_80 forward).  Logs and JSONL in $OUT (default ./gpu_out), all output also in $OUT/log.
#
#   SWAA_COMMIT=<hash> SWAA_GIT_COMMIT=<hash> bash bench/wgmma_gpu.sh
# Expected on an H100/H200: about 5 minutes (build ~1.5, tests ~2, tuning + benchmark ~1.5).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

gpu_build
CUOBJDUMP=${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump
if [[ -x $CUOBJDUMP ]]; then
  step "SASS of the Hopper kernel (HGMMA = wgmma, UTMALDG = TMA loads)"
  $CUOBJDUMP -sass swaa_ext/_C*.so 2>/dev/null | awk '/Function : .*fwd_sm90/{on=1} /Function : /&&!/fwd_sm90/{on=0} on' \
    > "$OUT/fwd_sm90.sass" || true
  grep -o -E "HGMMA[.0-9a-zA-Z]*|UTMALDG[.0-9A-Z]*|USETMAXREG[.A-Z]*" "$OUT/fwd_sm90.sass" | sort | uniq -c
fi

step "smoke: one Hopper forward against the sm_80 forward (60 s limit)"
timeout 60 python - <<'PY'
import os, torch, swaa_ext
ok = True
for D in (128, 64):
    q = torch.randn(1, 4, 1000, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 1000, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    os.environ["SWAA_FWD_HOPPER"] = "1"
    print(f"D={D} path:", torch.ops.swaa.fwd_path(q, k, v))
    o1, l1 = torch.ops.swaa.fwd(q, k, v, 300, 4, None, 0.088)
    torch.cuda.synchronize()
    # window 1: P = 1 exactly, so out == v bitwise (checks P V) and lse == scale q.k (checks Q K^T)
    o, l = torch.ops.swaa.fwd(q, k, v, 1, 0, None, 0.1)
    rep = torch.arange(4, device="cuda") // 2
    print(f"  window 1: out == v: {torch.equal(o, v[:, rep])}, max |lse - scale q.k|: "
          f"{(l - (q.float() * k[:, rep].float()).sum(-1) * 0.1).abs().max().item():.3g}")
    os.environ["SWAA_FWD_HOPPER"] = "2"
    o2, l2 = torch.ops.swaa.fwd(q, k, v, 300, 4, None, 0.088)
    print(f"  SWAA_FWD_HOPPER=2 ({torch.ops.swaa.fwd_path(q, k, v)}) equal to 1: "
          f"{torch.equal(o1, o2) and torch.equal(l1, l2)}")
    os.environ["SWAA_FWD_HOPPER"] = "0"
    o0, l0 = torch.ops.swaa.fwd(q, k, v, 300, 4, None, 0.088)
    for name, o, l in (("1", o1, l1), ("2", o2, l2)):
        d_out = (o.float() - o0.float()).abs().max().item()
        d_lse = (l - l0).abs().max().item()
        print(f"  SWAA_FWD_HOPPER={name} vs sm_80 forward: max |out diff| {d_out:.3g}, "
              f"max |lse diff| {d_lse:.3g}")
        ok = ok and d_out < 2e-2 and d_lse < 1e-3
assert ok, "Hopper forward disagrees with the sm_80 forward"
PY
smoke=$?
echo "smoke exit code $smoke"
[[ $smoke == 0 ]] || status=1

if [[ $smoke == 0 ]]; then
  step "tests: tests/test_attention_hopper.py (SWAA_POISON_OUTPUTS=1)"
  SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-200} python -X faulthandler -m pytest -q -ra \
    --maxfail=10 -p no:cacheprovider tests/test_attention_hopper.py > "$OUT/pytest_hopper.log" 2>&1
  rc=$?; tail -25 "$OUT/pytest_hopper.log"; echo "exit code $rc"; [[ $rc == 0 ]] || status=1

  step "tests: forward tests of tests/test_attention_cuda.py with both forwards (fwd_kernel = sm80 / sm90)"
  SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-200} python -X faulthandler -m pytest -q -ra \
    --maxfail=10 -p no:cacheprovider tests/test_attention_cuda.py \
    -k "test_matches_reference or test_strided_inputs or test_poisoned or test_tuning_knobs or test_scheduling_knobs" \
    > "$OUT/pytest_cuda_fwd.log" 2>&1
  rc=$?; tail -25 "$OUT/pytest_cuda_fwd.log"; echo "exit code $rc"; [[ $rc == 0 ]] || status=1

  step "compute-sanitizer memcheck of Hopper forwards"
  timeout 120 ${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer --tool memcheck --error-exitcode 3 \
    python -c "
import torch, swaa_ext
for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 2, 1, 97, 300, 40, 3, 128), (2, 4, 2, 257, 257, None, 0, 64)]:
    q = torch.randn(B, Hq, Lq, D, device='cuda', dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, Lk, D, device='cuda', dtype=torch.bfloat16)
    assert torch.ops.swaa.fwd_path(q, k, k) == 'sm90'
    torch.ops.swaa.fwd(q, k, k, w, s, None, 0.1)
torch.cuda.synchronize(); print('memcheck case done')
" > "$OUT/sanitizer_memcheck_hopper.log" 2>&1
  rc=$?; tail -6 "$OUT/sanitizer_memcheck_hopper.log"; echo "memcheck exit code $rc"; [[ $rc == 0 ]] || status=1
fi

step "forward tuning rows: SWAA_FWD_HOPPER=1 vs 0 (and the sm_80 knobs)"
timeout ${TUNE_TIMEOUT:-150} python bench/tune_cuda_kernels.py --fwd-only --out "$OUT/cuda_tuning_fwd.jsonl" || status=1

# The issue's N and W at S=4 (the tuning rows above cover S=0/128 and full_from);
# BENCH_ARGS overrides.
BENCH_ARGS=${BENCH_ARGS:---D 128 64 --N 8192 32768 131072 --W 1024 4096 --S 4}
step "forward benchmark (BENCH=mine): swaa (Hopper forward) vs flex vs sdpa: $BENCH_ARGS"
timeout ${BENCH_TIMEOUT:-200} python bench/bench_cuda_kernels.py --passes fwd $BENCH_ARGS \
  --out "$OUT/cuda_kernels_fwd_hopper.jsonl" || status=1
step "forward benchmark: swaa with the overlapped Hopper variant (SWAA_FWD_HOPPER=2)"
SWAA_FWD_HOPPER=2 timeout ${BENCH_TIMEOUT:-120} python bench/bench_cuda_kernels.py --passes fwd $BENCH_ARGS \
  --impls swaa --out "$OUT/cuda_kernels_fwd_hopper_overlap.jsonl" || status=1
step "forward benchmark: swaa with the sm_80 forward (SWAA_FWD_HOPPER=0)"
SWAA_FWD_HOPPER=0 timeout ${BENCH_TIMEOUT:-120} python bench/bench_cuda_kernels.py --passes fwd $BENCH_ARGS \
  --impls swaa --out "$OUT/cuda_kernels_fwd_sm80.jsonl" || status=1

step "done, status $status"
exit $status
