// Host-side glue shared by the CPU and CUDA implementations of the swaa
// attention ops: argument checks (done once, messages name the argument) and
// the filling of swaa::AttnParams.  Defined in csrc/ops.cpp.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/ATen.h>

#include "swaa/params.h"

namespace swaa {

// Everything a forward kernel needs: the params plus the tensors they point
// into (kept alive by this struct).
struct FwdCall {
  AttnParams params;
  at::Tensor out;        // (B, Hq, Lq, D), q.dtype, contiguous
  at::Tensor lse;        // (B, Hq, Lq) float32
  at::Tensor full_from;  // (B,) int64 on q's device, or undefined
};

struct BwdCall {
  AttnParams params;
  at::Tensor dq, dk, dv;  // contiguous, shaped like q, k, v
  at::Tensor full_from;
};

// Validate q, k, v, window, sink, full_from and allocate the outputs.
FwdCall prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    std::optional<int64_t> window, int64_t sink,
                    const std::optional<at::Tensor>& full_from, double scale);

// Same checks as the forward plus dout / out / lse shapes.
BwdCall prepare_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    std::optional<int64_t> window, int64_t sink,
                    const std::optional<at::Tensor>& full_from, double scale);

}  // namespace swaa
