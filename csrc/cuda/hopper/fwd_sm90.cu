// Launcher of the Hopper forward (fwd_sm90.cuh): TMA tensor maps, device and
// stride checks, launch.  Compiled for sm_90a only (csrc/cuda/hopper/
// CMakeLists.txt), for both 16-bit dtypes and head dims 64 and 128 in this one
// translation unit; no
// torch headers (errors go back to csrc/cuda/attention.cpp as cudaError_t).
#include "cuda/hopper/fwd_sm90.h"
#include "cuda/hopper/fwd51_sm90.cuh"  // v5.1 kernels (SWAA_FWD_HOPPER=3-7)

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "cuda/hopper/device_query.h"
#include "cuda/hopper/fwd_sm90.cuh"
#include "cuda/hopper/tma_map.h"

namespace swaa {
namespace cuda {
namespace sm90 {
namespace {


template <typename T, int D>
bool kernel_present() {
  cudaFuncAttributes attr{};
  const bool ok = cudaFuncGetAttributes(&attr, fwd_sm90_kernel<T, D, false>) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok;
}

// Compute capability 9.0 and an sm_90a image of the kernel (cached per device).
bool device_ok(Dtype dtype) {
  (void)dtype;
  static int cache[kMaxDevices] = {};
  return once_per_device_bool(cache, [](int dev) {
    return is_sm90_with_smem(dev, fwd_sm90_smem_bytes<__nv_bfloat16, 128>()) &&
           kernel_present<__nv_bfloat16, 128>() && kernel_present<__half, 128>() &&
           kernel_present<__nv_bfloat16, 64>() && kernel_present<__half, 64>();
  });
}

// v5.1 (variants 3-7): its smem fits the device and its sm_90a images load
// (cached per device, as device_ok).
template <typename T, int D>
bool kernel51_present() {
  cudaFuncAttributes attr{};
  const bool ok =
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, false, false>) == cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, false>) == cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, false, true>) == cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true>) == cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true, kLean>) == cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true, kLeanPinned>) ==
          cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true, kLeanMasks>) ==
          cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true, kLeanSplit>) ==
          cudaSuccess &&
      cudaFuncGetAttributes(&attr, fwd51_sm90_kernel<T, D, true, true, kLeanOverlap>) ==
          cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok;
}

// Streaming multiprocessors of the current device (grid of the persistent
// variants), 0 when unknown; cached per device.
int sm_count() {
  static int cache[kMaxDevices] = {};
  return once_per_device(cache, 0, [](int dev) {
    return device_attribute(cudaDevAttrMultiProcessorCount, dev);
  });
}

bool device51_ok() {
  static int cache[kMaxDevices] = {};
  return once_per_device_bool(cache, [](int dev) {
    const int smem_optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    bool ok = true;
    for (int bytes : {fwd51_smem_bytes<__nv_bfloat16, 128, false>(),
                      fwd51_smem_bytes<__nv_bfloat16, 128, true>(),
                      fwd51_smem_bytes<__nv_bfloat16, 64, false>(),
                      fwd51_smem_bytes<__nv_bfloat16, 64, true>()})
      ok = ok && smem_optin >= bytes;
    return ok && sm_count() > 0 && kernel51_present<__nv_bfloat16, 128>() &&
           kernel51_present<__half, 128>() && kernel51_present<__nv_bfloat16, 64>() &&
           kernel51_present<__half, 64>();
  });
}

struct Maps {
  CUtensorMap q, k, v;
  CUtensorMap o;  // v5.1 only: out, stored with TMA in boxes of 64 rows
};

// variant: 1, 2 = v5 (plain, overlapped); 3, 4 = v5.1 (plain, ping-pong);
// 5, 6 = 3, 4 with persistent CTAs; 7 = 6 with the lean softmax; 8 = 7 with
// fewer instructions per turn (LEAN level 2); 9 = 8 with masks of one bound
// on most boundary tiles (LEAN level 3); 10 = 9 freeing a stage's K and V
// apart (LEAN level 4); 11 = 10 with each group's softmax of tile i
// overlapping its own P V of tile i - 1 (LEAN level 5).
Fit prepare(const AttnParams& p, Dtype dtype, int variant, Maps* maps) {
  if (p.head_dim != 64 && p.head_dim != 128) return Fit::kHeadDim;
  if (!device_ok(dtype)) return Fit::kDevice;
  const bool v51 = variant >= 3;
  if (v51 && !device51_ok()) return Fit::kDevice;
  constexpr int BM = FwdSm90Config<128>::kBlockM, BN = FwdSm90Config<128>::kBlockN;
  static_assert(BM == FwdSm90Config<64>::kBlockM && BN == FwdSm90Config<64>::kBlockN);
  static_assert(Fwd51Config<64, false>::kBlockN == BN && Fwd51Config<128, false>::kBlockN == BN);
  static_assert(Fwd51Config<64, true>::kBlockM == Fwd51Config<64, false>::kBlockM &&
                Fwd51Config<128, true>::kBlockM == Fwd51Config<128, false>::kBlockM);
  const int64_t d = p.head_dim;
  const int q_rows =
      !v51 ? BM : d == 64 ? Fwd51Config<64, false>::kBlockM : Fwd51Config<128, false>::kBlockM;
  const bool ok =
      make_map(&maps->q, p.q, dtype, d, p.q_len, p.q_heads, p.batch, p.q_row_stride,
               p.q_head_stride, p.q_batch_stride, q_rows) &&
      make_map(&maps->k, p.k, dtype, d, p.k_len, p.kv_heads, p.batch, p.k_row_stride,
               p.k_head_stride, p.k_batch_stride, BN) &&
      make_map(&maps->v, p.v, dtype, d, p.k_len, p.kv_heads, p.batch, p.v_row_stride,
               p.v_head_stride, p.v_batch_stride, BN) &&
      (!v51 || make_map(&maps->o, p.out, dtype, d, p.q_len, p.q_heads, p.batch, p.o_row_stride,
                        p.o_head_stride, p.o_batch_stride, Fwd51Config<128, false>::kOutBoxRows));
  return ok ? Fit::kOk : Fit::kStrides;
}

// SWAA_FWD_ORDER as in attention_launch.cuh: 1 (default) heads adjacent.
bool heads_inner() {
  const char* env = std::getenv("SWAA_FWD_ORDER");
  return env == nullptr || std::atoi(env) != 0;
}

template <typename T, int D, bool OVERLAP>
cudaError_t launch(const AttnParams& p, const Maps& maps, cudaStream_t stream) {
  using C = FwdSm90Config<D>;
  constexpr int smem = fwd_sm90_smem_bytes<T, D>();
  static const cudaError_t configured = cudaFuncSetAttribute(
      fwd_sm90_kernel<T, D, OVERLAP>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (configured != cudaSuccess) return configured;
  const int64_t grid = ((p.q_len + C::kBlockM - 1) / C::kBlockM) * p.q_heads * p.batch;
  fwd_sm90_kernel<T, D, OVERLAP><<<static_cast<unsigned>(grid), C::kThreads, smem, stream>>>(
      p, maps.q, maps.k, maps.v, heads_inner());
  return cudaGetLastError();
}

template <bool OVERLAP>
cudaError_t launch_variant(const AttnParams& p, const Maps& maps, Dtype dtype,
                           cudaStream_t stream) {
  const bool bf16 = dtype == Dtype::kBf16;
  if (p.head_dim == 128)
    return bf16 ? launch<__nv_bfloat16, 128, OVERLAP>(p, maps, stream)
                : launch<__half, 128, OVERLAP>(p, maps, stream);
  return bf16 ? launch<__nv_bfloat16, 64, OVERLAP>(p, maps, stream)
              : launch<__half, 64, OVERLAP>(p, maps, stream);
}

template <typename T, int D, bool PINGPONG, bool PERSISTENT, int LEAN = 0>
cudaError_t launch51(const AttnParams& p, const Maps& maps, cudaStream_t stream) {
  using C = Fwd51Config<D, PERSISTENT>;
  constexpr int smem = fwd51_smem_bytes<T, D, PERSISTENT>();
  static const cudaError_t configured =
      cudaFuncSetAttribute(fwd51_sm90_kernel<T, D, PINGPONG, PERSISTENT, LEAN>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (configured != cudaSuccess) return configured;
  const int64_t units = ((p.q_len + C::kBlockM - 1) / C::kBlockM) * p.q_heads * p.batch;
  // Persistent: one CTA per SM (1 CTA fits per SM), each walking units
  // blockIdx.x + i * gridDim.x; otherwise one CTA per unit.
  const int64_t grid = PERSISTENT ? min_of<int64_t>(units, sm_count()) : units;
  fwd51_sm90_kernel<T, D, PINGPONG, PERSISTENT, LEAN>
      <<<static_cast<unsigned>(grid), C::kThreads, smem, stream>>>(p, maps.q, maps.k, maps.v,
                                                                  maps.o, heads_inner());
  return cudaGetLastError();
}

template <bool PINGPONG, bool PERSISTENT, int LEAN = 0>
cudaError_t launch51_variant(const AttnParams& p, const Maps& maps, Dtype dtype,
                             cudaStream_t stream) {
  const bool bf16 = dtype == Dtype::kBf16;
  if (p.head_dim == 128)
    return bf16 ? launch51<__nv_bfloat16, 128, PINGPONG, PERSISTENT, LEAN>(p, maps, stream)
                : launch51<__half, 128, PINGPONG, PERSISTENT, LEAN>(p, maps, stream);
  return bf16 ? launch51<__nv_bfloat16, 64, PINGPONG, PERSISTENT, LEAN>(p, maps, stream)
              : launch51<__half, 64, PINGPONG, PERSISTENT, LEAN>(p, maps, stream);
}

// Variants 7-11 (LEAN levels) scale the row max instead of every score, which
// needs scale > 0 (always so in attention); otherwise they run 6, the same
// function.
template <int LEAN>
cudaError_t launch_lean(const AttnParams& p, const Maps& maps, Dtype dtype, cudaStream_t stream) {
  return p.scale > 0 ? launch51_variant<true, true, LEAN>(p, maps, dtype, stream)
                     : launch51_variant<true, true>(p, maps, dtype, stream);
}

}  // namespace

Fit fits(const AttnParams& p, Dtype dtype, int variant) {
  Maps maps;
  return prepare(p, dtype, variant, &maps);
}

bool try_fwd(const AttnParams& p, Dtype dtype, int variant, cudaStream_t stream,
             cudaError_t* error) {
  *error = cudaSuccess;
  Maps maps;
  if (prepare(p, dtype, variant, &maps) != Fit::kOk) return false;
  switch (variant) {
    case 2: *error = launch_variant<true>(p, maps, dtype, stream); break;
    case 3: *error = launch51_variant<false, false>(p, maps, dtype, stream); break;
    case 4: *error = launch51_variant<true, false>(p, maps, dtype, stream); break;
    case 5: *error = launch51_variant<false, true>(p, maps, dtype, stream); break;
    case 6: *error = launch51_variant<true, true>(p, maps, dtype, stream); break;
    case 7: *error = launch_lean<kLean>(p, maps, dtype, stream); break;
    case 8: *error = launch_lean<kLeanPinned>(p, maps, dtype, stream); break;
    case 9: *error = launch_lean<kLeanMasks>(p, maps, dtype, stream); break;
    case 10: *error = launch_lean<kLeanSplit>(p, maps, dtype, stream); break;
    case 11: *error = launch_lean<kLeanOverlap>(p, maps, dtype, stream); break;
    default: *error = launch_variant<false>(p, maps, dtype, stream); break;
  }
  return true;
}

const char* fit_name(Fit f) {
  switch (f) {
    case Fit::kOk: return "ok";
    case Fit::kDevice: return "device is not compute capability 9.0 or has no sm_90a image";
    case Fit::kHeadDim: return "head dim is not 64 or 128";
    case Fit::kStrides: return "strides a TMA tensor map cannot describe";
  }
  return "?";
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
