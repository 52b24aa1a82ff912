// Host-side device queries of the Hopper launchers (fwd_sm90.cu, bwd_sm90.cu):
// an attribute of the current device, and an answer computed once per device.
#pragma once

#include <cuda_runtime.h>

namespace swaa {
namespace cuda {
namespace sm90 {

constexpr int kMaxDevices = 64;  // devices past this are answered but not cached

// cudaDeviceGetAttribute, or `fallback` (the error cleared) when it fails.
inline int device_attribute(cudaDeviceAttr attr, int dev, int fallback = 0) {
  int value = 0;
  if (cudaDeviceGetAttribute(&value, attr, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return fallback;
  }
  return value;
}

// True when `dev` is compute capability 9.0 with at least `smem_bytes` of opt-in
// shared memory per block.
inline bool is_sm90_with_smem(int dev, int smem_bytes) {
  return device_attribute(cudaDevAttrComputeCapabilityMajor, dev) == 9 &&
         device_attribute(cudaDevAttrComputeCapabilityMinor, dev) == 0 &&
         device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) >= smem_bytes;
}

// `compute(dev)` for the current device, computed once per device: `cache`
// holds 0 for "not computed yet", so an answer of 0 is computed again next
// time.  `fallback` (the error cleared) when there is no current device.
template <typename Compute>
int once_per_device(int (&cache)[kMaxDevices], int fallback, Compute&& compute) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return fallback;
  }
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached && cache[dev] != 0) return cache[dev];
  const int answer = compute(dev);
  if (cached) cache[dev] = answer;
  return answer;
}

// once_per_device for a yes/no answer (stored as 1 / 2).
template <typename Check>
bool once_per_device_bool(int (&cache)[kMaxDevices], Check&& check) {
  return once_per_device(cache, 2, [&](int dev) { return check(dev) ? 1 : 2; }) == 1;
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
