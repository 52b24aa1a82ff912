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

// dq, dk, dv from p (prepare_bwd filled it); `delta` is float32 scratch of
// batch * q_heads * q_len elements; `workspace` gives the partial dk/dv of
// split key blocks (only asked for when a block is split).
template <typename T, int D>
void run_bwd(const AttnParams& p, float* delta, const Workspace& workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace swaa

#if defined(SWAA_INSTANTIATE_KERNELS)
#include <c10/cuda/CUDAException.h>

#include <algorithm>
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
// New in v4, not yet measured (docs/cuda_kernels.md): split of the sink key
// blocks' dk/dv work (SWAA_BWD_SPLIT) and head-interleaved CTA order
// (SWAA_FWD_ORDER, SWAA_BWD_ORDER).
constexpr int kBwdSplit = 1;
constexpr int kFwdOrder = 1;
constexpr int kBwdOrder = 1;
constexpr int kWarpSkip = 1;  // SWAA_WARP_SKIP: fwd and dq warps skip tiles their rows cannot see
// At most this many split pieces per launch (all slices and split blocks
// together): about two waves of CTAs on an H100/H200, and a bounded workspace
// (256 x 2 x 128 x D floats: 32 MB at D=128).
constexpr int64_t kMaxPieces = 256;

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Tuning knobs, read at every launch so one process can compare settings
// (bench/tune_cuda_kernels.py): SWAA_FWD_WARPS = 4 or 8 (warps of 16 query
// rows per forward CTA), SWAA_BWD_KV_BLOCK_M = 32 or 64 (query rows per tile
// of the dk/dv kernel), SWAA_BWD_STAGE = 0 or 1 (dk/dv kernel: lse/delta
// staged in shared memory + per-warp skipping of invisible tiles),
// SWAA_FWD_ORDER / SWAA_BWD_ORDER = 0 or 1 (1: CTAs of all heads for one row
// or key block in a row, longest blocks first; 0: the heads one after the
// other), SWAA_BWD_SPLIT = 0 (sink key blocks in one CTA), 1 (split, piece
// count from the sizes) or k >= 2 (exactly k pieces per sink block, for
// tests), SWAA_WARP_SKIP = 0 or 1 (forward and dq: a warp skips the key
// tiles none of its 16 rows can see; bitwise neutral).  Other values are
// ignored.
inline int knob(const char* name, int fallback, int a, int b) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  const int v = std::atoi(env);
  return v == a || v == b ? v : fallback;
}
inline int split_knob() {
  const char* env = std::getenv("SWAA_BWD_SPLIT");
  if (env == nullptr) return kBwdSplit;
  const int v = std::atoi(env);
  return v >= 0 && v <= 4096 ? v : kBwdSplit;
}

// The dk/dv CTA layout (DkdvSchedule in attention_kernels.cuh) from static
// sizes only (no device reads).  The key blocks holding sink keys are seen by
// every later query: their item list (query head x query tile) has
// group * ceil(q_len / BM) items, against about group * (W + BN) / BM for a
// key block in the window.  They are cut into pieces of about that window
// length, at most kMaxPieces pieces in all.  Rows past full_from make every
// key block before full_from longer by the same amount (per sequence, known
// only on the device), so they lengthen all those CTAs alike rather than a
// few: the longest-first order handles them, no split.
template <int BN, int BM>
DkdvSchedule plan_dkdv(const AttnParams& p, int split, bool slices_inner) {
  DkdvSchedule s{};
  s.n_blocks = static_cast<int>(ceil_div(p.k_len, BN));
  s.n_split_blocks = 0;
  s.n_split = 1;
  s.chunk = 0;
  s.slices_inner = slices_inner;
  s.partial = nullptr;
  if (split == 0 || p.sink <= 0) return s;
  const int64_t split_blocks = std::min<int64_t>(ceil_div(p.sink, BN), s.n_blocks);
  const int64_t items_max = p.group() * ceil_div(p.q_len, BM);  // a sink block's list
  int64_t n_split;
  if (split >= 2) {
    n_split = split;  // forced (tests): pieces past the list's end are empty
  } else {
    const int64_t band_rows = std::min<int64_t>(p.window, p.q_len) + BN - 1;
    const int64_t band_items = p.group() * (ceil_div(band_rows, BM) + 1);
    const int64_t slices = p.batch * p.kv_heads * split_blocks;
    n_split = std::min<int64_t>(ceil_div(items_max, band_items),
                                std::max<int64_t>(2, kMaxPieces / slices));
  }
  if (n_split < 2) return s;
  s.n_split_blocks = static_cast<int>(split_blocks);
  s.n_split = static_cast<int>(n_split);
  s.chunk = static_cast<int>(ceil_div(items_max, n_split));
  return s;
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
                cudaStream_t stream) {
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
  const bool heads_inner = knob("SWAA_BWD_ORDER", kBwdOrder, 0, 1) == 1;
  const int64_t dq_grid = ceil_div(p.q_len, Cfg::kDqBlockM) * p.q_heads * p.batch;
  const bool skip_idle_warps = knob("SWAA_WARP_SKIP", kWarpSkip, 0, 1) == 1;
  dq_kernel<<<dq_grid, Cfg::kDqThreads, Cfg::kDqSmem, stream>>>(p, delta, heads_inner,
                                                                 skip_idle_warps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

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
void run_bwd(const AttnParams& p, float* delta, const Workspace& workspace, cudaStream_t stream) {
  const bool staged = knob("SWAA_BWD_STAGE", kBwdStaged, 0, 1) == 1;
  if (knob("SWAA_BWD_KV_BLOCK_M", kBwdKvBlockM, 32, 64) == 32) {
    if (staged) launch_bwd<T, D, 32, true>(p, delta, workspace, stream);
    else launch_bwd<T, D, 32, false>(p, delta, workspace, stream);
  } else {
    if (staged) launch_bwd<T, D, 64, true>(p, delta, workspace, stream);
    else launch_bwd<T, D, 64, false>(p, delta, workspace, stream);
  }
}

}  // namespace cuda
}  // namespace swaa

#define SWAA_INSTANTIATE(T, D)                                                   \
  template void swaa::cuda::run_fwd<T, D>(const swaa::AttnParams&, cudaStream_t); \
  template void swaa::cuda::run_bwd<T, D>(const swaa::AttnParams&, float*,                 \
                                          const swaa::cuda::Workspace&, cudaStream_t);
#endif
