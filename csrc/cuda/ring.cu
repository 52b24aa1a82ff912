// CUDA kernels of the ring-buffer KV cache ops (schemas: csrc/ring_ops.cpp).
//
// ring_decode (Lc == 1), flash-decoding.  Both kernels cut the visible keys of
// a row (OldKeys: sink keys and window keys in the ring, then the new key read
// from k) into `splits` contiguous parts, one CTA each; splits is chosen on
// the host from static sizes only (batch, heads, capacity, SM count, resident
// CTAs per SM) so the launch shape never depends on device data.  Split 0
// also writes the new key/value into slot_of(seqlens[b]): that slot held
// position seqlens[b] - window, which the new query cannot see, so no CTA of
// the launch reads it (no race).
//   bf16 / fp16 on sm_90+ (ring_decode_split_kernel): bandwidth-bound.  A CTA
//     serves up to 16 query heads of one KV head as the 16 rows of mma.sync,
//     gathers 64-key K/V tiles from the ring slots with cp.async, 3-4 stages
//     deep, and the splits of one (row, KV head) form a thread-block cluster
//     that combines its partial results through distributed shared memory, in
//     split order: one launch, deterministic.  Long rows (full-attention
//     layers) and small batches can need more splits than a cluster holds
//     (8): then the CTAs write fp32 partials to a workspace and
//     ring_decode_combine_kernel merges them in split order (plan_split_decode),
//     or (SWAA_DECODE_GLOBAL_COMBINE=fused) the CTA of a row that finishes
//     last merges them, with the same arithmetic: one launch again.
//   float32 / float64 (and bf16 / fp16 before sm_90, or with
//     SWAA_RING_DECODE=legacy): grid (splits, Hkv * head_chunks, B), 128
//     threads, up to kHeads heads per block, CUDA cores: groups of kLanes
//     lanes own one key row (16-byte loads, kUnroll rows per thread), reduce
//     q.k with shuffles and keep an online softmax per head; with several
//     splits a combine kernel merges them through their log-sum-exp.
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
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention_kernels.cuh"  // cp.async, ldmatrix, mma.sync wrappers, swizzle
#include "ring_ops.h"
#include "swaa/decode_plan.h"  // plan_split_decode: splits and combine of the split decode

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
// The new token's key and value (one row of kDim elements each) go to the ring slot of position
// `written` of row b, KV head kvh; every thread of the one CTA that owns the write calls this.
template <typename T, int kDim, int kThreads>
__device__ __forceinline__ void store_new_token(const RingParams& p, int64_t b, int64_t kvh,
                                                int64_t written, const T* k_new, const T* v_new) {
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
  if (active && split == 0 && head_chunk == 0)
    store_new_token<T, kDim, kThreads>(p, b, kvh, written, k_new, v_new);

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
    const bool seen = sum != acc_t(0);  // NaN (a NaN score) counts as seen
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

// L2 loads (bypassing L1) of the split partials: the fused combine reads
// partials that other CTAs of the same grid wrote on other SMs.
__device__ __forceinline__ float load_partial(const float* x) { return __ldcg(x); }
// Round-to-nearest division and an explicit fma, whatever --use_fast_math
// says: the combine kernel and the fused combine must not differ in how the
// compiler lowers (hoists a reciprocal of, contracts) the same expression.
__device__ __forceinline__ float divide_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double divide_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

// Merges the `splits` partial results of query head bh (one (row, head)):
// part_out [bh][splits][kDim] normalised outputs, part_lse [bh][splits]
// log-sum-exps in log2 units, in split order.  Threads tid, tid + n_threads,
// .. write the output dims; thread 0 also writes the lse.  Used by the
// combine kernels (global plan and the legacy fp32/fp64 path).  Keep in step
// with fused_combine: tests/test_decode_fused.py checks bit equality.
// Plain (L1-cached) loads, unlike fused_combine's load_partial: the combine
// kernel reads the partials only after the split grid has completed (stream
// order, or griddepcontrol.wait under PDL, which makes that grid's writes
// visible to this one), and the lse of each split, re-read for every output,
// then comes from L1.  Session 5 measured this kernel with L2-only loads
// (__ldcg): 10.9 us at B = 1 (33 splits), the whole step 23.4 us against
// 17.8 us in session 4 with plain loads (bench/results/logs/
// decode_floor_profile_H200_session5.log); back to plain loads, session 6
// measured the plain path's step at 19.6-21.2 us (B = 1; the default there
// now takes the staged loads).  The loads do not change the values, so the
// bits stay those of fused_combine.
template <typename T, int kDim, typename acc_t>
__device__ __forceinline__ void combine_splits(const RingParams& p, int64_t bh, int splits,
                                               const acc_t* part_out, const acc_t* part_lse,
                                               int tid, int n_threads) {
  const acc_t* lse_s = part_lse + bh * splits;
  acc_t m = neg_inf<acc_t>();
  for (int s = 0; s < splits; ++s) m = max_keep_nan(m, lse_s[s]);
  T* out = static_cast<T*>(p.out) + bh * kDim;
  if (m == neg_inf<acc_t>()) {  // padded row: nothing attended
    for (int d = tid; d < kDim; d += n_threads) out[d] = from_acc<T>(acc_t(0));
    if (tid == 0) p.lse[bh] = -std::numeric_limits<float>::infinity();
    return;
  }
  acc_t weight_sum = 0;
  for (int s = 0; s < splits; ++s) weight_sum += exp2_of(lse_s[s] - m);
  for (int d = tid; d < kDim; d += n_threads) {
    acc_t o = 0;
    for (int s = 0; s < splits; ++s) {
      const acc_t w = exp2_of(lse_s[s] - m);
      if (w > acc_t(0)) o = fma_rn(w, part_out[(bh * splits + s) * kDim + d], o);
    }
    out[d] = from_acc<T>(divide_rn(o, weight_sum));
  }
  if (tid == 0) p.lse[bh] = static_cast<float>((m + log2_of(weight_sum)) * acc_t(kLn2));
}

// SWAA_DECODE_COMBINE_LOADS=staged: combine_splits with the same arithmetic in
// the same order (the same bits), laid out for latency.  combine_splits'
// thread chain is three loops over the splits of dependent L2 loads (the lse
// values for the maximum, again for the weight sum, then per output the lse
// and, behind `w > 0`, the partial).  Here one thread per split loads the lse
// values at once into shared memory (the maximum, exact in any order, is a
// block reduction), one thread per split turns them into the weights
// exp2(lse_s - m) (the same value as combine_splits' for each s), and each
// output thread then runs the weight sum and its fma chain over s = 0, 1, ..
// in split order from shared memory, with the partials of kStagedBatch splits
// loaded ahead into registers (independent loads in flight), keeping the skip
// of splits with weight 0 (fma with w == 0 is not a no-op when the partial is
// inf or NaN).  Every value is read once, so the loads stay L2-only
// (load_partial, as in fused_combine): nothing to gain from L1, and no L1
// line can be stale when the kernel was scheduled (PDL) before the split
// kernel wrote the partials.  At most kStagedMaxSplits splits (the launcher
// falls back to combine_splits above that).  kThreads threads per (row, head): one output
// each at D = 128.  Keep in step with combine_splits (tests/test_decode_fused.py
// checks bit equality).
constexpr int kStagedMaxSplits = 1024;  // kDecodeSplitsMax: 4 KB of shared memory
// Partial loads in flight per thread.  8, not 16: 16 took 55 registers (56
// allocated, 7168 per CTA), so under PDL only one staged combine CTA fitted
// beside the two split CTAs of an SM (216 registers allocated each: 10240 of
// 65536 left), and at B = 8 (256 combine CTAs, 132 SMs) about half of them
// could not be resident at their wait.  With 8: 39 registers (40 allocated,
// 5120 per CTA), two fit, as the serial combine's 32 do.  The cost is
// ceil(splits / 8) instead of ceil(splits / 16) dependent L2 trips: 5 instead
// of 3 at B = 1 (33 splits), 1 either way at B = 8 (4 splits).  A minimum-
// blocks launch bound would cap the registers with 16 loads too, but on the
// shared template it also changed the serial (default) kernels' allocation
// (32 -> 48 registers with `kStaged ? 12 : 1`), and whether 16 loads stay in
// flight under a 40-register cap cannot be checked without the SASS.
constexpr int kStagedBatch = 8;

template <typename T, int kDim>
__device__ __forceinline__ void combine_splits_staged(const RingParams& p, int64_t bh, int splits,
                                                      const float* part_out,
                                                      const float* part_lse) {
  __shared__ float weight[kStagedMaxSplits];  // lse, then weights, per split
  __shared__ float warp_max[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float m = neg_inf<float>();
  for (int s = threadIdx.x; s < splits; s += kThreads) {
    const float lse = load_partial(part_lse + bh * splits + s);
    weight[s] = lse;
    m = max_keep_nan(m, lse);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    m = max_keep_nan(m, __shfl_xor_sync(0xffffffffu, m, offset));
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  m = warp_max[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) m = max_keep_nan(m, warp_max[w]);
  T* out = static_cast<T*>(p.out) + bh * kDim;
  if (m == neg_inf<float>()) {  // padded row: nothing attended (uniform over the block)
    for (int d = threadIdx.x; d < kDim; d += kThreads) out[d] = from_acc<T>(0.f);
    if (threadIdx.x == 0) p.lse[bh] = -std::numeric_limits<float>::infinity();
    return;
  }
  for (int s = threadIdx.x; s < splits; s += kThreads) weight[s] = exp2_of(weight[s] - m);
  __syncthreads();
  float weight_sum = 0.f;  // every thread sums, in split order: thread 0's gives the lse
  for (int d = threadIdx.x; d < kDim; d += kThreads) {  // thread 0 always has d = 0
    const float* partial = part_out + bh * splits * kDim + d;
    float o = 0.f;
    weight_sum = 0.f;
    for (int s0 = 0; s0 < splits; s0 += kStagedBatch) {
      float x[kStagedBatch];
#pragma unroll
      for (int j = 0; j < kStagedBatch; ++j)
        x[j] = s0 + j < splits ? load_partial(partial + int64_t(s0 + j) * kDim) : 0.f;
#pragma unroll
      for (int j = 0; j < kStagedBatch; ++j) {
        if (s0 + j < splits) {
          const float w = weight[s0 + j];
          weight_sum += w;
          if (w > 0.f) o = fma_rn(w, x[j], o);
        }
      }
    }
    out[d] = from_acc<T>(divide_rn(o, weight_sum));
  }
  if (threadIdx.x == 0)
    p.lse[bh] = static_cast<float>((m + log2_of(weight_sum)) * float(kLn2));
}

// SWAA_DECODE_COMBINE_LOADS=eager: combine_splits with the same arithmetic in
// the same order (the same bits) for at most kEagerMaxSplits splits, every
// load issued at once: each thread loads all the split lse values and its
// output's partial of every split into registers before the first use, so the
// combine waits for one L2 round trip, not one for the lse values and then
// the partials (combine_splits, the default at <= 8 splits) or the staged
// loads' two with a barrier between.  Partials of splits with weight 0 are
// loaded too (every split writes its partials) and skipped as before.
constexpr int kEagerMaxSplits = 8;

template <typename T, int kDim>
__device__ __forceinline__ void combine_splits_eager(const RingParams& p, int64_t bh, int splits,
                                                     const float* part_out,
                                                     const float* part_lse) {
  const int d = threadIdx.x;  // the output of this thread, if d < kDim
  float lse[kEagerMaxSplits], x[kEagerMaxSplits];
#pragma unroll
  for (int s = 0; s < kEagerMaxSplits; ++s) {
    lse[s] = s < splits ? part_lse[bh * splits + s] : neg_inf<float>();
    x[s] = s < splits && d < kDim ? part_out[(bh * splits + s) * kDim + d] : 0.f;
  }
  float m = neg_inf<float>();
#pragma unroll
  for (int s = 0; s < kEagerMaxSplits; ++s)
    if (s < splits) m = max_keep_nan(m, lse[s]);
  T* out = static_cast<T*>(p.out) + bh * kDim;
  if (m == neg_inf<float>()) {  // padded row: nothing attended
    if (d < kDim) out[d] = from_acc<T>(0.f);
    if (d == 0) p.lse[bh] = -std::numeric_limits<float>::infinity();
    return;
  }
  float weight_sum = 0.f;
#pragma unroll
  for (int s = 0; s < kEagerMaxSplits; ++s)
    if (s < splits) weight_sum += exp2_of(lse[s] - m);
  if (d < kDim) {
    float o = 0.f;
#pragma unroll
    for (int s = 0; s < kEagerMaxSplits; ++s) {
      if (s < splits) {
        const float w = exp2_of(lse[s] - m);
        if (w > 0.f) o = fma_rn(w, x[s], o);
      }
    }
    out[d] = from_acc<T>(divide_rn(o, weight_sum));
  }
  if (d == 0) p.lse[bh] = static_cast<float>((m + log2_of(weight_sum)) * float(kLn2));
}

// SWAA_DECODE_TRACE=1: a timeline of one decode step for bench/trace_decode.py,
// in builds with SWAA_DECODE_TRACE_BUILD=ON only (elsewhere every mark compiles
// to nothing: the trace's registers would cost the combine kernel the
// occupancy beside the split kernel that PDL relies on).  Thread 0 of each CTA
// writes the global timer (ns, one clock for the whole GPU) at fixed points,
// its SM and its tile count, into a static buffer that the launch clears
// first; `decode_trace_snapshot` copies it out.
#ifdef SWAA_DECODE_TRACE_BUILD
constexpr bool kTraceBuilt = true;
#else
constexpr bool kTraceBuilt = false;
#endif
constexpr int kTraceSlots = 8;        // per CTA; TraceSplit / TraceCombine name them
constexpr int kTraceMaxCtas = 8192;   // CTAs past this are not traced
// split kernel: entry, first tile landed, loop done (all tiles), results written, SM, tiles
// (, released: past griddepcontrol.wait, which returns at once unless SWAA_DECODE_LEAD)
enum TraceSplit { kTraceEntry = 0, kTraceFirstTile, kTraceLoopDone, kTraceWritten, kTraceSm,
                  kTraceTiles, kTraceReleased };
// combine kernel: entry, split grid done (after griddepcontrol.wait), written, SM
enum TraceCombine { kTraceCombineEntry = 0, kTraceCombineReleased, kTraceCombineWritten,
                    kTraceCombineSm };
__device__ unsigned long long g_decode_trace[2][kTraceBuilt ? kTraceMaxCtas * kTraceSlots : 1];

struct CtaTrace {
  unsigned long long* slot = nullptr;
  __device__ CtaTrace(bool on, int kernel) {
    const int64_t cta = blockIdx.x + int64_t(gridDim.x) * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z);
    if (kTraceBuilt && on && threadIdx.x == 0 && cta < kTraceMaxCtas) {
      slot = &g_decode_trace[kernel][cta * kTraceSlots];
      unsigned int sm;
      asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
      slot[kernel == 0 ? int(kTraceSm) : int(kTraceCombineSm)] = sm;
    }
  }
  __device__ void mark(int i) const {
    if (!kTraceBuilt || slot == nullptr) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    slot[i] = t;
  }
  __device__ void put(int i, unsigned long long v) const {
    if (kTraceBuilt && slot != nullptr) slot[i] = v;
  }
};

// Merges the splits of each (row, query head) through their log-sum-exp: one
// block per (row, query head).  kLoads: combine_splits (serial),
// combine_splits_staged or combine_splits_eager (float partials only).
// advance != nullptr (SWAA_DECODE_ADVANCE=kernel): the block
// of each row's first query head also advances advance[b] (the op's seqlens)
// by the row's valid positions, after the wait for the split kernel: that
// kernel read seqlens[b], nothing in this launch reads it.
enum CombineLoads { kLoadsSerial = 0, kLoadsStaged, kLoadsEager };

template <typename T, int kDim, int kLoads = kLoadsSerial>
__global__ void __launch_bounds__(kThreads) ring_decode_combine_kernel(
    const RingParams p, int splits, const acc_of<T>* part_out, const acc_of<T>* part_lse,
    int64_t* advance, bool trace) {
  // A dependent of this grid (the next step's split kernel under
  // SWAA_DECODE_LEAD) may be scheduled once every CTA has started; it waits
  // for this grid's completion before it reads or writes anything.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  // Prologue: nothing here depends on the split kernel (lengths is an input
  // of the op, written before the split kernel started).
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / p.q_heads;
  const bool advances = advance != nullptr && bh % p.q_heads == 0 && threadIdx.x == 0;
  const int64_t step = advances ? p.valid(b) : 0;
  const CtaTrace tr(trace, 1);
  tr.mark(kTraceCombineEntry);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Launched as a programmatic dependent (SWAA_DECODE_PDL=1): wait until the
  // split kernel has finished and its partials are visible.  A no-op otherwise.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  tr.mark(kTraceCombineReleased);
  if constexpr (kLoads == kLoadsStaged) {
    static_assert(std::is_same_v<acc_of<T>, float>, "staged loads: float partials only");
    combine_splits_staged<T, kDim>(p, bh, splits, part_out, part_lse);
  } else if constexpr (kLoads == kLoadsEager) {
    static_assert(std::is_same_v<acc_of<T>, float>, "eager loads: float partials only");
    static_assert(kDim <= kThreads, "eager loads: one output per thread");
    combine_splits_eager<T, kDim>(p, bh, splits, part_out, part_lse);
  } else {
    combine_splits<T, kDim>(p, bh, splits, part_out, part_lse, threadIdx.x, kThreads);
  }
  if (advances) advance[b] += step;
  tr.mark(kTraceCombineWritten);
}


// ------------------------------------------------------- decode, bf16 / fp16
// The bandwidth-bound decode kernel (sm_90: thread-block clusters).
//   grid (splits, Hkv * head_chunks, B), cluster (splits, 1, 1), 128 threads.
// One CTA reads one contiguous part (whole 64-key tiles) of the visible keys of
// one (row, KV head) and serves up to 16 query heads of its GQA group: the
// heads are the 16 rows of mma.sync m16n8k16, so each K/V row is read from
// memory once.  K and V tiles are gathered from the ring slots with 16-byte
// cp.async into XOR-swizzled shared memory, kStages deep, so the loads of the
// next tiles are in flight while the tensor cores work on the current one.
// Each warp owns 16 keys of a tile and keeps its own online softmax; the four
// warps are merged in shared memory at the end.  The splits of a (row, KV
// head) form one cluster: after a cluster barrier every CTA combines a slice
// of the outputs from all splits' shared memory (distributed shared memory),
// in split order, so the result is deterministic and no second kernel runs.
//
// Tiling (template options, SWAA_DECODE_TILE / SWAA_DECODE_STAGES): kWarps
// warps of 16 keys each make a tile of 16 kWarps keys, kStages tiles deep in
// shared memory.  The default (4 warps: 64-key tiles; 3 stages at D = 128, 4
// at D = 64) serves every plan; the global-combine kernel is also built with
// the few alternatives of DecodeTiling (host side).
template <int kDim>
constexpr int default_decode_stages() { return kDim == 128 ? 3 : 4; }

// The fused combine (see ring_decode_split_kernel) of the kHeads query heads
// bh0 .. bh0 + n_heads - 1 by the CTA that arrived last: the same arithmetic,
// in the same order, as combine_splits (so the same bits as the combine
// kernel), laid out for one CTA serving 16 heads.  The split log-sum-exps are
// staged in shared memory and one thread per head turns them into weights in
// split order; then each thread owns kHeads * kDim / kThreads outputs and
// reads the partials of one split for all of them at once (independent L2
// loads in flight, not one latency per output and split).  `scratch` holds
// kHeads * splits + 2 kHeads floats (kFusedMaxSplits bounds splits).  Keep in
// step with combine_splits: tests/test_decode_fused.py checks bit equality.
template <typename T, int kDim, int kThreads, int kHeads>
__device__ __forceinline__ void fused_combine(const RingParams& p, int64_t bh0, int n_heads,
                                              int splits, const float* part_out,
                                              const float* part_lse, float* scratch) {
  float* weight = scratch;                       // [kHeads][splits]: lse, then weights
  float* head_max = weight + kHeads * splits;    // [kHeads]
  float* head_sum = head_max + kHeads;           // [kHeads]
  for (int i = threadIdx.x; i < n_heads * splits; i += kThreads)
    weight[i] = load_partial(part_lse + bh0 * splits + i);
  __syncthreads();
  if (threadIdx.x < n_heads) {
    float* w = weight + threadIdx.x * splits;
    float m = neg_inf<float>();
    for (int s = 0; s < splits; ++s) m = max_keep_nan(m, w[s]);
    float sum = 0.f;
    if (m != neg_inf<float>()) {
      for (int s = 0; s < splits; ++s) {
        w[s] = exp2_of(w[s] - m);
        sum += w[s];
      }
    }  // else: a padded row; every w[s] stays -inf, so no weight is > 0
    head_max[threadIdx.x] = m;
    head_sum[threadIdx.x] = sum;
  }
  __syncthreads();
  constexpr int kItems = kHeads * kDim / kThreads;  // outputs per thread
  static_assert(kItems * kThreads == kHeads * kDim, "outputs must split over the threads");
  float o[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) o[k] = 0.f;
  for (int s = 0; s < splits; ++s) {
    float x[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = threadIdx.x + k * kThreads, head = i / kDim;
      x[k] = head < n_heads ? load_partial(part_out + ((bh0 + head) * splits + s) * kDim + i % kDim)
                            : 0.f;
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int head = (threadIdx.x + k * kThreads) / kDim;
      if (head < n_heads) {
        const float w = weight[head * splits + s];
        if (w > 0.f) o[k] = fma_rn(w, x[k], o[k]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * kThreads, head = i / kDim;
    if (head >= n_heads) continue;
    T* out = static_cast<T*>(p.out) + (bh0 + head) * kDim + i % kDim;
    *out = head_max[head] == neg_inf<float>() ? from_acc<T>(0.f)
                                              : from_acc<T>(divide_rn(o[k], head_sum[head]));
  }
  if (threadIdx.x < n_heads) {
    const float m = head_max[threadIdx.x];
    p.lse[bh0 + threadIdx.x] = m == neg_inf<float>()
                                   ? -std::numeric_limits<float>::infinity()
                                   : static_cast<float>((m + log2_of(head_sum[threadIdx.x])) * kLn2);
  }
}

template <typename T, int kDim, int kWarps_ = 4, int kStages_ = default_decode_stages<kDim>()>
struct SplitDecode {
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileKeys = 16 * kWarps;  // 16 keys per warp
  static constexpr int kHeads = 16;              // query heads per CTA: the mma rows
  static constexpr int kStages = kStages_;
  static constexpr int kTileElems = kTileKeys * kDim;
  static constexpr int kStageBytes = 2 * kTileElems * int(sizeof(T));  // K tile + V tile
  static constexpr int kChunksPerRow = kDim / 8;                       // 16-byte chunks
  static constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static constexpr int kPasses = kTileKeys / kRowsPerPass;
  static constexpr int kMaxSplits = 8;  // portable cluster size
  // After the key loop the pipeline buffers hold, as float: the warps'
  // partial results (o [kWarps][kHeads][kDim], m and l [kWarps][kHeads]) and
  // the CTA's result (o [kHeads][kDim] normalised, lse [kHeads] in log2 units).
  static constexpr int kMergeFloats = kWarps * kHeads * (kDim + 2) + kHeads * (kDim + 1);
  static constexpr int kSmemBytes =
      kStages * kStageBytes > 4 * kMergeFloats ? kStages * kStageBytes : 4 * kMergeFloats;
  static_assert(kPasses * kRowsPerPass == kTileKeys, "tile rows must split over the threads");
  static_assert(kChunksPerRow >= 8, "the swizzle needs rows of at least 8 chunks");
  static_assert(kStages >= 2, "the pipeline needs at least two stages");
  // Most splits the fused combine can merge: its scratch (fused_combine)
  // reuses the pipeline buffers.
  static constexpr int kFusedMaxSplits = (kSmemBytes / 4 - 2 * kHeads) / kHeads;
  // CTAs per SM that the shared memory allows on sm_90 (228 KB per SM, 1 KB
  // reserved per CTA), at most 4: the register budget (__launch_bounds__)
  // must not be what stops them (64-key tiles 2 deep at D = 128: 64 KB,
  // 3 CTAs, so at most 168 registers).
  static constexpr int kMinBlocks =
      (228 * 1024) / (kSmemBytes + 1024) < 4 ? (228 * 1024) / (kSmemBytes + 1024) : 4;
};

template <int N>
__device__ __forceinline__ void cp_async_wait_pending() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The keys one split CTA reads: the old (cached) keys that the query at
// position `written` sees, plus the new key when the row is active, cut into
// `splits` contiguous parts of a multiple of split_align keys: whole tiles
// (tile_keys, the default; trailing splits may be short or empty), or equal
// parts (1, SWAA_DECODE_BALANCE=1: the longest split reads the fewest bytes;
// every split's last tile may be partial).  Tiles count from a split's first
// key, so either works.  Keys are numbered as OldKeys does; key old.count()
// is the new one, read from k / v.
struct SplitKeys {
  OldKeys old;
  RingCursor cursor;  // over the window keys: RingCursor::at(ring, old.cursor_first(ring))
  int64_t begin, end;  // this split's keys [begin, end)
  int n_tiles;

  __device__ static SplitKeys of(const RingLayout& ring, int64_t written, bool active,
                                 int splits, int split, int split_align, int tile_keys) {
    SplitKeys keys;
    keys.old = OldKeys::of(ring, written, written);
    const int64_t n_keys = active ? keys.old.count() + 1 : 0;
    const int64_t per_split =
        ((n_keys + splits - 1) / splits + split_align - 1) / split_align * split_align;
    keys.begin = min_of<int64_t>(n_keys, split * per_split);
    keys.end = min_of<int64_t>(n_keys, keys.begin + per_split);
    keys.n_tiles = static_cast<int>((keys.end - keys.begin + tile_keys - 1) / tile_keys);
    keys.cursor = RingCursor::at(ring, keys.old.cursor_first(ring));
    return keys;
  }
};

// Asks the L2 for tile `tile` of a split (K and V: one bulk prefetch each of
// the tile's consecutive slots, rows of kDim elements), if it is a whole tile
// of window keys in consecutive slots; other tiles (sink keys, a wrap, the
// new key, past the split) are not prefetched.  Moves no data a kernel reads.
template <typename T, int kDim, int kTileKeys>
__device__ __forceinline__ void prefetch_tile_l2(const T* k_cache, const T* v_cache,
                                                 const SplitKeys& keys, int tile) {
  if (tile >= keys.n_tiles) return;
  const int64_t first = keys.begin + int64_t(tile) * kTileKeys;
  if (first + kTileKeys > keys.end) return;
  const int64_t slot0 = keys.old.consecutive_slots(keys.cursor, first, kTileKeys);
  if (slot0 < 0) return;
  constexpr uint32_t kBytes = kTileKeys * kDim * sizeof(T);
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(k_cache + slot0 * kDim),
               "r"(kBytes) : "memory");
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(v_cache + slot0 * kDim),
               "r"(kBytes) : "memory");
}

// A relaxed load at GPU scope: a value another grid may be writing (a hint).
__device__ __forceinline__ int64_t load_relaxed(const int64_t* x) {
  int64_t v;
  asm volatile("ld.relaxed.gpu.global.s64 %0, [%1];\n" : "=l"(v) : "l"(x) : "memory");
  return v;
}

// kGlobalCombine: launched without clusters, any number of splits; every CTA
// writes its normalised result and log2-lse to part_out / part_lse (float,
// [B * Hq][splits][kDim] and [B * Hq][splits]) for a combine in split order
// (long rows: more splits than a cluster holds).  Two ways to combine:
//   arrivals == nullptr: ring_decode_combine_kernel, a second launch;
//   arrivals != nullptr (fused, SWAA_DECODE_GLOBAL_COMBINE=fused): one
//     counter per (row, KV head, head chunk), zero between launches.  Each
//     CTA publishes its partials (__threadfence), then arrives (atomicInc,
//     which also puts the counter back to 0 for the next launch or graph
//     replay when the last split arrives); the CTA that arrives last has
//     every split's partials visible and merges them with fused_combine, a
//     second implementation of combine_splits' arithmetic in the same order
//     (same bits).  No second launch, no waiting CTA.
template <typename T, int kDim, bool kGlobalCombine, int kWarps = 4,
          int kStages = default_decode_stages<kDim>()>
__global__ void __launch_bounds__(SplitDecode<T, kDim, kWarps, kStages>::kThreads,
                                  SplitDecode<T, kDim, kWarps, kStages>::kMinBlocks)
    ring_decode_split_kernel(const RingParams p, int head_chunks, int split_align,
                             int tile_gather, int prefetch_tiles, int lead_tiles, bool trace,
                             float* part_out, float* part_lse, unsigned int* arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using C = SplitDecode<T, kDim, kWarps, kStages>;
  using Mma = cuda::MmaOp<T>;
  namespace cg = cooperative_groups;
  extern __shared__ __align__(128) unsigned char decode_smem[];
  T* tiles = reinterpret_cast<T*>(decode_smem);

  // With SWAA_DECODE_PDL=1 the combine kernel may be scheduled once every CTA
  // of this grid has passed this point (or exited).  Its griddepcontrol.wait
  // waits for this whole grid to complete and its writes to be visible, so
  // the trigger orders no memory and is safe anywhere: it goes first, so the
  // combine grid is scheduled as soon as the last split CTA has started.  In
  // a one-wave plan (B = 1 and 8 at W = 4096) its CTAs (serial: 32
  // registers; staged: 39 registers, 4 KB: two CTAs of either fit in the
  // 10240 registers two split CTAs leave on an SM, see kStagedBatch)
  // then sit resident beside the split CTAs at their wait and start the
  // moment the split kernel ends; in a plan of several waves the trigger
  // fires only when the last wave has started, so a combine CTA never takes
  // a slot that a split CTA waits for.  A no-op without a dependent launch.
  // The cluster kernel triggers too: the next step's split kernel, launched
  // with a lead (SWAA_DECODE_LEAD), may then be scheduled behind this one.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const CtaTrace tr(trace, 0);
  tr.mark(kTraceEntry);
  const int splits = static_cast<int>(gridDim.x);  // all splits of (b, kvh): the cluster
  const int split = static_cast<int>(blockIdx.x);  // == cluster.block_rank() with clusters
  const int64_t kvh = blockIdx.y / head_chunks;
  const int head_chunk = static_cast<int>(blockIdx.y % head_chunks);
  const int64_t b = blockIdx.z;
  const int group = static_cast<int>(p.group());
  const int64_t h0 = kvh * group + head_chunk * C::kHeads;
  const int n_heads = min(C::kHeads, group - head_chunk * C::kHeads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const T* k_cache = static_cast<const T*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride;
  const T* v_cache = static_cast<const T*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride;
  const bool rows_dense = p.kc_row_stride == kDim && p.vc_row_stride == kDim &&
                          reinterpret_cast<uintptr_t>(k_cache) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(v_cache) % 16 == 0;

  // SWAA_DECODE_LEAD (lead_tiles >= 0): this grid was launched as a
  // programmatic dependent of the kernel before it in the stream, and may run
  // while that kernel finishes.  Nothing that kernel may write (seqlens,
  // lengths, q, k, v, the ring itself, the partials' memory) is read or
  // written before griddepcontrol.wait; before it, thread 0 only asks the L2
  // for the first lead_tiles tiles of this split, at slots worked out from a
  // relaxed read of seqlens[b] (a hint: stale or torn, it costs a wasted
  // prefetch, nothing else; a prefetch moves no data the kernel reads).
  // Without a dependent launch the wait returns at once.
  if (lead_tiles > 0 && rows_dense && tile_gather && threadIdx.x == 0) {
    const int64_t hint = max_of<int64_t>(load_relaxed(p.seqlens + b), 0);
    const SplitKeys hinted =
        SplitKeys::of(p.ring, hint, true, splits, split, split_align, C::kTileKeys);
    for (int t = 0; t < lead_tiles; ++t)
      prefetch_tile_l2<T, kDim, C::kTileKeys>(k_cache, v_cache, hinted, t);
  }
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  tr.mark(kTraceReleased);

  const int64_t written = max_of<int64_t>(p.seqlens[b], 0);  // the query's position
  const bool active = p.valid(b) > 0;
  const SplitKeys keys =
      SplitKeys::of(p.ring, written, active, splits, split, split_align, C::kTileKeys);
  const OldKeys& old = keys.old;
  const int64_t n_old = old.count();
  const int64_t key_begin = keys.begin, key_end = keys.end;
  const int n_tiles = keys.n_tiles;
  tr.put(kTraceTiles, n_tiles);

  const T* k_new = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v_new = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const int64_t ring_first = keys.cursor.first;
  const RingCursor& cursor = keys.cursor;

  // Gathers tile `tile` of the split (keys key_begin + tile * kTileKeys ..)
  // into stage `stage`; keys past key_end become zeros.
  const int chunk = threadIdx.x % C::kChunksPerRow;
  const int row_of_thread = threadIdx.x / C::kChunksPerRow;
  auto load_tile = [&](int tile, int stage) {
    T* k_tile = tiles + stage * 2 * C::kTileElems;
    T* v_tile = k_tile + C::kTileElems;
    const int64_t first = key_begin + int64_t(tile) * C::kTileKeys;
    // Almost every tile is window keys in consecutive slots: one slot for the
    // tile, then a fixed stride per pass.  (The per-key slot arithmetic below
    // took about half of the warps' stall samples at B = 8 in session 7's
    // ncu profile; same bytes to the same places either way.)  The condition
    // is the same for every thread of the CTA.  SWAA_DECODE_TILE_GATHER=0
    // (tile_gather == 0) keeps the per-key path for every tile.
    const int64_t slot0 = tile_gather && first + C::kTileKeys <= key_end
                              ? old.consecutive_slots(cursor, first, C::kTileKeys) : -1;
    if (slot0 >= 0) {
      const T* k_row = k_cache + (slot0 + row_of_thread) * p.kc_row_stride + chunk * 8;
      const T* v_row = v_cache + (slot0 + row_of_thread) * p.vc_row_stride + chunk * 8;
      const int64_t k_step = C::kRowsPerPass * p.kc_row_stride;
      const int64_t v_step = C::kRowsPerPass * p.vc_row_stride;
#pragma unroll
      for (int i = 0; i < C::kPasses; ++i) {
        const int at = cuda::swizzle<kDim>(row_of_thread + i * C::kRowsPerPass, chunk * 8);
        cuda::cp_async_16(k_tile + at, k_row + i * k_step, true);
        cuda::cp_async_16(v_tile + at, v_row + i * v_step, true);
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < C::kPasses; ++i) {
      const int r = row_of_thread + i * C::kRowsPerPass;
      const int64_t index = first + r;
      const bool valid = index < key_end;
      const T* k_row = k_new;  // index == n_old: the new key
      const T* v_row = v_new;
      if (valid && index < n_old) {
        const int64_t pos = old.position(index);
        const int64_t slot = pos < p.ring.sink ? pos : cursor.slot(pos - ring_first);
        k_row = k_cache + slot * p.kc_row_stride;
        v_row = v_cache + slot * p.vc_row_stride;
      }
      const int at = cuda::swizzle<kDim>(r, chunk * 8);
      cuda::cp_async_16(k_tile + at, k_row + chunk * 8, valid);
      cuda::cp_async_16(v_tile + at, v_row + chunk * 8, valid);
    }
  };

  // SWAA_DECODE_PREFETCH=N: thread 0 asks the L2 for the tile N tiles past
  // the newest one in the shared-memory pipeline, K and V each one bulk
  // prefetch of the tile's consecutive slots (rows of kDim elements), so
  // more bytes are on their way from DRAM than the stages' cp.async keep in
  // flight, without registers or shared memory.  Tiles off the tile path
  // (sink keys, a wrap, the new key) and padded rows are not prefetched.
  // Moves no data the kernel reads: same bits with any N.
  auto prefetch_tile = [&](int tile) {
    prefetch_tile_l2<T, kDim, C::kTileKeys>(k_cache, v_cache, keys, tile);
  };
  const bool prefetching = prefetch_tiles > 0 && tile_gather && rows_dense && threadIdx.x == 0;

  // Start the pipeline before anything else waits on memory.
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    cuda::cp_async_commit();
  }
  if (prefetching)
    for (int i = 0; i < prefetch_tiles; ++i) prefetch_tile(C::kStages - 1 + i);

  // The new key/value go to their slot (split 0 of the first head chunk),
  // after the first tiles are requested: the copy waits for its loads, and
  // the pipeline should not.  That slot held position written - window,
  // which this query cannot see: no CTA of the launch reads it.
  if (active && split == 0 && head_chunk == 0)
    store_new_token<T, kDim, C::kThreads>(p, b, kvh, written, k_new, v_new);

  // A fragments of the queries: row r = head (lane / 4) and (lane / 4 + 8).
  uint32_t qa[kDim / 16][4];
  {
    const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch_stride + h0 * p.q_head_stride;
    const int col = 2 * (lane % 4);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int head = lane / 4 + 8 * half;
      const T* q_row = q_base + head * p.q_head_stride;
#pragma unroll
      for (int kk = 0; kk < kDim / 16; ++kk) {
        uint32_t lo = 0, hi = 0;
        if (head < n_heads) {
          lo = *reinterpret_cast<const uint32_t*>(q_row + 16 * kk + col);
          hi = *reinterpret_cast<const uint32_t*>(q_row + 16 * kk + 8 + col);
        }
        qa[kk][half] = lo;      // a0 (row r), a1 (row r + 8): k 0..7
        qa[kk][2 + half] = hi;  // a2, a3: k 8..15
      }
    }
  }

  // Online softmax of the warp's keys; scores in log2 units.  Row `half`
  // (0: head lane / 4, 1: head lane / 4 + 8) is in elements 2 half, 2 half + 1
  // of every C fragment.
  const float score_scale = p.scale * kLog2e;
  float run_max[2] = {lowest_max<float>(), lowest_max<float>()};
  float run_sum[2] = {0.f, 0.f};  // this lane's columns only; quad-summed at the end
  float o[kDim / 8][4];
  cuda::zero(o);

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait_pending<C::kStages - 2>();  // tile t has landed (this thread's copies)
    __syncthreads();                          // ... everyone's; stage of tile t - 1 is free
    if (t == 0) tr.mark(kTraceFirstTile);
    {
      const int next = t + C::kStages - 1;
      if (next < n_tiles) load_tile(next, next % C::kStages);
      cuda::cp_async_commit();
      if (prefetching) prefetch_tile(next + prefetch_tiles);
    }
    const T* k_tile = tiles + (t % C::kStages) * 2 * C::kTileElems;
    const T* v_tile = k_tile + C::kTileElems;

    float s[2][4] = {};  // scores of keys warp*16 + 0..7 and 8..15
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      uint32_t bk[4];
      cuda::load_b<kDim>(bk, k_tile, warp * 16, kk * 16, lane);
      Mma::run(s[0], qa[kk], bk[0], bk[1]);
      Mma::run(s[1], qa[kk], bk[2], bk[3]);
    }
    const int64_t key0 = key_begin + int64_t(t) * C::kTileKeys + warp * 16 + 2 * (lane % 4);
    const bool full_tile = key_begin + int64_t(t + 1) * C::kTileKeys <= key_end;
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[j][e] = full_tile || key0 + 8 * j + (e & 1) < key_end ? s[j][e] * score_scale
                                                                 : neg_inf<float>();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = max(max(s[0][2 * half], s[0][2 * half + 1]),
                           max(s[1][2 * half], s[1][2 * half + 1]));
      tile_max = max(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = max(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = max(run_max[half], tile_max);
      const float correction = exp2f(run_max[half] - new_max);
      run_max[half] = new_max;
      run_sum[half] *= correction;
#pragma unroll
      for (int nd = 0; nd < kDim / 8; ++nd) {
        o[nd][2 * half] *= correction;
        o[nd][2 * half + 1] *= correction;
      }
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          s[j][e] = exp2f(s[j][e] - new_max);  // 0 for masked keys
          run_sum[half] += s[j][e];
        }
    }
    // o += P V: the C fragments of the scores are the A fragment of P.
    const uint32_t pa[4] = {Mma::pack(s[0][0], s[0][1]), Mma::pack(s[0][2], s[0][3]),
                            Mma::pack(s[1][0], s[1][1]), Mma::pack(s[1][2], s[1][3])};
#pragma unroll
    for (int dp = 0; dp < kDim / 16; ++dp) {
      uint32_t bv[4];
      cuda::load_b_trans<kDim>(bv, v_tile, warp * 16, dp * 16, lane);
      Mma::run(o[2 * dp], pa, bv[0], bv[1]);
      Mma::run(o[2 * dp + 1], pa, bv[2], bv[3]);
    }
  }
  cuda::cp_async_wait_all();
  __syncthreads();  // the pipeline buffers become the merge area
  tr.mark(kTraceLoopDone);

  // Merge the four warps of the CTA.
  float* warp_o = reinterpret_cast<float*>(decode_smem);  // [kWarps][kHeads][kDim]
  float* warp_max = warp_o + C::kWarps * C::kHeads * kDim;  // [kWarps][kHeads]
  float* warp_sum = warp_max + C::kWarps * C::kHeads;       // [kWarps][kHeads]
  float* cta_o = warp_sum + C::kWarps * C::kHeads;          // [kHeads][kDim]
  float* cta_lse = cta_o + C::kHeads * kDim;                // [kHeads]
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int head = lane / 4 + 8 * half;
    float sum = run_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (lane % 4 == 0) {
      warp_max[warp * C::kHeads + head] = run_max[half];
      warp_sum[warp * C::kHeads + head] = sum;
    }
    float* row = warp_o + (warp * C::kHeads + head) * kDim + 2 * (lane % 4);
#pragma unroll
    for (int nd = 0; nd < kDim / 8; ++nd) {
      row[8 * nd] = o[nd][2 * half];
      row[8 * nd + 1] = o[nd][2 * half + 1];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n_heads * kDim; i += C::kThreads) {
    const int head = i / kDim;
    float m = lowest_max<float>();
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) m = max(m, warp_max[w * C::kHeads + head]);
    float sum = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) {
      const float weight = exp2f(warp_max[w * C::kHeads + head] - m);
      sum += warp_sum[w * C::kHeads + head] * weight;
      acc += warp_o[w * C::kHeads * kDim + i] * weight;
    }
    const bool seen = sum != 0.f;  // NaN (a NaN score) counts as seen
    const float lse2 = seen ? m + log2f(sum) : neg_inf<float>();
    if constexpr (kGlobalCombine) {
      const int64_t part = (b * p.q_heads + h0 + head) * splits + split;
      part_out[part * kDim + i % kDim] = seen ? acc / sum : 0.f;
      if (i % kDim == 0) part_lse[part] = lse2;
    } else {
      cta_o[i] = seen ? acc / sum : 0.f;
      if (i % kDim == 0) cta_lse[head] = lse2;
    }
  }
  if constexpr (kGlobalCombine) {
    tr.mark(kTraceWritten);  // this thread's partials are written (the others' about then)
    if (arrivals == nullptr) return;  // ring_decode_combine_kernel finishes
    // Fused combine, in the pattern of cooperative_groups' grid sync: every
    // thread's partials are ordered before thread 0's arrival by the barrier
    // and thread 0's fence (release); the last arrival's fence after its
    // atomic (acquire) is handed to the CTA's other threads by the barrier
    // that follows.  The per-thread fence is belt and braces.
    __threadfence();
    __syncthreads();
    bool last = true;  // one split: nothing to wait for
    if (threadIdx.x == 0 && splits > 1) {
      unsigned int* counter = arrivals + (b * gridDim.y + blockIdx.y);
      __threadfence();  // release: the whole CTA's partials, through the barrier above
      // One RMW counts the arrival and, for the last one (old == splits - 1),
      // resets the counter to 0 for the next launch: no window between the
      // count and the reset.  A counter found above splits - 1 (only if two
      // overlapping launches ever shared it) wraps to 0 in the same RMW
      // instead of never reaching splits - 1 again.  (One left between 1 and
      // splits - 1 by such an overlap would still merge later launches
      // early: the slices keep overlapping launches apart.)
      last = atomicInc(counter, static_cast<unsigned int>(splits - 1)) ==
             static_cast<unsigned int>(splits - 1);
      if (last) __threadfence();  // acquire, before the barrier hands it on
    }
    if (!__syncthreads_or(threadIdx.x == 0 && last)) return;
    fused_combine<T, kDim, C::kThreads, C::kHeads>(p, b * p.q_heads + h0, n_heads, splits,
                                                     part_out, part_lse,
                                                     reinterpret_cast<float*>(decode_smem));
    return;
  }

  // Combine the splits of the cluster: CTA `split` writes a slice of the
  // outputs, reading every split's result in split order.
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  for (int i = split * C::kThreads + threadIdx.x; i < n_heads * kDim; i += splits * C::kThreads) {
    const int head = i / kDim;
    float m = neg_inf<float>();
    for (int r = 0; r < splits; ++r)
      m = max_keep_nan(m, cluster.map_shared_rank(cta_lse, r)[head]);
    const int64_t bh = b * p.q_heads + h0 + head;
    T* out = static_cast<T*>(p.out) + bh * kDim + i % kDim;
    if (m == neg_inf<float>()) {  // padded row: nothing attended
      *out = from_acc<T>(0.f);
      if (i % kDim == 0) p.lse[bh] = -std::numeric_limits<float>::infinity();
      continue;
    }
    float sum = 0.f, acc = 0.f;
    for (int r = 0; r < splits; ++r) {
      const float weight = exp2f(cluster.map_shared_rank(cta_lse, r)[head] - m);
      sum += weight;
      if (weight > 0.f) acc += weight * cluster.map_shared_rank(cta_o, r)[i];
    }
    *out = from_acc<T>(acc / sum);
    if (i % kDim == 0) p.lse[bh] = (m + log2f(sum)) * kLn2;
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
  tr.mark(kTraceWritten);
#else
  __trap();  // launched only on sm_90 and newer (see ring_decode_cuda)
#endif
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
    const bool seen = rr < rows && run_sum[r] != acc_t(0);  // NaN counts as seen
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

// Debug knob of the tests (as for swaa::fwd): SWAA_POISON_OUTPUTS=1 fills the
// decode outputs with NaN before the kernels run.  Read once per process.
bool poison_decode_outputs() {
  static const bool poison = [] {
    const char* env = std::getenv("SWAA_POISON_OUTPUTS");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return poison;
}

// SWAA_RING_DECODE=legacy forces the previous (CUDA-core) decode kernel for
// every dtype: a same-run baseline for bench/bench_decode.py.  Read once.
bool legacy_decode_requested() {
  static const bool legacy = [] {
    const char* env = std::getenv("SWAA_RING_DECODE");
    return env != nullptr && std::string(env) == "legacy";
  }();
  return legacy;
}

// Compute capability (major) of the current device, read once per device.
int compute_major() {
  static int majors[64] = {};
  const int device = c10::cuda::current_device();
  if (device >= 64) return 0;
  if (majors[device] == 0)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&majors[device], cudaDevAttrComputeCapabilityMajor, device));
  return majors[device];
}

// Knobs of the split decode, read at every launch (host code only: a captured
// graph keeps the plan it was captured with), for A/B runs in one process
// (the decode step of bench/gpu_check.sh):
//   SWAA_DECODE_SPLITS=N       exactly N splits (the op's num_splits > 0 wins);
//   SWAA_DECODE_SPLITS_MAX=N   at most N splits in the automatic choice;
//   SWAA_DECODE_COMBINE=cluster | global
//                              combine the splits through distributed shared
//                              memory (one launch, at most 8 splits) or through
//                              a float workspace and a second kernel (any
//                              number of splits); unset: chosen by cost;
//   SWAA_DECODE_COMBINE_COST=N the global combine's cost in the plan, in tile
//                              units (default kGlobalCombineCost);
//   SWAA_DECODE_COST=slots | sm
//                              cost model of the automatic choice: `slots`
//                              (default) counts waves of resident CTAs, as if
//                              co-resident CTAs ran at full speed each; `sm`
//                              counts the CTAs each SM must stream one after
//                              the other (co-resident CTAs share the SM's
//                              bandwidth), which favours fewer, longer CTAs
//                              when a batch fills the GPU only partly
//                              (timed side by side by the decode step of
//                              bench/gpu_check.sh: runs *_cost_slots / *_cost_sm);
//   SWAA_DECODE_PDL=1 | 0      launch the global combine as a programmatic
//                              dependent of the split kernel (default 1: the
//                              split kernel triggers at its first instruction,
//                              the combine runs its prologue before its wait;
//                              decode4, H200 session 6: faster in every round
//                              and combination, by 3-7% per step at B = 1 and
//                              1-3% at B = 8 on the medians; docs/ring_cache.md
//                              "decode4");
//   SWAA_DECODE_COMBINE_LOADS=auto | staged | serial | eager
//                              the combine kernel's loads: combine_splits_staged
//                              (lse values staged in shared memory, partials
//                              loaded ahead; at most kStagedMaxSplits splits,
//                              serial above) or combine_splits; the same bits.
//                              auto (default): staged above kStagedBatch (8)
//                              splits (eager below, see eager).  Session 6: B = 1 (33 splits) step
//                              21.2 -> 16.3 us alone; B = 8 (4 splits) staged
//                              lost 10 of 12 pairs under PDL.  eager:
//                              combine_splits_eager (every load at once, one
//                              L2 round trip) up to kEagerMaxSplits (8)
//                              splits, staged above; auto is eager since
//                              session 19 (1.016x at B = 8);
//   SWAA_DECODE_ADVANCE=kernel | op
//                              ring_decode(advance = true): seqlens advanced by
//                              the combine kernel where the plan has one
//                              (default; cluster and fused plans keep the add)
//                              or by an ATen add after the kernels (op): one
//                              launch fewer per step (alone against the plain
//                              path, session 6: 5-6% at B = 1, 1-3% at B = 8);
//   SWAA_DECODE_GLOBAL_COMBINE=kernel | fused
//                              how a global plan merges its splits: the
//                              second kernel (default) or the CTA of each
//                              (row, KV head) that arrives last (no second
//                              launch; bitwise the same results; off by
//                              default until measured: the decode step of
//                              bench/gpu_check.sh).  Graphs that use it and
//                              may replay concurrently must be captured on
//                              distinct streams (torch.cuda.graph(g,
//                              stream=...)): graphs captured on one stream
//                              (torch's default capture stream included)
//                              share one set of counters (arrival_counters).
//                              (Not SWAA_DECODE_COMBINE: that one already
//                              picks cluster | global.)  Fused also lowers
//                              the global combine's cost in the plan
//                              (kFusedCombineCost) when it can run;
//   SWAA_DECODE_ARRIVAL_SLICES=N  at most N (<= 32) slices of the fused
//                              combine's counters per device (tests: the
//                              fallback to the kernel combine);
//   SWAA_DECODE_BALANCE=1      splits of equal key counts instead of whole
//                              tiles (W + S = 4100, 4 splits: 1025 keys each
//                              instead of 1088, 1088, 1088, 836); unmeasured;
//   SWAA_DECODE_TILE_GATHER=1 | 0  the split kernel computes one slot per
//                              tile of window keys in consecutive slots (1,
//                              decode5, the default) or one per key (0, the
//                              path before session 7); same bits;
//   SWAA_DECODE_PREFETCH=N (0..16, default 0) the split kernel's thread 0
//                              prefetches into L2 the K and V tiles N tiles
//                              ahead of its cp.async stages (one bulk
//                              prefetch each; tile-path tiles of a cache
//                              with rows of D elements); same bits;
//   SWAA_DECODE_LEAD=N (-1..16, default 1 or 0: swaa::default_decode_lead) N >= 0: the split
//                              kernel is a programmatic dependent launch of
//                              the kernel before it in the stream (whatever
//                              it is: in a benchmark loop, the previous
//                              step's combine kernel): its CTAs may be
//                              scheduled while that kernel finishes, thread
//                              0 of each prefetches the split's first N
//                              tiles into L2, then all wait
//                              (griddepcontrol.wait) for that kernel's
//                              completion before reading anything; -1: a
//                              plain launch in stream order; same bits;
//   SWAA_DECODE_TILE=64 | 32, SWAA_DECODE_STAGES=N
//                              tiling of the global kernel at D = 128: keys
//                              per tile x tiles in flight, one of 64x3
//                              (default), 64x2, 32x4, 32x6; other pairs (and
//                              D = 64) run the default.  A tiling other than
//                              the default plans global (the cluster kernel
//                              is built with the default only);
//   SWAA_DECODE_VERBOSE=1      print each distinct plan (shape, splits, combine)
//                              once to stderr; 2: at every launch.
// Unparsable values are ignored.
int64_t decode_env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  return end != env && *end == '\0' && v >= lo && v <= hi ? v : fallback;
}

bool decode_cost_knob_is_sm() {
  const char* env = std::getenv("SWAA_DECODE_COST");
  return env != nullptr && std::string(env) == "sm";
}

DecodeCombine decode_combine_knob() {
  const char* env = std::getenv("SWAA_DECODE_COMBINE");
  if (env == nullptr) return DecodeCombine::kAuto;
  const std::string v(env);
  return v == "cluster" ? DecodeCombine::kCluster
         : v == "global" ? DecodeCombine::kGlobal
                         : DecodeCombine::kAuto;
}

// Launch configuration of the split kernel in clusters of `splits` CTAs along
// x (the splits of one row); `attribute` must outlive the launch.
inline cudaLaunchConfig_t cluster_launch_config(dim3 grid, int threads, int smem_bytes,
                                                int64_t splits, cudaStream_t stream,
                                                cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = static_cast<unsigned>(splits);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// The plan line's name of a SWAA_DECODE_LEAD value.
std::string lead_name(int lead_tiles) {
  return lead_tiles < 0 ? "stream order" : "lead " + std::to_string(lead_tiles) + " tiles";
}

// *attribute: launch as a programmatic dependent of the kernel before it in
// the stream (the kernel waits at griddepcontrol.wait).
inline void set_programmatic(cudaLaunchAttribute* attribute) {
  attribute->id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute->val.programmaticStreamSerializationAllowed = 1;
}

// SWAA_DECODE_LEAD: with lead_tiles >= 0, sets *attribute to a programmatic
// dependent launch (the split kernel waits at griddepcontrol.wait for the
// kernel before it) and returns 1 (attributes used), else 0.
inline int add_lead_attribute(cudaLaunchAttribute* attribute, int lead_tiles) {
  if (lead_tiles < 0) return 0;
  set_programmatic(attribute);
  return 1;
}

// SWAA_DECODE_GLOBAL_COMBINE=kernel (default) | fused: how the global plan
// combines its splits (a second kernel, or the last-arriving CTA).
bool fused_combine_requested() {
  const char* env = std::getenv("SWAA_DECODE_GLOBAL_COMBINE");
  return env != nullptr && std::string(env) == "fused";
}

// SWAA_DECODE_COMBINE_LOADS=auto (default) | staged | serial | eager: which of
// combine_splits (serial), combine_splits_staged or combine_splits_eager the
// combine kernel runs for `splits` splits (the same bits).  auto (and any
// other value): eager up to kEagerMaxSplits, staged above (serial past
// kStagedMaxSplits); eager above kEagerMaxSplits and staged past
// kStagedMaxSplits fall back to auto's choice and serial.
//   staged: with at most one load batch the staged loads save no L2 trip and
// take 39 registers and 4 KB of shared memory per CTA against 32 and none; on
// the H200 (session 6) staged lost to serial in 10 of the 12 PDL pairs at
// B = 8 (4 splits; 0.3-0.65 us a step in run 2) and won all 12 at B = 1 (33
// splits; 16.1-16.3 us against 19.6-21.2 us alone).
//   eager (auto's choice up to 8 splits since session 19): H200, 7
// interleaved rounds, 1.016x the serial loads at B = 8 (4 splits; 39.2 us,
// 0.810 of copy bandwidth), 1.007x with a projection GEMM before every step.
CombineLoads combine_loads(int64_t splits) {
  const char* env = std::getenv("SWAA_DECODE_COMBINE_LOADS");
  const std::string v = env == nullptr ? "auto" : env;
  if (v == "serial") return kLoadsSerial;
  if (v == "staged" && splits <= kStagedMaxSplits) return kLoadsStaged;
  if (v != "staged" && splits <= kEagerMaxSplits) return kLoadsEager;
  return splits <= kStagedMaxSplits ? kLoadsStaged : kLoadsSerial;
}

// SWAA_DECODE_ADVANCE=kernel (default) | op: how ring_decode(advance = true)
// advances seqlens: in the combine kernel where the plan has one (global
// plan, kernel combine; other plans keep the add), or by an ATen add after
// the kernels (one more launch, as the Python seqlens.add_ before decode4).
bool advance_in_kernel_requested() {
  const char* env = std::getenv("SWAA_DECODE_ADVANCE");
  return env == nullptr || std::string(env) != "op";
}

// Tilings the global-combine kernel is built with (SplitDecode): 16 kWarps
// keys per tile, kStages tiles in flight.  Shared memory per CTA at D = 128
// (D = 64: half): 96 KB (default, 2 CTAs per SM on sm_90), 64 KB (64 x 2:
// 3 per SM), 64 KB (32 x 4, 2 warps: 3 per SM), 96 KB (32 x 6: 2 per SM).
// 64-key tiles 4 deep at D = 128 would take 128 KB (1 CTA per SM): not built.
enum class DecodeTiling { kDefault, kTile64Stages2, kTile32Stages4, kTile32Stages6 };

// SWAA_DECODE_TILE (64 | 32 keys) and SWAA_DECODE_STAGES (2 | 3 | 4 | 6):
// one of the built tilings; any other pair runs the default.  The
// alternatives are built for D = 128 only (the shape of issue 4's goal).
template <int kDim>
DecodeTiling decode_tiling_knob() {
  if constexpr (kDim != 128) return DecodeTiling::kDefault;
  const int64_t tile = decode_env_int("SWAA_DECODE_TILE", 64, 1, 1 << 20);
  const int64_t stages =
      decode_env_int("SWAA_DECODE_STAGES", tile == 64 ? default_decode_stages<kDim>() : 4, 1, 64);
  if (tile == 64 && stages == 2) return DecodeTiling::kTile64Stages2;
  if (tile == 32 && stages == 4) return DecodeTiling::kTile32Stages4;
  if (tile == 32 && stages == 6) return DecodeTiling::kTile32Stages6;
  return DecodeTiling::kDefault;
}

// Calls f(std::integral_constant<int, kWarps>, std::integral_constant<int, kStages>).
template <int kDim, typename F>
auto with_decode_tiling(DecodeTiling tiling, F&& f) {
  using std::integral_constant;
  if constexpr (kDim == 128) switch (tiling) {
    case DecodeTiling::kTile64Stages2: return f(integral_constant<int, 4>(), integral_constant<int, 2>());
    case DecodeTiling::kTile32Stages4: return f(integral_constant<int, 2>(), integral_constant<int, 4>());
    case DecodeTiling::kTile32Stages6: return f(integral_constant<int, 2>(), integral_constant<int, 6>());
    default: break;
  }
  return f(integral_constant<int, 4>(), integral_constant<int, default_decode_stages<kDim>()>());
}

// Arrival counters of the fused combine: one per (row, KV head, head chunk)
// of a launch, zero at module load and put back to zero by the CTA that
// combines (atomicInc), so no launch (and no graph replay) clears them.
// Launches that overlap in time must not share counters, so they come in
// slices, handed out first come first served and never released, one per key
//   (device, stream, capturing):
// each stream that launches the fused combine eagerly gets a slice, and the
// launches captured on a stream get ANOTHER slice, which every graph captured
// on that stream shares (a graph keeps the slice of its capture).  So eager
// launches never share counters with graphs, even on a pool stream that
// happens to be torch's capture stream (torch.cuda.graph without stream=
// captures on one pool stream for the whole process).  The rule this leaves:
// graphs that use the fused combine and may replay concurrently must be
// captured on distinct streams (torch.cuda.graph(g, stream=...)); graphs
// captured with the default arguments share one slice and must replay one
// after the other (docs/ring_cache.md).  Past kArrivalSlices keys per device
// (SWAA_DECODE_ARRIVAL_SLICES=N: fewer, for tests), or past kArrivalsPerSlice
// (row, KV head, head chunk) triples, the kernel combine runs instead.
// 32 x 16384 counters: 2 MiB of device memory per device.
constexpr int kArrivalSlices = 32;
constexpr int kArrivalsPerSlice = 16384;
__device__ unsigned int g_decode_arrivals[kArrivalSlices * kArrivalsPerSlice];

// Zeroes the trace buffer ahead of a traced launch (stream-ordered, so a
// captured graph clears it on every replay).
void clear_decode_trace(cudaStream_t stream) {
  void* address = nullptr;
  C10_CUDA_CHECK(cudaGetSymbolAddress(&address, g_decode_trace));
  C10_CUDA_CHECK(cudaMemsetAsync(address, 0, sizeof(g_decode_trace), stream));
}

unsigned int* arrival_counters(cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<int, cudaStream_t, bool>, int> slice_of;
  static unsigned int* base[64] = {};
  static int slices_used[64] = {};
  const int device = c10::cuda::current_device();
  if (device >= 64) return nullptr;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    // e.g. the legacy stream while another stream captures: the launch
    // fails in its own right; the kernel combine's launch check reports it
    (void)cudaGetLastError();
    return nullptr;
  }
  const bool capturing = capture == cudaStreamCaptureStatusActive;
  const int64_t max_slices =
      decode_env_int("SWAA_DECODE_ARRIVAL_SLICES", kArrivalSlices, 0, kArrivalSlices);
  std::lock_guard<std::mutex> lock(mutex);
  if (base[device] == nullptr) {
    void* address = nullptr;
    C10_CUDA_CHECK(cudaGetSymbolAddress(&address, g_decode_arrivals));
    base[device] = static_cast<unsigned int*>(address);
  }
  auto it = slice_of.find({device, stream, capturing});
  if (it == slice_of.end()) {
    if (slices_used[device] >= max_slices) return nullptr;
    it = slice_of.emplace(std::make_tuple(device, stream, capturing), slices_used[device]++).first;
  }
  return base[device] + int64_t(it->second) * kArrivalsPerSlice;
}

// The occupancy the plan needs (swaa/decode_plan.h), measured once per device
// with the occupancy API; also lifts the kernels' dynamic shared-memory limit.
// The cluster kernel is built with the default tiling only: for the others
// cluster_slots stay 0 (their plans are global).
template <typename T, int kDim, int kWarps, int kStages>
const SplitDecodeOccupancy& split_decode_occupancy() {
  using C = SplitDecode<T, kDim, kWarps, kStages>;
  constexpr bool kDefaultTiling = kWarps == 4 && kStages == default_decode_stages<kDim>();
  static SplitDecodeOccupancy per_device[64];
  static SplitDecodeOccupancy fallback;
  const int device = c10::cuda::current_device();
  SplitDecodeOccupancy& occ = device < 64 ? per_device[device] : fallback;
  if (occ.global_slots > 0) return occ;
  auto global_kernel = ring_decode_split_kernel<T, kDim, true, kWarps, kStages>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(global_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      C::kSmemBytes));
  const int64_t sms = multiprocessor_count();
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, global_kernel, C::kThreads,
                                                               C::kSmemBytes));
  const int64_t per_sm_slots = sms * std::max(blocks, 1);
  if constexpr (kDefaultTiling) {
    auto cluster_kernel = ring_decode_split_kernel<T, kDim, false>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(cluster_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    for (int s = 1; s <= C::kMaxSplits; ++s) {
      cudaLaunchAttribute attribute;
      const cudaLaunchConfig_t config = cluster_launch_config(
          dim3(static_cast<unsigned>(s), 1, 1), C::kThreads, C::kSmemBytes, s, nullptr, &attribute);
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, cluster_kernel, &config) != cudaSuccess ||
          clusters <= 0) {
        (void)cudaGetLastError();  // not fatal: fall back to the per-SM count
        occ.cluster_slots[s] = per_sm_slots;
      } else {
        occ.cluster_slots[s] = std::min<int64_t>(per_sm_slots, int64_t(clusters) * s);
      }
    }
  }
  occ.per_sm = std::max(blocks, 1);
  occ.global_slots = per_sm_slots;
  return occ;
}

// True the first time this process sees `key` (the verbose plan printout
// names each distinct plan once, not every launch of a benchmark loop).
bool first_time_seen(const std::array<int64_t, 11>& key) {
  static std::mutex mutex;
  static std::set<std::array<int64_t, 11>> seen;
  std::lock_guard<std::mutex> lock(mutex);
  return seen.insert(key).second;
}

// Launches the split decode (and the combine kernel of a global plan).
// advance != nullptr: the op's seqlens, to be advanced by the combine kernel
// if the plan has one.  Returns whether a kernel advanced it.
template <typename T, int kDim, int kWarps, int kStages>
bool launch_split_decode_tiled(const RingParams& p, int64_t num_splits, const at::Tensor& like,
                               cudaStream_t stream, int64_t* advance) {
  using C = SplitDecode<T, kDim, kWarps, kStages>;
  constexpr bool kDefaultTiling = kWarps == 4 && kStages == default_decode_stages<kDim>();
  const int64_t head_chunks = (p.group() + C::kHeads - 1) / C::kHeads;
  const int64_t pairs = p.batch * p.kv_heads * head_chunks;
  const int64_t requested =
      num_splits > 0 ? num_splits : decode_env_int("SWAA_DECODE_SPLITS", 0, 1, 1 << 20);
  const bool fused_requested = fused_combine_requested();
  // Whether the fused combine can run is known before planning (a slice of
  // counters for this stream, few enough (row, KV head) pairs), so the plan
  // uses the cost of the combine that will run.  A slice taken here stays
  // this stream's even if the plan comes out as a cluster.
  unsigned int* arrivals = nullptr;
  if (fused_requested && pairs <= kArrivalsPerSlice) arrivals = arrival_counters(stream);
  const bool fused = arrivals != nullptr;
  const int64_t splits_max = decode_env_int("SWAA_DECODE_SPLITS_MAX", kDecodeSplitsMax, 1, 1 << 20);
  // Only the default tiling has a cluster kernel: the others plan global.
  const DecodeCombine combine = kDefaultTiling ? decode_combine_knob() : DecodeCombine::kGlobal;
  const SplitDecodeOccupancy& occupancy = split_decode_occupancy<T, kDim, kWarps, kStages>();
  const SplitDecodePlan plan = plan_split_decode(
      pairs, p.ring.capacity(), C::kTileKeys, C::kMaxSplits,
      occupancy, requested, combine,
      fused ? std::min<int64_t>(splits_max, C::kFusedMaxSplits) : splits_max,
      decode_env_int("SWAA_DECODE_COMBINE_COST", global_combine_cost(fused), 0, 1 << 20),
      decode_cost_knob_is_sm());
  const int64_t splits = plan.splits;
  const int split_align = decode_env_int("SWAA_DECODE_BALANCE", 0, 0, 1) == 1 ? 1 : C::kTileKeys;
  const int tile_gather = decode_env_int("SWAA_DECODE_TILE_GATHER", 1, 0, 1);
  const int prefetch_tiles = decode_env_int("SWAA_DECODE_PREFETCH", 0, 0, 16);
  const int lead_tiles = decode_env_int(
      "SWAA_DECODE_LEAD",
      default_decode_lead(plan, pairs, p.ring.capacity(), C::kTileKeys, occupancy), -1, 16);
  const bool trace = decode_env_int("SWAA_DECODE_TRACE", 0, 0, 1) == 1;
  TORCH_CHECK(!trace || kTraceBuilt,
              "SWAA_DECODE_TRACE=1 needs a build with SWAA_DECODE_TRACE_BUILD=ON (set it in the "
              "environment of pip install)");
  if (!plan.global_combine || splits > C::kFusedMaxSplits) arrivals = nullptr;
  // The combine kernel runs: global plan, not fused.
  const bool combine_kernel = plan.global_combine && arrivals == nullptr;
  const CombineLoads loads = combine_kernel ? combine_loads(splits) : kLoadsSerial;
  const bool staged = loads == kLoadsStaged, eager = loads == kLoadsEager;
  if (!combine_kernel) advance = nullptr;
  const int64_t verbose = decode_env_int("SWAA_DECODE_VERBOSE", 0, 0, 2);
  if (verbose == 2 ||
      (verbose == 1 &&
       first_time_seen({p.batch, p.kv_heads, p.q_heads, p.ring.capacity(), splits,
                        plan.global_combine ? 1 : 0, int64_t(sizeof(T)), kDim,
                        (arrivals != nullptr ? 1 : 0) + 2 * split_align + 256 * staged +
                            (int64_t(eager) << 30) +
                            512 * (advance != nullptr) + 1024 * tile_gather +
                            2048 * prefetch_tiles + 65536 * (lead_tiles + 1),
                        kWarps, kStages})))
    std::fprintf(stderr,
                 "swaa ring_decode: B=%lld Hkv=%lld Hq=%lld capacity=%lld -> %lld splits, %s "
                 "combine (%s, tile %d x %d stages, %d B smem%s%s%s%s, %s, L2 prefetch %d)\n",
                 static_cast<long long>(p.batch), static_cast<long long>(p.kv_heads),
                 static_cast<long long>(p.q_heads), static_cast<long long>(p.ring.capacity()),
                 static_cast<long long>(splits), plan.global_combine ? "global" : "cluster",
                 !plan.global_combine ? "dsmem"
                 : arrivals != nullptr ? "fused"
                 : fused_requested ? "kernel, fused not available"
                         : "kernel",
                 C::kTileKeys, kStages, C::kSmemBytes, split_align == 1 ? ", balanced" : "",
                 staged ? ", staged loads" : eager ? ", eager loads" : "",
                 advance != nullptr ? ", advances seqlens" : "",
                 tile_gather ? "" : ", per-key gather",
                 lead_name(lead_tiles).c_str(), prefetch_tiles);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.kv_heads * head_chunks),
                  static_cast<unsigned>(p.batch));
  if (trace) clear_decode_trace(stream);
  if (plan.global_combine) {
    // Partial results per (row, query head, split); from the caching
    // allocator, so a captured graph owns them.
    const auto opts = like.options().dtype(at::kFloat);
    at::Tensor part_out = at::empty({p.batch * p.q_heads * splits * kDim}, opts);
    at::Tensor part_lse = at::empty({p.batch * p.q_heads * splits}, opts);
    if (poison_decode_outputs()) {  // a partial read before it is published shows up as NaN
      part_out.fill_(std::numeric_limits<float>::quiet_NaN());
      part_lse.fill_(std::numeric_limits<float>::quiet_NaN());
    }
    {
      cudaLaunchConfig_t config = {};
      config.gridDim = grid;
      config.blockDim = dim3(C::kThreads);
      config.dynamicSmemBytes = C::kSmemBytes;
      config.stream = stream;
      cudaLaunchAttribute attribute[1];
      config.attrs = attribute;
      config.numAttrs = add_lead_attribute(attribute, lead_tiles);
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, ring_decode_split_kernel<T, kDim, true, kWarps, kStages>,
                                        p, static_cast<int>(head_chunks), split_align, tile_gather,
                                        prefetch_tiles, lead_tiles, trace,
                                        part_out.data_ptr<float>(), part_lse.data_ptr<float>(),
                                        arrivals));
    }
    if (arrivals != nullptr) return false;  // fused: the last CTA of each row combined
    auto combine = staged  ? ring_decode_combine_kernel<T, kDim, kLoadsStaged>
                   : eager ? ring_decode_combine_kernel<T, kDim, kLoadsEager>
                           : ring_decode_combine_kernel<T, kDim, kLoadsSerial>;
    const float* part_out_ptr = part_out.data_ptr<float>();
    const float* part_lse_ptr = part_lse.data_ptr<float>();
    if (decode_env_int("SWAA_DECODE_PDL", 1, 0, 1) == 1) {
      // Programmatic dependent launch: the combine's CTAs are scheduled while
      // the split kernel runs (its trigger is its first instruction) and wait
      // at griddepcontrol.wait, instead of launching after its completion.
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(static_cast<unsigned>(p.batch * p.q_heads));
      config.blockDim = dim3(kThreads);
      config.stream = stream;
      cudaLaunchAttribute attribute[1];
      set_programmatic(attribute);
      config.attrs = attribute;
      config.numAttrs = 1;
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, combine, p, static_cast<int>(splits),
                                        part_out_ptr, part_lse_ptr, advance, trace));
    } else {
      combine<<<p.batch * p.q_heads, kThreads, 0, stream>>>(p, static_cast<int>(splits),
                                                            part_out_ptr, part_lse_ptr, advance,
                                                            trace);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return advance != nullptr;
  }
  if constexpr (kDefaultTiling) {
    cudaLaunchAttribute attribute[2];
    cudaLaunchConfig_t config =
        cluster_launch_config(grid, C::kThreads, C::kSmemBytes, splits, stream, attribute);
    config.numAttrs += add_lead_attribute(attribute + 1, lead_tiles);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, ring_decode_split_kernel<T, kDim, false>, p,
                                      static_cast<int>(head_chunks), split_align, tile_gather,
                                      prefetch_tiles, lead_tiles, trace, static_cast<float*>(nullptr),
                                      static_cast<float*>(nullptr),
                                      static_cast<unsigned int*>(nullptr)));
  }
  return false;
}

template <typename T, int kDim>
bool launch_split_decode(const RingParams& p, int64_t num_splits, const at::Tensor& like,
                         cudaStream_t stream, int64_t* advance) {
  if (p.batch == 0) return false;
  return with_decode_tiling<kDim>(decode_tiling_knob<kDim>(), [&](auto warps, auto stages) {
    return launch_split_decode_tiled<T, kDim, decltype(warps)::value, decltype(stages)::value>(
        p, num_splits, like, stream, advance);
  });
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
    int64_t window, int64_t sink, double scale, int64_t num_splits, bool advance) {
  const at::Tensor q = aligned_input(q_in), k = aligned_input(k_in), v = aligned_input(v_in);
  RingCall call = prepare_ring(RingOp::kDecode, q, k, v, k_cache, v_cache, seqlens, lengths,
                               window, sink, scale);
  check_cuda_support("ring_decode", k_cache, v_cache, true);
  TORCH_CHECK_VALUE(num_splits >= 0, "ring_decode: num_splits must be >= 0, got ", num_splits);
  c10::cuda::CUDAGuard guard(k_cache.device());
  if (poison_decode_outputs()) {  // outputs a kernel forgets to write show up as NaN
    call.out.fill_(std::numeric_limits<double>::quiet_NaN());
    call.lse.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  const RingParams& p = call.params;
  const int64_t group = p.group();
  auto stream = c10::cuda::getCurrentCUDAStream();
  // bf16 / fp16 on sm_90+: the bandwidth-bound split kernel (one launch).
  const auto dtype = k_cache.scalar_type();
  if ((dtype == at::kBFloat16 || dtype == at::kHalf) && compute_major() >= 9 &&
      !legacy_decode_requested()) {
    // SWAA_DECODE_ADVANCE=kernel: the combine kernel advances seqlens if the plan has one.
    int64_t* in_kernel =
        advance && advance_in_kernel_requested() ? seqlens.data_ptr<int64_t>() : nullptr;
    const bool advanced = SWAA_HEAD_DIM_SWITCH(p.head_dim, [&] {
      if (dtype == at::kBFloat16)
        return launch_split_decode<__nv_bfloat16, kDim>(p, num_splits, call.out, stream, in_kernel);
      return launch_split_decode<__half, kDim>(p, num_splits, call.out, stream, in_kernel);
    });
    if (advance && !advanced) advance_seqlens(seqlens, call);
    return {call.out, call.lse};
  }
  // float32 / float64 (and bf16 / fp16 before sm_90): CUDA-core kernel plus
  // a combine kernel.
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
              p, static_cast<int>(splits), part_out_ptr, part_lse_ptr, nullptr, false);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });
  if (advance) advance_seqlens(seqlens, call);
  return {call.out, call.lse};
}

}  // namespace

// The last traced decode step's timeline on the current device (SWAA_DECODE_TRACE=1):
// 2 x kTraceMaxCtas x kTraceSlots values, split kernel then combine kernel, zero where a
// CTA did not run.  Waits for the device.  Read by swaa_ext._C.decode_trace.
std::vector<unsigned long long> decode_trace_snapshot() {
  TORCH_CHECK(kTraceBuilt, "swaa_ext._C.decode_trace: this build has no decode timeline "
              "(build with SWAA_DECODE_TRACE_BUILD=ON)");
  std::vector<unsigned long long> out(2 * kTraceMaxCtas * kTraceSlots);
  C10_CUDA_CHECK(cudaDeviceSynchronize());
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(out.data(), g_decode_trace, out.size() * sizeof(out[0])));
  return out;
}
}  // namespace swaa

TORCH_LIBRARY_IMPL(swaa, CUDA, m) {
  m.impl("ring_append", &swaa::ring_append_cuda);
  m.impl("ring_decode", &swaa::ring_decode_cuda);
  m.impl("ring_chunk", &swaa::ring_chunk_cuda);
}
