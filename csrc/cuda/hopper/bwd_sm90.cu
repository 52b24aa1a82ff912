// Launcher of the Hopper backward (bwd_sm90.cuh): device and stride checks,
// TMA tensor maps, the dk/dv schedule (shared with the sm_80 backward,
// cuda/bwd_plan.cuh), launches.  Compiled for sm_90a only (csrc/cuda/hopper/
// CMakeLists.txt), both 16-bit dtypes and head dims 64 and 128 in this one
// translation unit; no torch headers (errors go back as cudaError_t).
#include "cuda/hopper/bwd_sm90.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "cuda/bwd_plan.cuh"  // ceil_div, knob, split_knob, plan_dkdv, kBwdOrder
#include "cuda/hopper/bwd_fused_sm90.cuh"  // includes bwd_sm90.cuh
#include "cuda/hopper/device_query.h"
#include "cuda/hopper/tma_map.h"

namespace swaa {
namespace cuda {
namespace sm90 {
namespace {

template <typename Kernel>
bool present(Kernel kernel) {
  cudaFuncAttributes attr{};
  const bool ok = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok;
}

template <typename T, int D>
bool kernels_present() {
  bool ok = present(bwd_dkdv_sm90_kernel<T, D>) && present(bwd_dq_sm90_kernel<T, D>) &&
            present(bwd_dq_sm90_kernel<T, D, true>) && present(bwd_prep_sm90_kernel<T, D>);
  if constexpr (D == 64) ok = ok && present(bwd_dkdv_sm90_kernel<T, D, true>);
  return ok;
}

template <typename T, int D>
constexpr int max_smem() {
  return std::max(dkdv_sm90_smem_bytes<T, D>(), dq_sm90_smem_bytes<T, D>());
}

// Compute capability 9.0, enough shared memory, and an sm_90a image of every
// backward kernel (cached per device).
bool device_ok() {
  static int cache[kMaxDevices] = {};
  return once_per_device_bool(cache, [](int dev) {
    return is_sm90_with_smem(dev, std::max(max_smem<__nv_bfloat16, 128>(),
                                           max_smem<__nv_bfloat16, 64>())) &&
           kernels_present<__nv_bfloat16, 128>() && kernels_present<__half, 128>() &&
           kernels_present<__nv_bfloat16, 64>() && kernels_present<__half, 64>();
  });
}

// Every variant of the single pass fits the sm_90 opt-in (227 KB per block);
// the column split sits exactly at it, so growth must fail here, not turn
// knob 4 into the two passes at run time (fused_device_ok()).
constexpr int kSm90SmemOptin = 227 * 1024;
static_assert(fused_sm90_smem_bytes<__nv_bfloat16, 128, true>() <= kSm90SmemOptin &&
                  fused_sm90_smem_bytes<__half, 128, true>() <= kSm90SmemOptin,
              "single pass, D=128, dQ split by columns: over the sm_90 shared-memory opt-in");
static_assert(fused_sm90_smem_bytes<__nv_bfloat16, 128, false>() <= kSm90SmemOptin &&
                  fused_sm90_smem_bytes<__half, 128, false>() <= kSm90SmemOptin,
              "single pass, D=128, dQ split by keys: over the sm_90 shared-memory opt-in");
static_assert(fused_sm90_smem_bytes<__nv_bfloat16, 64, false>() <= kSm90SmemOptin &&
                  fused_sm90_smem_bytes<__half, 64, false>() <= kSm90SmemOptin,
              "single pass, D=64: over the sm_90 shared-memory opt-in");

// SWAA_BWD_FUSED_WATCHDOG = polls of one turn before the single pass's writer
// traps (default kTurnMaxPolls, ~30-60 s; the tests and the smoke use 2^22,
// ~2-4 s; 0 = never, for compute-sanitizer runs, where legitimate waits
// stretch).  Read at every launch; other values are ignored.
// SWAA_BWD_PIPELINE: 0 or 2, else (unset, 1, anything else) the default 1;
// see launch().
int pipeline_knob() { return knob("SWAA_BWD_PIPELINE", 1, 0, 2); }

uint32_t fused_watchdog() {
  const char* env = std::getenv("SWAA_BWD_FUSED_WATCHDOG");
  if (env == nullptr || env[0] == '\0') return kTurnMaxPolls;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  if (*end != '\0' || v < 0 || v > 0xFFFFFFFFll) return kTurnMaxPolls;
  return v == 0 ? 0xFFFFFFFFu : static_cast<uint32_t>(v);
}

// Debug knob of the tests (as for swaa::bwd's outputs, ops.cpp):
// SWAA_POISON_OUTPUTS=1 also fills the single pass's float32 dQ accumulator
// with NaN before the launch, so a tile whose rank-0 store is missing or
// misdirected shows up as NaN instead of the previous call's values (the
// caching allocator hands the same block back).  Read once per process.
bool poison_accumulator() {
  static const bool poison = [] {
    const char* env = std::getenv("SWAA_POISON_OUTPUTS");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return poison;
}

// The single-pass kernel: present in the image and its shared memory
// available (cached per device; device_ok() has passed).
bool fused_device_ok() {
  static int cache[kMaxDevices] = {};
  return once_per_device_bool(cache, [](int dev) {
    const int smem_optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return smem_optin >= fused_sm90_smem_bytes<__nv_bfloat16, 128, true>() &&
           smem_optin >= fused_sm90_smem_bytes<__nv_bfloat16, 128, false>() &&
           smem_optin >= fused_sm90_smem_bytes<__nv_bfloat16, 64, false>() &&
           present(bwd_fused_sm90_kernel<__nv_bfloat16, 128, true, false, true, true>) &&
           present(bwd_fused_sm90_kernel<__half, 128, true, false, true, true>) &&
           present(bwd_fused_sm90_kernel<__nv_bfloat16, 128, false, false, true, true>) &&
           present(bwd_fused_sm90_kernel<__half, 128, false, false, true, true>) &&
           present(bwd_fused_sm90_kernel<__nv_bfloat16, 64, false, false, true>) &&
           present(bwd_fused_sm90_kernel<__half, 64, false, false, true>) &&
           present(bwd_fused_sm90_kernel<__nv_bfloat16, 64, false, true, true>) &&
           present(bwd_fused_sm90_kernel<__half, 64, false, true, true>) &&
           present(bwd_fused_dq_out_kernel<__nv_bfloat16, 128>) &&
           present(bwd_fused_dq_out_kernel<__half, 128>) &&
           present(bwd_fused_dq_out_kernel<__nv_bfloat16, 64>) &&
           present(bwd_fused_dq_out_kernel<__half, 64>);
  });
}

struct Maps {
  CUtensorMap q, k, v, dout;
};

// Tensor maps with boxes of `q_rows` rows for q and dout, `k_rows` for k and v.
bool make_maps(const AttnParams& p, Dtype dtype, int q_rows, int k_rows, Maps* m) {
  const int64_t d = p.head_dim;
  return make_map(&m->q, p.q, dtype, d, p.q_len, p.q_heads, p.batch, p.q_row_stride,
                  p.q_head_stride, p.q_batch_stride, q_rows) &&
         make_map(&m->dout, p.dout, dtype, d, p.q_len, p.q_heads, p.batch, p.do_row_stride,
                  p.do_head_stride, p.do_batch_stride, q_rows) &&
         make_map(&m->k, p.k, dtype, d, p.k_len, p.kv_heads, p.batch, p.k_row_stride,
                  p.k_head_stride, p.k_batch_stride, k_rows) &&
         make_map(&m->v, p.v, dtype, d, p.k_len, p.kv_heads, p.batch, p.v_row_stride,
                  p.v_head_stride, p.v_batch_stride, k_rows);
}

// The maps of both passes: dk/dv (query tiles of 64, key blocks of 128) and
// dq (query blocks of 128, key tiles of 64).
Fit prepare(const AttnParams& p, Dtype dtype, Maps* dkdv_maps, Maps* dq_maps) {
  if (p.head_dim != 64 && p.head_dim != 128) return Fit::kHeadDim;
  if (!device_ok()) return Fit::kDevice;
  using C = BwdSm90Config<128>;
  static_assert(C::kKvBlockM == BwdSm90Config<64>::kKvBlockM &&
                C::kKvBlockN == BwdSm90Config<64>::kKvBlockN &&
                C::kDqBlockM == BwdSm90Config<64>::kDqBlockM &&
                C::kDqBlockN == BwdSm90Config<64>::kDqBlockN);
  const bool ok = make_maps(p, dtype, C::kKvBlockM, C::kKvBlockN, dkdv_maps) &&
                  make_maps(p, dtype, C::kDqBlockM, C::kDqBlockN, dq_maps);
  return ok ? Fit::kOk : Fit::kStrides;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// Pieces both launchers (the two passes and the single pass) run the same way.

// Floats of the split sink blocks' partial dk/dv (0 when no block is split).
template <int D>
int64_t partial_floats(const AttnParams& p, const DkdvSchedule& sched) {
  using C = BwdSm90Config<D>;
  return sched.n_split_blocks > 0
             ? p.batch * p.kv_heads * sched.n_split_blocks * sched.n_split * 2 * C::kKvBlockN * D
             : 0;
}

// delta = rowsum(dout * out) and the padded lse2 / delta the kernels read.
template <typename T, int D>
cudaError_t launch_prep(const AttnParams& p, float* delta, float* lse2_pad, float* delta_pad,
                        int64_t q_len_pad, cudaStream_t stream) {
  constexpr int kPrepThreads = 256;
  const int64_t n_pad = p.batch * p.q_heads * q_len_pad;
  bwd_prep_sm90_kernel<T, D>
      <<<static_cast<unsigned>(ceil_div(n_pad * (D / 8), kPrepThreads)), kPrepThreads, 0, stream>>>(
          p, delta, lse2_pad, delta_pad, q_len_pad);
  return cudaGetLastError();
}

// Sums the split sink blocks' partial dk/dv (nothing to do when no block is split).
template <typename T, int D>
cudaError_t launch_dkdv_reduce(const AttnParams& p, const DkdvSchedule& sched,
                               cudaStream_t stream) {
  using C = BwdSm90Config<D>;
  if (sched.n_split_blocks == 0) return cudaSuccess;
  constexpr int kReduceThreads = 256;
  const int64_t threads = p.batch * p.kv_heads * sched.n_split_blocks * C::kKvBlockN * D / 4;
  bwd_dkdv_reduce_kernel<T, D, C::kKvBlockN>
      <<<static_cast<unsigned>(ceil_div(threads, kReduceThreads)), kReduceThreads, 0, stream>>>(
          p, sched);
  return cudaGetLastError();
}

// A second stream per device and host thread, and the two events that fork it
// from the caller's stream and join it back (SWAA_BWD_CONCURRENT=1).  Under
// CUDA-graph capture the fork puts the side stream into the capture and the
// join ends its part of it, so a captured backward replays both branches.
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
};

// The calling thread's side stream on the current device, created on first
// use; nullptr (run on one stream) where it cannot be made now: a device
// index past the cache, or a first use while `caller` is being captured
// (creating streams and events is no work to put in a capture).
SideStream* side_stream(cudaStream_t caller) {
  thread_local SideStream per_device[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();
    return nullptr;
  }
  SideStream& s = per_device[device];
  if (s.join != nullptr) return &s;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(caller, &capture) != cudaSuccess ||
      capture != cudaStreamCaptureStatusNone) {
    (void)cudaGetLastError();
    return nullptr;
  }
  if (s.stream == nullptr &&
      cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking) != cudaSuccess)
    s.stream = nullptr;
  if (s.stream != nullptr && s.fork == nullptr &&
      cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming) != cudaSuccess)
    s.fork = nullptr;
  if (s.fork != nullptr && cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming) != cudaSuccess)
    s.join = nullptr;
  (void)cudaGetLastError();  // a failure here only means one stream
  return s.join != nullptr ? &s : nullptr;
}

template <typename T, int D>
cudaError_t launch(const AttnParams& p, unsigned passes, float* delta,
                   const std::function<float*(int64_t)>& workspace, const Maps& dkdv_maps,
                   const Maps& dq_maps, cudaStream_t stream) {
  using C = BwdSm90Config<D>;
  constexpr int kDkdvSmem = dkdv_sm90_smem_bytes<T, D>();
  constexpr int kDqSmem = dq_sm90_smem_bytes<T, D>();
  static const cudaError_t configured_dkdv = allow_smem(bwd_dkdv_sm90_kernel<T, D>, kDkdvSmem);
  static const cudaError_t configured_dq = allow_smem(bwd_dq_sm90_kernel<T, D>, kDqSmem);
  if (configured_dkdv != cudaSuccess) return configured_dkdv;
  if (configured_dq != cudaSuccess) return configured_dq;
  // Pipelined kernels: consumer groups that compute the next item's (tile's)
  // probabilities while this one's last products run; the same products in the
  // same order, so the same bits.  SWAA_BWD_PIPELINE = 0: none; 1 (the default
  // since session 11): the dq kernel, 1.05-1.14x faster on all ten bwd-ab
  // shapes (bench/results/cuda_tuning_h200.jsonl, interleaved rounds); 2: also
  // the dk/dv kernel at D=64 (0.87-0.90x there: it stays a knob for study; at
  // D=128 its registers would not fit).
  const int pipeline = pipeline_knob();
  auto dq_kernel = bwd_dq_sm90_kernel<T, D>;
  auto dkdv_kernel = bwd_dkdv_sm90_kernel<T, D>;
  if (pipeline >= 1) {
    static const cudaError_t configured_dq_pipe =
        allow_smem(bwd_dq_sm90_kernel<T, D, true>, kDqSmem);
    if (configured_dq_pipe != cudaSuccess) return configured_dq_pipe;
    dq_kernel = bwd_dq_sm90_kernel<T, D, true>;
  }
  if constexpr (D == 64) {
    if (pipeline == 2) {
      static const cudaError_t configured_dkdv_pipe =
          allow_smem(bwd_dkdv_sm90_kernel<T, D, true>, kDkdvSmem);
      if (configured_dkdv_pipe != cudaSuccess) return configured_dkdv_pipe;
      dkdv_kernel = bwd_dkdv_sm90_kernel<T, D, true>;
    }
  }

  const bool heads_inner = knob("SWAA_BWD_ORDER", kBwdOrder, 0, 1) == 1;
  const int64_t q_len_pad = ceil_div(p.q_len, kPadRows) * kPadRows;
  const int64_t n_pad = p.batch * p.q_heads * q_len_pad;
  DkdvSchedule sched = plan_dkdv<C::kKvBlockN, C::kKvBlockM>(p, split_knob(), heads_inner);
  const bool dkdv = (passes & kHopperDkdv) != 0;
  const int64_t n_partial = dkdv ? partial_floats<D>(p, sched) : 0;
  float* scratch = workspace(2 * n_pad + n_partial);
  float* lse2_pad = scratch;
  float* delta_pad = scratch + n_pad;  // n_pad is a multiple of 128: 512-byte aligned
  if (n_partial > 0) sched.partial = scratch + 2 * n_pad;

  cudaError_t err = launch_prep<T, D>(p, delta, lse2_pad, delta_pad, q_len_pad, stream);
  if (err != cudaSuccess) return err;

  const bool dq = (passes & kHopperDq) != 0;
  auto launch_dq = [&](cudaStream_t on) {
    const int64_t grid = ceil_div(p.q_len, C::kDqBlockM) * p.q_heads * p.batch;
    dq_kernel<<<static_cast<unsigned>(grid), C::kThreads, kDqSmem, on>>>(
        p, lse2_pad, delta_pad, q_len_pad, heads_inner, dq_maps.q, dq_maps.k, dq_maps.v,
        dq_maps.dout);
    return cudaGetLastError();
  };
  auto launch_dkdv = [&] {
    const int64_t grid = int64_t(sched.n_units()) * p.kv_heads * p.batch;
    dkdv_kernel<<<static_cast<unsigned>(grid), C::kThreads, kDkdvSmem, stream>>>(
        p, lse2_pad, delta_pad, q_len_pad, sched, dkdv_maps.q, dkdv_maps.k, dkdv_maps.v,
        dkdv_maps.dout);
    err = cudaGetLastError();
    return err == cudaSuccess ? launch_dkdv_reduce<T, D>(p, sched, stream) : err;
  };
  SideStream* side = dq && dkdv && knob("SWAA_BWD_CONCURRENT", 0, 0, 1) == 1
                         ? side_stream(stream)
                         : nullptr;
  if (side == nullptr) {  // one stream (the default)
    if (dq && (err = launch_dq(stream)) != cudaSuccess) return err;
    return dkdv ? launch_dkdv() : cudaSuccess;
  }
  // SWAA_BWD_CONCURRENT=1 (off by default: 0.98-1.03x the one-stream backward on
  // an H200, session 7, docs/cuda_kernels.md "Knobs"): the two passes read
  // the same inputs and write disjoint outputs, so after the prep kernel the
  // dq pass can run on a second stream beside the dk/dv pass.  dk/dv (the
  // longer CTAs) is launched first; the dq CTAs fill the SMs its last wave
  // leaves idle instead of waiting for the whole grid.  The same kernels and
  // arguments: bitwise the same results.
  err = cudaEventRecord(side->fork, stream);  // after the prep kernel
  if (err == cudaSuccess) err = cudaStreamWaitEvent(side->stream, side->fork, 0);
  if (err != cudaSuccess) return err;
  err = launch_dkdv();
  cudaError_t dq_err = err == cudaSuccess ? launch_dq(side->stream) : cudaSuccess;
  // Join whatever happened: the caller's stream must never run ahead of work
  // on the side stream (the dq output and the workspace).
  if (dq_err == cudaSuccess) dq_err = cudaEventRecord(side->join, side->stream);
  const cudaError_t join = cudaStreamWaitEvent(stream, side->join, 0);
  if (err != cudaSuccess) return err;
  return dq_err != cudaSuccess ? dq_err : join;
}

// The single pass (bwd_fused_sm90.cuh): preprocessing, the fused kernel
// (dk, dv and the dq accumulator), the reduce of split sink blocks, dq out.
// COLS: the dQ product's split over the consumer groups (SWAA_BWD_FUSED_DQ);
// PIPE: an item's dQ product issued with its dV, dK (SWAA_BWD_PIPELINE >= 1, D=64).
template <typename T, int D, bool COLS, bool PIPE = false>
cudaError_t launch_fused(const AttnParams& p, float* delta,
                         const std::function<float*(int64_t)>& workspace, const Maps& maps,
                         cudaStream_t stream) {
  using C = BwdSm90Config<D>;
  constexpr int kSmem = fused_sm90_smem_bytes<T, D, COLS>();
  // SWAA_BWD_FUSED_STSM: 1 (default since session 12) stores dS with stmatrix,
  // 0 with 16-bit stores; the same bytes to the same places (same bits).
  const bool stsm = knob("SWAA_BWD_FUSED_STSM", 1, 0, 1) == 1;
  // SWAA_BWD_FUSED_ITEM: how an item starts (bwd_fused_sm90.cuh, ITEM_SPAN).
  // 1 (default at D=64): the per-CTA test of whether the item sees the group's
  // keys (group_items), the dQ writer's turn worked out while the item's first
  // products run; 0 (default at D=128): the item's key span, the turn before
  // the products, as in session 14.  Same bits.  Session 15, H200, interleaved
  // rounds in both orders (log bench/results/logs/fused_item_ab_H200_session15.log):
  // 1 over 0 on the fused kernel 1.046-1.067x at D=64, 0.976-0.998x at D=128.
  const bool span = knob("SWAA_BWD_FUSED_ITEM", D == 64 ? 1 : 0, 0, 1) == 0;
  auto kernel = span ? (stsm ? bwd_fused_sm90_kernel<T, D, COLS, PIPE, true, true>
                             : bwd_fused_sm90_kernel<T, D, COLS, PIPE, false, true>)
                     : (stsm ? bwd_fused_sm90_kernel<T, D, COLS, PIPE, true, false>
                             : bwd_fused_sm90_kernel<T, D, COLS, PIPE, false, false>);
  static const cudaError_t configured[2][2] = {
      {allow_smem(bwd_fused_sm90_kernel<T, D, COLS, PIPE, false, false>, kSmem),
       allow_smem(bwd_fused_sm90_kernel<T, D, COLS, PIPE, true, false>, kSmem)},
      {allow_smem(bwd_fused_sm90_kernel<T, D, COLS, PIPE, false, true>, kSmem),
       allow_smem(bwd_fused_sm90_kernel<T, D, COLS, PIPE, true, true>, kSmem)}};
  if (configured[span][stsm] != cudaSuccess) return configured[span][stsm];

  const bool heads_inner = knob("SWAA_BWD_ORDER", fused_slices_inner(p) ? 1 : 0, 0, 1) == 1;
  const int64_t q_len_pad = ceil_div(p.q_len, kPadRows) * kPadRows;
  const int64_t n_pad = p.batch * p.q_heads * q_len_pad;
  DkdvSchedule sched = plan_dkdv<C::kKvBlockN, C::kKvBlockM>(p, split_knob(), heads_inner);
  const int64_t n_partial = partial_floats<D>(p, sched);
  const int64_t tiles = q_len_pad / C::kKvBlockM;
  const int64_t n_ints = ceil_div(p.batch * p.q_heads * tiles + 1, 4) * 4;  // turns + ticket
  // lse2 | delta | accumulator | partial dk/dv | turns, ticket: every part a
  // multiple of 4 floats (16-byte aligned for the bulk copies).
  float* scratch = workspace(2 * n_pad + n_pad * D + n_partial + n_ints);
  float* lse2_pad = scratch;
  float* delta_pad = scratch + n_pad;
  FusedDq fdq{};
  fdq.accum = scratch + 2 * n_pad;
  if (n_partial > 0) sched.partial = fdq.accum + n_pad * D;
  fdq.turns = reinterpret_cast<int*>(fdq.accum + n_pad * D + n_partial);
  fdq.ticket = fdq.turns + p.batch * p.q_heads * tiles;
  fdq.tiles = static_cast<int>(tiles);
  fdq.max_polls = fused_watchdog();
  // SWAA_BWD_FUSED_DQ_BUFS: 2 (default) stages item n's dQ part while the
  // writer still adds item n - 1 (D = 64; D = 128 has room for one buffer);
  // 1: one buffer, the consumers wait for the writer.  Same sums in the same
  // order (same bits).
  fdq.dq_bufs = static_cast<int>(knob("SWAA_BWD_FUSED_DQ_BUFS", 2, 1, 2));
  cudaError_t err = cudaMemsetAsync(fdq.turns, 0, n_ints * sizeof(int), stream);
  if (err != cudaSuccess) return err;
  if (poison_accumulator()) {  // 0xFFFFFFFF is a float NaN
    err = cudaMemsetAsync(fdq.accum, 0xFF, n_pad * D * sizeof(float), stream);
    if (err != cudaSuccess) return err;
  }

  err = launch_prep<T, D>(p, delta, lse2_pad, delta_pad, q_len_pad, stream);
  if (err != cudaSuccess) return err;

  const int64_t grid = int64_t(sched.n_units()) * p.kv_heads * p.batch;
  kernel<<<static_cast<unsigned>(grid), C::kThreads, kSmem, stream>>>(
      p, lse2_pad, delta_pad, q_len_pad, sched, fdq, maps.q, maps.k, maps.v, maps.dout);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = launch_dkdv_reduce<T, D>(p, sched, stream);
  if (err != cudaSuccess) return err;
  constexpr int kOutThreads = 256;
  bwd_fused_dq_out_kernel<T, D>
      <<<static_cast<unsigned>(ceil_div(n_pad * (D / 4), kOutThreads)), kOutThreads, 0, stream>>>(
          p, fdq.accum, q_len_pad);
  return cudaGetLastError();
}

}  // namespace

bool fused_fits(const AttnParams& p, Dtype dtype) {
  Maps a, b;
  return prepare(p, dtype, &a, &b) == Fit::kOk && fused_device_ok();
}

Fit bwd_fits(const AttnParams& p, Dtype dtype) {
  Maps a, b;
  return prepare(p, dtype, &a, &b);
}

bool try_bwd(const AttnParams& p, Dtype dtype, unsigned passes, float* delta,
             const std::function<float*(int64_t)>& workspace, cudaStream_t stream,
             cudaError_t* error) {
  *error = cudaSuccess;
  Maps dkdv_maps, dq_maps;
  if (prepare(p, dtype, &dkdv_maps, &dq_maps) != Fit::kOk) return false;
  const bool bf16 = dtype == Dtype::kBf16;
  if ((passes & kHopperFused) && (passes & kHopperDq) && (passes & kHopperDkdv) &&
      fused_device_ok()) {
    // SWAA_BWD_FUSED_DQ (D = 128): 0 = each consumer group takes the dQ of its
    // own 64 keys, the parts summed in shared memory; 1 = each takes 64 of the
    // dQ columns over all keys (barrier over both groups per item), the default
    // at D = 128 since session 10: in the 12 tuning runs of sessions 5-10 on
    // six shapes (bench/results/cuda_tuning_h200.jsonl, part bwd-fused) the
    // column split's backward ran at 0.97-1.14x the key split's, 1.02-1.07x at
    // N=32k, W=4096, S=0 (one of the shapes where fwd+bwd stays below 1.3x
    // Flex), never below 0.97x; docs/cuda_kernels.md "v7".
    const bool cols = knob("SWAA_BWD_FUSED_DQ", p.head_dim == 128 ? 1 : 0, 0, 1) == 1;
    if (p.head_dim == 128) {
      if (cols)
        *error = bf16 ? launch_fused<__nv_bfloat16, 128, true>(p, delta, workspace, dkdv_maps, stream)
                      : launch_fused<__half, 128, true>(p, delta, workspace, dkdv_maps, stream);
      else
        *error = bf16 ? launch_fused<__nv_bfloat16, 128, false>(p, delta, workspace, dkdv_maps, stream)
                      : launch_fused<__half, 128, false>(p, delta, workspace, dkdv_maps, stream);
    } else if (pipeline_knob() != 0) {
      // D=64: an item's dQ product issued with its dV, dK (the default since
      // session 11: its kernel 1.02-1.04x faster on the four D=64 bwd-ab shapes)
      *error = bf16 ? launch_fused<__nv_bfloat16, 64, false, true>(p, delta, workspace, dkdv_maps, stream)
                    : launch_fused<__half, 64, false, true>(p, delta, workspace, dkdv_maps, stream);
    } else {
      *error = bf16 ? launch_fused<__nv_bfloat16, 64, false>(p, delta, workspace, dkdv_maps, stream)
                    : launch_fused<__half, 64, false>(p, delta, workspace, dkdv_maps, stream);
    }
    return true;
  }
  if (p.head_dim == 128)
    *error = bf16 ? launch<__nv_bfloat16, 128>(p, passes, delta, workspace, dkdv_maps, dq_maps, stream)
                  : launch<__half, 128>(p, passes, delta, workspace, dkdv_maps, dq_maps, stream);
  else
    *error = bf16 ? launch<__nv_bfloat16, 64>(p, passes, delta, workspace, dkdv_maps, dq_maps, stream)
                  : launch<__half, 64>(p, passes, delta, workspace, dkdv_maps, dq_maps, stream);
  return true;
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
