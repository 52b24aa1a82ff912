// Launcher of the Hopper forward (fwd_sm90.cuh): TMA tensor maps, device and
// stride checks, launch.  Compiled for sm_90a only (csrc/cuda/hopper/
// CMakeLists.txt), for both 16-bit dtypes and head dims 64 and 128 in this one
// translation unit; no
// torch headers (errors go back to csrc/cuda/attention.cpp as cudaError_t).
#include "cuda/hopper/fwd_sm90.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

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
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};  // 0 unknown, 1 yes, 2 no
  if (dev >= 0 && dev < kMaxDevices && cache[dev] != 0) return cache[dev] == 1;
  int major = 0, minor = 0, smem_optin = 0;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) ==
                cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  ok = ok && major == 9 && minor == 0 &&
       smem_optin >= fwd_sm90_smem_bytes<__nv_bfloat16, 128>() &&
       kernel_present<__nv_bfloat16, 128>() && kernel_present<__half, 128>() &&
       kernel_present<__nv_bfloat16, 64>() && kernel_present<__half, 64>();
  (void)dtype;
  if (dev >= 0 && dev < kMaxDevices) cache[dev] = ok ? 1 : 2;
  return ok;
}

struct Maps {
  CUtensorMap q, k, v;
};

Fit prepare(const AttnParams& p, Dtype dtype, Maps* maps) {
  if (p.head_dim != 64 && p.head_dim != 128) return Fit::kHeadDim;
  if (!device_ok(dtype)) return Fit::kDevice;
  constexpr int BM = FwdSm90Config<128>::kBlockM, BN = FwdSm90Config<128>::kBlockN;
  static_assert(BM == FwdSm90Config<64>::kBlockM && BN == FwdSm90Config<64>::kBlockN);
  const int64_t d = p.head_dim;
  const bool ok =
      make_map(&maps->q, p.q, dtype, d, p.q_len, p.q_heads, p.batch, p.q_row_stride,
               p.q_head_stride, p.q_batch_stride, BM) &&
      make_map(&maps->k, p.k, dtype, d, p.k_len, p.kv_heads, p.batch, p.k_row_stride,
               p.k_head_stride, p.k_batch_stride, BN) &&
      make_map(&maps->v, p.v, dtype, d, p.k_len, p.kv_heads, p.batch, p.v_row_stride,
               p.v_head_stride, p.v_batch_stride, BN);
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

}  // namespace

Fit fits(const AttnParams& p, Dtype dtype) {
  Maps maps;
  return prepare(p, dtype, &maps);
}

bool try_fwd(const AttnParams& p, Dtype dtype, bool overlap, cudaStream_t stream,
             cudaError_t* error) {
  *error = cudaSuccess;
  Maps maps;
  if (prepare(p, dtype, &maps) != Fit::kOk) return false;
  *error = overlap ? launch_variant<true>(p, maps, dtype, stream)
                   : launch_variant<false>(p, maps, dtype, stream);
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
