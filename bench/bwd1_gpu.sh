#!/usr/bin/env bash
# One device call for the single-pass Hopper backward (SWAA_BWD_HOPPER=4,
# csrc/cuda/hopper/bwd_fused_sm90.cuh, docs/cuda_kernels.md "v7"), written without a GPU:
#
#   SWAA_COMMIT=<hash> bash bench/bwd1_gpu.sh [all|check|bench]     (default: all)
#
# check (~3.5 min with the build): build (SKIP_BUILD=1 skips it), SASS counts of the fused
#   kernel, the host schedule check (tests/native/fused_schedule_check.cu), a smoke test under
#   `timeout 60` (a deadlock of the turn counters cannot eat the call: the Hopper steps after
#   it are skipped when it fails), the single-pass tests of tests/test_bwd_hopper.py,
#   compute-sanitizer memcheck + racecheck of bench/sanitize_case.py with SWAA_BWD_HOPPER=4
#   (and memcheck with SWAA_BWD_FUSED_DQ=1; SYNCCHECK=1 adds synccheck, ~25 s); RUN_REST=1
#   adds the rest of tests/test_bwd_hopper.py (the v6 tests, ~100 s);
# bench (~2.5 min): per-kernel times SWAA_BWD_HOPPER=1 vs 4 vs 4 with SWAA_BWD_FUSED_DQ=1
#   (bench/tune_cuda_kernels.py --bwd-fused) and fwd+bwd swaa (two passes) vs swaa-fused vs
#   swaa-fused-cols vs flex on the issue's shapes at N=32768 (BENCH_N="8192 32768" for both;
#   the tuning rows have N=8192, W=4096, S=0 anyway) (bench/bench_cuda_kernels.py).
# Estimates (never run): build ~70 s, schedule check 10 s, smoke 20 s, fused tests ~100 s,
# sanitizers ~60 s, tuning ~60 s, benchmark ~70 s: all ~6 min (check ~4, bench ~2.5);
# every step has its own time limit (worst case longer: give the call timeout 600, or run
# check and bench as two calls; a cut-short call still returns the finished steps).
# Outputs: $OUT/log (everything) and $OUT/bwd1.tgz (per-step logs, SASS, JSONL rows).
source "$(dirname "$0")/gpu_lib.sh"
PART=${1:-all}
gpu_setup
status=0
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
gpu_build
export SWAA_COMMIT=${SWAA_COMMIT:-unknown}

# Step outputs go to $OUT/bwd1/, re-packed into $OUT/bwd1.tgz after every step (if the device
# call is cut short, the archive still holds every finished step; $OUT/log has everything).
RES=$OUT/bwd1
mkdir -p "$RES"
pack() { tar czf "$OUT/bwd1.tgz" -C "$OUT" bwd1 2>/dev/null; }

run_step() {  # name, time limit (s), command...: output in $RES/<name>.log, tail shown
  local name=$1 limit=$2; shift 2
  step "$name (at most $limit s)"
  timeout --kill-after=10 "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  tail -${TAIL:-25} "$RES/$name.log"
  echo "$name exit code $rc"
  [[ $rc == 0 ]] || status=1
  pack
  return $rc
}

if [[ $PART == all || $PART == check ]]; then
  CUDA_BIN=${CUDA_HOME:-/usr/local/cuda}/bin
  if [[ -x $CUDA_BIN/cuobjdump ]]; then
    step "SASS of the fused kernel (HGMMA = wgmma, UBLKRED / UBLKCP = bulk add / copy, LDL/STL = spills)"
    $CUDA_BIN/cuobjdump -sass swaa_ext/_C*.so 2>/dev/null |
      awk '/Function : .*bwd_fused_sm90_kernel/{on=1} /Function : /&&!/bwd_fused_sm90_kernel/{on=0} on' \
      > "$RES/bwd_fused_sm90.sass" || true
    grep -o -E "HGMMA[.0-9a-zA-Z]*|UBLKRED[.A-Z0-9]*|UBLKCP[.A-Z]*|UTMALDG[.0-9A-Z]*|USETMAXREG[.A-Z]*|LDL|STL" \
      "$RES/bwd_fused_sm90.sass" | sort | uniq -c
  fi
  run_step schedule_check 60 bash -c "$CUDA_BIN/nvcc -std=c++20 -O2 \
    -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Icsrc -Icsrc/include \
    tests/native/fused_schedule_check.cu -o /tmp/fused_schedule_check && /tmp/fused_schedule_check v"

  step "smoke: SWAA_BWD_HOPPER=4 against 1 and 0 (60 s limit)"
  timeout --kill-after=5 60 python - <<'PY'
import os, time, torch, swaa_ext
ok = True
def bwd(knob, *a):
    os.environ["SWAA_BWD_HOPPER"] = knob
    r = torch.ops.swaa.bwd(*a)
    torch.cuda.synchronize()
    return r
for D in (128, 64):
    for (Hq, Hkv, L, W, S) in [(4, 2, 1000, 300, 4), (8, 2, 4096, 1024, 130), (2, 1, 8192, 4096, 0)]:
        g = torch.Generator(device="cuda").manual_seed(D + L)
        q = torch.randn(1, Hq, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
        do = torch.randn_like(q)
        out, lse = torch.ops.swaa.fwd(q, k, v, W, S, None, 0.088)
        args = (do, q, k, v, out, lse, W, S, None, 0.088)
        os.environ["SWAA_BWD_HOPPER"] = "4"
        path = torch.ops.swaa.bwd_path(do, q, k, v)
        t0 = time.time()
        g4 = bwd("4", *args)
        t4 = time.time() - t0
        g4b = bwd("4", *args)
        os.environ["SWAA_BWD_FUSED_DQ"] = "1"  # dQ split by columns (D=128; ignored at 64)
        g4c = bwd("4", *args)
        os.environ["SWAA_BWD_FUSED_DQ"] = "0"
        g1 = bwd("1", *args)
        g0 = bwd("0", *args)
        same = all(torch.equal(a, b) for a, b in zip(g4, g4b))
        dkdv = all(torch.equal(g[i], g1[i]) for g in (g4, g4c) for i in (1, 2))
        dcols = (g4c[0].float() - g4[0].float()).abs().max().item()
        print(f"D={D} Hq={Hq} Hkv={Hkv} L={L} W={W} S={S}: path {path}, first call {t4:.2f} s, "
              f"runs bitwise equal {same}, dk/dv == SWAA_BWD_HOPPER=1: {dkdv}, "
              f"|dq cols - dq keys| {dcols:.3g}")
        ok = ok and dcols <= 2e-2 * g0[0].float().abs().max().item()
        for name, a, b, c in zip(("dq", "dk", "dv"), g4, g1, g0):
            m = c.float().abs().max().item()
            d1 = (a.float() - b.float()).abs().max().item()
            d0 = (a.float() - c.float()).abs().max().item()
            d10 = (b.float() - c.float()).abs().max().item()
            print(f"  {name}: |4 - 1| {d1:.3g}, |4 - 0| {d0:.3g}, |1 - 0| {d10:.3g} (max |{name}| {m:.3g})")
            ok = ok and d0 <= 2e-2 * m and d10 <= 2e-2 * m
        ok = ok and same and dkdv and path == "sm90-fused"
assert ok, "single pass disagrees"
print("smoke ok")
PY
  smoke=$?
  echo "smoke exit code $smoke"
  [[ $smoke == 0 ]] || status=1
  pack

  if [[ $smoke == 0 ]]; then
    run_step pytest_fused ${TEST_TIMEOUT:-200} env SWAA_POISON_OUTPUTS=1 python -X faulthandler \
      -m pytest -q -ra --maxfail=20 -p no:cacheprovider tests/test_bwd_hopper.py -k "fused"
    SAN=$CUDA_BIN/compute-sanitizer
    for tool in memcheck racecheck ${SYNCCHECK:+synccheck}; do
      run_step sanitizer_${tool}_fused 100 env SWAA_BWD_HOPPER=4 "$SAN" --tool $tool \
        --error-exitcode 3 python bench/sanitize_case.py
    done
    run_step sanitizer_memcheck_fused_cols 100 env SWAA_BWD_HOPPER=4 SWAA_BWD_FUSED_DQ=1 "$SAN" \
      --tool memcheck --error-exitcode 3 python bench/sanitize_case.py
    if [[ -n ${RUN_REST:-} ]]; then  # the v6 tests (unchanged kernels; ~100 s)
      run_step pytest_rest ${TEST_TIMEOUT_REST:-180} env SWAA_POISON_OUTPUTS=1 python -X faulthandler \
        -m pytest -q -ra --maxfail=20 -p no:cacheprovider tests/test_bwd_hopper.py -k "not fused"
    fi
  fi
fi

if [[ $PART == all && ${smoke:-0} != 0 ]]; then
  echo "smoke failed: benchmark part skipped"
elif [[ $PART == all || $PART == bench ]]; then
  run_step tune_bwd_fused ${TUNE_TIMEOUT:-120} python bench/tune_cuda_kernels.py --bwd-fused \
    --out "$RES/cuda_tuning_bwd_fused.jsonl"
  python - "$RES/cuda_tuning_bwd_fused.jsonl" <<'PY' || true
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if r["what"] == "bwd":
        print(f"bwd {r['knob']:20s} D={r['D']:<3d} N={r['N']:<6d} W={r['W']:<4d} S={r['S']:<3d} "
              f"ff={r['full_from']} {r['ms']:8.3f} ms  max diff to default {r['max_diff_to_default']:.3g}")
    elif r["what"] == "kernel_ms":
        print(f"kernels {r['knob']:16s} D={r['D']} N={r['N']} W={r['W']} S={r['S']}: {r['kernels']}")
PY
  run_step bench_fused ${BENCH_TIMEOUT:-200} python bench/bench_cuda_kernels.py \
    --impls swaa swaa-fused swaa-fused-cols flex --passes fwd+bwd --D 128 64 --N ${BENCH_N:-32768} \
    --W 1024 4096 --S 0 4 --reps 10 --warmup 2 --out "$RES/cuda_kernels_bwd_fused.jsonl"
  python - "$RES/cuda_kernels_bwd_fused.jsonl" <<'PY' || true
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault((r["D"], r["N"], r["W"], r["S"]), {})[r["impl"]] = r["ms"]
print("fwd+bwd ms: D N W S | swaa (2 passes) | swaa-fused | swaa-fused-cols | flex "
      "| flex/swaa | flex/fused | flex/fused-cols")
for key, m in sorted(by.items()):
    a, b, c, f = (m.get(i) for i in ("swaa", "swaa-fused", "swaa-fused-cols", "flex"))
    if a and b and c and f:
        print(f"{key}: {a:.3f} | {b:.3f} | {c:.3f} | {f:.3f} | {f / a:.2f}x | {f / b:.2f}x "
              f"| {f / c:.2f}x")
PY
fi

step "done, status $status"
pack
exit $status
