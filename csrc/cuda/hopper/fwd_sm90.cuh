// Hopper (sm_90a) forward of swaa::fwd, head dims 128 and 64: warp-specialised,
// TMA-fed, wgmma-based (docs/cuda_kernels.md, "v5").
//
// One CTA = 128 query rows of one (batch, query head), 3 warp groups:
//   warp group 0 (producer): gives registers back (setmaxnreg), one thread
//     issues TMA loads: Q once, then K and V tiles of 128 keys into a
//     kStages-deep ring of shared-memory stages, each stage with its own
//     "full" mbarriers (K, V: TMA transaction bytes) and one "empty" mbarrier
//     (consumers' arrivals once they are done reading the stage);
//   warp groups 1, 2 (consumers): each owns 64 query rows; per key tile
//     S = Q K^T (wgmma, both operands from shared memory, 8 x k16), scale,
//     mask (boundary tiles only), online softmax in registers, P to 16-bit
//     A fragments in registers, O += P V (wgmma, A from registers, V as an
//     MN-major B operand), then release the stage.
// The key tiles visited are exactly those of visible_keys() for the CTA's
// rows (swaa/visibility.h, same TileList as the sm_80 kernel, same order),
// and a warp masks element by element only when tile_fully_visible() says
// its 16 rows x 128 keys are not wholly visible.
//
// Shared memory: every tile (Q: 128 rows, K, V: 128 keys; D columns) is stored
// as D / 64 halves of 64 columns (128-byte rows, the widest TMA swizzle), each
// half with the 128-byte swizzle TMA applies and wgmma undoes.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/attention_kernels.cuh"  // TileList, tiles_of, grid_pos, kLog2e, MmaOp
#include "cuda/hopper/sm90_ptx.cuh"
#include "swaa/params.h"
#include "swaa/visibility.h"

namespace swaa {
namespace cuda {
namespace sm90 {

template <int D>
struct FwdSm90Config {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static constexpr int kD = D;
  static constexpr int kHalves = D / 64;  // 64-column swizzled halves per tile
  static constexpr int kBlockM = 128;  // query rows per CTA (2 consumer warp groups x 64)
  static constexpr int kBlockN = 128;  // keys per tile
  static constexpr int kStages = 2;    // K/V ring depth
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kHalfCols = 64;                        // columns per swizzled half tile
  static constexpr int kQBytes = kBlockM * kD * 2;            // 16-bit elements
  static constexpr int kTileBytes = kBlockN * kD * 2;         // one K or V tile
  static constexpr int kHalfTileBytes = kBlockN * kHalfCols * 2;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
};

template <typename T, int D>
struct alignas(1024) FwdSm90Smem {
  using C = FwdSm90Config<D>;
  T q[C::kHalves][C::kBlockM * C::kHalfCols];
  T k[C::kStages][C::kHalves][C::kBlockN * C::kHalfCols];
  T v[C::kStages][C::kHalves][C::kBlockN * C::kHalfCols];
  uint64_t q_full;
  uint64_t k_full[C::kStages];
  uint64_t v_full[C::kStages];
  uint64_t empty[C::kStages];
};

// Dynamic shared memory asked for: the struct plus room to align it to 1024
// bytes (swizzle atoms must start 1024-byte aligned).
template <typename T, int D>
constexpr int fwd_sm90_smem_bytes() {
  return static_cast<int>(sizeof(FwdSm90Smem<T, D>)) + 1024;
}

// OVERLAP: false = S, softmax, P V one after the other in each consumer
// group; true = the softmax of tile i overlaps P V of tile i - 1 (see below).
template <typename T, int D, bool OVERLAP>
__global__ void __launch_bounds__(FwdSm90Config<D>::kThreads, 1)
    fwd_sm90_kernel(const AttnParams p, const __grid_constant__ CUtensorMap tm_q,
                    const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v, bool heads_inner) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = FwdSm90Config<D>;
  constexpr int BM = C::kBlockM, BN = C::kBlockN, ST = C::kStages, NB = D / 8;  // NB: n8 blocks of O
  extern __shared__ unsigned char smem_raw[];
  auto& s = *reinterpret_cast<FwdSm90Smem<T, D>*>(align_smem<1024>(smem_raw));

  // The CTA's rows and key tiles: same decode and order as fwd_kernel.
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

  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    mbar_init(&s.q_full, 1);
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
      const int r0 = static_cast<int>(row0);
      mbar_arrive_expect_tx(&s.q_full, C::kQBytes);
      for (int half = 0; half < C::kHalves; ++half)
        tma_load_4d(s.q[half], &tm_q, &s.q_full, half * C::kHalfCols, r0, h, b);
      for (int it = 0; it < tiles.count; ++it) {
        const int st = it % ST;
        const int use = it / ST;
        if (use > 0) mbar_wait(&s.empty[st], (use - 1) & 1);  // consumers done with it - ST
        const int j0 = tiles[it] * BN;
        mbar_arrive_expect_tx(&s.k_full[st], C::kTileBytes);
        for (int half = 0; half < C::kHalves; ++half)
          tma_load_4d(s.k[st][half], &tm_k, &s.k_full[st], half * C::kHalfCols, j0, kvh, b);
        mbar_arrive_expect_tx(&s.v_full[st], C::kTileBytes);
        for (int half = 0; half < C::kHalves; ++half)
          tma_load_4d(s.v[st][half], &tm_v, &s.v_full[st], half * C::kHalfCols, j0, kvh, b);
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  regs_alloc<C::kConsumerRegs>();
  const int cg = wg - 1;                      // consumer warp group: rows 64 * cg ...
  const int warp = (threadIdx.x / 32) & 3;    // warp in the group: 16 rows each
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;      // accumulator row g (and g + 8), columns 2t, 2t+1
  const int64_t wp_first = p_first + cg * 64 + warp * 16;  // position of the warp's first row
  const float scale_log2 = p.scale * kLog2e;

  float o[D / 2];  // O accumulators: element o[4 n + e] as sc below, n < D / 8
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};

  mbar_wait(&s.q_full, 0);
  const uint32_t q_addr = smem_u32(s.q[0]) + cg * 64 * 128;  // this group's 64 rows
  const uint32_t q_half = C::kBlockM * C::kHalfCols * 2;       // bytes between the halves

  float sc[64];      // S of one tile, then its probabilities
  uint32_t pa[8][4];  // P as A fragments of P V (16-bit)

  // S = Q K^T into sc (issued, not waited for): k16 steps 0-3 in the first
  // column half, 4-7 in the second (D=128); inside a half a step moves 32
  // bytes along the swizzled 128-byte row.
  auto issue_s = [&](int st) {
    const uint32_t k_addr = smem_u32(s.k[st][0]);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk >> 2) * q_half + (kk & 3) * 32;
      const uint32_t k_off = (kk >> 2) * C::kHalfTileBytes + (kk & 3) * 32;
      wgmma_ss<T>(sc, desc_k_major(q_addr + off), desc_k_major(k_addr + k_off), kk > 0);
    }
  };
  // O += P V (issued, not waited for): V (keys x d) is the MN-major B operand;
  // a k16 step is 16 key rows = 2048 bytes; the second half of d (D=128) is
  // one half tile further (leading byte offset).
  auto issue_pv = [&](int st) {
    const uint32_t v_addr = smem_u32(s.v[st][0]);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint64_t desc = desc_mn_major(v_addr + kk * 16 * 128, C::kHalfTileBytes);
      if constexpr (D == 128)
        wgmma_rs<T>(o, pa[kk], desc);
      else
        wgmma_rs_n64<T>(o, pa[kk], desc);
    }
  };
  // Scores of key tile `it` (in sc) to probabilities: log2 units, the mask
  // (boundary tiles only), online softmax (a row's 128 scores live in the 4
  // threads of a quad).  Returns each row's rescaling factor of O in corr;
  // touches neither o nor pa (a P V wgmma may still be reading them).
  // Element sc[4 n + e]: row g + 8 (e >> 1), key j0 + 8 n + 2 t + (e & 1).
  auto softmax_tile = [&](int it, float (&corr)[2]) {
    const int64_t j0 = static_cast<int64_t>(tiles[it]) * BN;
#pragma unroll
    for (int i = 0; i < 64; ++i) sc[i] *= scale_log2;
    if (!vis.tile_fully_visible(wp_first, wp_first + 15, j0, j0 + BN - 1)) {
#pragma unroll
      for (int n = 0; n < 16; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t pq = wp_first + g + (e >> 1) * 8;
          const int64_t j = j0 + n * 8 + 2 * t + (e & 1);
          if (!(j < p.k_len && vis.visible(pq, j))) sc[4 * n + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int n = 0; n < 16; ++n) mx = fmaxf(mx, fmaxf(sc[4 * n + 2 * r], sc[4 * n + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_safe = mx == -INFINITY ? 0.f : mx;  // row sees nothing yet
      corr[r] = exp2f(row_max[r] - m_safe);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        sc[4 * n + 2 * r] = exp2f(sc[4 * n + 2 * r] - m_safe);
        sc[4 * n + 2 * r + 1] = exp2f(sc[4 * n + 2 * r + 1] - m_safe);
        sum += sc[4 * n + 2 * r] + sc[4 * n + 2 * r + 1];
      }
      row_sum[r] = row_sum[r] * corr[r] + sum;
    }
  };
  // O *= corr (per row), then P as A fragments (m64 x k16 per step: the
  // accumulator layout of two adjacent n8 blocks is the A layout of one k16 step).
  auto rescale_and_pack = [&](const float (&corr)[2]) {
#pragma unroll
    for (int n = 0; n < NB; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * n + e] *= corr[e >> 1];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      pa[kk][0] = MmaOp<T>::pack(sc[8 * kk + 0], sc[8 * kk + 1]);
      pa[kk][1] = MmaOp<T>::pack(sc[8 * kk + 2], sc[8 * kk + 3]);
      pa[kk][2] = MmaOp<T>::pack(sc[8 * kk + 4], sc[8 * kk + 5]);
      pa[kk][3] = MmaOp<T>::pack(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };
  auto stage_of = [](int it) { return it % ST; };
  auto parity_of = [](int it) { return static_cast<uint32_t>((it / ST) & 1); };
  float corr[2];

  if constexpr (!OVERLAP) {
    // One tile at a time: S, softmax, P V (the other consumer group fills the gaps).
    for (int it = 0; it < tiles.count; ++it) {
      const int st = stage_of(it);
      mbar_wait(&s.k_full[st], parity_of(it));
      fence_regs(sc);
      wgmma_fence();
      issue_s(st);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(sc);
      softmax_tile(it, corr);
      rescale_and_pack(corr);
      mbar_wait(&s.v_full[st], parity_of(it));  // V's copy overlapped S and the softmax
      fence_regs(o);
      wgmma_fence();
      issue_pv(st);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
      mbar_arrive(&s.empty[st]);  // this thread is done with K and V of the stage
    }
  } else {
    // Softmax of tile it overlaps P V of tile it - 1 (FlashAttention-3's
    // intra-warpgroup overlap): S(it) and P V(it - 1) are issued together,
    // S(it) is waited for first (wait_group 1), the softmax runs while P V
    // still reads pa and accumulates into o, and O is rescaled only after it.
    mbar_wait(&s.k_full[0], 0);
    fence_regs(sc);
    wgmma_fence();
    issue_s(0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(sc);
    softmax_tile(0, corr);
    rescale_and_pack(corr);
    for (int it = 1; it < tiles.count; ++it) {
      const int st = stage_of(it), prev = stage_of(it - 1);
      mbar_wait(&s.k_full[st], parity_of(it));
      mbar_wait(&s.v_full[prev], parity_of(it - 1));
      fence_regs(sc);
      fence_regs(o);
      wgmma_fence();
      issue_s(st);
      wgmma_commit();
      issue_pv(prev);
      wgmma_commit();
      wgmma_wait<1>();  // S(it) done; P V(it - 1) may still run
      fence_regs(sc);
      softmax_tile(it, corr);
      fence_regs(sc);   // keeps the softmax above the wait (the compiler would sink it)
      fence_regs(corr);
      block_boundary_after(row_sum[0] + row_sum[1]);  // ... and the assembler would hoist the wait
      wgmma_wait<0>();  // P V(it - 1) done: o and pa are free again
      fence_regs(o);
      mbar_arrive(&s.empty[prev]);
      rescale_and_pack(corr);
    }
    const int last = tiles.count - 1, st = stage_of(last);
    mbar_wait(&s.v_full[st], parity_of(last));
    fence_regs(o);
    wgmma_fence();
    issue_pv(st);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
    mbar_arrive(&s.empty[st]);
  }

  // Epilogue: normalise, write out and lse (natural log), as fwd_kernel.
  T* out = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int64_t row = row0 + cg * 64 + warp * 16 + g + r * 8;
    if (row >= p.q_len) continue;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    T* o_row = out + row * p.o_row_stride;
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      const uint32_t packed = MmaOp<T>::pack(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(o_row + n * 8 + 2 * t) = packed;
    }
    if (t == 0) lse[row] = (row_max[r] + log2f(sum)) * (1.f / kLog2e);
  }
#else
  // Built for another target: never launched (the launcher checks the device
  // and the presence of sm_90a code first).
  __trap();
#endif
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
