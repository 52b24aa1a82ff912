// Schemas of the swaa ops (TORCH_LIBRARY) and the argument checks shared by
// every backend.  Kernels live in csrc/cpu/ and csrc/cuda/, one file per op
// family, each ending in its TORCH_LIBRARY_IMPL block.
#include <torch/library.h>

#include <cstdlib>
#include <limits>

#include "attention.h"

namespace swaa {
namespace {

// The kernels read rows of D contiguous elements; other strides are free.
bool unit_last_stride(const at::Tensor& t) {
  return t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.dim() == 4, "swa_attention: q must have rank 4 (B, Hq, Lq, D), got rank ",
                    q.dim());
  TORCH_CHECK_VALUE(k.dim() == 4, "swa_attention: k must have rank 4 (B, Hkv, Lk, D), got rank ",
                    k.dim());
  TORCH_CHECK_VALUE(v.dim() == 4, "swa_attention: v must have rank 4 (B, Hkv, Lk, D), got rank ",
                    v.dim());
  const auto dtype = q.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                        dtype == at::kDouble,
                    "swa_attention: q must be float32, float16, bfloat16 or float64, got ", dtype);
  TORCH_CHECK_VALUE(k.scalar_type() == dtype, "swa_attention: k dtype ", k.scalar_type(),
                    " does not match q dtype ", dtype);
  TORCH_CHECK_VALUE(v.scalar_type() == dtype, "swa_attention: v dtype ", v.scalar_type(),
                    " does not match q dtype ", dtype);
  TORCH_CHECK_VALUE(k.device() == q.device(), "swa_attention: k is on ", k.device(),
                    " but q is on ", q.device());
  TORCH_CHECK_VALUE(v.device() == q.device(), "swa_attention: v is on ", v.device(),
                    " but q is on ", q.device());
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && v.size(0) == q.size(0),
                    "swa_attention: batch sizes differ: q ", q.size(0), ", k ", k.size(0), ", v ",
                    v.size(0));
  TORCH_CHECK_VALUE(k.size(1) == v.size(1), "swa_attention: k has ", k.size(1),
                    " heads but v has ", v.size(1));
  TORCH_CHECK_VALUE(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
                    "swa_attention: q heads (", q.size(1),
                    ") must be a multiple of k/v heads (Hq % Hkv == 0), got Hkv = ", k.size(1));
  TORCH_CHECK_VALUE(k.size(2) == v.size(2), "swa_attention: k length ", k.size(2),
                    " differs from v length ", v.size(2));
  TORCH_CHECK_VALUE(q.size(2) <= k.size(2), "swa_attention: q length (Lq = ", q.size(2),
                    ") must not exceed k length (Lk = ", k.size(2), ")");
  TORCH_CHECK_VALUE(q.size(3) >= 1, "swa_attention: head dim (D) must be >= 1, got ", q.size(3));
  TORCH_CHECK_VALUE(k.size(3) == q.size(3) && v.size(3) == q.size(3),
                    "swa_attention: head dims differ: q ", q.size(3), ", k ", k.size(3), ", v ",
                    v.size(3));
  TORCH_CHECK_VALUE(unit_last_stride(q),
                    "swa_attention: q must be contiguous in its last dim (stride ", q.stride(3), ")");
  TORCH_CHECK_VALUE(unit_last_stride(k),
                    "swa_attention: k must be contiguous in its last dim (stride ", k.stride(3), ")");
  TORCH_CHECK_VALUE(unit_last_stride(v),
                    "swa_attention: v must be contiguous in its last dim (stride ", v.stride(3), ")");
}

at::Tensor check_full_from(const std::optional<at::Tensor>& full_from, const at::Tensor& q) {
  if (!full_from.has_value()) return at::Tensor();
  const at::Tensor& f = *full_from;
  TORCH_CHECK_VALUE(f.dim() == 1 && f.size(0) == q.size(0),
                    "swa_attention: full_from must have shape (B,) = (", q.size(0), ",), got ",
                    f.sizes());
  TORCH_CHECK_VALUE(!at::isFloatingType(f.scalar_type()) && !at::isComplexType(f.scalar_type()) &&
                        f.scalar_type() != at::kBool,
                    "swa_attention: full_from must be an integer tensor, got ", f.scalar_type());
  TORCH_CHECK_VALUE(f.device() == q.device(), "swa_attention: full_from is on ", f.device(),
                    " but q is on ", q.device());
  return f.to(at::kLong).contiguous();
}

// Debug knob for tests: SWAA_POISON_OUTPUTS=1 fills every output with NaN
// before the kernel runs, so elements a kernel forgets to write show up.
// Read once per process.
bool poison_outputs() {
  static const bool poison = [] {
    const char* env = std::getenv("SWAA_POISON_OUTPUTS");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return poison;
}

void fill_common(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 std::optional<int64_t> window, int64_t sink, const at::Tensor& full_from,
                 double scale) {
  TORCH_CHECK_VALUE(!window.has_value() || *window >= 1,
                    "swa_attention: window must be >= 1 or None, got ", window.value_or(0));
  TORCH_CHECK_VALUE(sink >= 0, "swa_attention: sink must be >= 0, got ", sink);
  p = AttnParams{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
  p.batch = q.size(0);
  p.q_heads = q.size(1);
  p.kv_heads = k.size(1);
  p.q_len = q.size(2);
  p.k_len = k.size(2);
  p.head_dim = q.size(3);
  p.q_offset = p.k_len - p.q_len;
  p.window = window.has_value() ? std::min<int64_t>(*window, kNoWindow) : kNoWindow;
  p.sink = std::min<int64_t>(sink, kNoWindow);
  p.full_from = full_from.defined() ? full_from.data_ptr<int64_t>() : nullptr;
  p.scale = static_cast<float>(scale);
  p.scale_f64 = scale;
}

}  // namespace

FwdCall prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    std::optional<int64_t> window, int64_t sink,
                    const std::optional<at::Tensor>& full_from, double scale) {
  check_qkv(q, k, v);
  FwdCall call;
  call.full_from = check_full_from(full_from, q);
  fill_common(call.params, q, k, v, window, sink, call.full_from, scale);
  call.out = at::empty(q.sizes(), q.options());
  call.lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (poison_outputs()) {
    call.out.fill_(std::numeric_limits<double>::quiet_NaN());
    call.lse.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  AttnParams& p = call.params;
  p.out = call.out.data_ptr();
  p.lse = call.lse.data_ptr<float>();
  p.o_batch_stride = call.out.stride(0), p.o_head_stride = call.out.stride(1);
  p.o_row_stride = call.out.stride(2);
  p.lse_batch_stride = call.lse.stride(0), p.lse_head_stride = call.lse.stride(1);
  return call;
}

BwdCall prepare_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    std::optional<int64_t> window, int64_t sink,
                    const std::optional<at::Tensor>& full_from, double scale) {
  check_qkv(q, k, v);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "swa_attention backward: dout ", dout.sizes(), " and out ", out.sizes(),
                    " must have q's shape ", q.sizes());
  TORCH_CHECK_VALUE(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
                    "swa_attention backward: dout and out must have q's dtype");
  TORCH_CHECK_VALUE(unit_last_stride(dout) && unit_last_stride(out),
                    "swa_attention backward: dout and out must be contiguous in the last dim");
  TORCH_CHECK_VALUE(lse.scalar_type() == at::kFloat && lse.dim() == 3 &&
                        lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                        lse.size(2) == q.size(2) && (lse.numel() == 0 || lse.stride(2) == 1),
                    "swa_attention backward: lse must be float32 (B, Hq, Lq) with unit last stride");
  BwdCall call;
  call.full_from = check_full_from(full_from, q);
  AttnParams& p = call.params;
  fill_common(p, q, k, v, window, sink, call.full_from, scale);
  p.out = const_cast<void*>(out.data_ptr());
  p.o_batch_stride = out.stride(0), p.o_head_stride = out.stride(1), p.o_row_stride = out.stride(2);
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.lse_batch_stride = lse.stride(0), p.lse_head_stride = lse.stride(1);
  p.dout = dout.data_ptr();
  p.do_batch_stride = dout.stride(0), p.do_head_stride = dout.stride(1);
  p.do_row_stride = dout.stride(2);
  call.dq = at::empty(q.sizes(), q.options());
  call.dk = at::empty(k.sizes(), k.options());
  call.dv = at::empty(v.sizes(), v.options());
  if (poison_outputs()) {
    for (at::Tensor* t : {&call.dq, &call.dk, &call.dv})
      t->fill_(std::numeric_limits<double>::quiet_NaN());
  }
  p.dq = call.dq.data_ptr();
  p.dk = call.dk.data_ptr();
  p.dv = call.dv.data_ptr();
  p.dq_batch_stride = call.dq.stride(0), p.dq_head_stride = call.dq.stride(1);
  p.dq_row_stride = call.dq.stride(2);
  p.dk_batch_stride = call.dk.stride(0), p.dk_head_stride = call.dk.stride(1);
  p.dk_row_stride = call.dk.stride(2);
  p.dv_batch_stride = call.dv.stride(0), p.dv_head_stride = call.dv.stride(1);
  p.dv_row_stride = call.dv.stride(2);
  return call;
}

}  // namespace swaa

TORCH_LIBRARY(swaa, m) {
  // Sliding-window attention with sink tokens and per-sequence full_from.
  // window None = unlimited; full_from None = never; lse is float32 (B, Hq, Lq).
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, int? window, int sink, Tensor? full_from, float scale)"
      " -> (Tensor out, Tensor lse)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int? window,"
      " int sink, Tensor? full_from, float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  // Ring-buffer KV cache ops: see csrc/ring_ops.cpp.
}
