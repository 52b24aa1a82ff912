// Single-pass Hopper (sm_90a) backward, SWAA_BWD_HOPPER=4 (docs/cuda_kernels.md, "v7"):
// the dk/dv kernel of bwd_sm90.cuh that also produces dQ, so the dq pass (3
// more GEMMs per tile: S, dP again and dS K) disappears.  5 GEMMs per
// (key block, query tile) instead of 4 + 3.
//
//   bwd_prep_sm90_kernel     as for the two passes (lse2 / delta, padded);
//   bwd_fused_sm90_kernel    one CTA per key block (or split sink-block piece),
//                            items = (query head, query tile of 64) as the
//                            dk/dv kernel; per item it also computes
//                            dQ_part (64 x D) = dS (64 x 128 keys) K and adds
//                            it into a float32 accumulator in global memory;
//   bwd_dkdv_reduce_kernel   the split pieces' dk/dv, as before;
//   bwd_fused_dq_out_kernel  dq = accumulator * scale in the output dtype.
//
// Determinism.  The additions into one accumulator tile (b, query head, 64
// rows) happen in a fixed order: the contributing key blocks in DECREASING
// block index.  A per-tile turn counter in global memory (zeroed before the
// launch) holds how many contributions are in; the CTA whose rank (the number
// of contributing blocks above its own, dq_turn()) equals it may add, then
// bumps it (st.release after its bulk add completed).  Rank 0 stores instead of
// adding, so the accumulator needs no zeroing.  Every float is summed in the
// same order on every run: bitwise reproducible, no float atomics.
//
// Why decreasing: block n's items sweep its query tiles upwards from its own
// diagonal tile 2n, so block n reaches tile m at step m - 2n and block n + 1 at
// step m - 2n - 2: the higher block is naturally two items ahead, and a CTA
// started together with (or after) its predecessors rarely waits.  The sink
// blocks (seen by every later query) are the lowest blocks: they add last to
// every tile, so their pieces run last too.
//
// No deadlock.  CTAs take their work from a ticket (atomicAdd on a global
// counter at start), not from blockIdx: a CTA holding ticket t is resident and
// running, and the ticket order lists the key blocks of each slice in
// decreasing order (whole blocks, then the sink pieces), slices inner or
// outer.  A CTA waits only on contributions of higher blocks of its own slice,
// whose tickets are smaller, so whose CTAs are resident already and wait only
// on still smaller tickets: by induction on the ticket every wait ends,
// whatever the grid size and however many CTAs fit on the device.  Within a
// CTA, the writer waits on the consumers (stage full) and on other CTAs; the
// consumers wait on the producer and the writer (stage empty), who never waits
// on them in turn for the same item.
//
// Warp roles (3 warp groups, as the dk/dv kernel): group 0 = producer (thread
// 0: TMA loads) and dQ writer (thread 32: turn, bulk add, release); groups 1, 2
// = consumers, 64 keys each.  dS^T of a consumer group is stored (16-bit) into
// shared memory as dS (64 queries x 64 keys, K-major, 128-byte swizzle, the
// layout TMA gives Q) so that dS K is a shared-memory wgmma:
//   D = 128: after a named barrier each group computes 64 of the 128 dQ
//            columns over all 128 keys (m64n64k16, A = dS, B = K MN-major);
//   D = 64:  each group computes all 64 columns over its own 64 keys and the
//            two partials are summed in shared memory (group 0's + group 1's).
// The 64 x D float32 result goes to a staging buffer (float2 columns XOR-
// swizzled by row & 7 against bank conflicts; the accumulator in global
// memory keeps that layout, bwd_fused_dq_out_kernel undoes it), from which the
// writer adds it with one bulk copy / bulk reduce (cp.reduce.async.bulk .add.f32).
#pragma once

#include "cuda/hopper/bwd_sm90.cuh"

namespace swaa {
namespace cuda {
namespace sm90 {

// ---------------------------------------------------------------------------
// PTX used only here.

// acc (64 x D) = dS (64 x 16 k-step, smem K-major) * K (16 x D, smem MN-major), D = 64 or 128.
template <typename T, int D>
__device__ __forceinline__ void wgmma_ss_d_bmn(float (&d)[D / 2], uint64_t desc_a, uint64_t desc_b,
                                               int accumulate) {
  if constexpr (D == 128)
    wgmma_ss_n128_bmn<T>(d, desc_a, desc_b, accumulate);
  else
    wgmma_ss_n64_bmn<T>(d, desc_a, desc_b, accumulate);
}

// Bulk copies shared -> global (bulk-group completion), plain or float32 add.
__device__ __forceinline__ void bulk_store_global(void* dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(
                   reinterpret_cast<uint64_t>(dst)),
               "r"(smem_u32(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_add_global_f32(float* dst, const float* src, uint32_t bytes) {
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(
          reinterpret_cast<uint64_t>(dst)),
      "r"(smem_u32(src)), "r"(bytes)
      : "memory");
}
// The same between the generic and async proxies for global memory (turn
// counter protocol around the bulk adds).
__device__ __forceinline__ void fence_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ int ld_acquire_gpu(const int* ptr) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(int* ptr, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(ptr), "r"(v) : "memory");
}
// Four 8 x 8 16-bit matrices from their mma fragments (r[i]: matrix i) to shared
// memory transposed: lane 8 i + j gives the address of the 16-byte row that
// receives column j of matrix i.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t row_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                   row_addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}
// Named barrier 1 over the two consumer warp groups (barrier 0 is __syncthreads).
__device__ __forceinline__ void consumers_bar_sync() {
  asm volatile("bar.sync 1, 256;\n" ::: "memory");
}
// Named barrier 2 + cg over the 128 threads of consumer group cg.
__device__ __forceinline__ void group_bar_sync(int cg) {
  if (cg == 0)  // immediate ids: a register id makes ptxas reserve all 16 barriers
    asm volatile("bar.sync 2, 128;\n" ::: "memory");
  else
    asm volatile("bar.sync 3, 128;\n" ::: "memory");
}

// ---------------------------------------------------------------------------

// COLS (D = 128 only, SWAA_BWD_FUSED_DQ=1): each consumer group computes 64 of
// the dQ columns over all 128 keys (both dS halves, named barrier over the
// two groups, dS double buffered); otherwise (the default, and D = 64) each
// group computes all D columns over its own 64 keys and the two parts are
// summed in the staging buffer (group 1 stores, group 0 adds).
template <typename T, int D, bool COLS>
struct alignas(1024) FusedSm90Smem {
  using C = BwdSm90Config<D>;
  static constexpr int BN = C::kKvBlockN, BM = C::kKvBlockM, ST = C::kKvStages;
  T k[C::kHalves][BN * C::kHalfCols];
  T v[C::kHalves][BN * C::kHalfCols];
  T q[ST][C::kHalves][BM * C::kHalfCols];
  T dout[ST][C::kHalves][BM * C::kHalfCols];
  // dS of the item: BM queries x BN keys as two 64-key halves (K-major,
  // 128-byte swizzle), half cg written by consumer group cg; COLS: double
  // buffered by item parity (a group may write item n + 1 while the other
  // still reads item n), else read by its own group only.
  T ds[COLS ? 2 : 1][BN / 64][BM * 64];
  // The item's dQ part, float2 columns swizzled by row & 7, in buffer n % bufs
  // (FusedDq::dq_bufs): with two (D = 64; at D = 128 a second one does not fit
  // in shared memory) the consumers stage item n while the writer still waits
  // for the turn of item n - 1 and adds it.
  static constexpr int kDqBufs = D == 64 ? 2 : 1;
  float dq[kDqBufs][BM * D];
  float lse2[ST][BM];
  float delta[ST][BM];
  int item_row0[ST];  // the stage's item: first query row and query head (from the producer,
  int item_head[ST];  // so the consumers keep no item decoding in registers)
  uint64_t kv_full;
  uint64_t full[ST];
  uint64_t empty[ST];
  // Per staging buffer b, phase k = the buffer's k-th item (n = k bufs + b):
  uint64_t dq_full[kDqBufs];    // consumers -> writer: the buffer holds the item's dQ part
  uint64_t dq_empty[kDqBufs];   // writer -> consumers: the bulk add has read it
  uint64_t g1_staged[kDqBufs];  // group 1 -> group 0: group 1's dQ part is in the buffer
  // Item n's accumulator tile ((b * q_heads + h) * tiles + m) and dq_turn(),
  // in slot n & 3 (written during item n by thread 128 of group 0, before
  // its arrival on dq_full; read by the writer after dq_full of item n).
  // The slot's previous reader, the writer of item n - 4, is done: group 0
  // reached item n after its wait for group 1 at item n - 1, which waited for
  // the writer's read of item n - 1 - bufs.
  int64_t dq_tile[4];
  int dq_rank[4], dq_total[4];
  int ticket;
};

template <typename T, int D, bool COLS>
constexpr int fused_sm90_smem_bytes() {
  return static_cast<int>(sizeof(FusedSm90Smem<T, D, COLS>)) + 1024;
}

// Global state of the dQ accumulation (workspace; turns and ticket zeroed
// before each launch).
struct FusedDq {
  float* accum;        // (batch, q_heads, q_len_pad, D) float32, columns swizzled per row
  int* turns;          // (batch, q_heads, q_len_pad / 64): contributions added so far
  int* ticket;         // CTA start counter
  int tiles;           // q_len_pad / 64
  int dq_bufs;         // dQ staging buffers: 2 (D = 64, SWAA_BWD_FUSED_DQ_BUFS) or 1
  uint32_t max_polls;  // the writer's watchdog: polls of one turn before it traps
                       // (SWAA_BWD_FUSED_WATCHDOG; UINT32_MAX: never)
};

// The work of the CTA holding `ticket`: the key blocks of a slice in
// decreasing order (the whole blocks, then the pieces of the split sink
// blocks, highest block first), slices inner (SWAA_BWD_ORDER=1) or outer.
template <int BN, int BM>
__host__ __device__ __forceinline__ DkdvWork fused_work(const AttnParams& p, const DkdvSchedule& sched,
                                               int ticket) {
  const int n_slices = static_cast<int>(p.batch * p.kv_heads);
  const int n_units = sched.n_units();
  const int order = sched.slices_inner ? ticket / n_slices : ticket % n_units;
  const int slice = sched.slices_inner ? ticket % n_slices : ticket / n_units;
  const int n_pieces = sched.n_split_blocks * sched.n_split;
  const int n_whole = n_units - n_pieces;  // = n_blocks - n_split_blocks
  int unit;                                // numbering of dkdv_work_at: pieces, then blocks
  if (order < n_whole) {
    const int n_block = sched.n_blocks - 1 - order;
    unit = n_block - sched.n_split_blocks + n_pieces;
  } else {
    const int v = order - n_whole;
    const int n_block = sched.n_split_blocks - 1 - v / sched.n_split;
    unit = n_block * sched.n_split + v % sched.n_split;
  }
  return dkdv_work_at<BN, BM>(p, sched, unit, slice);
}

// Rank of key block `n_block` among the key blocks that contribute to the dQ
// tile of query rows [row0, row0 + BM) (those holding a key some row of the
// tile sees: the sink blocks and the window / full blocks of visible_keys),
// counted from the highest block down (how many add before it), and their number.
struct DqTurn {
  int rank, total;
};
template <int BN, int BM>
__host__ __device__ __forceinline__ DqTurn dq_turn(const AttnParams& p, const Visibility& vis,
                                          int64_t row0, int n_block) {
  const int64_t p_first = row0 + p.q_offset;
  const KeySpan seen = visible_keys(vis, p_first, min_of<int64_t>(p_first + BM - 1, p.k_len - 1));
  const int head_end = seen.head.empty() ? 0 : static_cast<int>((seen.head.end + BN - 1) / BN);
  const int body_end = static_cast<int>((seen.body.end - 1) / BN) + 1;
  const int body_begin = max_of(static_cast<int>(seen.body.begin / BN), head_end);
  // blocks in [lo, n_blocks) among [0, head_end) u [body_begin, body_end)
  auto above = [&](int lo) {
    return max_of(0, head_end - lo) + max_of(0, body_end - max_of(lo, body_begin));
  };
  return DqTurn{above(n_block + 1), above(0)};
}

// The writer's watchdog on one turn (see the writer), by default: each poll is
// an L2 round trip plus a 128 ns sleep (~0.4-0.9 us), so 2^26 polls are
// ~30-60 s.  SWAA_BWD_FUSED_WATCHDOG overrides it per launch (FusedDq::max_polls).
constexpr uint32_t kTurnMaxPolls = 1u << 26;

// Ordinary shared-memory loads through the shared window (the writer's item
// slots; a generic load of them would go through generic addressing).
__device__ __forceinline__ int ld_shared_b32(const void* ptr) {
  int v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(smem_u32(ptr)) : "memory");
  return v;
}
__device__ __forceinline__ int64_t ld_shared_b64(const void* ptr) {
  int64_t v;
  asm volatile("ld.shared.b64 %0, [%1];\n" : "=l"(v) : "r"(smem_u32(ptr)) : "memory");
  return v;
}

// Swizzled float index of (row, column) in a staged / accumulated dQ tile of D
// columns: float2 column pairs XOR (row & 7) << 2.
template <int D>
__device__ __forceinline__ int dq_index(int row, int col) {
  return row * D + ((((col >> 1) ^ ((row & 7) << 2))) << 1) + (col & 1);
}

// STSM (SWAA_BWD_FUSED_STSM=1, branch stsm): the consumers store dS with four
// stmatrix.x4.trans per thread and item instead of 64 16-bit stores (same bytes
// to the same places, so the same results bit for bit).
// ITEM_SPAN (SWAA_BWD_FUSED_ITEM=0, the default at D=128): an item starts as
// in session 14: whether the group's keys are seen from the item's key span,
// the dQ writer's tile and turn before the item's first products, the S^T,
// dP^T loops written out.  Without it (D=64): the per-CTA test (group_items)
// and the turn worked out while the products run.  The same items and sums,
// so the same bits; which is faster depends on D (docs/cuda_kernels.md, v7,
// "Item start").
template <typename T, int D, bool COLS, bool PIPE = false, bool STSM = false,
          bool ITEM_SPAN = false>
__global__ void __launch_bounds__(BwdSm90Config<D>::kThreads, 1)
    bwd_fused_sm90_kernel(const AttnParams p, const float* lse2_pad, const float* delta_pad,
                          int64_t q_len_pad, const DkdvSchedule sched, const FusedDq fdq,
                          const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v,
                          const __grid_constant__ CUtensorMap tm_do) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = BwdSm90Config<D>;
  static_assert(!COLS || D == 128, "the column split needs D = 128");
  // PIPE (SWAA_BWD_PIPELINE >= 1, the default; D=64, keys split): an active item's dQ product
  // is issued right behind its dV, dK products, one wait for all three (the
  // group's barrier for its dS moves ahead of them); at D=128 dqp beside pa,
  // dsa, dk, dv would not fit in the registers.
  static_assert(!PIPE || (D == 64 && !COLS), "PIPE is for D = 64 with the keys split");
  using S = FusedSm90Smem<T, D, COLS>;
  constexpr int BN = C::kKvBlockN, BM = C::kKvBlockM, ST = C::kKvStages;
  constexpr uint32_t kKHalf = C::template half_bytes<BN>();  // between the halves of K, V
  constexpr uint32_t kQHalf = C::template half_bytes<BM>();  // between the halves of Q, dO
  constexpr uint32_t kDsHalf = BM * 64 * 2;                  // between the halves of dS
  static_assert(BN == 128 && BM == 64, "the dS layout assumes 128 keys x 64 queries");
  extern __shared__ unsigned char smem_raw[];
  auto& s = aligned_smem<S>(smem_raw);
  // dQ staging buffers in use: item n goes to buffer n % bufs, the k = n / bufs
  // th use of that buffer (phase k of its barriers).
  const int bufs = S::kDqBufs == 2 && fdq.dq_bufs == 2 ? 2 : 1;

  const int wg = warp_group_index();  // warp-uniform: see sm90_ptx.cuh
  if (threadIdx.x == 0) {
    s.ticket = atomicAdd(fdq.ticket, 1);
    mbar_init(&s.kv_full, 1);
    for (int i = 0; i < ST; ++i) {
      mbar_init(&s.full[i], 1);
      mbar_init(&s.empty[i], C::kConsumers * 128);
    }
    for (int i = 0; i < S::kDqBufs; ++i) {
      mbar_init(&s.dq_full[i], COLS ? 256 : 128);
      mbar_init(&s.dq_empty[i], 1);
      mbar_init(&s.g1_staged[i], 128);
    }
    mbar_fence_init();
  }
  __syncthreads();
  const DkdvWork w = fused_work<BN, BM>(p, sched, s.ticket);

  if (wg == 0) {
    // ------------------------------------------------- producer and dQ writer
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
        s.item_row0[st] = r0;  // ordered before the consumers' reads by the full barrier
        s.item_head[st] = h;
        mbar_arrive_expect_tx(&s.full[st], 2 * BM * D * 2 + 2 * BM * 4);
        for (int half = 0; half < C::kHalves; ++half) {
          tma_load_4d(s.q[st][half], &tm_q, &s.full[st], half * C::kHalfCols, r0, h, w.b);
          tma_load_4d(s.dout[st][half], &tm_do, &s.full[st], half * C::kHalfCols, r0, h, w.b);
        }
        const int64_t col = (static_cast<int64_t>(w.b) * p.q_heads + h) * q_len_pad + r0;
        bulk_load(s.lse2[st], lse2_pad + col, BM * 4, &s.full[st]);
        bulk_load(s.delta[st], delta_pad + col, BM * 4, &s.full[st]);
      }
    } else if (threadIdx.x == 32) {
      // The writer: the consumers stage each item's dQ part with its tile and
      // turn (few registers here: the producer group runs with kProducerRegs).
      const int count = w.end - w.first;
      for (int n = 0; n < count; ++n) {
        const int b = bufs == 2 ? n & 1 : 0;
        const int use = bufs == 2 ? n >> 1 : n;
        mbar_wait(&s.dq_full[b], use & 1);
        const int64_t tile = ld_shared_b64(&s.dq_tile[n & 3]);
        const int rank = ld_shared_b32(&s.dq_rank[n & 3]);
        const int total = ld_shared_b32(&s.dq_total[n & 3]);
        int* counter = fdq.turns + tile;
        float* dst = fdq.accum + tile * (BM * D);
        if (rank > 0) {
          uint32_t polls = 0;
          while (ld_acquire_gpu(counter) < rank) {
            __nanosleep(128);
            // Watchdog: no legitimate wait for one turn takes seconds (it waits
            // for one bulk add of a CTA that is already running); a wrong rank
            // would hang the launch, so fail it instead (fdq.max_polls: 2^26 by
            // default, ~30-60 s; UINT32_MAX never trips: polls wraps first).
            if (++polls > fdq.max_polls) __trap();
          }
          fence_async_global();
          bulk_add_global_f32(dst, s.dq[b], BM * D * 4);
        } else {
          bulk_store_global(dst, s.dq[b], BM * D * 4);
        }
        bulk_commit_group();
        bulk_wait_group_read0();
        mbar_arrive(&s.dq_empty[b]);  // the consumers may stage the buffer's next item
        if (rank + 1 < total) {
          bulk_wait_group0();
          fence_async_global();
          st_release_gpu(counter, rank + 1);
        }
      }
      bulk_wait_group0();  // every add performed before the CTA ends
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
  // The dk/dv kernel's descriptors (dkdv_descs, bwd_sm90.cuh).
  const DkdvDescs descs = dkdv_descs(s, cg, kQHalf);
  const uint64_t k_desc = descs.k, v_desc = descs.v, q_desc0 = descs.q0, do_desc0 = descs.do0;
  const uint64_t q_mn0 = descs.q_mn0, do_mn0 = descs.do_mn0;
  constexpr uint32_t kStageBytes = sizeof(s.q[0]);

  static_assert(BM == GroupItems::kSpan, "group_items: items of 64 rows, groups of 64 keys");
  GroupItems items{};  // (ITEM_SPAN asks each item's key span instead)
  if constexpr (!ITEM_SPAN) items = group_items(vis, wg_j_first, p.k_len);  // bwd_sm90.cuh
  const int count = w.end - w.first;
  for (int n = 0; n < count; ++n) {
    const int st = n % ST, buf = n & 1;
    const int dqb = bufs == 2 ? n & 1 : 0;      // the item's dQ staging buffer
    const int dq_use = bufs == 2 ? n >> 1 : n;  // and its use of that buffer
    const uint32_t parity = static_cast<uint32_t>((n / ST) & 1);
    mbar_wait(&s.full[st], parity);
    const int row0 = s.item_row0[st];
    const int64_t pos0 = row0 + p.q_offset;  // position of the item's first row
    // Does any query of the item see any of this group's 64 keys?  (As in the
    // dk/dv kernel: in a sink block the far rows see only the sink keys.)
    bool active;
    if constexpr (ITEM_SPAN) {
      const KeySpan seen = visible_keys(vis, pos0, min_of<int64_t>(pos0 + BM - 1, p.k_len - 1));
      const int64_t wg_j_last = wg_j_first + 63;
      active = (wg_j_first < seen.head.end && wg_j_last >= seen.head.begin) ||
               (wg_j_first < seen.body.end && wg_j_last >= seen.body.begin);
    } else {
      active = items.active(pos0);
    }
    T* const ds_mine = s.ds[COLS ? buf : 0][cg];  // this group's dS half
    // K's address through an opaque move: the B descriptors of the dQ
    // product are rebuilt here (a few integer ops) rather than hoisted out of
    // the item loop into registers.
    uint32_t k_base = smem_u32(s.k[0]);
    asm volatile("" : "+r"(k_base));
    // Keys split: dQ over this group's 64 keys, all D columns: 4 k16 steps, A
    // = the group's dS half, B = the group's 64 key rows of K (issued, not
    // committed).
    auto issue_dq_keys = [&](float (&dqp)[D / 2]) {
      const uint32_t ds_addr = smem_u32(ds_mine);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_ss_d_bmn<T, D>(dqp, desc_k_major(ds_addr + kk * 32),
                             desc_mn_major(k_base + (cg * 64 + kk * 16) * 128, kKHalf), kk > 0);
    };
    float dqp_keys[D / 2];  // element 4 n + e: query row warp * 16 + g + 8 (e >> 1), column 8 n + 2 t + (e & 1)
    bool dq_done = false;   // PIPE: issued and waited for with the item's dV, dK
    // The single dS buffer (keys split) is rewritten below: every warp of the
    // group must have finished the previous item's dQ wgmma, which reads all
    // 64 rows of it (a warp's wgmma wait covers its own part only).  The
    // column split's double buffer is covered by the barrier over both groups.
    if constexpr (!COLS) {
      if (n > 0) group_bar_sync(cg);
    }
    // The item's tile and turn, for the writer: worked out by thread 128 (the
    // first of consumer group 0) while the item's S^T, dP^T run, since a
    // wgmma waits for all four warps of its group (at the start of the item
    // the ~80 integer instructions held group 0's products back each item).
    auto publish_turn = [&]() {
      if (threadIdx.x == 128) {
        const DqTurn turn = dq_turn<BN, BM>(p, vis, row0, static_cast<int>(w.j_first / BN));
        s.dq_tile[n & 3] =
            (static_cast<int64_t>(w.b) * p.q_heads + s.item_head[st]) * fdq.tiles + row0 / BM;
        s.dq_rank[n & 3] = turn.rank;
        s.dq_total[n & 3] = turn.total;
      }
    };
    if constexpr (ITEM_SPAN) publish_turn();
    if (active) {
      float sc[32], dp[32];  // S^T, dP^T: key row g + 8 (e >> 1), query column 8 n + 2 t + (e & 1)
      if constexpr (ITEM_SPAN) {
        // Written out, not issue_product_pair: the same products, but the pair
        // helper changes ptxas's order (+8 instructions at D=128), and this path
        // is the kernel D=128 was measured with (session 15, "Item start").
        fence_regs(sc);
        fence_regs(dp);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t a_off = (kk >> 2) * kKHalf + (kk & 3) * 32;
          const uint32_t b_off = (kk >> 2) * kQHalf + (kk & 3) * 32;
          wgmma_ss_n64<T>(sc, desc_advance(k_desc, a_off),
                          desc_advance(q_desc0, st * kStageBytes + b_off), kk > 0);
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t a_off = (kk >> 2) * kKHalf + (kk & 3) * 32;
          const uint32_t b_off = (kk >> 2) * kQHalf + (kk & 3) * 32;
          wgmma_ss_n64<T>(dp, desc_advance(v_desc, a_off),
                          desc_advance(do_desc0, st * kStageBytes + b_off), kk > 0);
        }
        wgmma_commit();
      } else {
        // As the dk/dv kernel (bwd_sm90.cuh), committed, not waited for.
        issue_product_pair<T, D>(sc, dp, k_desc, desc_advance(q_desc0, st * kStageBytes), v_desc,
                                 desc_advance(do_desc0, st * kStageBytes), kKHalf, kQHalf);
        publish_turn();
      }
      wgmma_wait<0>();
      fence_regs(sc);
      fence_regs(dp);

      // As the dk/dv kernel, with its function (bit for bit: tests/test_bwd_fused.py).
      transposed_probabilities(sc, dp, vis, pos0, wj_first, g, t, p.k_len, scale_log2,
                               s.lse2[st], s.delta[st]);
      uint32_t pa[4][4], dsa[4][4];  // P^T, dS^T as A fragments (k = the item's 64 queries)
      pack_a<T>(pa, sc);
      pack_a<T>(dsa, dp);

      // dS into shared memory as (query, key) of this group's 64-key half:
      // word wd of dsa[kk] holds queries 16 kk + 8 (wd >> 1) + 2 t (+1) of key
      // row warp * 16 + g + 8 (wd & 1).  128-byte swizzle: byte (query, key) at
      // query * 128 + ((key / 8) ^ (query & 7)) * 16 + (key & 7) * 2, where
      // query & 7 = 2 t + e and key / 8 = 2 warp + (wd & 1): four per-thread
      // offsets plus compile-time row steps.
      unsigned char* ds_half = reinterpret_cast<unsigned char*>(ds_mine);
      if constexpr (STSM) {
        // Word wd of dsa[kk] is the fragment of an 8 x 8 matrix: rows = keys
        // warp * 16 + 8 (wd & 1) + 0..7, columns = queries 16 kk + 8 (wd >> 1)
        // + 0..7.  stmatrix .trans writes column j of matrix i (= wd) as the
        // 16-byte row whose address lane 8 i + j gives: query 16 kk + 8 (i >> 1)
        // + j, key chunk 2 warp + (i & 1), swizzled with query & 7 = j.
        const int i = lane >> 3, j = lane & 7;
        const uint32_t row_addr = smem_u32(ds_half) + (8 * (i >> 1) + j) * 128 +
                                  (((2 * warp + (i & 1)) ^ j) << 4);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          stmatrix_x4_trans(row_addr + kk * 16 * 128, dsa[kk]);
      } else {
        int ds_off[2][2];  // [e][wd & 1]
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
          for (int w1 = 0; w1 < 2; ++w1)
            ds_off[e][w1] = (2 * t + e) * 128 + (((2 * warp + w1) ^ (2 * t + e)) << 4) + 2 * g;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int wd = 0; wd < 4; ++wd)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              *reinterpret_cast<uint16_t*>(ds_half + ds_off[e][wd & 1] +
                                           (16 * kk + 8 * (wd >> 1)) * 128) =
                  static_cast<uint16_t>(e ? (dsa[kk][wd] >> 16) : (dsa[kk][wd] & 0xFFFFu));
      }
      fence_proxy_async_shared();
      fence_regs(pa);
      fence_regs(dsa);
      if constexpr (PIPE) {
#pragma unroll
        for (int i = 0; i < D / 2; ++i) dqp_keys[i] = 0.f;
        group_bar_sync(cg);  // every thread's dS stores done before the dQ wgmma reads them
        fence_regs(dqp_keys);
      }

      fence_regs(dv);
      fence_regs(dk);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_rs_d<T, D>(dv, pa[kk], desc_advance(do_mn0, st * kStageBytes + kk * 16 * 128));
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_rs_d<T, D>(dk, dsa[kk], desc_advance(q_mn0, st * kStageBytes + kk * 16 * 128));
      if constexpr (PIPE) issue_dq_keys(dqp_keys);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(dv);
      fence_regs(dk);
      fence_regs(pa);
      fence_regs(dsa);
      if constexpr (PIPE) {
        fence_regs(dqp_keys);
        dq_done = true;
      }
    } else {
      if constexpr (!ITEM_SPAN) publish_turn();
      // No query of the item sees this group's keys: dS = 0 (the dQ product
      // below runs over both halves unconditionally).
      uint4* ds_half = reinterpret_cast<uint4*>(ds_mine);
#pragma unroll
      for (int i = 0; i < BM * 64 * 2 / 16 / 128; ++i)
        ds_half[(threadIdx.x & 127) + i * 128] = make_uint4(0, 0, 0, 0);
      fence_proxy_async_shared();
    }

    if constexpr (COLS) {
      // dQ columns 64 cg ... 64 cg + 63 over all 128 keys: 8 k16 steps, A =
      // both dS halves, B = K's 64-column half cg.
      float dqp[32];  // element 4 n + e: query row warp * 16 + g + 8 (e >> 1), column 8 n + 2 t + (e & 1)
#pragma unroll
      for (int i = 0; i < 32; ++i) dqp[i] = 0.f;
      consumers_bar_sync();  // both halves of dS are in shared memory
      const uint32_t ds_addr = smem_u32(s.ds[buf][0]);
      fence_regs(dqp);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
        wgmma_ss_n64_bmn<T>(dqp, desc_k_major(ds_addr + (kk >> 2) * kDsHalf + (kk & 3) * 32),
                            desc_mn_major(k_base + cg * kKHalf + kk * 16 * 128, kKHalf), kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(dqp);
      mbar_arrive(&s.empty[st]);  // this thread is done with Q, dO of the stage

      // the writer has read the buffer's previous item, n - bufs
      if (dq_use > 0) mbar_wait(&s.dq_empty[dqb], (dq_use - 1) & 1);
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = warp * 16 + g + 8 * r;
          *reinterpret_cast<float2*>(&s.dq[dqb][dq_index<D>(row, cg * 64 + nb * 8 + 2 * t)]) =
              make_float2(dqp[4 * nb + 2 * r], dqp[4 * nb + 2 * r + 1]);
        }
      fence_proxy_async_shared();  // the writer's bulk copy reads the stage
      mbar_arrive(&s.dq_full[dqb]);
    } else {
      float (&dqp)[D / 2] = dqp_keys;
      if (!dq_done) {
#pragma unroll
        for (int i = 0; i < D / 2; ++i) dqp[i] = 0.f;
        group_bar_sync(cg);  // every thread's dS stores done before the wgmma reads them
        fence_regs(dqp);
        wgmma_fence();
        issue_dq_keys(dqp);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(dqp);
      }
      mbar_arrive(&s.empty[st]);  // this thread is done with Q, dO of the stage

      // Stage X_0 + X_1: group 1 stores its part, group 0 adds its own to it
      // and hands the sum to the writer.
      if (cg == 1) {
        // the writer has read the buffer's previous item, n - bufs
        if (dq_use > 0) mbar_wait(&s.dq_empty[dqb], (dq_use - 1) & 1);
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = warp * 16 + g + 8 * r;
            *reinterpret_cast<float2*>(&s.dq[dqb][dq_index<D>(row, nb * 8 + 2 * t)]) =
                make_float2(dqp[4 * nb + 2 * r], dqp[4 * nb + 2 * r + 1]);
          }
        mbar_arrive(&s.g1_staged[dqb]);
      } else {
        // (so also after the writer's read of the buffer's previous item)
        mbar_wait(&s.g1_staged[dqb], dq_use & 1);
        // Group 1's values are loaded kBatch column blocks at a time, all loads
        // of a batch before its adds and stores: one load in flight per add
        // (a load after every store, which the compiler cannot reorder) was
        // ~27% of group 0's time in session 7's profile.  Same sums.
        constexpr int kBatch = 4;
        static_assert((D / 8) % kBatch == 0, "column blocks must split into batches");
#pragma unroll
        for (int nb0 = 0; nb0 < D / 8; nb0 += kBatch) {
          float2 other[kBatch][2];
#pragma unroll
          for (int b = 0; b < kBatch; ++b)
#pragma unroll
            for (int r = 0; r < 2; ++r)
              other[b][r] = *reinterpret_cast<const float2*>(
                  &s.dq[dqb][dq_index<D>(warp * 16 + g + 8 * r, (nb0 + b) * 8 + 2 * t)]);
#pragma unroll
          for (int b = 0; b < kBatch; ++b)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int nb = nb0 + b;
              *reinterpret_cast<float2*>(&s.dq[dqb][dq_index<D>(warp * 16 + g + 8 * r, nb * 8 + 2 * t)]) =
                  make_float2(dqp[4 * nb + 2 * r] + other[b][r].x,
                              dqp[4 * nb + 2 * r + 1] + other[b][r].y);
            }
        }
        fence_proxy_async_shared();  // the writer's bulk copy reads the stage
        mbar_arrive(&s.dq_full[dqb]);
      }
    }
  }

  if (w.piece >= 0) {
    // Partial sums of a piece, as the dk/dv kernel (bwd_dkdv_reduce_kernel sums them).
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

// dq (output dtype) = accumulator * scale, rows < q_len; one thread per 4 columns.
template <typename T, int D>
__global__ void bwd_fused_dq_out_kernel(const AttnParams p, const float* accum, int64_t q_len_pad) {
  constexpr int kQuads = D / 4;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = idx / kQuads;  // (b * q_heads + h) * q_len_pad + i
  const int quad = static_cast<int>(idx % kQuads);
  if (row >= p.batch * p.q_heads * q_len_pad) return;
  const int64_t i = row % q_len_pad, bh = row / q_len_pad;
  if (i >= p.q_len) return;
  const int64_t h = bh % p.q_heads, b = bh / p.q_heads;
  const int src_quad = quad ^ ((static_cast<int>(i) & 7) << 1);
  const float4 a = *reinterpret_cast<const float4*>(accum + row * D + src_quad * 4);
  T* dst = static_cast<T*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride +
           i * p.dq_row_stride + quad * 4;
  uint2 out;
  out.x = MmaOp<T>::pack(a.x * p.scale, a.y * p.scale);
  out.y = MmaOp<T>::pack(a.z * p.scale, a.w * p.scale);
  *reinterpret_cast<uint2*>(dst) = out;
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
