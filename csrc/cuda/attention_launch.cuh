// Host-side launchers of the kernels in attention_kernels.cuh, one explicit
// instantiation per (dtype, head dim) in attention_<dtype>_hd<D>.cu.  The
// dispatch (csrc/cuda/attention.cu) only sees the declarations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "swaa/params.h"

namespace swaa {
namespace cuda {

// out, lse from p (prepare_fwd filled it); launched on `stream`.
template <typename T, int D>
void run_fwd(const AttnParams& p, cudaStream_t stream);

// Float32 scratch of n elements, valid until the launches are done on the
// stream (the caller's allocator, e.g. a torch tensor kept until run_bwd returns).
using Workspace = std::function<float*(int64_t n)>;

// The parts of the backward (a bit mask for run_bwd): delta = rowsum(dout * out)
// into `delta`, the dq pass, the dk/dv pass (with its reduce).  The Hopper
// backward (hopper/bwd_sm90.h) can take over some of them; it then writes
// `delta` itself.
enum BwdPart : unsigned { kBwdDelta = 1, kBwdDq = 2, kBwdDkdv = 4, kBwdAll = 7 };

// dq, dk, dv from p (prepare_bwd filled it); `delta` is float32 scratch of
// batch * q_heads * q_len elements (written by the kBwdDelta part, read by
// the others); `workspace` gives the partial dk/dv of split key blocks (only
// asked for when a block is split).
template <typename T, int D>
void run_bwd(const AttnParams& p, float* delta, const Workspace& workspace, cudaStream_t stream,
             unsigned parts = kBwdAll);

}  // namespace cuda
}  // namespace swaa

#if defined(SWAA_INSTANTIATE_KERNELS)
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdlib>

#include "cuda/attention_kernels.cuh"
#include "cuda/bwd_plan.cuh"  // ceil_div, knob, split_knob, plan_dkdv

namespace swaa {
namespace cuda {

// Defaults of the tuning knobs below (measured on an H200, docs/cuda_kernels.md).
template <int D>
constexpr int kFwdWarps = D <= 64 ? 4 : 8;
constexpr int kBwdKvBlockM = 64;
constexpr int kBwdStaged = 1;
// New in v4 (measured: docs/cuda_kernels_history.md, "v4 measured"): split of the sink key
// blocks' dk/dv work (SWAA_BWD_SPLIT) and head-interleaved CTA order
// (SWAA_FWD_ORDER, SWAA_BWD_ORDER); kBwdSplit, kBwdOrder: cuda/bwd_plan.cuh.
constexpr int kFwdOrder = 1;
constexpr int kWarpSkip = 1;  // SWAA_WARP_SKIP: fwd and dq warps skip tiles their rows cannot see

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <typename T, int D, int WARPS>
void launch_fwd(const AttnParams& p, cudaStream_t stream) {
  using Cfg = FwdConfig<T, D, WARPS>;
  auto kernel = fwd_kernel<T, D, WARPS>;
  static const bool configured = (set_smem(kernel, Cfg::kSmem), true);
  (void)configured;
  const bool heads_inner = knob("SWAA_FWD_ORDER", kFwdOrder, 0, 1) == 1;
  const bool skip_idle_warps = knob("SWAA_WARP_SKIP", kWarpSkip, 0, 1) == 1;
  const int64_t grid = ceil_div(p.q_len, Cfg::kBlockM) * p.q_heads * p.batch;
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p, heads_inner, skip_idle_warps);
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
void launch_bwd(const AttnParams& p, float* delta, const Workspace& workspace,
                cudaStream_t stream, unsigned parts) {
  using Cfg = BwdConfig<T, D, KV_BLOCK_M>;
  if (parts & kBwdDelta) {
    constexpr int kDeltaThreads = 256;
    const int64_t delta_threads = p.batch * p.q_heads * p.q_len * (D / 8);
    bwd_delta_kernel<T, D><<<ceil_div(delta_threads, kDeltaThreads), kDeltaThreads, 0, stream>>>(
        p, delta);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  auto dq_kernel = bwd_dq_kernel<T, D>;
  auto dkdv_kernel = bwd_dkdv_kernel<T, D, KV_BLOCK_M, STAGED>;
  static const bool configured =
      (set_smem(dq_kernel, Cfg::kDqSmem), set_smem(dkdv_kernel, Cfg::kKvSmem), true);
  (void)configured;
  const bool heads_inner = knob("SWAA_BWD_ORDER", kBwdOrder, 0, 1) == 1;
  const int64_t dq_grid = ceil_div(p.q_len, Cfg::kDqBlockM) * p.q_heads * p.batch;
  const bool skip_idle_warps = knob("SWAA_WARP_SKIP", kWarpSkip, 0, 1) == 1;
  if (parts & kBwdDq) {
    dq_kernel<<<dq_grid, Cfg::kDqThreads, Cfg::kDqSmem, stream>>>(p, delta, heads_inner,
                                                                   skip_idle_warps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!(parts & kBwdDkdv)) return;

  DkdvSchedule sched = plan_dkdv<Cfg::kKvBlockN, Cfg::kKvBlockM>(p, split_knob(), heads_inner);
  if (sched.n_split_blocks > 0)
    sched.partial = workspace(p.batch * p.kv_heads * sched.n_split_blocks * sched.n_split * 2 *
                              Cfg::kKvBlockN * D);
  const int64_t kv_grid = int64_t(sched.n_units()) * p.kv_heads * p.batch;
  dkdv_kernel<<<kv_grid, Cfg::kKvThreads, Cfg::kKvSmem, stream>>>(p, delta, sched);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (sched.n_split_blocks > 0) {
    constexpr int kReduceThreads = 256;
    const int64_t threads = p.batch * p.kv_heads * sched.n_split_blocks * Cfg::kKvBlockN * D / 4;
    bwd_dkdv_reduce_kernel<T, D, Cfg::kKvBlockN>
        <<<ceil_div(threads, kReduceThreads), kReduceThreads, 0, stream>>>(p, sched);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T, int D>
void run_bwd(const AttnParams& p, float* delta, const Workspace& workspace, cudaStream_t stream,
             unsigned parts) {
  const bool staged = knob("SWAA_BWD_STAGE", kBwdStaged, 0, 1) == 1;
  if (knob("SWAA_BWD_KV_BLOCK_M", kBwdKvBlockM, 32, 64) == 32) {
    if (staged) launch_bwd<T, D, 32, true>(p, delta, workspace, stream, parts);
    else launch_bwd<T, D, 32, false>(p, delta, workspace, stream, parts);
  } else {
    if (staged) launch_bwd<T, D, 64, true>(p, delta, workspace, stream, parts);
    else launch_bwd<T, D, 64, false>(p, delta, workspace, stream, parts);
  }
}

}  // namespace cuda
}  // namespace swaa

#define SWAA_INSTANTIATE(T, D)                                                   \
  template void swaa::cuda::run_fwd<T, D>(const swaa::AttnParams&, cudaStream_t); \
  template void swaa::cuda::run_bwd<T, D>(const swaa::AttnParams&, float*,                 \
                                          const swaa::cuda::Workspace&, cudaStream_t, unsigned);
#endif
