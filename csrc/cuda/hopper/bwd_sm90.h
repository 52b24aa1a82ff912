// Host interface of the Hopper (sm_90a, wgmma + TMA) backward, compiled in
// csrc/cuda/hopper/bwd_sm90.cu only when the build targets compute capability
// 9.0 (SWAA_CUDA_HOPPER).  Plain C++: no torch, no device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "cuda/hopper/fwd_sm90.h"  // Dtype, Fit, fit_name
#include "swaa/params.h"

namespace swaa {
namespace cuda {
namespace sm90 {

// Whether the backward call described by p (q, k, v, dout, out, lse filled)
// fits the Hopper kernels on the current device: same conditions as the
// forward (compute capability 9.0 with the sm_90a image, head dim 64/128,
// TMA-describable q, k, v and dout).
Fit bwd_fits(const AttnParams& p, Dtype dtype);

// Bits of `passes` below (same values as cuda::BwdPart in attention_launch.cuh).
constexpr unsigned kHopperDq = 2;
constexpr unsigned kHopperDkdv = 4;
// With kHopperDq | kHopperDkdv: one pass instead of two (SWAA_BWD_HOPPER=4,
// bwd_fused_sm90.cuh, docs/cuda_kernels.md "v7"): the dk/dv kernel also
// produces dq through an ordered (deterministic) float32 accumulation.
constexpr unsigned kHopperFused = 8;

// Whether try_bwd with kHopperFused runs the single pass for this call (its
// kernel present, enough shared memory); otherwise it runs the two passes.
bool fused_fits(const AttnParams& p, Dtype dtype);

// When bwd_fits() says kOk: launches on `stream` the preprocessing (delta
// into `delta`, batch * q_heads * q_len float32, the sm_80 layout, so the
// sm_80 kernels can run the passes left out) and the Hopper passes named in
// `passes` (kHopperDq | kHopperDkdv), and returns true.  Otherwise launches
// nothing and returns false.  `workspace(n)` gives n float32 of scratch that
// stays valid until the launches are done (padded lse/delta, partial dk/dv
// of split sink blocks).  A launch error is returned in *error.
bool try_bwd(const AttnParams& p, Dtype dtype, unsigned passes, float* delta,
             const std::function<float*(int64_t)>& workspace, cudaStream_t stream,
             cudaError_t* error);

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
