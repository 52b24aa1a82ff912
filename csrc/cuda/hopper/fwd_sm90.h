// Host interface of the Hopper (sm_90a, wgmma + TMA) forward, compiled in
// csrc/cuda/hopper/fwd_sm90.cu only when the build targets compute
// capability 9.0 (SWAA_CUDA_HOPPER).  Plain C++: no torch, no device code.
#pragma once

#include <cuda_runtime.h>

#include "swaa/params.h"

namespace swaa {
namespace cuda {
namespace sm90 {

enum class Dtype { kBf16, kFp16 };

// Why a call takes (or would take) the sm_80 kernel instead; kOk = Hopper path.
enum class Fit {
  kOk,
  kDevice,     // not a compute-capability 9.0 device, or no sm_90a image for it
  kHeadDim,    // head dim other than 128
  kStrides,    // strides/pointers a TMA tensor map cannot describe
};

// The Hopper forward variants (SWAA_FWD_HOPPER): 1 = v5 (fwd_sm90.cuh); 2 = v5
// whose softmax of tile i overlaps P V of tile i - 1 in each consumer warp
// group; 3 = v5.1 (fwd51_sm90.cuh: 192-row CTAs at D=64, deeper K/V ring,
// group tile skipping, TMA-store epilogue); 4 = v5.1 with ping-pong of the
// consumer groups; 5, 6 = 3, 4 with persistent CTAs (one per SM); 7 = 6 with
// the lean softmax (LEAN in fwd51_sm90.cuh); 8 = 7 with fewer instructions
// per turn (LEAN level 2: the warps' fully-visible tile ranges kept in
// registers, unsigned stage arithmetic); 9 = 8 masking most boundary tiles
// with the one bound that can reject there (LEAN level 3); 10 = 9 freeing a
// stage's K once the tile's S is done and its V after P V (LEAN level 4);
// 11 = 10 whose consumer groups run the softmax of tile i while their own P V
// of tile i - 1 runs (LEAN level 5).

// Whether the call described by p fits the Hopper kernel `variant` on the
// current device.
Fit fits(const AttnParams& p, Dtype dtype, int variant = 1);

// Launches Hopper forward `variant` on `stream` when fits() says kOk and
// returns true; returns false (nothing launched) otherwise.  A launch error is
// returned in *error (cudaSuccess otherwise).
bool try_fwd(const AttnParams& p, Dtype dtype, int variant, cudaStream_t stream,
             cudaError_t* error);

const char* fit_name(Fit f);

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
