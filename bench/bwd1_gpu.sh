#!/usr/bin/env bash
# The device call for the single-pass Hopper backward (SWAA_BWD_HOPPER=4, docs/cuda_kernels.md
# "v7"): the `fused` step of bench/gpu_check.sh, after its build step (SKIP_BUILD=1 skips the
# build).  Estimate (never run): ~85 s build + ~4.5 min; outputs in $OUT (log, console.txt,
# gpu_check_fused.tgz).  Equivalent to `bash bench/gpu_check.sh fused`.
#
#   SWAA_COMMIT=<hash> bash bench/bwd1_gpu.sh
exec bash "$(dirname "$0")/gpu_check.sh" fused "$@"
