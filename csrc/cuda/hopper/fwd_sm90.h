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

// Whether the call described by p fits the Hopper kernel on the current device.
Fit fits(const AttnParams& p, Dtype dtype);

// Launches the Hopper forward on `stream` when fits() says kOk and returns
// true; returns false (nothing launched) otherwise.  overlap: the variant
// whose softmax of tile i overlaps P V of tile i - 1 in each consumer warp
// group.  A launch error is returned in *error (cudaSuccess otherwise).
bool try_fwd(const AttnParams& p, Dtype dtype, bool overlap, cudaStream_t stream,
             cudaError_t* error);

const char* fit_name(Fit f);

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
