// CUDA kernels of the ring-buffer KV cache ops (schemas: csrc/ring_ops.cpp).
//
// ring_decode (Lc == 1), flash-decoding:
//   grid (splits, Hkv * head_chunks, B), 128 threads.  A block serves up to
//   kHeads query heads that share one KV head, so every K/V row it reads is
//   read once for all of them.  The visible keys of the row (OldKeys: sink
//   keys and window keys in the ring, then the new key from k) are cut into
//   `splits` contiguous parts, one per block; splits is chosen on the host
//   from static sizes only (batch, heads, capacity, SM count) so the launch
//   shape never depends on device data.  Threads: groups of kLanes lanes own
//   one key row (16-byte loads, kUnroll rows in flight per thread), reduce
//   the q.k products with shuffles and keep an online softmax per head; the
//   row groups are merged in shared memory.  With one split the block writes
//   the output; otherwise it writes (normalised output, lse) and a combine
//   kernel merges the splits through their log-sum-exp.  Split 0 also writes
//   the new key/value into slot_of(seqlens[b]): that slot held position
//   seqlens[b] - window, which the new query cannot see, so no block of the
//   launch reads it (no race).
// ring_chunk (Lc >= 1): grid (query blocks of 16, Hq, B), 128 threads; key
//   tiles of 32 gathered into shared memory from the ring (positions before
//   seqlens[b]) or from the chunk, one key per lane for q.k, one online
//   softmax per query row; only partly visible tiles are masked.
// ring_append: one thread per element of the chunk rows that survive it.
//
// Nothing here synchronises with the host: seqlens and lengths are read on
// the device, so a decode step can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "ring_ops.h"

namespace swaa {
namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// at:: scalar types -> CUDA native types.
template <typename T> struct Native { using type = T; };
template <> struct Native<at::BFloat16> { using type = __nv_bfloat16; };
template <> struct Native<at::Half> { using type = __half; };

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <typename T> __device__ __forceinline__ T from_acc(double x) { return static_cast<T>(x); }

__device__ __forceinline__ float exp2_of(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_of(double x) { return exp2(x); }
__device__ __forceinline__ float log2_of(float x) { return log2f(x); }
__device__ __forceinline__ double log2_of(double x) { return log2(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() { return -std::numeric_limits<acc_t>::infinity(); }
// Start value of running maxima: finite, so exp2(max_old - max_new) is never NaN.
template <typename acc_t>
__device__ __forceinline__ acc_t lowest_max() { return acc_t(-1e30); }

// ------------------------------------------------------------------ decode
template <typename T, int kDim, int kHeads>
struct DecodeShape {
  static constexpr int kRowBytes = kDim * int(sizeof(T));
  static constexpr int kLanes = kRowBytes / 16 < 32 ? kRowBytes / 16 : 32;  // lanes per key row
  static constexpr int kElems = kDim / kLanes;                              // elements per lane
  static constexpr int kLoads = kElems * int(sizeof(T)) / 16;               // 16-byte loads per lane
  static constexpr int kRows = kThreads / kLanes;                           // key rows per pass
  static constexpr int kUnroll = kHeads >= 8 ? 4 : 8;                       // passes in flight
  static constexpr int kKeysPerIter = kRows * kUnroll;
  static_assert(kLoads >= 1 && kElems * kLanes == kDim, "unsupported head dim");
};

template <typename T, int kDim, int kHeads>
__global__ void __launch_bounds__(kThreads) ring_decode_kernel(const RingParams p, int splits,
                                                               int head_chunks,
                                                               acc_of<T>* part_out,
                                                               acc_of<T>* part_lse) {
  using S = DecodeShape<T, kDim, kHeads>;
  using acc_t = acc_of<T>;
  __shared__ acc_t sm_max[S::kRows][kHeads];
  __shared__ acc_t sm_sum[S::kRows][kHeads];
  __shared__ acc_t sm_acc[S::kRows][kHeads][kDim];

  const int split = blockIdx.x;
  const int64_t kvh = blockIdx.y / head_chunks;
  const int head_chunk = blockIdx.y % head_chunks;
  const int64_t b = blockIdx.z;
  const int group = static_cast<int>(p.group());
  const int64_t h0 = kvh * group + head_chunk * kHeads;
  const int n_heads = min(kHeads, group - head_chunk * kHeads);
  const int col = threadIdx.x % S::kLanes;  // which kElems-slice of the row
  const int row = threadIdx.x / S::kLanes;  // which key of each pass

  const int64_t written = max_of<int64_t>(p.seqlens[b], 0);  // the query's position
  const bool active = p.valid(b) > 0;
  const OldKeys old = OldKeys::of(p.ring, written, written);
  const int64_t n_old = old.count();
  const int64_t n_keys = active ? n_old + 1 : 0;
  const int64_t per_split = (n_keys + splits - 1) / splits;
  const int64_t key_begin = min(n_keys, split * per_split);
  const int64_t key_end = min(n_keys, key_begin + per_split);

  const T* k_cache = static_cast<const T*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride;
  const T* v_cache = static_cast<const T*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride;
  const T* k_new = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v_new = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const int64_t ring_first = max(old.body_begin, p.ring.sink);
  const RingCursor cursor = RingCursor::at(p.ring, ring_first);

  // The new key/value go to their slot (split 0 of the first head chunk).
  if (active && split == 0 && head_chunk == 0) {
    constexpr int kChunks = kDim * int(sizeof(T)) / 16;
    const int64_t slot = p.ring.slot_of(written);
    T* kc = static_cast<T*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride + slot * p.kc_row_stride;
    T* vc = static_cast<T*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride + slot * p.vc_row_stride;
    for (int i = threadIdx.x; i < 2 * kChunks; i += kThreads) {
      if (i < kChunks)
        reinterpret_cast<uint4*>(kc)[i] = reinterpret_cast<const uint4*>(k_new)[i];
      else
        reinterpret_cast<uint4*>(vc)[i - kChunks] = reinterpret_cast<const uint4*>(v_new)[i - kChunks];
    }
  }

  // Queries of the block's heads, pre-scaled so that scores are in log2 units.
  acc_t q[kHeads][S::kElems];
  const acc_t q_scale = acc_t(p.scale) * acc_t(kLog2e);
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (g < n_heads) {
      const T* qrow = static_cast<const T*>(p.q) + b * p.q_batch_stride + (h0 + g) * p.q_head_stride + col * S::kElems;
      uint4 raw[S::kLoads];
#pragma unroll
      for (int i = 0; i < S::kLoads; ++i) raw[i] = reinterpret_cast<const uint4*>(qrow)[i];
      const T* vals = reinterpret_cast<const T*>(raw);
#pragma unroll
      for (int e = 0; e < S::kElems; ++e) q[g][e] = to_acc(vals[e]) * q_scale;
    } else {
#pragma unroll
      for (int e = 0; e < S::kElems; ++e) q[g][e] = acc_t(0);
    }
  }

  acc_t run_max[kHeads], run_sum[kHeads], acc[kHeads][S::kElems];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    run_max[g] = lowest_max<acc_t>();
    run_sum[g] = acc_t(0);
#pragma unroll
    for (int e = 0; e < S::kElems; ++e) acc[g][e] = acc_t(0);
  }

  for (int64_t base = key_begin; base < key_end; base += S::kKeysPerIter) {
    uint4 k_raw[S::kUnroll][S::kLoads], v_raw[S::kUnroll][S::kLoads];
    bool ok[S::kUnroll];
#pragma unroll
    for (int u = 0; u < S::kUnroll; ++u) {
      const int64_t index = base + u * S::kRows + row;
      ok[u] = index < key_end;
      const T* kr = k_new;
      const T* vr = v_new;
      if (ok[u] && index < n_old) {
        const int64_t pos = old.position(index);
        const int64_t slot = pos < p.ring.sink ? pos : cursor.slot(pos - ring_first);
        kr = k_cache + slot * p.kc_row_stride;
        vr = v_cache + slot * p.vc_row_stride;
      }
#pragma unroll
      for (int i = 0; i < S::kLoads; ++i) {
        if (ok[u]) {
          k_raw[u][i] = reinterpret_cast<const uint4*>(kr + col * S::kElems)[i];
          v_raw[u][i] = reinterpret_cast<const uint4*>(vr + col * S::kElems)[i];
        } else {
          k_raw[u][i] = make_uint4(0, 0, 0, 0);
          v_raw[u][i] = make_uint4(0, 0, 0, 0);
        }
      }
    }
    acc_t score[S::kUnroll][kHeads];
#pragma unroll
    for (int u = 0; u < S::kUnroll; ++u) {
      const T* kv = reinterpret_cast<const T*>(k_raw[u]);
      acc_t kf[S::kElems];
#pragma unroll
      for (int e = 0; e < S::kElems; ++e) kf[e] = to_acc(kv[e]);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        acc_t dot = 0;
#pragma unroll
        for (int e = 0; e < S::kElems; ++e) dot += q[g][e] * kf[e];
#pragma unroll
        for (int offset = S::kLanes / 2; offset > 0; offset /= 2)
          dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        score[u][g] = ok[u] ? dot : neg_inf<acc_t>();
      }
    }
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      acc_t new_max = run_max[g];
#pragma unroll
      for (int u = 0; u < S::kUnroll; ++u) new_max = max(new_max, score[u][g]);
      const acc_t correction = exp2_of(run_max[g] - new_max);
      run_max[g] = new_max;
      run_sum[g] *= correction;
#pragma unroll
      for (int e = 0; e < S::kElems; ++e) acc[g][e] *= correction;
    }
#pragma unroll
    for (int u = 0; u < S::kUnroll; ++u) {
      const T* vv = reinterpret_cast<const T*>(v_raw[u]);
      acc_t vf[S::kElems];
#pragma unroll
      for (int e = 0; e < S::kElems; ++e) vf[e] = to_acc(vv[e]);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        const acc_t prob = exp2_of(score[u][g] - run_max[g]);  // 0 for masked keys
        run_sum[g] += prob;
#pragma unroll
        for (int e = 0; e < S::kElems; ++e) acc[g][e] += prob * vf[e];
      }
    }
  }

  // Merge the row groups of the block.
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int e = 0; e < S::kElems; ++e) sm_acc[row][g][col * S::kElems + e] = acc[g][e];
    if (col == 0) {
      sm_max[row][g] = run_max[g];
      sm_sum[row][g] = run_sum[g];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n_heads * kDim; i += kThreads) {
    const int g = i / kDim, d = i % kDim;
    acc_t m = lowest_max<acc_t>();
#pragma unroll
    for (int r = 0; r < S::kRows; ++r) m = max(m, sm_max[r][g]);
    acc_t sum = 0, out = 0;
#pragma unroll
    for (int r = 0; r < S::kRows; ++r) {
      const acc_t w = exp2_of(sm_max[r][g] - m);
      sum += sm_sum[r][g] * w;
      out += sm_acc[r][g][d] * w;
    }
    const bool seen = sum > acc_t(0);
    const acc_t normalised = seen ? out / sum : acc_t(0);
    const acc_t lse2 = seen ? m + log2_of(sum) : neg_inf<acc_t>();  // log2 units
    const int64_t bh = b * p.q_heads + h0 + g;
    if (splits == 1) {
      static_cast<T*>(p.out)[bh * kDim + d] = from_acc<T>(normalised);
      if (d == 0) p.lse[bh] = static_cast<float>(lse2 * acc_t(kLn2));
    } else {
      part_out[(bh * splits + split) * kDim + d] = normalised;
      if (d == 0) part_lse[bh * splits + split] = lse2;
    }
  }
}

// Merges the splits of each (row, query head) through their log-sum-exp.
template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) ring_decode_combine_kernel(
    const RingParams p, int splits, const acc_of<T>* part_out, const acc_of<T>* part_lse) {
  using acc_t = acc_of<T>;
  const int64_t bh = blockIdx.x;
  const acc_t* lse_s = part_lse + bh * splits;
  acc_t m = neg_inf<acc_t>();
  for (int s = 0; s < splits; ++s) m = max(m, lse_s[s]);
  T* out = static_cast<T*>(p.out) + bh * kDim;
  if (m == neg_inf<acc_t>()) {  // padded row: nothing attended
    for (int d = threadIdx.x; d < kDim; d += kThreads) out[d] = from_acc<T>(acc_t(0));
    if (threadIdx.x == 0) p.lse[bh] = -std::numeric_limits<float>::infinity();
    return;
  }
  acc_t weight_sum = 0;
  for (int s = 0; s < splits; ++s) weight_sum += exp2_of(lse_s[s] - m);
  for (int d = threadIdx.x; d < kDim; d += kThreads) {
    acc_t o = 0;
    for (int s = 0; s < splits; ++s) {
      const acc_t w = exp2_of(lse_s[s] - m);
      if (w > acc_t(0)) o += w * part_out[(bh * splits + s) * kDim + d];
    }
    out[d] = from_acc<T>(o / weight_sum);
  }
  if (threadIdx.x == 0) p.lse[bh] = static_cast<float>((m + log2_of(weight_sum)) * acc_t(kLn2));
}

// ------------------------------------------------------------------ chunk
constexpr int kChunkRowsPerWarp = 4;
constexpr int kChunkBlockQ = kChunkRowsPerWarp * (kThreads / 32);  // 16 queries
constexpr int kChunkBlockK = 32;                                   // one key per lane

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) ring_chunk_kernel(const RingParams p) {
  using acc_t = acc_of<T>;
  constexpr int kPerLane = kDim / 32;
  extern __shared__ unsigned char smem_raw[];
  acc_t* q_s = reinterpret_cast<acc_t*>(smem_raw);       // [kChunkBlockQ][kDim]
  acc_t* k_s = q_s + kChunkBlockQ * kDim;                // [kChunkBlockK][kDim + 1]
  acc_t* v_s = k_s + kChunkBlockK * (kDim + 1);          // [kChunkBlockK][kDim]
  __shared__ const T* k_rows[kChunkBlockK];
  __shared__ const T* v_rows[kChunkBlockK];

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t kvh = h / p.group();
  const int64_t row0 = int64_t(blockIdx.x) * kChunkBlockQ;
  const int64_t rows_total = min_of<int64_t>(kChunkBlockQ, p.chunk_len - row0);
  const int64_t rows = max_of<int64_t>(0, min_of<int64_t>(p.valid(b) - row0, rows_total));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* out = static_cast<T*>(p.out) + ((b * p.q_heads + h) * p.chunk_len + row0) * kDim;
  float* lse = p.lse + (b * p.q_heads + h) * p.chunk_len + row0;

  if (rows == 0) {  // the whole block is padding
    for (int64_t i = threadIdx.x; i < rows_total * kDim; i += kThreads) out[i] = from_acc<T>(acc_t(0));
    for (int64_t i = threadIdx.x; i < rows_total; i += kThreads) lse[i] = -std::numeric_limits<float>::infinity();
    return;
  }
  const int64_t written = max_of<int64_t>(p.seqlens[b], 0);
  const int64_t p_first = written + row0, p_last = p_first + rows - 1;
  const Visibility vis = p.ring.visibility();
  const KeySpan span = visible_keys(vis, p_first, p_last);

  const acc_t q_scale = acc_t(p.scale) * acc_t(kLog2e);
  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + row0 * p.q_row_stride;
  for (int i = threadIdx.x; i < kChunkBlockQ * kDim; i += kThreads) {
    const int r = i / kDim, d = i % kDim;
    q_s[i] = r < rows ? to_acc(q[r * p.q_row_stride + d]) * q_scale : acc_t(0);
  }
  const T* k_cache = static_cast<const T*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride;
  const T* v_cache = static_cast<const T*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride;
  const T* k_new = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v_new = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;

  acc_t run_max[kChunkRowsPerWarp], run_sum[kChunkRowsPerWarp], acc[kChunkRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kChunkRowsPerWarp; ++r) {
    run_max[r] = lowest_max<acc_t>();
    run_sum[r] = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[r][i] = 0;
  }
  const int my_row0 = warp * kChunkRowsPerWarp;

  for (int range_index = 0; range_index < 2; ++range_index) {
    const Range range = range_index == 0 ? span.head : span.body;
    for (int64_t j0 = range.begin; j0 < range.end; j0 += kChunkBlockK) {
      const int n = static_cast<int>(min_of<int64_t>(kChunkBlockK, range.end - j0));
      __syncthreads();  // previous tile fully consumed (and q_s written)
      if (threadIdx.x < n) {
        const int64_t pos = j0 + threadIdx.x;
        if (pos < written) {
          const int64_t slot = p.ring.slot_of(pos);
          k_rows[threadIdx.x] = k_cache + slot * p.kc_row_stride;
          v_rows[threadIdx.x] = v_cache + slot * p.vc_row_stride;
        } else {
          k_rows[threadIdx.x] = k_new + (pos - written) * p.k_row_stride;
          v_rows[threadIdx.x] = v_new + (pos - written) * p.v_row_stride;
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < kChunkBlockK * kDim; i += kThreads) {
        const int c = i / kDim, d = i % kDim;
        const bool in = c < n;
        k_s[c * (kDim + 1) + d] = in ? to_acc(k_rows[c][d]) : acc_t(0);
        v_s[c * kDim + d] = in ? to_acc(v_rows[c][d]) : acc_t(0);
      }
      __syncthreads();
      const bool full_tile = vis.tile_fully_visible(p_first, p_last, j0, j0 + n - 1);
      // Scores: lane = key.
      acc_t score[kChunkRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kChunkRowsPerWarp; ++r) score[r] = 0;
      const acc_t* krow = k_s + lane * (kDim + 1);
#pragma unroll 8
      for (int d = 0; d < kDim; ++d) {
        const acc_t kd = krow[d];
#pragma unroll
        for (int r = 0; r < kChunkRowsPerWarp; ++r) score[r] += q_s[(my_row0 + r) * kDim + d] * kd;
      }
#pragma unroll
      for (int r = 0; r < kChunkRowsPerWarp; ++r) {
        const int64_t pos_q = p_first + my_row0 + r;
        const bool visible = lane < n && my_row0 + r < rows &&
                             (full_tile || vis.visible(pos_q, j0 + lane));
        if (!visible) score[r] = neg_inf<acc_t>();
        acc_t tile_max = score[r];
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
          tile_max = max(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
        const acc_t new_max = max(run_max[r], tile_max);
        const acc_t correction = exp2_of(run_max[r] - new_max);
        run_max[r] = new_max;
        score[r] = exp2_of(score[r] - new_max);  // probability (0 when masked)
        acc_t tile_sum = score[r];
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
          tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
        run_sum[r] = run_sum[r] * correction + tile_sum;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[r][i] *= correction;
      }
      // acc += P V: lane owns dims lane + 32 i.
      for (int c = 0; c < n; ++c) {
        acc_t vd[kPerLane];
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) vd[i] = v_s[c * kDim + lane + 32 * i];
#pragma unroll
        for (int r = 0; r < kChunkRowsPerWarp; ++r) {
          const acc_t prob = __shfl_sync(0xffffffffu, score[r], c);
#pragma unroll
          for (int i = 0; i < kPerLane; ++i) acc[r][i] += prob * vd[i];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kChunkRowsPerWarp; ++r) {
    const int rr = my_row0 + r;
    if (rr >= rows_total) continue;
    const bool seen = rr < rows && run_sum[r] > acc_t(0);
    const acc_t inv = seen ? acc_t(1) / run_sum[r] : acc_t(0);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) out[rr * kDim + lane + 32 * i] = from_acc<T>(acc[r][i] * inv);
    if (lane == 0)
      lse[rr] = seen ? static_cast<float>((run_max[r] + log2_of(run_sum[r])) * acc_t(kLn2))
                     : -std::numeric_limits<float>::infinity();
  }
}

// ------------------------------------------------------------------ append
template <typename T>
__global__ void __launch_bounds__(kThreads) ring_append_kernel(const RingParams p) {
  const int64_t total = p.batch * p.kv_heads * p.chunk_len * p.head_dim;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t d = i % p.head_dim;
    const int64_t r = (i / p.head_dim) % p.chunk_len;
    const int64_t kvh = (i / (p.head_dim * p.chunk_len)) % p.kv_heads;
    const int64_t b = i / (p.head_dim * p.chunk_len * p.kv_heads);
    const int64_t valid = p.valid(b);
    if (r >= valid) continue;
    const int64_t written = max_of<int64_t>(p.seqlens[b], 0);
    const int64_t pos = written + r;
    if (!p.ring.survives(pos, written + valid)) continue;  // overwritten later in this chunk
    const int64_t slot = p.ring.slot_of(pos);
    static_cast<T*>(p.k_cache)[b * p.kc_batch_stride + kvh * p.kc_head_stride + slot * p.kc_row_stride + d] =
        static_cast<const T*>(p.k)[b * p.k_batch_stride + kvh * p.k_head_stride + r * p.k_row_stride + d];
    static_cast<T*>(p.v_cache)[b * p.vc_batch_stride + kvh * p.vc_head_stride + slot * p.vc_row_stride + d] =
        static_cast<const T*>(p.v)[b * p.v_batch_stride + kvh * p.v_head_stride + r * p.v_row_stride + d];
  }
}

// ------------------------------------------------------------------ host side
bool aligned16(const at::Tensor& t) {
  const int64_t es = t.element_size();
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int i = 0; i < 3; ++i)
    if (t.size(i) > 1 && (t.stride(i) * es) % 16 != 0) return false;
  return true;
}

// Inputs read with 16-byte loads: a misaligned view is copied (once, on the
// device, no sync); the caches are written in place and must be aligned.
at::Tensor aligned_input(const at::Tensor& t) {
  return t.defined() && t.dim() == 4 && !aligned16(t) ? t.contiguous() : t;
}

void check_cuda_support(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        bool needs_head_dim) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && v_cache.dim() == 4, op,
                    ": k_cache and v_cache must have rank 4");
  TORCH_CHECK_VALUE(aligned16(k_cache) && aligned16(v_cache), op,
                    ": k_cache and v_cache must be 16-byte aligned (rows of a multiple of 16 "
                    "bytes) on CUDA");
  if (needs_head_dim)
    TORCH_CHECK_VALUE(k_cache.size(3) == 64 || k_cache.size(3) == 128, op,
                      ": head dim (D) must be 64 or 128 on CUDA, got ", k_cache.size(3));
}

#define SWAA_HEAD_DIM_SWITCH(D, ...)          \
  [&] {                                       \
    if ((D) == 64) {                          \
      constexpr int kDim = 64;                \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr int kDim = 128;               \
      return __VA_ARGS__();                   \
    }                                         \
  }()

#define SWAA_HEADS_SWITCH(G, ...)             \
  [&] {                                       \
    if ((G) <= 1) {                           \
      constexpr int kHeads = 1;               \
      return __VA_ARGS__();                   \
    } else if ((G) <= 2) {                    \
      constexpr int kHeads = 2;               \
      return __VA_ARGS__();                   \
    } else if ((G) <= 4) {                    \
      constexpr int kHeads = 4;               \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr int kHeads = 8;               \
      return __VA_ARGS__();                   \
    }                                         \
  }()

// Multiprocessors of the current device, read once per device.  (Not through
// ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers a minimal CUDA
// toolkit, as on CI, lacks.)
int64_t multiprocessor_count() {
  static int counts[64] = {};
  const int device = c10::cuda::current_device();
  if (device >= 64) return 132;
  if (counts[device] == 0)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  return counts[device];
}

// Splits of the window for decode, from static sizes only: about three blocks
// per SM in all, each split at least 128 keys.
int64_t decode_splits(const RingParams& p, int64_t head_chunks, int64_t requested) {
  const int64_t max_splits = std::max<int64_t>(1, (p.ring.capacity() + 1 + 127) / 128);
  if (requested > 0) return std::min(requested, max_splits);
  const int64_t sms = multiprocessor_count();
  const int64_t blocks = p.batch * p.kv_heads * head_chunks;
  return std::clamp<int64_t>((3 * sms + blocks - 1) / blocks, 1, max_splits);
}

void ring_append_cuda(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                      const at::Tensor& v, const at::Tensor& seqlens,
                      const std::optional<at::Tensor>& lengths, int64_t window, int64_t sink) {
  RingCall call = prepare_ring(RingOp::kAppend, at::Tensor(), k, v, k_cache, v_cache, seqlens,
                               lengths, window, sink, 1.0);
  c10::cuda::CUDAGuard guard(k_cache.device());
  const RingParams& p = call.params;
  const int64_t total = p.batch * p.kv_heads * p.chunk_len * p.head_dim;
  if (total == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65536));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(),
                                  "swaa_ring_append_cuda", [&] {
    using T = typename Native<scalar_t>::type;
    ring_append_kernel<T><<<blocks, kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> ring_chunk_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                   const at::Tensor& v_in,
                                                   const at::Tensor& k_cache,
                                                   const at::Tensor& v_cache,
                                                   const at::Tensor& seqlens,
                                                   const std::optional<at::Tensor>& lengths,
                                                   int64_t window, int64_t sink, double scale) {
  RingCall call = prepare_ring(RingOp::kChunk, q_in, k_in, v_in, k_cache, v_cache, seqlens,
                               lengths, window, sink, scale);
  check_cuda_support("ring_chunk", k_cache, v_cache, true);
  c10::cuda::CUDAGuard guard(k_cache.device());
  const RingParams& p = call.params;
  const dim3 grid((p.chunk_len + kChunkBlockQ - 1) / kChunkBlockQ, p.q_heads, p.batch);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(),
                                  "swaa_ring_chunk_cuda", [&] {
    using T = typename Native<scalar_t>::type;
    using acc_t = acc_of<T>;
    SWAA_HEAD_DIM_SWITCH(p.head_dim, [&] {
      const int smem = static_cast<int>(sizeof(acc_t)) *
                       (kChunkBlockQ * kDim + kChunkBlockK * (kDim + 1) + kChunkBlockK * kDim);
      auto kernel = ring_chunk_kernel<T, kDim>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      kernel<<<grid, kThreads, smem, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor> ring_decode_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& seqlens, const std::optional<at::Tensor>& lengths,
    int64_t window, int64_t sink, double scale, int64_t num_splits) {
  const at::Tensor q = aligned_input(q_in), k = aligned_input(k_in), v = aligned_input(v_in);
  RingCall call = prepare_ring(RingOp::kDecode, q, k, v, k_cache, v_cache, seqlens, lengths,
                               window, sink, scale);
  check_cuda_support("ring_decode", k_cache, v_cache, true);
  TORCH_CHECK_VALUE(num_splits >= 0, "ring_decode: num_splits must be >= 0, got ", num_splits);
  c10::cuda::CUDAGuard guard(k_cache.device());
  const RingParams& p = call.params;
  const int64_t group = p.group();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(),
                                  "swaa_ring_decode_cuda", [&] {
    using T = typename Native<scalar_t>::type;
    using acc_t = acc_of<T>;
    SWAA_HEAD_DIM_SWITCH(p.head_dim, [&] {
      SWAA_HEADS_SWITCH(group, [&] {
        const int64_t head_chunks = (group + kHeads - 1) / kHeads;
        const int64_t splits = decode_splits(p, head_chunks, num_splits);
        at::Tensor part_out, part_lse;
        acc_t* part_out_ptr = nullptr;
        acc_t* part_lse_ptr = nullptr;
        if (splits > 1) {
          const auto opts = q.options().dtype(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat);
          part_out = at::empty({p.batch * p.q_heads * splits * kDim}, opts);
          part_lse = at::empty({p.batch * p.q_heads * splits}, opts);
          part_out_ptr = static_cast<acc_t*>(part_out.data_ptr());
          part_lse_ptr = static_cast<acc_t*>(part_lse.data_ptr());
        }
        const dim3 grid(splits, p.kv_heads * head_chunks, p.batch);
        ring_decode_kernel<T, kDim, kHeads><<<grid, kThreads, 0, stream>>>(
            p, static_cast<int>(splits), static_cast<int>(head_chunks), part_out_ptr, part_lse_ptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (splits > 1) {
          ring_decode_combine_kernel<T, kDim><<<p.batch * p.q_heads, kThreads, 0, stream>>>(
              p, static_cast<int>(splits), part_out_ptr, part_lse_ptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });
  return {call.out, call.lse};
}

}  // namespace
}  // namespace swaa

TORCH_LIBRARY_IMPL(swaa, CUDA, m) {
  m.impl("ring_append", &swaa::ring_append_cuda);
  m.impl("ring_decode", &swaa::ring_decode_cuda);
  m.impl("ring_chunk", &swaa::ring_chunk_cuda);
}
