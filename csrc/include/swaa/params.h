// Parameters of one sliding-window attention call, filled once on the host
// (csrc/ops.cpp) and read by every kernel, CPU or CUDA.  No torch headers.
#pragma once

#include <cstdint>

#include "swaa/visibility.h"

namespace swaa {

struct AttnParams {
  // Inputs, (B, H, L, D) with unit stride on D; strides are in elements.
  const void* q;
  const void* k;
  const void* v;
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;

  // Outputs of the forward: out (B, Hq, Lq, D) and lse (B, Hq, Lq) float32.
  void* out;
  float* lse;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride;

  // Backward only: dout (as out), and the gradients (shaped like q, k, v).
  const void* dout;
  int64_t do_batch_stride, do_head_stride, do_row_stride;
  void* dq;
  void* dk;
  void* dv;
  int64_t dq_batch_stride, dq_head_stride, dq_row_stride;
  int64_t dk_batch_stride, dk_head_stride, dk_row_stride;
  int64_t dv_batch_stride, dv_head_stride, dv_row_stride;

  int64_t batch, q_heads, kv_heads, q_len, k_len, head_dim;
  int64_t q_offset;  // k_len - q_len: absolute position of query row 0
  int64_t window;    // kNoWindow when unlimited
  int64_t sink;
  const int64_t* full_from;  // (batch,) on the kernel's device, or nullptr = never
  float scale;
  double scale_f64;  // the same scale unrounded: the float64 CPU kernels' (float rounds 1/sqrt(D))

  int64_t group() const { return q_heads / kv_heads; }  // query heads per KV head

#if defined(__CUDACC__)
  __host__ __device__
#endif
  Visibility visibility(int64_t b) const {
    return Visibility{window, sink, full_from == nullptr ? kNever : full_from[b]};
  }
};

}  // namespace swaa
