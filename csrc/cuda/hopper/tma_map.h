// TMA tensor maps of (B, H, L, head_dim) 16-bit tensors, shared by the Hopper
// forward (fwd_sm90.cu) and backward (bwd_sm90.cu) launchers.  Host code, no
// torch headers; the driver's encoder is fetched through the runtime.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/hopper/fwd_sm90.h"  // Dtype

namespace swaa {
namespace cuda {
namespace sm90 {

// Columns per box: 64 16-bit values = one 128-byte swizzled row.
constexpr int kMapBoxCols = 64;

// cuTensorMapEncodeTiled, fetched from the driver through the runtime (no
// link against libcuda).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                            cudaEnableDefault, &status);
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(ptr);
  }();
  return fn;
}

// A (B, H, L, head_dim) 16-bit tensor with element strides (row, head, batch) as
// a 4-D tensor map (d, row, head, batch) with boxes of 64 columns x box_rows
// rows and the 128-byte swizzle.  A dimension of size 1 is never stepped
// over: it gets the dense stride, whatever torch reports for it.  False when
// TMA cannot describe the tensor (the caller takes the sm_80 kernel).
inline bool make_map(CUtensorMap* map, const void* base, Dtype dtype, int64_t head_dim, int64_t len,
              int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride,
              int64_t batch_stride, int box_rows) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  constexpr int64_t kElem = 2;
  int64_t rs = row_stride * kElem, hs = head_stride * kElem, bs = batch_stride * kElem;
  if (len == 1) rs = head_dim * kElem;
  if (heads == 1) hs = len * rs;
  if (batch == 1) bs = heads * hs;
  constexpr int64_t kMaxStride = INT64_C(1) << 40;
  for (int64_t st : {rs, hs, bs})
    if (st < 16 || st % 16 != 0 || st >= kMaxStride) return false;
  for (int64_t n : {len, heads, batch})
    if (n < 1 || n > (INT64_C(1) << 31) - 1) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(len),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(rs), static_cast<cuuint64_t>(hs),
                                 static_cast<cuuint64_t>(bs)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(kMapBoxCols),
                             static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = dtype == Dtype::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                         : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult res =
      encode(map, type, 4, const_cast<void*>(base), dims, strides, box, elem_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS;
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
