// CUDA forward of swaa::fwd.  Placeholder that proves the CUDA toolchain and
// the dispatch; the tensor-core kernels land with issue 3.
// c10/cuda headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE
// headers that a minimal CUDA toolkit (as on CI) does not have.
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention.h"

namespace swaa {
namespace {

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, std::optional<int64_t> window,
                                            int64_t sink, const std::optional<at::Tensor>& full_from,
                                            double scale) {
  FwdCall call = prepare_fwd(q, k, v, window, sink, full_from, scale);
  TORCH_CHECK(false, "swaa::fwd: CUDA kernels are not built yet");
  return {call.out, call.lse};
}

}  // namespace
}  // namespace swaa

TORCH_LIBRARY_IMPL(swaa, CUDA, m) { m.impl("fwd", &swaa::fwd_cuda); }
