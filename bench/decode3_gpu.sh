#!/usr/bin/env bash
# One GPU call for decode3 (issue 4's last goal: ring decode at B = 8 at >= 0.8 of copy bandwidth):
#   1. build (SKIP_BUILD=1: already built in place), resource usage of the decode kernels
#   2. tests/test_cache.py, tests/test_decode_fused.py (fused combine == combine kernel bit for
#      bit, tilings, graph capture + 50 replays, many streams) and tests/test_decode_plan.py, with
#      outputs poisoned (SWAA_POISON_OUTPUTS=1: anything a kernel forgets to write is NaN)
#   3. bench/bench_decode_sweep.py at B = 8: SWAA_DECODE_GLOBAL_COMBINE kernel | fused x tilings
#      (SWAA_DECODE_TILE x SWAA_DECODE_STAGES: 64x3 default, 64x2, 32x4, 32x6) x splits
#      (auto, 2..8 global), 3 interleaved rounds, one process
#   4. bench/bench_decode.py with the default plan, every impl, B = 1, 8, 64 (issue 4's rows, fresh),
#      then the ring rows again with SWAA_DECODE_GLOBAL_COMBINE=fused
# Everything goes to $OUT (default ./gpu_out): log, decode3_<GPU>.jsonl, and decode3_out.tgz with
# every file (pytest logs, build log, resource usage, jsonl).
# Expected runtime on one H100 / H200: build ~2 min (85 s in session 4; ring.cu now holds 14
# split-kernel instantiations, 8 before), tests ~40 s (test_cache.py took 18 s in session 3),
# sweep ~30 s (384 graph-timed variants), bench_decode ~20 s + ~10 s: about 2 minutes after the
# build, 4 in all (plus the machine's start).
#
#   SWAA_COMMIT=<hash> bash bench/decode3_gpu.sh
#   SKIP_BUILD=1 bash bench/decode3_gpu.sh
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

GPU=$(python -c "import torch; n = torch.cuda.get_device_name(); print('H200' if 'H200' in n else 'H100' if 'H100' in n else n.replace(' ', '_'))")
echo "gpu tag: $GPU"
JSONL="$OUT/decode3_${GPU}.jsonl"

gpu_build

step "resource usage of the decode kernels (registers, spills, shared memory)"
SO=$(python -c "import swaa_ext._C as c; print(c.__file__)")
${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump -res-usage "$SO" 2>/dev/null \
  | grep -A1 "ring_decode_split\|ring_decode_combine" | grep -v "^--" > "$OUT/decode_res_usage.txt" || true
cat "$OUT/decode_res_usage.txt"

step "tests (SWAA_POISON_OUTPUTS=1): test_cache.py test_decode_fused.py test_decode_plan.py"
SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-420} python -X faulthandler -m pytest -q -ra \
  -p no:cacheprovider tests/test_cache.py tests/test_decode_fused.py tests/test_decode_plan.py \
  > "$OUT/pytest_decode3.log" 2>&1
rc=$?
tail -30 "$OUT/pytest_decode3.log"
echo "tests exit code $rc"
[[ $rc == 0 ]] || status=1

step "B = 8 sweep: combine x tiling x splits (3 rounds)"
SWAA_DECODE_VERBOSE=1 timeout ${BENCH_TIMEOUT:-300} python bench/bench_decode_sweep.py --batch 8 \
  --rounds 3 --run decode3_b8_sweep --out "$JSONL" || status=1

bench() {  # bench <run label> <env assignments...> -- <bench_decode.py args...>
  local run=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  step "bench_decode: $run ${envs[*]}"
  env SWAA_DECODE_VERBOSE=1 "${envs[@]}" timeout ${BENCH_TIMEOUT:-300} \
    python bench/bench_decode.py --run "$run" --out "$JSONL" "$@" || status=1
}
bench decode3_default --
bench decode3_fused SWAA_DECODE_GLOBAL_COMBINE=fused -- --impls ring,ring_full --batches 1,8,64

step "summary: bench_decode rows (ms per decode step; bw_fraction in brackets)"
python - "$JSONL" <<'PY' || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if r["run"] in ("decode3_default", "decode3_fused")]
runs = list(dict.fromkeys(r["run"] for r in rows))
keys = list(dict.fromkeys((r["impl"], r["B"]) for r in rows))
print(f"{'impl':18s} {'B':>3s} " + " ".join(f"{r:>22s}" for r in runs))
for impl, B in keys:
    cells = []
    for run in runs:
        m = [r for r in rows if r["run"] == run and r["impl"] == impl and r["B"] == B]
        cells.append(f"{m[-1]['ms']:.4f} ({m[-1]['bw_fraction']:.3f})" if m else "-")
    print(f"{impl:18s} {B:3d} " + " ".join(f"{c:>22s}" for c in cells))
PY

step "pack"
tar czf "$OUT/decode3_out.tgz" -C "$OUT" --exclude decode3_out.tgz . 2>/dev/null || true
ls -la "$OUT"
step "done, status $status"
exit $status
