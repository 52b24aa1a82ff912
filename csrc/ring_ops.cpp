// Schemas of the ring-buffer KV cache ops and their argument checks, shared by
// every backend (kernels: csrc/cpu/ring.cpp, csrc/cuda/ring.cu).
//
//   ring_append  writes the chunk's keys/values into their slots (in place);
//   ring_decode  Lc == 1: attention of one new query per row over the ring
//                plus the new key, and the write of that key (in place);
//   ring_chunk   Lc >= 1: attention of the chunk's queries over the old ring
//                contents plus the chunk itself; writes nothing (the caller
//                appends afterwards, so a chunk longer than the window never
//                overwrites a key that one of its own queries still needs).
//
// seqlens (B,) int64 holds the positions each row has written before the call
// and is read on the device: no host synchronisation, so a decode step can be
// captured in a CUDA graph.  lengths (B,), optional, gives the number of valid
// positions of the chunk per row (right padding).
#include <torch/library.h>

#include "ring_ops.h"

namespace swaa {
namespace {

bool is_attention_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

void check_rank4_unit_stride(const char* op, const char* name, const at::Tensor& t,
                             const char* layout) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " must be a tensor");
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must have rank 4 ", layout, ", got rank ",
                    t.dim());
  TORCH_CHECK_VALUE(t.stride(3) == 1 || t.size(3) <= 1, op, ": ", name,
                    " must be contiguous in its last dim (stride ", t.stride(3), ")");
}

const char* op_name(RingOp op) {
  switch (op) {
    case RingOp::kAppend: return "ring_append";
    case RingOp::kDecode: return "ring_decode";
    default: return "ring_chunk";
  }
}

}  // namespace

RingCall prepare_ring(RingOp op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& seqlens, const std::optional<at::Tensor>& lengths,
                      int64_t window, int64_t sink, double scale) {
  const char* name = op_name(op);
  TORCH_CHECK_VALUE(window >= 1, name, ": window must be >= 1, got ", window);
  TORCH_CHECK_VALUE(sink >= 0, name, ": sink must be >= 0, got ", sink);
  // bounded so that sink + window and every position stay far from overflow
  TORCH_CHECK_VALUE(window <= kNoWindow && sink <= kNoWindow, name,
                    ": window and sink must be at most 2^60, got window = ", window, ", sink = ",
                    sink);

  // The cache fixes batch, KV heads, head dim, dtype and device.
  check_rank4_unit_stride(name, "k_cache", k_cache, "(B, Hkv, sink + window, D)");
  check_rank4_unit_stride(name, "v_cache", v_cache, "(B, Hkv, sink + window, D)");
  TORCH_CHECK_VALUE(is_attention_dtype(k_cache.scalar_type()), name,
                    ": k_cache must be float32, float16, bfloat16 or float64, got ",
                    k_cache.scalar_type());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), name, ": v_cache shape ", v_cache.sizes(),
                    " differs from k_cache shape ", k_cache.sizes());
  TORCH_CHECK_VALUE(v_cache.scalar_type() == k_cache.scalar_type(), name, ": v_cache dtype ",
                    v_cache.scalar_type(), " differs from k_cache dtype ", k_cache.scalar_type());
  TORCH_CHECK_VALUE(v_cache.device() == k_cache.device(), name, ": v_cache is on ",
                    v_cache.device(), " but k_cache is on ", k_cache.device());
  TORCH_CHECK_VALUE(k_cache.size(2) == sink + window, name, ": k_cache must have sink + window = ",
                    sink + window, " slots (dim 2), got ", k_cache.size(2));
  const int64_t B = k_cache.size(0), Hkv = k_cache.size(1), D = k_cache.size(3);
  const auto dtype = k_cache.scalar_type();
  const auto device = k_cache.device();
  TORCH_CHECK_VALUE(Hkv >= 1, name, ": k_cache must have at least one head");

  auto check_chunk = [&](const char* arg, const at::Tensor& t, int64_t heads) {
    check_rank4_unit_stride(name, arg, t, heads < 0 ? "(B, Hq, Lc, D)" : "(B, Hkv, Lc, D)");
    TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, ": ", arg, " dtype ", t.scalar_type(),
                      " differs from the cache dtype ", dtype);
    TORCH_CHECK_VALUE(t.device() == device, name, ": ", arg, " is on ", t.device(),
                      " but the cache is on ", device);
    TORCH_CHECK_VALUE(t.size(0) == B, name, ": ", arg, " batch size ", t.size(0),
                      " differs from the cache batch size ", B);
    if (heads >= 0) {
      TORCH_CHECK_VALUE(t.size(1) == heads, name, ": ", arg, " has ", t.size(1),
                        " heads but the cache has ", heads, " KV heads");
    } else {
      TORCH_CHECK_VALUE(t.size(1) >= 1 && t.size(1) % Hkv == 0, name, ": ", arg, " heads (",
                        t.size(1), ") must be a multiple of the cache's KV heads (", Hkv, ")");
    }
    TORCH_CHECK_VALUE(t.size(3) == D, name, ": ", arg, " head dim ", t.size(3),
                      " differs from the cache head dim ", D);
  };
  check_chunk("k", k, Hkv);
  check_chunk("v", v, Hkv);
  const int64_t Lc = k.size(2);
  TORCH_CHECK_VALUE(Lc >= 1, name, ": k must hold at least one position (Lc >= 1), got Lc = ", Lc);
  TORCH_CHECK_VALUE(v.size(2) == Lc, name, ": v length ", v.size(2), " differs from k length ", Lc);
  if (op != RingOp::kAppend) {
    check_chunk("q", q, -1);
    TORCH_CHECK_VALUE(q.size(2) == Lc, name, ": q length ", q.size(2), " differs from k length ",
                      Lc);
    if (op == RingOp::kDecode)
      TORCH_CHECK_VALUE(Lc == 1, name, ": q must hold exactly one position per row, got ", Lc);
  }

  TORCH_CHECK_VALUE(seqlens.defined() && seqlens.dim() == 1 && seqlens.size(0) == B, name,
                    ": seqlens must have shape (B,) = (", B, ",), got ",
                    seqlens.defined() ? seqlens.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(seqlens.scalar_type() == at::kLong, name, ": seqlens must be int64, got ",
                    seqlens.scalar_type());
  TORCH_CHECK_VALUE(seqlens.device() == device, name, ": seqlens is on ", seqlens.device(),
                    " but the cache is on ", device);
  TORCH_CHECK_VALUE(seqlens.is_contiguous(), name, ": seqlens must be contiguous");
  if (device.is_cpu()) {
    // A negative position would index before the cache.  Checked where it
    // costs no device sync; the CUDA kernels treat negative positions as 0.
    const int64_t* pos = seqlens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK_VALUE(pos[b] >= 0, name, ": seqlens[", b, "] = ", pos[b], " must be >= 0");
  }

  RingCall call;
  if (lengths.has_value()) {
    const at::Tensor& n = *lengths;
    TORCH_CHECK_VALUE(n.dim() == 1 && n.size(0) == B, name, ": lengths must have shape (B,) = (",
                      B, ",), got ", n.sizes());
    TORCH_CHECK_VALUE(at::isIntegralType(n.scalar_type(), /*includeBool=*/false), name,
                      ": lengths must be an integer tensor, got ", n.scalar_type());
    TORCH_CHECK_VALUE(n.device() == device, name, ": lengths is on ", n.device(),
                      " but the cache is on ", device);
    call.lengths = n.to(at::kLong).contiguous();
    if (device.is_cpu()) {
      // Values are only checkable without a device sync on the CPU; CUDA
      // kernels clamp them to [0, Lc].
      const int64_t* len = call.lengths.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b)
        TORCH_CHECK_VALUE(len[b] >= 0 && len[b] <= Lc, name, ": lengths[", b, "] = ", len[b],
                          " must lie in [0, Lc = ", Lc, "]");
    }
  }

  RingParams& p = call.params;
  p = RingParams{};
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.kc_batch_stride = k_cache.stride(0), p.kc_head_stride = k_cache.stride(1);
  p.kc_row_stride = k_cache.stride(2);
  p.vc_batch_stride = v_cache.stride(0), p.vc_head_stride = v_cache.stride(1);
  p.vc_row_stride = v_cache.stride(2);
  p.seqlens = seqlens.data_ptr<int64_t>();
  p.lengths = call.lengths.defined() ? call.lengths.data_ptr<int64_t>() : nullptr;
  p.batch = B;
  p.kv_heads = Hkv;
  p.q_heads = Hkv;
  p.chunk_len = Lc;
  p.head_dim = D;
  p.ring = RingLayout{window, sink};
  p.scale = static_cast<float>(scale);
  p.scale_f64 = scale;
  if (op != RingOp::kAppend) {
    p.q = q.data_ptr();
    p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
    p.q_heads = q.size(1);
    call.out = at::empty({B, q.size(1), Lc, D}, q.options());
    call.lse = at::empty({B, q.size(1), Lc}, q.options().dtype(at::kFloat));
    p.out = call.out.data_ptr();
    p.lse = call.lse.data_ptr<float>();
  }
  return call;
}

void advance_seqlens(const at::Tensor& seqlens, const RingCall& call) {
  if (call.lengths.defined())
    seqlens.add_(call.lengths.clamp(0, call.params.chunk_len));
  else
    seqlens.add_(call.params.chunk_len);
}

}  // namespace swaa

TORCH_LIBRARY_FRAGMENT(swaa, m) {
  // Writes k, v (B, Hkv, Lc, D) of positions seqlens[b] + i (i < lengths[b])
  // into their ring slots; only positions that survive the chunk are written.
  m.def(
      "ring_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor seqlens,"
      " Tensor? lengths, int window, int sink) -> ()");
  // One new position per row: attention over the ring plus the new key, and
  // the in-place write of the new key/value.  num_splits = 0 chooses the
  // split of the window across blocks/threads (flash-decoding).
  // advance = true also advances seqlens[b] by the row's valid positions
  // (min(max(lengths[b], 0), 1), or 1), after the attention, on the device:
  // what RingKVCache.attend did with a separate seqlens.add_ (on CUDA, when
  // the plan has a second (combine) kernel, that kernel does it: one launch
  // fewer per step; SWAA_DECODE_ADVANCE=op keeps the add).
  m.def(
      "ring_decode(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache,"
      " Tensor(c!) seqlens, Tensor? lengths, int window, int sink, float scale,"
      " int num_splits=0, bool advance=False) -> (Tensor out, Tensor lse)");
  // Lc positions per row: attention over the old ring plus the chunk; no write.
  m.def(
      "ring_chunk(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, Tensor seqlens,"
      " Tensor? lengths, int window, int sink, float scale) -> (Tensor out, Tensor lse)");
}
