// Host-side glue of the ring-buffer KV cache ops (swaa::ring_append,
// swaa::ring_decode, swaa::ring_chunk), shared by the CPU and CUDA kernels:
// argument checks (done once, before anything is written; messages name the
// argument) and the filling of swaa::RingParams.  Defined in csrc/ring_ops.cpp.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "swaa/ring.h"

namespace swaa {

struct RingCall {
  RingParams params;
  at::Tensor out;      // (B, Hq, Lc, D) in the cache dtype (undefined for append)
  at::Tensor lse;      // (B, Hq, Lc) float32 (undefined for append)
  at::Tensor lengths;  // (B,) int64 on the cache device, or undefined
};

enum class RingOp { kAppend, kDecode, kChunk };

// Validates every argument of a ring op and fills the params; for decode and
// chunk also allocates out and lse.  `q` is ignored (may be undefined) for
// kAppend.  Throws ValueError (c10::ValueError) naming the argument.
RingCall prepare_ring(RingOp op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& seqlens, const std::optional<at::Tensor>& lengths,
                      int64_t window, int64_t sink, double scale);

// seqlens[b] += the valid positions of row b's chunk (min(max(lengths[b], 0),
// Lc), or Lc), with ATen ops on the current stream (no host sync): the
// position update of ring_decode(advance = true) where no kernel of the op
// does it.
void advance_seqlens(const at::Tensor& seqlens, const RingCall& call);

}  // namespace swaa
