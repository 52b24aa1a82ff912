// CUDA implementations of swaa::fwd and swaa::bwd: the one place that maps
// (dtype, head dim) to a compiled kernel variant (static_switch style).  Plain
// C++ (no device code): the kernels live in attention_kernels.cuh and are
// instantiated per variant in attention_<dtype>_hd<D>.cu; a build may leave
// variants out (CMake SWAA_CUDA_DTYPES / SWAA_CUDA_HEAD_DIMS), which then
// raise a clear error.  Launches go on the current stream
// (c10::cuda::getCurrentCUDAStream(), what at::cuda::getCurrentCUDAStream()
// returns; the c10 header avoids the cuBLAS/cuSPARSE headers of ATen/cuda).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "cuda/attention_launch.cuh"
#if defined(SWAA_CUDA_HOPPER)
#include <c10/cuda/CUDAException.h>

#include "cuda/hopper/bwd_sm90.h"
#include "cuda/hopper/fwd_sm90.h"
#endif

namespace swaa {
namespace {

// Which variants this build contains (SWAA_CUDA_<DTYPE>_HD<D> from CMake).
#if defined(SWAA_CUDA_BF16_HD64)
constexpr bool kBf16Hd64 = true;
#else
constexpr bool kBf16Hd64 = false;
#endif
#if defined(SWAA_CUDA_BF16_HD128)
constexpr bool kBf16Hd128 = true;
#else
constexpr bool kBf16Hd128 = false;
#endif
#if defined(SWAA_CUDA_FP16_HD64)
constexpr bool kFp16Hd64 = true;
#else
constexpr bool kFp16Hd64 = false;
#endif
#if defined(SWAA_CUDA_FP16_HD128)
constexpr bool kFp16Hd128 = true;
#else
constexpr bool kFp16Hd128 = false;
#endif

std::string supported_variants() {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ", ";
    s += name;
  };
  add(kBf16Hd64, "bfloat16/D=64");
  add(kBf16Hd128, "bfloat16/D=128");
  add(kFp16Hd64, "float16/D=64");
  add(kFp16Hd128, "float16/D=128");
  return s.empty() ? std::string("none (built without CUDA variants)") : s;
}

enum class Variant { kNone, kBf16Hd64, kBf16Hd128, kFp16Hd64, kFp16Hd128 };

// The compiled variant for (dtype, head_dim), or an error naming what is
// supported: never a silent fallback.  TypeError for a dtype the CUDA kernels
// do not have, ValueError for a head dim, RuntimeError for a variant this
// build left out.
Variant variant_of(at::ScalarType dtype, int64_t head_dim, const char* op) {
  TORCH_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf, op,
                   ": the CUDA kernels support bfloat16 and float16 (variants built: ",
                   supported_variants(), "); got q dtype ", dtype,
                   ". Cast q, k, v or use the CPU op (no fallback is taken).");
  TORCH_CHECK_VALUE(head_dim == 64 || head_dim == 128, op,
                    ": the CUDA kernels support head dim 64 and 128 (variants built: ",
                    supported_variants(), "); got head dim ", head_dim,
                    " (no fallback is taken).");
  Variant v = Variant::kNone;
  if (dtype == at::kBFloat16 && head_dim == 64 && kBf16Hd64) v = Variant::kBf16Hd64;
  if (dtype == at::kBFloat16 && head_dim == 128 && kBf16Hd128) v = Variant::kBf16Hd128;
  if (dtype == at::kHalf && head_dim == 64 && kFp16Hd64) v = Variant::kFp16Hd64;
  if (dtype == at::kHalf && head_dim == 128 && kFp16Hd128) v = Variant::kFp16Hd128;
  TORCH_CHECK(v != Variant::kNone, op, ": this build left out the CUDA kernels for q dtype ",
              dtype, " and head dim ", head_dim, " (variants built: ", supported_variants(),
              "; rebuild with SWAA_CUDA_DTYPES / SWAA_CUDA_HEAD_DIMS covering it).");
  return v;
}

// Calls fn.template operator()<T, D>() for a variant (static_switch style).
template <typename Fn>
void with_variant(Variant v, Fn&& fn) {
  switch (v) {
    case Variant::kBf16Hd64: if constexpr (kBf16Hd64) fn.template operator()<__nv_bfloat16, 64>(); break;
    case Variant::kBf16Hd128: if constexpr (kBf16Hd128) fn.template operator()<__nv_bfloat16, 128>(); break;
    case Variant::kFp16Hd64: if constexpr (kFp16Hd64) fn.template operator()<__half, 64>(); break;
    case Variant::kFp16Hd128: if constexpr (kFp16Hd128) fn.template operator()<__half, 128>(); break;
    case Variant::kNone: break;
  }
}

// cp.async moves 16-byte chunks: rows must start 16-byte aligned.  Inputs
// whose pointer or batch/head/row strides break that are copied (contiguous).
at::Tensor aligned(const at::Tensor& t) {
  const bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 &&
                  t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// The Hopper forward (csrc/cuda/hopper, wgmma + TMA) is taken when the build
// has it (SWAA_CUDA_HOPPER), SWAA_FWD_HOPPER is not 0 (read at every call,
// for A/B runs: 1 = v5, 2 = v5 whose softmax overlaps the previous tile's
// P V, 3 = v5.1, 4 = v5.1 with ping-pong, 5, 6 = 3, 4 with persistent CTAs,
// 7 = 6 with the lean softmax (fwd51_sm90.cuh, LEAN), 8 = 7 with LEAN
// level 2 (fewer instructions per turn), 9 = 8 with LEAN level 3 (one-bound
// masks), 10 = 9 with LEAN level 4 (a stage's K and V freed apart), 11 = 10
// with LEAN level 5 (each group's softmax overlaps its own P V);
// see cuda/hopper/fwd_sm90.h), the device is compute capability 9.0 and the
// call fits (strides a TMA tensor map can describe); the sm_80 kernel
// otherwise.  All compute the same function (tests/test_attention_cuda.py).
// Default 11 since session 16: 9 with K and V freed apart (10) and each consumer
// group's softmax beside its own P V; the same bits.  Forward kernel 1.09-1.22x
// 9 at D=128 (6 shapes) and 1.01-1.04x at D=64 (4 shapes), both setting orders
// (H200, bench/results/logs/fwd_v11_ab_H200_session16.log).
// Default 9 in session 15: 8 with one-clause masks on boundary tiles, the
// same bits (A/B in bench/results/logs/fwd_v9_ab_H200_session15.log).
// 8 was the default in session 14: 7 with fewer instructions per turn, the same
// bits; its forward kernel 1.036-1.047x faster at D=64 and 1.007-1.069x at
// D=128 on 14 shapes, both setting orders (H200, tuning part bwd-ab, log
// bench/results/logs/fwd_v8_ab_H200_session14.log).  7 was the default from
// session 9: 1.06-1.12x variant 6 on all 12 shapes of the
// issue's grid (S=4; H200, run 20261128T181215Z-1651eb, tuning part
// fwd-variants, bench/results/cuda_tuning_h200.jsonl; docs/cuda_kernels.md
// "Variant 7").  6 was the default from session 4 (the fastest on 11 of 12,
// within 1% on the 12th).
constexpr int kFwdHopperDefault = 11;
int hopper_knob() {
  const char* env = std::getenv("SWAA_FWD_HOPPER");
  if (env == nullptr) return kFwdHopperDefault;
  const int v = std::atoi(env);
  return v >= 0 && v <= 11 ? v : kFwdHopperDefault;
}
const char* hopper_variant_name(int knob) {
  switch (knob) {
    case 2: return "sm90-overlap";
    case 3: return "sm90-v51";
    case 4: return "sm90-v51-pingpong";
    case 5: return "sm90-v51-persistent";
    case 6: return "sm90-v51-pingpong-persistent";
    case 7: return "sm90-v51-pingpong-persistent-lean";
    case 8: return "sm90-v51-pingpong-persistent-lean-pinned";
    case 9: return "sm90-v51-pingpong-persistent-lean-masks";
    case 10: return "sm90-v51-pingpong-persistent-lean-split";
    case 11: return "sm90-v51-pingpong-persistent-lean-overlap";
    default: return "sm90";
  }
}

// Which forward kernel a call with these parameters takes, and why.
template <typename T, int D>
std::string fwd_path_of(const AttnParams& p) {
#if defined(SWAA_CUDA_HOPPER)
  if (!hopper_knob()) return "sm80: SWAA_FWD_HOPPER=0";
  const auto dtype = std::is_same_v<T, __nv_bfloat16> ? cuda::sm90::Dtype::kBf16
                                                      : cuda::sm90::Dtype::kFp16;
  const cuda::sm90::Fit fit = cuda::sm90::fits(p, dtype, hopper_knob());
  if (fit == cuda::sm90::Fit::kOk) return hopper_variant_name(hopper_knob());
  return std::string("sm80: ") + cuda::sm90::fit_name(fit);
#else
  (void)p;
  return "sm80: built without the Hopper forward";
#endif
}

// Launches the Hopper forward when it applies; false: the caller runs the sm_80 kernel.
template <typename T, int D>
bool try_hopper_fwd(const AttnParams& p, cudaStream_t stream) {
#if defined(SWAA_CUDA_HOPPER)
  const int knob = hopper_knob();
  if ((D != 64 && D != 128) || knob == 0) return false;
  const auto dtype = std::is_same_v<T, __nv_bfloat16> ? cuda::sm90::Dtype::kBf16
                                                      : cuda::sm90::Dtype::kFp16;
  cudaError_t err = cudaSuccess;
  const bool launched = cuda::sm90::try_fwd(p, dtype, knob, stream, &err);
  C10_CUDA_CHECK(err);
  return launched;
#else
  (void)p, (void)stream;
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, std::optional<int64_t> window,
                                            int64_t sink, const std::optional<at::Tensor>& full_from,
                                            double scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor q = q_in, k = k_in, v = v_in;
  if (q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.numel() > 0 && k.numel() > 0) {
    q = aligned(q), k = aligned(k), v = aligned(v);
  }
  FwdCall call = prepare_fwd(q, k, v, window, sink, full_from, scale);  // argument checks first
  const Variant variant = variant_of(q.scalar_type(), q.size(3), "swaa::fwd");
  if (q.numel() == 0) return {call.out, call.lse};
  with_variant(variant, [&]<typename T, int D>() {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    if (!try_hopper_fwd<T, D>(call.params, stream)) cuda::run_fwd<T, D>(call.params, stream);
  });
  return {call.out, call.lse};
}

// swaa::fwd_path(q, k, v): "sm90" (or "sm90-overlap", "sm90-v51", "sm90-v51-pingpong",
// "sm90-v51-persistent", "sm90-v51-pingpong-persistent", "sm90-v51-pingpong-persistent-lean"
// for SWAA_FWD_HOPPER=2 ... 7) when swaa::fwd with these
// tensors runs the Hopper kernel, else "sm80: <reason>" (tests and benchmarks check the path
// they measure).  Same input preparation as fwd_cuda.
std::string fwd_path_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor q = q_in, k = k_in, v = v_in;
  if (q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.numel() > 0 && k.numel() > 0) {
    q = aligned(q), k = aligned(k), v = aligned(v);
  }
  FwdCall call = prepare_fwd(q, k, v, std::nullopt, 0, std::nullopt, 1.0);
  const Variant variant = variant_of(q.scalar_type(), q.size(3), "swaa::fwd_path");
  std::string path = "sm80: empty input";
  if (q.numel() == 0) return path;
  with_variant(variant, [&]<typename T, int D>() { path = fwd_path_of<T, D>(call.params); });
  return path;
}

// The Hopper backward (csrc/cuda/hopper/bwd_sm90.*, wgmma + TMA, docs/cuda_kernels.md
// "v6", "v7") is taken when the build has it, SWAA_BWD_HOPPER (read at every call)
// asks for it, the device is compute capability 9.0 and the call fits (TMA-
// describable q, k, v, dout).  SWAA_BWD_HOPPER = 0: the sm_80 backward;
// 1: both passes on Hopper (v6); 2: dk/dv on Hopper, dq on sm_80; 3: dq on
// Hopper, dk/dv on sm_80; 4: one pass on Hopper (v7: the dk/dv kernel also
// accumulates dq in a fixed order).  Unset: 4 where prefer_single_pass() says
// so, else 1 (and 1 when 4's workspace does not fit in GPU memory, with a
// warning: try_hopper_bwd).

// The default choice between the two passes (v6) and the single pass (v7).
// Measured on an H200 (session 8, bench/results/cuda_tuning_h200.jsonl, run
// 20261128T164314Z-aa45cf; docs/cuda_kernels.md "v7"): v7 is 1.03-1.24x v6 at
// W=1024 (S 0, 4, 128; N 8k-128k; D 64 and 128) and 1.01-1.10x at N=32k,
// W=4096 (with the slices-outer CTA order, fused_slices_inner), but 0.96x
// at N=8k, W=4096 (keys only two windows long) and 0.98x with full_from
// (rows that see every key: long key loops, as without a window).  Between
// the two (session 9, run 20261128T175549Z-d187f7, the tuning part bwd-rule,
// S=4, D 64/128, W 1024/4096): v7 against v6 at N = 2, 3, 4 windows
// 0.80-0.96x; 6 windows 0.93-1.03x (three of four shapes slower); 8 windows
// 1.01-1.07x (all four faster).  So: every row windowed (a window, no
// full_from tensor) and the keys at least seven windows (+ sink) long.  v7
// also holds a float32 dq accumulator (4 bytes x B x Hq x Lq x D, freed
// after the call) where v6 holds none.
bool prefer_single_pass(const AttnParams& p) {
  // k_len >= 7 (W + S), written so that no product can overflow (W + S <= 2^61)
  return p.full_from == nullptr && p.window != kNoWindow &&
         p.window + p.sink <= p.k_len / 7;
}

int bwd_hopper_knob(const AttnParams& p) {
  const char* env = std::getenv("SWAA_BWD_HOPPER");
  const int fallback = prefer_single_pass(p) ? 4 : 1;
  if (env == nullptr) return fallback;
  const int v = std::atoi(env);
  return v >= 0 && v <= 4 ? v : fallback;
}
// cuda::sm90::kHopperFused (bwd_sm90.h, included only in Hopper builds).
constexpr unsigned kBwdFusedBit = 8;
#if defined(SWAA_CUDA_HOPPER)
static_assert(kBwdFusedBit == cuda::sm90::kHopperFused && (kBwdFusedBit & cuda::kBwdAll) == 0);
#endif
// The passes (cuda::BwdPart bits) the knob value puts on Hopper (plus
// kBwdFusedBit: both in one pass).
unsigned hopper_passes(int knob) {
  switch (knob) {
    case 1: return cuda::kBwdDq | cuda::kBwdDkdv;
    case 2: return cuda::kBwdDkdv;
    case 3: return cuda::kBwdDq;
    case 4: return cuda::kBwdDq | cuda::kBwdDkdv | kBwdFusedBit;
    default: return 0;
  }
}

// Which backward kernels a call with these parameters takes, and why.
template <typename T, int D>
std::string bwd_path_of(const AttnParams& p) {
#if defined(SWAA_CUDA_HOPPER)
  const int knob = bwd_hopper_knob(p);
  if (knob == 0) return "sm80: SWAA_BWD_HOPPER=0";
  const auto dtype = std::is_same_v<T, __nv_bfloat16> ? cuda::sm90::Dtype::kBf16
                                                      : cuda::sm90::Dtype::kFp16;
  const cuda::sm90::Fit fit = cuda::sm90::bwd_fits(p, dtype);
  if (fit != cuda::sm90::Fit::kOk) return std::string("sm80: ") + cuda::sm90::fit_name(fit);
  if (knob == 4) return cuda::sm90::fused_fits(p, dtype) ? "sm90-fused" : "sm90";
  return knob == 1 ? "sm90" : knob == 2 ? "sm90-dkdv" : "sm90-dq";
#else
  (void)p;
  return "sm80: built without the Hopper kernels";
#endif
}

// Launches the Hopper passes the knob asks for (and the delta preprocessing)
// when they apply; returns the passes left for the sm_80 kernels (kBwdAll
// when nothing was launched).
template <typename T, int D>
unsigned try_hopper_bwd(const AttnParams& p, float* delta, const cuda::Workspace& workspace,
                        cudaStream_t stream) {
#if defined(SWAA_CUDA_HOPPER)
  unsigned passes = hopper_passes(bwd_hopper_knob(p));
  if ((D != 64 && D != 128) || passes == 0) return cuda::kBwdAll;
  const auto dtype = std::is_same_v<T, __nv_bfloat16> ? cuda::sm90::Dtype::kBf16
                                                      : cuda::sm90::Dtype::kFp16;
  cudaError_t err = cudaSuccess;
  bool launched = false;
  // SWAA_TEST_FUSED_OOM (tests only): the single pass's workspace request fails
  // with the out-of-memory error a full GPU gives, so the fallback below can be
  // tested without filling the GPU (on the H200 machine neither a memory
  // fraction nor a ballast tensor made the allocation fail reliably).
  const cuda::Workspace refuse = [](int64_t n) -> float* {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "SWAA_TEST_FUSED_OOM is set: refused a workspace of ",
                     4 * n, " bytes");
    return nullptr;
  };
  const char* refuse_env = std::getenv("SWAA_TEST_FUSED_OOM");
  const bool refuse_fused =
      (passes & kBwdFusedBit) != 0 && refuse_env != nullptr && std::atoi(refuse_env) != 0;
  try {
    launched = cuda::sm90::try_bwd(p, dtype, passes, delta, refuse_fused ? refuse : workspace,
                                   stream, &err);
  } catch (const c10::OutOfMemoryError&) {
    // The single pass asks for its workspace before it launches anything, and
    // its float32 dq accumulator (4 bytes x B x Hq x Lq x D) is what the two
    // passes do without.  When the default chose it, take the two passes
    // instead of failing; asked for by name (SWAA_BWD_HOPPER=4), fail.
    const char* knob = std::getenv("SWAA_BWD_HOPPER");
    if ((passes & kBwdFusedBit) == 0 || (knob != nullptr && std::atoi(knob) == 4)) throw;
    TORCH_WARN("swaa::bwd: no GPU memory for the single-pass backward's float32 dq accumulator (",
               4 * p.batch * p.q_heads * p.q_len * p.head_dim,
               " bytes); took the two-pass backward instead (SWAA_BWD_HOPPER=1 always does)");
    passes = hopper_passes(1);
    launched = cuda::sm90::try_bwd(p, dtype, passes, delta, workspace, stream, &err);
  }
  C10_CUDA_CHECK(err);
  return launched ? (cuda::kBwdDq | cuda::kBwdDkdv) & ~passes & cuda::kBwdAll : cuda::kBwdAll;
#else
  (void)p, (void)delta, (void)workspace, (void)stream;
  return cuda::kBwdAll;
#endif
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse,
    std::optional<int64_t> window, int64_t sink, const std::optional<at::Tensor>& full_from,
    double scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor dout = dout_in, q = q_in, k = k_in, v = v_in, out = out_in;
  if (q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && dout.dim() == 4 && out.dim() == 4 &&
      q.numel() > 0 && k.numel() > 0) {
    q = aligned(q), k = aligned(k), v = aligned(v), dout = aligned(dout), out = aligned(out);
  }
  BwdCall call = prepare_bwd(dout, q, k, v, out, lse, window, sink, full_from, scale);  // argument checks first
  const Variant variant = variant_of(q.scalar_type(), q.size(3), "swaa::bwd");
  if (q.numel() == 0 || k.numel() == 0) {  // no query rows: nothing flows to the keys
    call.dk.zero_();
    call.dv.zero_();
    return {call.dq, call.dk, call.dv};
  }
  with_variant(variant, [&]<typename T, int D>() {
    at::Tensor delta = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
    // Scratch (partial dk/dv of split key blocks, the Hopper path's padded
    // lse/delta), freed after the launches (stream-ordered allocator).
    std::vector<at::Tensor> scratch;
    const cuda::Workspace workspace = [&](int64_t n) {
      scratch.push_back(at::empty({n}, q.options().dtype(at::kFloat)));
      return scratch.back().data_ptr<float>();
    };
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const unsigned sm80_parts =
        try_hopper_bwd<T, D>(call.params, delta.data_ptr<float>(), workspace, stream);
    if (sm80_parts != 0)
      cuda::run_bwd<T, D>(call.params, delta.data_ptr<float>(), workspace, stream, sm80_parts);
  });
  return {call.dq, call.dk, call.dv};
}

// swaa::bwd_path(dout, q, k, v, window, sink, full_from): which kernels
// swaa::bwd with these tensors and this mask runs: "sm90" (both passes on
// Hopper), "sm90-dkdv" / "sm90-dq" (one pass on Hopper, SWAA_BWD_HOPPER=2/3),
// "sm90-fused" (the single pass: SWAA_BWD_HOPPER=4, or unset and
// prefer_single_pass), else "sm80: <reason>".  Same input preparation as
// bwd_cuda (out is taken to be laid out like dout).
std::string bwd_path_cuda(const at::Tensor& dout_in, const at::Tensor& q_in,
                          const at::Tensor& k_in, const at::Tensor& v_in,
                          std::optional<int64_t> window, int64_t sink,
                          const std::optional<at::Tensor>& full_from) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor dout = dout_in, q = q_in, k = k_in, v = v_in;
  if (q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && dout.dim() == 4 && q.numel() > 0 &&
      k.numel() > 0) {
    q = aligned(q), k = aligned(k), v = aligned(v), dout = aligned(dout);
  }
  const at::Tensor lse =
      q.dim() == 4 ? at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat))
                   : at::empty({0}, q.options().dtype(at::kFloat));
  BwdCall call = prepare_bwd(dout, q, k, v, dout, lse, window, sink, full_from, 1.0);
  const Variant variant = variant_of(q.scalar_type(), q.size(3), "swaa::bwd_path");
  std::string path = "sm80: empty input";
  if (q.numel() == 0 || k.numel() == 0) return path;
  with_variant(variant, [&]<typename T, int D>() { path = bwd_path_of<T, D>(call.params); });
  return path;
}

}  // namespace
}  // namespace swaa

TORCH_LIBRARY_FRAGMENT(swaa, m) {
  m.def("fwd_path(Tensor q, Tensor k, Tensor v) -> str");
  m.def(
      "bwd_path(Tensor dout, Tensor q, Tensor k, Tensor v, int? window=None, int sink=0, "
      "Tensor? full_from=None) -> str");
}

TORCH_LIBRARY_IMPL(swaa, CUDA, m) {
  m.impl("fwd", &swaa::fwd_cuda);
  m.impl("fwd_path", &swaa::fwd_path_cuda);
  m.impl("bwd_path", &swaa::bwd_path_cuda);
  m.impl("bwd", &swaa::bwd_cuda);
}
