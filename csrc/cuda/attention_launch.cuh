// Host-side launchers of the kernels in attention_kernels.cuh, one explicit
// instantiation per (dtype, head dim) in attention_<dtype>_hd<D>.cu.  The
// dispatch (csrc/cuda/attention.cu) only sees the declarations.
#pragma once

#include <cuda_runtime.h>

#include "swaa/params.h"

namespace swaa {
namespace cuda {

// out, lse from p (prepare_fwd filled it); launched on `stream`.
template <typename T, int D>
void run_fwd(const AttnParams& p, cudaStream_t stream);

// dq, dk, dv from p (prepare_bwd filled it); `delta` is float32 scratch of
// batch * q_heads * q_len elements.
template <typename T, int D>
void run_bwd(const AttnParams& p, float* delta, cudaStream_t stream);

}  // namespace cuda
}  // namespace swaa

#if defined(SWAA_INSTANTIATE_KERNELS)
#include <c10/cuda/CUDAException.h>

#include <cstdlib>

#include "cuda/attention_kernels.cuh"

namespace swaa {
namespace cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Defaults of the tuning knobs below (measured on an H200, docs/cuda_kernels.md).
template <int D>
constexpr int kFwdWarps = D <= 64 ? 4 : 8;
constexpr int kBwdKvBlockM = 64;
constexpr int kBwdStaged = 1;

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Tuning knobs, read at every launch so one process can compare settings
// (bench/tune_cuda_kernels.py): SWAA_FWD_WARPS = 4 or 8 (warps of 16 query
// rows per forward CTA), SWAA_BWD_KV_BLOCK_M = 32 or 64 (query rows per tile
// of the dk/dv kernel), SWAA_BWD_STAGE = 0 or 1 (dk/dv kernel: lse/delta
// staged in shared memory + per-warp skipping of invisible tiles).  Other
// values are ignored.
inline int knob(const char* name, int fallback, int a, int b) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  const int v = std::atoi(env);
  return v == a || v == b ? v : fallback;
}

template <typename T, int D, int WARPS>
void launch_fwd(const AttnParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<T, D, WARPS>;
  auto kernel = fwd_kernel<T, D, WARPS>;
  static const bool configured = (set_smem(kernel, Cfg::kSmem), true);
  (void)configured;
  const dim3 grid(ceil_div(p.q_len, Cfg::kBlockM), p.q_heads, p.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void run_fwd(const AttnParams& p, cudaStream_t stream) {
  if (knob("SWAA_FWD_WARPS", kFwdWarps<D>, 4, 8) == 4)
    launch_fwd<T, D, 4>(p, stream);
  else
    launch_fwd<T, D, 8>(p, stream);
}

template <typename T, int D, int KV_BLOCK_M, bool STAGED>
void launch_bwd(const AttnParams& p, float* delta, cudaStream_t stream) {
  using Cfg = BwdConfig<T, D, KV_BLOCK_M>;
  constexpr int kDeltaThreads = 256;
  const int64_t delta_threads = p.batch * p.q_heads * p.q_len * (D / 8);
  bwd_delta_kernel<T, D><<<ceil_div(delta_threads, kDeltaThreads), kDeltaThreads, 0, stream>>>(
      p, delta);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto dq_kernel = bwd_dq_kernel<T, D>;
  auto dkdv_kernel = bwd_dkdv_kernel<T, D, KV_BLOCK_M, STAGED>;
  static const bool configured =
      (set_smem(dq_kernel, Cfg::kDqSmem), set_smem(dkdv_kernel, Cfg::kKvSmem), true);
  (void)configured;
  const dim3 dq_grid(ceil_div(p.q_len, Cfg::kDqBlockM), p.q_heads, p.batch);
  dq_kernel<<<dq_grid, Cfg::kDqThreads, Cfg::kDqSmem, stream>>>(p, delta);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 kv_grid(ceil_div(p.k_len, Cfg::kKvBlockN), p.kv_heads, p.batch);
  dkdv_kernel<<<kv_grid, Cfg::kKvThreads, Cfg::kKvSmem, stream>>>(p, delta);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void run_bwd(const AttnParams& p, float* delta, cudaStream_t stream) {
  const bool staged = knob("SWAA_BWD_STAGE", kBwdStaged, 0, 1) == 1;
  if (knob("SWAA_BWD_KV_BLOCK_M", kBwdKvBlockM, 32, 64) == 32) {
    if (staged) launch_bwd<T, D, 32, true>(p, delta, stream);
    else launch_bwd<T, D, 32, false>(p, delta, stream);
  } else {
    if (staged) launch_bwd<T, D, 64, true>(p, delta, stream);
    else launch_bwd<T, D, 64, false>(p, delta, stream);
  }
}

}  // namespace cuda
}  // namespace swaa

#define SWAA_INSTANTIATE(T, D)                                                   \
  template void swaa::cuda::run_fwd<T, D>(const swaa::AttnParams&, cudaStream_t); \
  template void swaa::cuda::run_bwd<T, D>(const swaa::AttnParams&, float*, cudaStream_t);
#endif
