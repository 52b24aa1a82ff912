#!/usr/bin/env bash
# One GPU call for the ring decode kernel (issues 4 and 7): build, tests/test_cache.py
# with outputs poisoned (NaN), the decode kernels' resource usage, then bench/bench_decode.py with
# the default plan (all impls, incl. ring_full_<L>: our decode over a long
# never-wrapping ring next to SDPA's full_<L>) and with the plan knobs forced
# (ring rows only) as same-run A/B:
#   combine_cluster  SWAA_DECODE_COMBINE=cluster (<= 8 splits, one launch;
#                    the session-2 kernel, now planned from real cluster occupancy)
#   combine_global   SWAA_DECODE_COMBINE=global  (fp32 partials + combine kernel)
#   global_pdl       the same with the combine as a programmatic dependent launch
#   splits_66/132    B = 1 only, 2 and 4 waves of CTAs on 132 SMs x 2 at Hkv = 8
# SWAA_DECODE_VERBOSE=1 logs each distinct plan (splits, combine) once.
# Everything goes to $OUT (default ./gpu_out); the whole output also to $OUT/log.
# Expected runtime on one H100/H200: build ~60 s, tests ~40 s, benchmarks ~60 s
# (under 4 minutes in all, plus the machine's start).
#
#   bash bench/decode_gpu.sh               # build + tests + benchmarks
#   SKIP_BUILD=1 bash bench/decode_gpu.sh  # the extension is already built in place
# Env: SWAA_COMMIT=<hash> names the commit in the benchmark rows (no .git there).
source "$(dirname "$0")/gpu_lib.sh"
gpu_setup
status=0

GPU=$(python -c "import torch; n = torch.cuda.get_device_name(); print('H200' if 'H200' in n else 'H100' if 'H100' in n else n.replace(' ', '_'))")
echo "gpu tag: $GPU"

gpu_build

step "resource usage of the decode kernels (registers, spills, shared memory)"
SO=$(python -c "import swaa_ext._C as c; print(c.__file__)")
${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump -res-usage "$SO" 2>/dev/null \
  | grep -A1 "ring_decode_split\|ring_decode_combine" | grep -v "^--" > "$OUT/decode_res_usage.txt" || true
cat "$OUT/decode_res_usage.txt"

step "tests/test_cache.py (SWAA_POISON_OUTPUTS=1)"
SWAA_POISON_OUTPUTS=1 timeout ${TEST_TIMEOUT:-300} python -X faulthandler -m pytest -q -ra \
  -p no:cacheprovider tests/test_cache.py > "$OUT/pytest_test_cache.log" 2>&1
rc=$?
tail -25 "$OUT/pytest_test_cache.log"
echo "tests/test_cache.py exit code $rc"
[[ $rc == 0 ]] || status=1

bench() {  # bench <run label> <env assignments...> -- <bench_decode.py args...>
  local run=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  step "bench_decode: $run ${envs[*]}"
  env SWAA_DECODE_VERBOSE=1 "${envs[@]}" timeout ${BENCH_TIMEOUT:-240} \
    python bench/bench_decode.py --run "$run" --out "$OUT/decode2_${GPU}.jsonl" "$@" || status=1
}
bench decode2_auto --
bench decode2_combine_cluster SWAA_DECODE_COMBINE=cluster -- --impls ring,ring_full --batches 1,8,64
bench decode2_combine_global SWAA_DECODE_COMBINE=global -- --impls ring,ring_full --batches 1,8,64
bench decode2_global_pdl SWAA_DECODE_COMBINE=global SWAA_DECODE_PDL=1 -- --impls ring,ring_full --batches 1,8
bench decode2_splits_66 SWAA_DECODE_SPLITS=66 -- --impls ring,ring_full --batches 1
bench decode2_splits_132 SWAA_DECODE_SPLITS=132 -- --impls ring,ring_full --batches 1
if [[ -n ${LEGACY:-} ]]; then  # the CUDA-core kernel of session 1 as a same-run baseline
  bench decode_legacy SWAA_RING_DECODE=legacy -- --impls ring
fi

step "summary (ms per decode step; bw_fraction in brackets)"
python - "$OUT/decode2_${GPU}.jsonl" <<'PY' || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = list(dict.fromkeys(r["run"] for r in rows))
keys = list(dict.fromkeys((r["impl"], r["B"]) for r in rows))
print(f"{'impl':18s} {'B':>3s} " + " ".join(f"{r[8:]:>20s}" for r in runs))
for impl, B in keys:
    cells = []
    for run in runs:
        m = [r for r in rows if r["run"] == run and r["impl"] == impl and r["B"] == B]
        cells.append(f"{m[-1]['ms']:.4f} ({m[-1]['bw_fraction']:.2f})" if m else "-")
    print(f"{impl:18s} {B:3d} " + " ".join(f"{c:>20s}" for c in cells))
PY

step "done, status $status"
exit $status
