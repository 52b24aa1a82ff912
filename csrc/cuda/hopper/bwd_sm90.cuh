// Hopper (sm_90a) backward of swaa::bwd, head dims 128 and 64: warp-specialised,
// TMA-fed, wgmma-based (docs/cuda_kernels.md, "v6").  Same two-pass,
// deterministic design as the sm_80 backward (attention_kernels.cuh):
//
//   bwd_prep_sm90_kernel   delta = rowsum(dout * out) (also into the sm_80
//                          layout), plus lse * log2(e) and delta in a padded
//                          layout (rows rounded up to kPadRows, +inf / 0 past
//                          q_len) that TMA bulk copies can fetch per tile;
//   bwd_dkdv_sm90_kernel   one CTA per key block of 128 keys (or one piece of a
//                          split sink block, DkdvSchedule as on sm_80), walking
//                          the (query head, query tile of 64) items of
//                          visible_queries(); dk, dv in registers;
//   bwd_dq_sm90_kernel     one CTA per 128 query rows, walking the key tiles
//                          (of 64) of visible_keys(); dq in registers;
//   bwd_dkdv_reduce_kernel (attention_kernels.cuh) sums the pieces of split
//                          sink blocks in piece order.
// Every output element is written once by the CTA owning its row (or summed
// in a fixed order): bitwise reproducible, no atomics.
//
// Both main kernels: 3 warp groups; group 0 is the producer (setmaxnreg down,
// one thread issues the TMA copies into a ring of stages with full / empty
// mbarriers, as the forward), groups 1 and 2 the consumers (64 rows each).
//
// dk/dv works on transposed tiles so that every product has its A operand in
// shared memory or registers and its accumulator rows = the group's 64 keys:
//   S^T  = K Q^T    wgmma m64n64k16, A = K (smem, K-major), B = Q (smem, K-major)
//   dP^T = V dO^T   same with V, dO
//   P^T = exp2(S^T * scale log2 e - lse2[query]), dS^T = P^T (dP^T - delta[query])
//   dV  += P^T dO   wgmma m64nDk16, A = P^T (registers), B = dO (smem, MN-major)
//   dK  += dS^T Q   same with dS^T, Q
// dq works on normal tiles (rows = the group's 64 queries):
//   S = Q K^T, dP = dO V^T (m64n64k16, both operands K-major in smem),
//   dS = P (dP - delta[row]), dQ += dS K (A = dS registers, B = K MN-major).
// Shared-memory tiles are D / 64 halves of 64 columns with the 128-byte
// swizzle, exactly as in fwd_sm90.cuh (same descriptors).
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/attention_kernels.cuh"  // TileList, tiles_of, grid_pos, kLog2e, MmaOp, DkdvSchedule
#include "cuda/hopper/mask_sm90.cuh"
#include "cuda/hopper/sm90_ptx.cuh"
#include "swaa/params.h"
#include "swaa/visibility.h"

namespace swaa {
namespace cuda {
namespace sm90 {

template <int D>
struct BwdSm90Config {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static constexpr int kHalves = D / 64;   // 64-column swizzled halves per tile
  static constexpr int kHalfCols = 64;
  static constexpr int kConsumers = 2;     // consumer warp groups, 64 rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // dk/dv: keys per CTA (= the sm_80 key block, so DkdvSchedule and the
  // reduce kernel are shared), query rows per item, ring depth.
  static constexpr int kKvBlockN = 128;
  static constexpr int kKvBlockM = 64;
  static constexpr int kKvStages = 3;
  // dq: query rows per CTA, keys per tile, ring depth.
  static constexpr int kDqBlockM = 128;
  static constexpr int kDqBlockN = 64;
  static constexpr int kDqStages = 3;
  // Bytes of one 64-column half of a tile of R rows (and so the distance
  // between the halves of that tile in shared memory).
  template <int R>
  static constexpr uint32_t half_bytes() { return R * kHalfCols * 2; }
};

// Rows of the padded lse2 / delta buffers are rounded up to this (a multiple
// of every query tile: TMA bulk copies of whole tiles stay in range).
constexpr int kPadRows = 128;

template <typename T, int D>
struct alignas(1024) DkdvSm90Smem {
  using C = BwdSm90Config<D>;
  T k[C::kHalves][C::kKvBlockN * C::kHalfCols];
  T v[C::kHalves][C::kKvBlockN * C::kHalfCols];
  T q[C::kKvStages][C::kHalves][C::kKvBlockM * C::kHalfCols];
  T dout[C::kKvStages][C::kHalves][C::kKvBlockM * C::kHalfCols];
  float lse2[C::kKvStages][C::kKvBlockM];   // lse * log2(e) of the item's rows (+inf past q_len)
  float delta[C::kKvStages][C::kKvBlockM];  // delta of the item's rows (0 past q_len)
  int item_row0[C::kKvStages];  // the item's first query row, from the producer (see the kernel)
  uint64_t kv_full;
  uint64_t full[C::kKvStages];
  uint64_t empty[C::kKvStages];
};

template <typename T, int D>
struct alignas(1024) DqSm90Smem {
  using C = BwdSm90Config<D>;
  T q[C::kHalves][C::kDqBlockM * C::kHalfCols];
  T dout[C::kHalves][C::kDqBlockM * C::kHalfCols];
  T k[C::kDqStages][C::kHalves][C::kDqBlockN * C::kHalfCols];
  T v[C::kDqStages][C::kHalves][C::kDqBlockN * C::kHalfCols];
  uint64_t qdo_full;
  uint64_t k_full[C::kDqStages];
  uint64_t v_full[C::kDqStages];
  uint64_t empty[C::kDqStages];
};

// Dynamic shared memory asked for: the struct plus room to align it to 1024 bytes.
template <typename T, int D>
constexpr int dkdv_sm90_smem_bytes() {
  return static_cast<int>(sizeof(DkdvSm90Smem<T, D>)) + 1024;
}
template <typename T, int D>
constexpr int dq_sm90_smem_bytes() {
  return static_cast<int>(sizeof(DqSm90Smem<T, D>)) + 1024;
}

template <typename S>
__device__ __forceinline__ S& aligned_smem(unsigned char* raw) {
  return *reinterpret_cast<S*>(align_smem<1024>(raw));
}

// ---------------------------------------------------------------------------
// Preprocessing: delta = rowsum(dout * out) in float32, D / 8 lanes per row,
// over the padded rows (b, h, i < q_len_pad).  Writes delta (B, Hq, Lq) for
// the sm_80 kernels and the padded lse2 / delta for the Hopper ones.

template <typename T, int D>
__global__ void bwd_prep_sm90_kernel(const AttnParams p, float* delta, float* lse2_pad,
                                     float* delta_pad, int64_t q_len_pad) {
  constexpr int kLanes = D / 8;
  const int64_t rows = p.batch * p.q_heads * q_len_pad;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  const int sub = threadIdx.x % kLanes;
  const int64_t i = row % q_len_pad;
  const int64_t bh = row / q_len_pad;  // b * q_heads + h
  const int64_t h = bh % p.q_heads, b = bh / p.q_heads;
  const bool valid = row < rows && i < p.q_len;
  float sum = 0.f;
  if (valid) sum = delta_part<T>(p, b, h, i, sub);
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (row >= rows || sub != 0) return;
  delta_pad[row] = valid ? sum : 0.f;
  lse2_pad[row] =
      valid ? p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + i] * kLog2e : INFINITY;
  if (valid) delta[bh * p.q_len + i] = sum;
}

// ---------------------------------------------------------------------------
// The item list of one dk/dv CTA: the same decode as bwd_dkdv_kernel
// (attention_kernels.cuh), so both backwards split and order work alike.
struct DkdvWork {
  int b, kvh, unit, slice;
  int piece;        // -1: the whole key block
  int64_t j_first;  // first key of the block
  int first, end;   // items [first, end)
  int per_head, n_near, near_first, far_first;
  int64_t group;
  __host__ __device__ __forceinline__ int64_t head(int i) const {
    return static_cast<int64_t>(kvh) * group + i / per_head;
  }
  __host__ __device__ __forceinline__ int64_t row0(int i, int block_m) const {
    const int w = i % per_head;
    return static_cast<int64_t>(w < n_near ? near_first + w : far_first + (w - n_near)) * block_m;
  }
};

// The work of unit `unit` (split pieces first, then the whole key blocks in
// order) of slice `slice` (b * kv_heads + kv head).  Host and device (the
// fused backward's schedule check, tests/native/fused_schedule_check.cu, runs it on
// the host).
template <int BN, int BM>
__host__ __device__ __forceinline__ DkdvWork dkdv_work_at(const AttnParams& p,
                                                          const DkdvSchedule& sched, int unit,
                                                          int slice) {
  DkdvWork w;
  const int kv_heads = static_cast<int>(p.kv_heads);
  w.unit = unit;
  w.slice = slice;
  w.kvh = slice % kv_heads;
  w.b = slice / kv_heads;
  const int n_pieces = sched.n_split_blocks * sched.n_split;
  const int n_block = unit < n_pieces ? unit / sched.n_split
                                      : unit - n_pieces + sched.n_split_blocks;
  w.piece = unit < n_pieces ? unit % sched.n_split : -1;
  w.group = p.q_heads / p.kv_heads;
  w.j_first = static_cast<int64_t>(n_block) * BN;
  const int64_t j_last = min_of<int64_t>(w.j_first + BN - 1, p.k_len - 1);
  const QuerySpan span = visible_queries(p.visibility(w.b), w.j_first, j_last, p.q_offset,
                                         p.q_offset + p.q_len - 1);
  const Range near{span.near.begin - p.q_offset, span.near.end - p.q_offset};
  const Range far{span.far.begin - p.q_offset, span.far.end - p.q_offset};
  w.near_first = near.empty() ? 0 : static_cast<int>(near.begin / BM);
  const int near_end = near.empty() ? 0 : static_cast<int>((near.end + BM - 1) / BM);
  w.far_first = far.empty() ? 0 : static_cast<int>(far.begin / BM);
  const int far_end = far.empty() ? 0 : static_cast<int>((far.end + BM - 1) / BM);
  if (!near.empty() && w.far_first < near_end) w.far_first = near_end;
  w.n_near = near_end - w.near_first;
  const int n_far = far_end > w.far_first ? far_end - w.far_first : 0;
  w.per_head = w.n_near + n_far;
  const int n_items = w.per_head * static_cast<int>(w.group);
  w.first = w.piece < 0 ? 0 : min_of(n_items, w.piece * sched.chunk);
  w.end = w.piece < 0 ? n_items : min_of(n_items, w.first + sched.chunk);
  return w;
}

template <int BN, int BM>
__device__ __forceinline__ DkdvWork dkdv_work(const AttnParams& p, const DkdvSchedule& sched) {
  const GridPos pos =
      grid_pos(sched.n_units(), static_cast<int>(p.batch * p.kv_heads), sched.slices_inner);
  return dkdv_work_at<BN, BM>(p, sched, pos.unit, pos.slice);
}

// A 64 x 64 accumulator tile (32 values per thread) as 16-bit A fragments of
// four k16 steps: step kk = accumulator blocks 2 kk, 2 kk + 1 (the m64nN
// accumulator layout of two n8 blocks is the A layout of one k16 step, as
// for P in the forward).
template <typename T>
__device__ __forceinline__ void pack_a(uint32_t (&a)[4][4], const float (&x)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = MmaOp<T>::pack(x[8 * kk + 0], x[8 * kk + 1]);
    a[kk][1] = MmaOp<T>::pack(x[8 * kk + 2], x[8 * kk + 3]);
    a[kk][2] = MmaOp<T>::pack(x[8 * kk + 4], x[8 * kk + 5]);
    a[kk][3] = MmaOp<T>::pack(x[8 * kk + 6], x[8 * kk + 7]);
  }
}

// Two 64 x 64 products over the head dim issued as one committed wgmma group
// (not waited for): x = A0 B0^T, y = A1 B1^T, every operand K-major in shared memory
// with its D columns in 64-column halves a_half (A) / b_half (B) bytes apart.
// The scores of the dk/dv kernel and the single pass (S^T, dP^T) and of the
// dq kernel (S, dP).
template <typename T, int D>
__device__ __forceinline__ void issue_product_pair(float (&x)[32], float (&y)[32], uint64_t a0,
                                                   uint64_t b0, uint64_t a1, uint64_t b1,
                                                   uint32_t a_half, uint32_t b_half) {
  fence_regs(x);
  fence_regs(y);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t a_off = (kk >> 2) * a_half + (kk & 3) * 32;
    const uint32_t b_off = (kk >> 2) * b_half + (kk & 3) * 32;
    wgmma_ss_n64<T>(x, desc_advance(a0, a_off), desc_advance(b0, b_off), kk > 0);
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t a_off = (kk >> 2) * a_half + (kk & 3) * 32;
    const uint32_t b_off = (kk >> 2) * b_half + (kk & 3) * 32;
    wgmma_ss_n64<T>(y, desc_advance(a1, a_off), desc_advance(b1, b_off), kk > 0);
  }
  wgmma_commit();
}

// Whether a consumer group's 64 keys [a, a + 63] are seen by any query of an
// item, the item's 64 rows starting at position pos0 (0 <= pos0 <= k_len - 1:
// item rows are below q_len, and q_offset = k_len - q_len >= 0, ops.cpp):
// visible_keys(vis, pos0, min(pos0 + 63, k_len - 1)) meets the keys.  Worked
// out from visible_keys once per CTA, so an item costs three int64 compares
// instead of the key span (session 14, branch bwdactive):
//   active <=> a <= p_last && (a < sink || p_last >= full_from
//                              || pos0 <= a + 63 + window - 1),
// p_last = min(pos0 + 63, k_len - 1): the sink clause and the window clause
// as visible_keys' head and body; a group at or past k_len sees nothing.
// tests/native/mask_tile_check.cu compares it with the key span.
struct GroupItems {
  static constexpr int kSpan = 64;  // an item's query rows, a group's keys (63 below)
  int64_t first_pos;  // items from here on reach the keys causally
  int64_t last_pos;   // items up to here reach them through the window (INT64_MAX: sink keys)
  int64_t full_pos;   // items whose last row is at or past this see every earlier key
  __host__ __device__ __forceinline__ bool active(int64_t pos0) const {
    return pos0 >= first_pos && (pos0 <= last_pos || pos0 + 63 >= full_pos);
  }
};

__host__ __device__ __forceinline__ GroupItems group_items(const Visibility& vis, int64_t a,
                                                           int64_t k_len) {
  constexpr int64_t kNone = INT64_MAX;  // no position reaches it (pos0 + 63 < 2^62)
  GroupItems r;
  r.first_pos = a <= k_len - 1 ? a - 63 : kNone;
  r.last_pos = a < vis.sink ? kNone : a + 63 + vis.window - 1;  // window <= 2^60: no overflow
  // p_last >= full_from <=> pos0 + 63 >= full_from and k_len - 1 >= full_from
  r.full_pos = k_len - 1 >= vis.full_from ? vis.full_from : kNone;
#if defined(__CUDA_ARCH__)
  // Kept in registers: ptxas would rather recompute them per item (as it did
  // the forward's full_tiles, fwd51_sm90.cuh pin_reg).
  asm volatile("" : "+l"(r.first_pos), "+l"(r.last_pos), "+l"(r.full_pos));
#endif
  return r;
}

// P^T and dS^T of one consumer group's item in place in sc, dp (S^T, dP^T:
// key row g + 8 (e >> 1), query column 8 n + 2 t + (e & 1)): x = S^T scale
// log2 e, the mask sets x = -inf, P^T = exp2(x - lse2 of the column), dS^T =
// P^T (dP^T - delta of the column); lse2, delta: the item's 64 column values
// from its stage (lanes with equal t read the same words).  The dk/dv kernel
// and the single pass both call it, so their dk, dv are the same bits.  Not
// one FFMA per score as in the dq kernel: with the column's lse2 loaded before
// the FFMAs the dk/dv kernel ran 9-14% slower at D=128 (tuning run of session
// 10, docs/cuda_kernels.md "Measured: session 10").
__device__ __forceinline__ void transposed_probabilities(float (&sc)[32], float (&dp)[32],
                                                         const Visibility& vis, int64_t pos0,
                                                         int64_t wj_first, int g, int t,
                                                         int64_t k_len, float scale_log2,
                                                         const float* lse2, const float* delta) {
  constexpr int BM = 64;  // the item's query rows (the columns here)
#pragma unroll
  for (int i = 0; i < 32; ++i) sc[i] *= scale_log2;
  if (!vis.tile_fully_visible(pos0, pos0 + BM - 1, wj_first, wj_first + 15))
    mask_key_rows<8>(sc, vis, wj_first + g, pos0 + 2 * t, k_len);
#pragma unroll
  for (int nb = 0; nb < 8; ++nb) {
    const float2 dl = *reinterpret_cast<const float2*>(&delta[nb * 8 + 2 * t]);
    const float2 l2 = *reinterpret_cast<const float2*>(&lse2[nb * 8 + 2 * t]);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float prob = exp2f(sc[4 * nb + e] - ((e & 1) ? l2.y : l2.x));
      sc[4 * nb + e] = prob;
      dp[4 * nb + e] = prob * (dp[4 * nb + e] - ((e & 1) ? dl.y : dl.x));
    }
  }
}

template <typename T, int D>
__device__ __forceinline__ void wgmma_rs_d(float (&acc)[D / 2], const uint32_t (&a)[4],
                                           uint64_t desc_b) {
  if constexpr (D == 128)
    wgmma_rs<T>(acc, a, desc_b);
  else
    wgmma_rs_n64<T>(acc, a, desc_b);
}

// The dk/dv products' wgmma descriptors, made once per consumer group and
// advanced by constant byte offsets (desc_advance).  Shared by the dk/dv kernel
// and the single pass, whose K, V, Q, dO tiles have one layout (their dk, dv
// are tested bit for bit against each other): K and V rows 64 cg ... of the
// block (K-major: the A operands of S^T, dP^T); stage 0 of Q and dO as the B
// operands of S^T, dP^T (K-major) and of dV, dK (MN-major, the halves of D
// q_half bytes apart).  Stage st is st * sizeof(s.q[0]) further.
struct DkdvDescs {
  uint64_t k, v, q0, do0, q_mn0, do_mn0;
};
template <typename Smem>
__device__ __forceinline__ DkdvDescs dkdv_descs(const Smem& s, int cg, uint32_t q_half) {
  static_assert(sizeof(s.q[0]) == sizeof(s.dout[0]), "Q and dO stages of one size");
  return {desc_k_major(smem_u32(s.k[0]) + cg * 64 * 128),
          desc_k_major(smem_u32(s.v[0]) + cg * 64 * 128),
          desc_k_major(smem_u32(s.q[0][0])),
          desc_k_major(smem_u32(s.dout[0][0])),
          desc_mn_major(smem_u32(s.q[0][0]), q_half),
          desc_mn_major(smem_u32(s.dout[0][0]), q_half)};
}

// ---------------------------------------------------------------------------
// dk / dv

template <typename T, int D, bool kPipe = false>
__global__ void __launch_bounds__(BwdSm90Config<D>::kThreads, 1)
    bwd_dkdv_sm90_kernel(const AttnParams p, const float* lse2_pad, const float* delta_pad,
                         int64_t q_len_pad, const DkdvSchedule sched,
                         const __grid_constant__ CUtensorMap tm_q,
                         const __grid_constant__ CUtensorMap tm_k,
                         const __grid_constant__ CUtensorMap tm_v,
                         const __grid_constant__ CUtensorMap tm_do) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = BwdSm90Config<D>;
  constexpr int BN = C::kKvBlockN, BM = C::kKvBlockM, ST = C::kKvStages;
  static_assert(!kPipe || ST >= 2, "the pipelined loop holds two stages at once");
  static_assert(BM == 64, "transposed_probabilities: 64 query columns per item");
  constexpr uint32_t kKHalf = C::template half_bytes<BN>();  // between the halves of K, V
  constexpr uint32_t kQHalf = C::template half_bytes<BM>();  // between the halves of Q, dO
  extern __shared__ unsigned char smem_raw[];
  auto& s = aligned_smem<DkdvSm90Smem<T, D>>(smem_raw);

  const DkdvWork w = dkdv_work<BN, BM>(p, sched);
  const int wg = warp_group_index();  // warp-uniform: see sm90_ptx.cuh
  if (threadIdx.x == 0) {
    mbar_init(&s.kv_full, 1);
    for (int i = 0; i < ST; ++i) {
      mbar_init(&s.full[i], 1);
      mbar_init(&s.empty[i], C::kConsumers * 128);
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    regs_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&tm_q);
      tma_prefetch_map(&tm_k);
      tma_prefetch_map(&tm_v);
      tma_prefetch_map(&tm_do);
      const int j0 = static_cast<int>(w.j_first);
      mbar_arrive_expect_tx(&s.kv_full, 2 * BN * D * 2);
      for (int half = 0; half < C::kHalves; ++half) {
        tma_load_4d(s.k[half], &tm_k, &s.kv_full, half * C::kHalfCols, j0, w.kvh, w.b);
        tma_load_4d(s.v[half], &tm_v, &s.kv_full, half * C::kHalfCols, j0, w.kvh, w.b);
      }
      for (int it = w.first; it < w.end; ++it) {
        const int n = it - w.first, st = n % ST, use = n / ST;
        if (use > 0) mbar_wait(&s.empty[st], (use - 1) & 1);
        const int h = static_cast<int>(w.head(it));
        const int r0 = static_cast<int>(w.row0(it, BM));
        // The consumers read the item's first row from here (ordered before
        // their reads by the full barrier), not from DkdvWork::row0: its
        // division by a run-time divisor sat on their path from the barrier to
        // the item's first product (7.3% of the unpipelined kernel's warp
        // samples at D=64 in session 12's ncu profile, 14.5% pipelined).
        s.item_row0[st] = r0;
        mbar_arrive_expect_tx(&s.full[st], 2 * BM * D * 2 + 2 * BM * 4);
        for (int half = 0; half < C::kHalves; ++half) {
          tma_load_4d(s.q[st][half], &tm_q, &s.full[st], half * C::kHalfCols, r0, h, w.b);
          tma_load_4d(s.dout[st][half], &tm_do, &s.full[st], half * C::kHalfCols, r0, h, w.b);
        }
        const int64_t col = (static_cast<int64_t>(w.b) * p.q_heads + h) * q_len_pad + r0;
        bulk_load(s.lse2[st], lse2_pad + col, BM * 4, &s.full[st]);
        bulk_load(s.delta[st], delta_pad + col, BM * 4, &s.full[st]);
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  regs_alloc<C::kConsumerRegs>();
  const int cg = wg - 1;                    // this group's keys: 64 cg ... 64 cg + 63 of the block
  const int warp = (threadIdx.x / 32) & 3;  // 16 keys each
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;    // accumulator rows g, g + 8; columns 2t, 2t + 1
  const int64_t wg_j_first = w.j_first + cg * 64;
  const int64_t wj_first = wg_j_first + warp * 16;
  const Visibility vis = p.visibility(w.b);
  const float scale_log2 = p.scale * kLog2e;

  float dk[D / 2], dv[D / 2];  // element 4 n + e: key row g + 8 (e >> 1), column 8 n + 2 t + (e & 1)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  mbar_wait(&s.kv_full, 0);
  const DkdvDescs descs = dkdv_descs(s, cg, kQHalf);
  const uint64_t k_desc = descs.k, v_desc = descs.v, q_desc0 = descs.q0, do_desc0 = descs.do0;
  const uint64_t q_mn0 = descs.q_mn0, do_mn0 = descs.do_mn0;
  constexpr uint32_t kStageBytes = sizeof(s.q[0]);

  // Does any query of the item in stage st see any of this group's 64 keys?
  // (In a sink block the far rows see only the sink keys: the other group
  // skips them.  A skipped item would add exact zeros.)  After the stage's
  // full barrier: the item's first row comes from the producer.
  static_assert(BM == GroupItems::kSpan, "group_items: items of 64 rows, groups of 64 keys");
  const GroupItems items = group_items(vis, wg_j_first, p.k_len);
  auto item_active = [&](int st) { return items.active(s.item_row0[st] + p.q_offset); };
  auto stage_of = [&](int it) { return (it - w.first) % ST; };
  auto parity_of = [&](int it) { return static_cast<uint32_t>(((it - w.first) / ST) & 1); };
  // The steps of one item, on the caller's registers: sc, dp (S^T, dP^T: key
  // row g + 8 (e >> 1), query column 8 n + 2 t + (e & 1)), pa, dsa (P^T, dS^T
  // as A fragments, k = the item's 64 queries).
  using Scores = float[32];
  using Frags = uint32_t[4][4];
  // S^T = K Q^T and dP^T = V dO^T of the item in stage st, issued (not waited for).
  auto issue_scores = [&](Scores& sc, Scores& dp, int st) {
    const uint64_t q_desc = desc_advance(q_desc0, st * kStageBytes);
    const uint64_t do_desc = desc_advance(do_desc0, st * kStageBytes);
    issue_product_pair<T, D>(sc, dp, k_desc, q_desc, v_desc, do_desc, kKHalf, kQHalf);
  };
  // P^T and dS^T of the item in stage st in place in sc, dp.
  auto probabilities = [&](Scores& sc, Scores& dp, int st) {
    const int64_t pos0 = s.item_row0[st] + p.q_offset;  // position of the item's first row
    transposed_probabilities(sc, dp, vis, pos0, wj_first, g, t, p.k_len, scale_log2, s.lse2[st],
                             s.delta[st]);
  };
  // The item's S^T, dP^T issued and waited for (nothing else in flight), then
  // its P^T, dS^T in place.
  auto scores_to_probabilities = [&](Scores& sc, Scores& dp, int st) {
    issue_scores(sc, dp, st);
    wgmma_wait<0>();
    fence_regs(sc);
    fence_regs(dp);
    probabilities(sc, dp, st);
  };
  // dV += P^T dO, dK += dS^T Q of the item in stage st, issued (not waited for).
  auto issue_grads = [&](Frags& pa, Frags& dsa, int st) {
    fence_regs(pa);
    fence_regs(dsa);
    fence_regs(dv);
    fence_regs(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      wgmma_rs_d<T, D>(dv, pa[kk], desc_advance(do_mn0, st * kStageBytes + kk * 16 * 128));
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      wgmma_rs_d<T, D>(dk, dsa[kk], desc_advance(q_mn0, st * kStageBytes + kk * 16 * 128));
    wgmma_commit();
  };
  // After a wait that completed issue_grads: its operands and accumulators are
  // the registers' values again (the compiler must neither have reused pa, dsa
  // nor moved dk, dv while the products ran).
  auto grads_done = [&](Frags& pa, Frags& dsa) {
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pa);
    fence_regs(dsa);
  };

  if constexpr (!kPipe) {
    // One item after the other: scores, wait, probabilities, gradients, wait.
    // (The registers are the iteration's: nothing is live across items.)
    for (int it = w.first; it < w.end; ++it) {
      const int st = stage_of(it);
      mbar_wait(&s.full[st], parity_of(it));
      if (item_active(st)) {
        float sc[32], dp[32];
        uint32_t pa[4][4], dsa[4][4];
        scores_to_probabilities(sc, dp, st);
        pack_a<T>(pa, sc);
        pack_a<T>(dsa, dp);
        issue_grads(pa, dsa, st);
        wgmma_wait<0>();
        grads_done(pa, dsa);
      }
      mbar_arrive(&s.empty[st]);  // this thread is done with the stage
    }
  } else {
    // SWAA_BWD_PIPELINE=2 (D=64): while the tensor cores run item i's dV, dK
    // products, the group computes item i+1's probabilities.  Item i+1's S^T,
    // dP^T are issued before item i's dV, dK (wgmma groups complete in
    // order), so `wgmma_wait<1>` hands back the scores while the gradients
    // run; the wait for those comes before this iteration ends (no product is
    // in flight across the loop's back edge, where ptxas would otherwise
    // insert a wait of its own: warning C7517).  Only the very next item is
    // looked ahead to: a group then holds at most two stages and never waits
    // for a stage that the producer can fill only after this group releases
    // one (3 stages).  The same products in the same order as one item after
    // the other: the same bits.  sc, dp live across items: 64 registers
    // beside dk, dv, pa, dsa (too many at D=128).
    float sc[32], dp[32];
    uint32_t pa[4][4], dsa[4][4];
    bool have_probs = false;  // sc, dp hold item it's P^T, dS^T
    for (int it = w.first; it < w.end; ++it) {
      const int st = stage_of(it);
      if (!have_probs) {
        mbar_wait(&s.full[st], parity_of(it));
        if (!item_active(st)) {
          mbar_arrive(&s.empty[st]);  // this thread is done with the stage
          continue;
        }
        scores_to_probabilities(sc, dp, st);
      }
      pack_a<T>(pa, sc);
      pack_a<T>(dsa, dp);
      // The next item's stage is waited for before its activity is known (its
      // first row is in the stage); an inactive next item is waited for again,
      // at once, at the top of the next iteration.
      const int next_st = stage_of(it + 1);
      have_probs = it + 1 < w.end;
      if (have_probs) {
        mbar_wait(&s.full[next_st], parity_of(it + 1));
        have_probs = item_active(next_st);
      }
      if (have_probs) {
        issue_scores(sc, dp, next_st);
        issue_grads(pa, dsa, st);
        wgmma_wait<1>();  // the next item's scores; this item's dV, dK may still run
        fence_regs(sc);
        fence_regs(dp);
        probabilities(sc, dp, next_st);
      } else {
        issue_grads(pa, dsa, st);
      }
      wgmma_wait<0>();
      grads_done(pa, dsa);
      mbar_arrive(&s.empty[st]);  // this thread is done with the stage
    }
  }

  if (w.piece >= 0) {
    // Partial sums of a piece (float32, all 128 key rows, dk unscaled), laid
    // out as the sm_80 kernel's: bwd_dkdv_reduce_kernel sums them in piece order.
    const int n_pieces = sched.n_split_blocks * sched.n_split;
    float* dk_part =
        sched.partial + (static_cast<int64_t>(w.slice) * n_pieces + w.unit) * 2 * BN * D;
    float* dv_part = dk_part + BN * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = cg * 64 + warp * 16 + g + r * 8;
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb) {
        *reinterpret_cast<float2*>(dk_part + row * D + nb * 8 + 2 * t) =
            make_float2(dk[4 * nb + 2 * r], dk[4 * nb + 2 * r + 1]);
        *reinterpret_cast<float2*>(dv_part + row * D + nb * 8 + 2 * t) =
            make_float2(dv[4 * nb + 2 * r], dv[4 * nb + 2 * r + 1]);
      }
    }
    return;
  }
  T* dk_out = static_cast<T*>(p.dk) + w.b * p.dk_batch_stride + w.kvh * p.dk_head_stride;
  T* dv_out = static_cast<T*>(p.dv) + w.b * p.dv_batch_stride + w.kvh * p.dv_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = wj_first + g + r * 8;
    if (key >= p.k_len) continue;
    T* dk_row = dk_out + key * p.dk_row_stride;
    T* dv_row = dv_out + key * p.dv_row_stride;
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) {
      *reinterpret_cast<uint32_t*>(dk_row + nb * 8 + 2 * t) =
          MmaOp<T>::pack(dk[4 * nb + 2 * r] * p.scale, dk[4 * nb + 2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dv_row + nb * 8 + 2 * t) =
          MmaOp<T>::pack(dv[4 * nb + 2 * r], dv[4 * nb + 2 * r + 1]);
    }
  }
#else
  __trap();  // built for another target: never launched (the launcher checks first)
#endif
}

// ---------------------------------------------------------------------------
// dq

template <typename T, int D, bool kPipe = false>
__global__ void __launch_bounds__(BwdSm90Config<D>::kThreads, 1)
    bwd_dq_sm90_kernel(const AttnParams p, const float* lse2_pad, const float* delta_pad,
                       int64_t q_len_pad, bool heads_inner,
                       const __grid_constant__ CUtensorMap tm_q,
                       const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_do) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = BwdSm90Config<D>;
  constexpr int BM = C::kDqBlockM, BN = C::kDqBlockN, ST = C::kDqStages;
  static_assert(!kPipe || ST >= 2, "the pipelined loop holds two stages at once");
  constexpr uint32_t kQHalf = C::template half_bytes<BM>();  // between the halves of Q, dO
  constexpr uint32_t kKHalf = C::template half_bytes<BN>();  // between the halves of K, V
  extern __shared__ unsigned char smem_raw[];
  auto& s = aligned_smem<DqSm90Smem<T, D>>(smem_raw);

  // The CTA's rows and key tiles: same decode and order as bwd_dq_kernel.
  const int n_m = static_cast<int>((p.q_len + BM - 1) / BM);
  const GridPos pos = grid_pos(n_m, static_cast<int>(p.batch * p.q_heads), heads_inner);
  const int m_block = n_m - 1 - pos.unit;  // longest rows first
  const int q_heads = static_cast<int>(p.q_heads);
  const int h = pos.slice % q_heads, b = pos.slice / q_heads;
  const int kvh = static_cast<int>(h / (p.q_heads / p.kv_heads));
  const int64_t row0 = static_cast<int64_t>(m_block) * BM;
  const int64_t p_first = row0 + p.q_offset;
  const int64_t p_last = min_of<int64_t>(p_first + BM - 1, p.k_len - 1);
  const Visibility vis = p.visibility(b);
  const TileList tiles = tiles_of(visible_keys(vis, p_first, p_last), BN);

  const int wg = warp_group_index();  // warp-uniform: see sm90_ptx.cuh
  if (threadIdx.x == 0) {
    mbar_init(&s.qdo_full, 1);
    for (int i = 0; i < ST; ++i) {
      mbar_init(&s.k_full[i], 1);
      mbar_init(&s.v_full[i], 1);
      mbar_init(&s.empty[i], C::kConsumers * 128);
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    regs_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&tm_q);
      tma_prefetch_map(&tm_k);
      tma_prefetch_map(&tm_v);
      tma_prefetch_map(&tm_do);
      const int r0 = static_cast<int>(row0);
      mbar_arrive_expect_tx(&s.qdo_full, 2 * BM * D * 2);
      for (int half = 0; half < C::kHalves; ++half) {
        tma_load_4d(s.q[half], &tm_q, &s.qdo_full, half * C::kHalfCols, r0, h, b);
        tma_load_4d(s.dout[half], &tm_do, &s.qdo_full, half * C::kHalfCols, r0, h, b);
      }
      for (int it = 0; it < tiles.count; ++it) {
        const int st = it % ST, use = it / ST;
        if (use > 0) mbar_wait(&s.empty[st], (use - 1) & 1);
        const int j0 = tiles[it] * BN;
        mbar_arrive_expect_tx(&s.k_full[st], BN * D * 2);
        for (int half = 0; half < C::kHalves; ++half)
          tma_load_4d(s.k[st][half], &tm_k, &s.k_full[st], half * C::kHalfCols, j0, kvh, b);
        mbar_arrive_expect_tx(&s.v_full[st], BN * D * 2);
        for (int half = 0; half < C::kHalves; ++half)
          tma_load_4d(s.v[st][half], &tm_v, &s.v_full[st], half * C::kHalfCols, j0, kvh, b);
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  regs_alloc<C::kConsumerRegs>();
  const int cg = wg - 1;                    // rows 64 cg ... of the CTA
  const int warp = (threadIdx.x / 32) & 3;  // 16 rows each
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t wrow0 = row0 + cg * 64 + warp * 16;  // the warp's first row
  const int64_t wp_first = wrow0 + p.q_offset;
  const float scale_log2 = p.scale * kLog2e;

  // lse2 and delta of rows g, g + 8 (padded buffers: in range for every row of the CTA).
  float lse2[2], dl[2];
  const int64_t col0 = (static_cast<int64_t>(b) * p.q_heads + h) * q_len_pad + wrow0 + g;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lse2[r] = lse2_pad[col0 + r * 8];
    dl[r] = delta_pad[col0 + r * 8];
  }

  float dq[D / 2];  // element 4 n + e: row g + 8 (e >> 1), column 8 n + 2 t + (e & 1)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;

  mbar_wait(&s.qdo_full, 0);
  // wgmma descriptors: made once, advanced by constant byte offsets (desc_advance).
  const uint64_t q_desc = desc_k_major(smem_u32(s.q[0]) + cg * 64 * 128);  // this group's 64 rows
  const uint64_t do_desc = desc_k_major(smem_u32(s.dout[0]) + cg * 64 * 128);
  const uint64_t k_desc0 = desc_k_major(smem_u32(s.k[0][0]));  // stage 0; stage st is
  const uint64_t v_desc0 = desc_k_major(smem_u32(s.v[0][0]));  // st * kStageBytes further
  const uint64_t k_mn0 = desc_mn_major(smem_u32(s.k[0][0]), kKHalf);
  constexpr uint32_t kStageBytes = sizeof(s.k[0]);
  static_assert(sizeof(s.k[0]) == sizeof(s.v[0]), "K and V stages of one size");

  // The steps of one key tile, on the caller's registers: sc, dp (S, dP: row
  // g + 8 (e >> 1), key column 8 n + 2 t + (e & 1)), dsa (dS as A fragments,
  // k = the tile's 64 keys).
  using Scores = float[32];
  using Frags = uint32_t[4][4];
  auto stage_wait = [&](int it) {
    const uint32_t parity = static_cast<uint32_t>((it / ST) & 1);
    mbar_wait(&s.k_full[it % ST], parity);
    mbar_wait(&s.v_full[it % ST], parity);
  };
  // S = Q K^T and dP = dO V^T of the tile in stage st, issued (not waited for).
  auto issue_scores = [&](Scores& sc, Scores& dp, int st) {
    const uint64_t k_desc = desc_advance(k_desc0, st * kStageBytes);
    const uint64_t v_desc = desc_advance(v_desc0, st * kStageBytes);
    issue_product_pair<T, D>(sc, dp, q_desc, k_desc, do_desc, v_desc, kQHalf, kKHalf);
  };
  // dS of tile `it` in place in dp: x = S scale log2 e - lse2 of the row, one
  // FFMA per score; the mask sets x = -inf; P = exp2(x), dS = P (dP - delta).
  auto probabilities = [&](Scores& sc, Scores& dp, int it) {
    const int64_t j0 = static_cast<int64_t>(tiles[it]) * BN;
#pragma unroll
    for (int i = 0; i < 32; ++i) sc[i] = fmaf(sc[i], scale_log2, -lse2[(i >> 1) & 1]);
    if (!vis.tile_fully_visible(wp_first, wp_first + 15, j0, j0 + BN - 1))
      mask_query_rows<8>(sc, vis, wp_first + g, j0 + 2 * t, p.k_len);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int r = (i >> 1) & 1;  // e >> 1 of element i = 4 n + e
      const float prob = exp2f(sc[i]);
      dp[i] = prob * (dp[i] - dl[r]);
    }
  };
  // dQ += dS K of the tile in stage st, issued (not waited for).
  auto issue_dq = [&](Frags& dsa, int st) {
    fence_regs(dsa);
    fence_regs(dq);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs_d<T, D>(dq, dsa[kk], desc_advance(k_mn0, st * kStageBytes + kk * 16 * 128));
    wgmma_commit();
  };

  if constexpr (!kPipe) {
    for (int it = 0; it < tiles.count; ++it) {
      const int st = it % ST;
      stage_wait(it);
      float sc[32], dp[32];
      uint32_t dsa[4][4];
      issue_scores(sc, dp, st);
      wgmma_wait<0>();
      fence_regs(sc);
      fence_regs(dp);
      probabilities(sc, dp, it);
      pack_a<T>(dsa, dp);
      issue_dq(dsa, st);
      wgmma_wait<0>();
      fence_regs(dq);
      fence_regs(dsa);
      mbar_arrive(&s.empty[st]);  // this thread is done with K and V of the stage
    }
  } else {
    // SWAA_BWD_PIPELINE >= 1 (the default): the next tile's S, dP are issued before this
    // tile's dQ product (wgmma groups complete in order), so the next tile's
    // probabilities are computed while the dQ product runs; both are waited
    // for within the iteration (as in the dk/dv kernel).  A group holds at
    // most two stages (3 in the ring).  Same products, same order: same bits.
    float sc[32], dp[32];
    uint32_t dsa[4][4];
    if (tiles.count > 0) {
      stage_wait(0);
      issue_scores(sc, dp, 0);
      wgmma_wait<0>();
      fence_regs(sc);
      fence_regs(dp);
      probabilities(sc, dp, 0);
    }
    for (int it = 0; it < tiles.count; ++it) {
      const int st = it % ST;
      pack_a<T>(dsa, dp);
      if (it + 1 < tiles.count) {
        stage_wait(it + 1);
        issue_scores(sc, dp, (it + 1) % ST);
        issue_dq(dsa, st);
        wgmma_wait<1>();  // the next tile's scores; this tile's dQ may still run
        fence_regs(sc);
        fence_regs(dp);
        probabilities(sc, dp, it + 1);
      } else {
        issue_dq(dsa, st);
      }
      wgmma_wait<0>();
      fence_regs(dq);
      fence_regs(dsa);
      mbar_arrive(&s.empty[st]);  // this thread is done with K and V of the stage
    }
  }

  T* dq_out = static_cast<T*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = wrow0 + g + r * 8;
    if (row >= p.q_len) continue;
    T* dst = dq_out + row * p.dq_row_stride;
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      *reinterpret_cast<uint32_t*>(dst + nb * 8 + 2 * t) =
          MmaOp<T>::pack(dq[4 * nb + 2 * r] * p.scale, dq[4 * nb + 2 * r + 1] * p.scale);
  }
#else
  __trap();
#endif
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
