// Hopper (sm_90a) forward v5.1 of swaa::fwd (docs/cuda_kernels.md, "v5.1"):
// the v5 kernel (fwd_sm90.cuh) with the changes aimed at D=64 and short
// windows, selected with SWAA_FWD_HOPPER=3 (4: plus ping-pong; 5, 6: 3, 4
// with persistent CTAs).
//
// Differences from v5:
//   - query rows per CTA: 64 per consumer warp group, 3 groups at D=64 (192
//     rows: each K/V tile feeds 1.5x the wgmma work of v5), 2 at D=128 (128);
//   - K/V ring: 4 stages at D=64, 3 at D=128 (v5: 2), so the producer runs
//     further ahead on short key lists (W=1024: ~9-11 tiles per CTA);
//   - a consumer group skips the tiles none of its 64 rows can see (the CTA's
//     tile list is the union over its rows; a fully masked tile adds exactly
//     nothing, so skipping it changes no bit of the result);
//   - epilogue: each group writes its normalised 64 x D output into its own
//     (no longer needed) rows of the Q buffer, in the 128-byte-swizzled
//     layout, and one thread stores them with a TMA tensor store (v5: 4-byte
//     stores, each warp instruction touching 8 rows);
//   - PINGPONG (SWAA_FWD_HOPPER=4): the consumer groups take turns issuing
//     their wgmmas (named barriers, round robin): in turn i a group issues
//     P V of tile i - 1 and S of tile i together, hands the turn on, then
//     waits and runs the softmax of tile i while the next group's GEMMs
//     occupy the tensor cores (FlashAttention-3's inter-warpgroup ping-pong,
//     without its intra-warpgroup overlap, which v5's variant 2 measured
//     slower);
//   - boundary tiles are masked with int32 offsets (mask_tile; same predicate);
//   - PERSISTENT (SWAA_FWD_HOPPER=5, 6 = 3, 4 persistent): one CTA per SM
//     walks the work units (row block, head) u = blockIdx.x + i * gridDim.x
//     in the same order as the one-CTA-per-unit grid; two Q buffers, so the
//     producer loads the next unit's Q and first K/V tiles while the
//     consumers finish the current unit and store its output (the K/V ring
//     runs on across units).  A group hands its Q buffer back once the TMA
//     store from it has been read, which it checks after the first tile of
//     the next unit.
//   - LEAN (SWAA_FWD_HOPPER=7 = 6 with a leaner softmax, session 9): the
//     scores stay unscaled until the exponential, exp2(fma(s, scale, -m)),
//     one FFMA per score instead of a multiply and a subtract (the row max
//     of the unscaled scores times the positive scale is the max of the
//     scaled ones, bit for bit: rounding is monotonic); and the running max
//     is a stale reference that moves only when a tile's max exceeds it by
//     more than kLazyRescale (log2 units), so most tiles skip the rescale of
//     O (one FMUL per accumulator) -- a warp skips it when no lane's rows
//     moved (FlashAttention-4's conditional rescaling).  Probabilities are
//     then at most 2^kLazyRescale, exact in 16 bits as any other power of
//     two; out and lse are the same function, rounded differently.  Its
//     issue path is leaner too: the warp group index is broadcast from lane 0
//     (warp_group_index), so the wgmma descriptors are built once and advanced
//     by constants in uniform registers (ncu of 6 at N=8k, W=4096: ~9% of the
//     consumers' samples rebuilt descriptors), and whether a tile needs the
//     mask is three int compares against ranges set once per unit
//     (full_tiles).
//   - LEAN is a level: 1 the above (variant 7); 2 (variant 8) trims the
//     instructions of each turn further: the three ints of each warp's
//     full_tiles stay in registers (pin_reg; without the pin ptxas recomputes
//     them from the unit in int64 after every tile's S wait, ~50 dependent
//     instructions in front of the softmax: cuobjdump, session 14), the K/V
//     stage and its parity come from unsigned arithmetic (no sign fix-ups),
//     and a row's max starts from its first pair of scores instead of -inf.
//     Same arithmetic, so the same bits as 1.  3 (variant 9) also masks a
//     boundary tile with only the clause that can reject there (mask_kind:
//     the causal one on the diagonal tile, the window's on its first tile,
//     the sink's on the sink tile; one compare per element instead of
//     three), the same elements.  4 (variant 10) frees a stage's K and V
//     apart, K as soon as the tile's S is done (a second "empty" barrier per
//     stage; FlashAttention-3's separate K and V pipelines): with the two
//     stages of D=128, variant 9 could load tile i + 1 only after tile
//     i - 1's P V, one turn before its S.  5 (variant 11) adds
//     FlashAttention-3's intra-warpgroup overlap to the ping-pong turn: S of tile i is issued
//     before P V of tile i - 1, in its own commit group, and the softmax of
//     tile i runs once S is done, while P V still runs; only O's rescale and
//     the packing of P wait for P V.  The same operations on every element,
//     so the same bits (fence_wait_placement keeps ptxas from moving that
//     wait back above the softmax).
// Without LEAN the arithmetic of each row is the same as v5's (same tiles in
// the same order, same instructions), so v5.1 is expected to agree with v5
// bitwise.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/attention_kernels.cuh"  // TileList, tiles_of, grid_pos, kLog2e, MmaOp
#include "cuda/hopper/mask_sm90.cuh"
#include "cuda/hopper/sm90_ptx.cuh"
#include "swaa/params.h"
#include "swaa/visibility.h"

namespace swaa {
namespace cuda {
namespace sm90 {

// ---------------------------------------------------------------------------
// PTX wrappers only v5.1 uses (kept here so sm90_ptx.cuh stays as it is).

// TMA tensor store: one box of the 4-D tensor map from shared memory (same
// swizzled layout a load of that map writes) to global memory; elements
// outside the tensor are not written.  Completes in a bulk group.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* src, int c0,
                                             int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(src))
      : "memory");
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}
// Named barriers (id 0 is __syncthreads'); `threads` a multiple of 32.
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// fence_regs for the 16-bit A fragments of a register-A wgmma: keeps them
// live (and in place) until after the wait that completes the wgmma.
__device__ __forceinline__ void fence_frags(uint32_t (&r)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// Makes `x` opaque to the compiler, so it keeps the value in a register
// instead of recomputing it where it is used.
__device__ __forceinline__ void pin_reg(int& x) { asm volatile("" : "+r"(x)); }

// ---------------------------------------------------------------------------

template <int D, bool PERSISTENT>
struct Fwd51Config {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static constexpr int kD = D;
  static constexpr int kHalves = D / 64;            // 64-column swizzled halves per tile
  static constexpr int kConsumers = D == 64 ? 3 : 2;  // consumer warp groups, 64 rows each
  static constexpr int kBlockM = 64 * kConsumers;   // query rows per work unit
  static constexpr int kBlockN = 128;               // keys per tile
  static constexpr int kQBuffers = PERSISTENT ? 2 : 1;
  // K/V ring depth; D=128 persistent: 2 Q buffers + 2 stages = 192 KB.
  static constexpr int kStages = D == 64 ? 4 : PERSISTENT ? 2 : 3;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kHalfCols = 64;
  static constexpr int kQHalfBytes = kBlockM * kHalfCols * 2;  // one 64-column half of Q
  static constexpr int kQBytes = kBlockM * kD * 2;
  static constexpr int kTileBytes = kBlockN * kD * 2;          // one K or V tile
  static constexpr int kHalfTileBytes = kBlockN * kHalfCols * 2;
  static constexpr int kOutBoxRows = 64;                       // one group's rows per TMA store
  // setmaxnreg: 128 x (24 + consumers x kConsumerRegs) <= 65536.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : 240;
  static_assert(128 * (kProducerRegs + kConsumers * kConsumerRegs) <= 65536, "register file");
  // Named barriers: 1 + g: group g's epilogue (128 threads); 1 + kConsumers + g:
  // group g's turn to issue wgmmas (PINGPONG; its 128 threads + the previous group's).
  static constexpr int kEpilogueBar = 1;
  static constexpr int kTurnBar = 1 + kConsumers;
  // LEAN: how far (log2 units) a row's max may rise above its reference
  // before O and the sum are rescaled; probabilities stay <= 2^8.
  static constexpr float kLazyRescale = 8.f;
};

template <typename T, int D, bool PERSISTENT>
struct alignas(1024) Fwd51Smem {
  using C = Fwd51Config<D, PERSISTENT>;
  T q[C::kQBuffers][C::kHalves][C::kBlockM * C::kHalfCols];  // Q, then each group's output rows
  T k[C::kStages][C::kHalves][C::kBlockN * C::kHalfCols];
  T v[C::kStages][C::kHalves][C::kBlockN * C::kHalfCols];
  uint64_t q_full[C::kQBuffers];
  uint64_t q_empty[C::kQBuffers];  // one arrival per consumer group (PERSISTENT)
  uint64_t k_full[C::kStages];
  uint64_t v_full[C::kStages];
  uint64_t empty[C::kStages];    // the stage's K and V are free (kLeanSplit: its K)
  uint64_t v_empty[C::kStages];  // kLeanSplit: the stage's V is free
};

template <typename T, int D, bool PERSISTENT>
constexpr int fwd51_smem_bytes() {
  return static_cast<int>(sizeof(Fwd51Smem<T, D, PERSISTENT>)) + 1024;
}

// The key tiles (width `tile`) the query positions [first, last] can see:
// [0, head_end) and [body_first, body_end); none for rows past the last key.
struct SpanTiles {
  int head_end;
  int body_first;
  int body_end;
  __device__ __forceinline__ bool needs(int tile_index) const {
    return tile_index < head_end || (tile_index >= body_first && tile_index < body_end);
  }
};

__device__ __forceinline__ SpanTiles span_tiles(const Visibility& vis, int64_t first, int64_t last,
                                                int64_t k_len, int tile) {
  if (first > k_len - 1) return SpanTiles{0, 0, 0};
  const KeySpan span = visible_keys(vis, first, min_of<int64_t>(last, k_len - 1));
  SpanTiles s;
  s.head_end = span.head.empty() ? 0 : static_cast<int>((span.head.end + tile - 1) / tile);
  s.body_first = static_cast<int>(span.body.begin / tile);
  s.body_end = span.body.empty() ? 0 : static_cast<int>((span.body.end + tile - 1) / tile);
  return s;
}

// The key tiles (width `tile`) that Visibility::tile_fully_visible accepts for
// the query positions [p_first, p_last], as int ranges worked out once per
// unit: tile t is fully visible <=> t <= causal_last && (t < sink_end ||
// t >= window_first).  From the same four tests: the tile's last key j0 +
// tile - 1 <= p_first; it is below sink; p_first >= full_from (window_first
// 0); p_last - j0 < window.  LEAN's softmax asks this per tile (three int
// compares instead of tile_fully_visible's int64 ones).
struct FullTiles {
  int causal_last;
  int sink_end;
  int window_first;
  __host__ __device__ __forceinline__ bool fully_visible(int t) const {
    return t <= causal_last && (t < sink_end || t >= window_first);
  }
};

constexpr int64_t kBigTile = int64_t(1) << 30;  // tile indices are clamped to it
__host__ __device__ __forceinline__ int clamp_tile(int64_t x) {
  return static_cast<int>(x < kBigTile ? x : kBigTile);
}

__host__ __device__ __forceinline__ FullTiles full_tiles(const Visibility& vis, int64_t p_first,
                                                         int64_t p_last, int tile) {
  FullTiles f;
  f.causal_last = clamp_tile((p_first + 1) / tile - 1);
  f.sink_end = clamp_tile(vis.sink / tile);
  const int64_t d = p_last - vis.window;  // kNoWindow: very negative
  f.window_first = p_first >= vis.full_from || d < 0 ? 0 : clamp_tile(d / tile + 1);
  return f;
}

// Which clauses of mask_tile's test (c <= hi: causal and keys before k_len;
// c >= lo: inside the window; c < sink_c: a sink key) can reject elements of
// a tile that is not fully visible to a warp's rows [p_first, p_last]
// (LEAN >= kLeanMasks):
//   kMaskUpper  the window-or-sink clause holds for every element (the tile
//               lies in the sink, or at or past window_first): c <= hi;
//   otherwise, when c <= hi holds for every element (t <= causal_last, no key
//   past k_len):
//   kMaskSink   every key lies before every row's window, and no row is past
//               full_from: c < sink_c (the sink tile, once rows are W + 128
//               past it);
//   kMaskLower  no key is a sink key: c >= lo (the window's first tile);
//   kMaskBoth   anything else: the whole test.
// With FullTiles' ranges and three more:
struct MaskTiles {
  int sink_free_first;    // tiles t >= this hold no sink key: ceil(sink / tile)
  int complete_end;       // tiles t < this hold no key at or past k_len: k_len / tile
  int before_window_end;  // tiles t < this end before every row's window (0 if a
                          // row is past full_from): (p_first - window + 1) / tile
};
enum MaskKind : int { kMaskUpper, kMaskSink, kMaskLower, kMaskBoth };

__host__ __device__ __forceinline__ MaskTiles mask_tiles(const Visibility& vis, int64_t p_first,
                                                         int64_t p_last, int64_t k_len, int tile) {
  const int64_t window_start = p_first - vis.window + 1;  // kNoWindow: very negative
  // (window_start < tile only guards the sign: [0, tile) divides to 0 anyway)
  return {clamp_tile((vis.sink + tile - 1) / tile), clamp_tile(k_len / tile),
          p_last >= vis.full_from || window_start < tile ? 0 : clamp_tile(window_start / tile)};
}

__host__ __device__ __forceinline__ MaskKind mask_kind(const FullTiles& f, const MaskTiles& m,
                                                       int t) {
  if (t < f.sink_end || t >= f.window_first) return kMaskUpper;
  if (t > f.causal_last || t >= m.complete_end) return kMaskBoth;
  if (t < m.before_window_end) return kMaskSink;
  return t >= m.sink_free_first ? kMaskLower : kMaskBoth;
}

// Sets to -inf the scores of a thread's 64 accumulator elements of a 16 x 128
// tile that Visibility::visible (or j < k_len) rejects: element sc[4 n + e]
// is query position p_row + 8 (e >> 1), key j_col + c with c = 8 n + (e & 1)
// in [0, 121].  Same predicate as v5's per-element int64 test, rewritten per
// row as a range of c (computed once, in int64): visible <=> c <= hi && (c >=
// lo || c < sink_c), where
//   hi = min(p - j_col, k_len - 1 - j_col)   (causal, and keys past the end),
//   lo = p - j_col - window + 1, or 0 when p >= full_from   (inside the window),
//   sink_c = sink - j_col   (sink keys),
// each clamped to [-1, 256] (c <= 121 decides the same).  So each element
// costs ~3 compares against a constant instead of ~20 int64 instructions.
__host__ __device__ __forceinline__ void mask_tile(float (&sc)[64], const Visibility& vis,
                                                   int64_t p_row, int64_t j_col, int64_t k_len) {
  mask_query_rows<16>(sc, vis, p_row, j_col, k_len);  // mask_sm90.cuh, shared with the backward
}

// mask_tile with only the clause that `kind` says can reject (mask_kind): one
// compare per element instead of three on most boundary tiles (the diagonal
// tile, the window's first tile, the sink tile).  Same result.
__host__ __device__ __forceinline__ void mask_tile_of_kind(float (&sc)[64], MaskKind kind,
                                                           const Visibility& vis, int64_t p_row,
                                                           int64_t j_col, int64_t k_len) {
  if (kind == kMaskUpper)
    mask_query_rows_upper<16>(sc, p_row, j_col, k_len);
  else if (kind == kMaskSink)
    mask_query_rows_sink<16>(sc, vis, j_col);
  else if (kind == kMaskLower)
    mask_query_rows_lower<16>(sc, vis, p_row, j_col);
  else
    mask_query_rows<16>(sc, vis, p_row, j_col, k_len);
}

// One work unit: kBlockM query rows of one (batch, query head).
struct Fwd51Unit {
  int b, h, kvh;
  int64_t row0;     // first query row
  int64_t p_first;  // its position
  Visibility vis;
  TileList tiles;   // key tiles of the unit's rows, as v5
};

// Unit u of the n_m x n_slices units in the order of the one-CTA-per-unit
// grid (grid_pos with blockIdx.x = u; longest rows first).
__device__ __forceinline__ Fwd51Unit fwd51_unit(const AttnParams& p, int u, int n_m, int block_m,
                                                int block_n, bool heads_inner) {
  const int n_slices = static_cast<int>(p.batch * p.q_heads);
  const GridPos pos = heads_inner ? GridPos{u / n_slices, u % n_slices}
                                  : GridPos{u % n_m, u / n_m};
  const int m_block = n_m - 1 - pos.unit;
  const int q_heads = static_cast<int>(p.q_heads);
  Fwd51Unit w;
  w.h = pos.slice % q_heads;
  w.b = pos.slice / q_heads;
  w.kvh = static_cast<int>(w.h / (p.q_heads / p.kv_heads));
  w.row0 = static_cast<int64_t>(m_block) * block_m;
  w.p_first = w.row0 + p.q_offset;
  const int64_t p_last = min_of<int64_t>(w.p_first + block_m - 1, p.k_len - 1);
  w.vis = p.visibility(w.b);
  w.tiles = tiles_of(visible_keys(w.vis, w.p_first, p_last), block_n);
  return w;
}

// LEAN levels (see the top of the file).
constexpr int kLean = 1, kLeanPinned = 2, kLeanMasks = 3, kLeanSplit = 4, kLeanOverlap = 5;

template <typename T, int D, bool PINGPONG, bool PERSISTENT, int LEAN = 0>
__global__ void __launch_bounds__(Fwd51Config<D, PERSISTENT>::kThreads, 1)
    fwd51_sm90_kernel(const AttnParams p, const __grid_constant__ CUtensorMap tm_q,
                      const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v,
                      const __grid_constant__ CUtensorMap tm_o, bool heads_inner) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Fwd51Config<D, PERSISTENT>;
  constexpr int BM = C::kBlockM, BN = C::kBlockN, ST = C::kStages, NB = D / 8;
  constexpr int NC = C::kConsumers, QB = C::kQBuffers;
  extern __shared__ unsigned char smem_raw[];
  auto& s = *reinterpret_cast<Fwd51Smem<T, D, PERSISTENT>*>(align_smem<1024>(smem_raw));

  // Work units u = blockIdx.x, blockIdx.x + gridDim.x, ...: one per CTA
  // unless PERSISTENT (the launcher sizes the grid).
  const int n_m = static_cast<int>((p.q_len + BM - 1) / BM);
  const int n_units = n_m * static_cast<int>(p.batch * p.q_heads);
  const int u_first = static_cast<int>(blockIdx.x), u_step = static_cast<int>(gridDim.x);

  // LEAN: warp-uniform to the compiler (warp_group_index in sm90_ptx.cuh).
  const int wg = LEAN >= kLean ? warp_group_index() : static_cast<int>(threadIdx.x / 128);
  if (threadIdx.x == 0) {
    for (int i = 0; i < QB; ++i) {
      mbar_init(&s.q_full[i], 1);
      mbar_init(&s.q_empty[i], NC);
    }
    for (int i = 0; i < ST; ++i) {
      mbar_init(&s.k_full[i], 1);
      mbar_init(&s.v_full[i], 1);
      mbar_init(&s.empty[i], NC * 128);
      if constexpr (LEAN >= kLeanSplit) mbar_init(&s.v_empty[i], NC * 128);
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
      tma_prefetch_map(&tm_o);
      int kv = 0;  // K/V tiles loaded so far (the ring runs on across units)
      for (int u = u_first, j = 0; u < n_units; u += u_step, ++j) {
        const Fwd51Unit w = fwd51_unit(p, u, n_m, BM, BN, heads_inner);
        const int qb = j % QB;
        // Q buffer qb held unit j - QB: wait until every group's output store
        // from it has been read.
        if (j >= QB) mbar_wait(&s.q_empty[qb], ((j / QB) - 1) & 1);
        mbar_arrive_expect_tx(&s.q_full[qb], C::kQBytes);
        for (int half = 0; half < C::kHalves; ++half)
          tma_load_4d(s.q[qb][half], &tm_q, &s.q_full[qb], half * C::kHalfCols,
                      static_cast<int>(w.row0), w.h, w.b);
        for (int it = 0; it < w.tiles.count; ++it, ++kv) {
          const int st = kv % ST;
          const int use = kv / ST;
          if (use > 0) mbar_wait(&s.empty[st], (use - 1) & 1);  // every group done with kv - ST
          const int j0 = w.tiles[it] * BN;
          mbar_arrive_expect_tx(&s.k_full[st], C::kTileBytes);
          for (int half = 0; half < C::kHalves; ++half)
            tma_load_4d(s.k[st][half], &tm_k, &s.k_full[st], half * C::kHalfCols, j0, w.kvh, w.b);
          // kLeanSplit: K and V of a stage are freed apart (K once S is done)
          if (LEAN >= kLeanSplit && use > 0) mbar_wait(&s.v_empty[st], (use - 1) & 1);
          mbar_arrive_expect_tx(&s.v_full[st], C::kTileBytes);
          for (int half = 0; half < C::kHalves; ++half)
            tma_load_4d(s.v[st][half], &tm_v, &s.v_full[st], half * C::kHalfCols, j0, w.kvh, w.b);
        }
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  regs_alloc<C::kConsumerRegs>();
  const int cg = wg - 1;                      // consumer group: unit rows 64 cg ... 64 cg + 63
  const int warp = (threadIdx.x / 32) & 3;    // warp in the group: 16 rows each
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;      // accumulator row g (and g + 8), columns 2t, 2t+1
  const bool store_thread = warp == 0 && lane == 0;  // issues the group's TMA stores
  const float scale_log2 = p.scale * kLog2e;

  float o[D / 2];     // O accumulators: element o[4 n + e] as sc below, n < D / 8
  float row_max[2], row_sum[2];
  float sc[64];       // S of one tile, then its probabilities
  uint32_t pa[8][4] = {};  // P as A fragments of P V (16-bit)
  float corr[2];
  int kv = 0;              // K/V tiles consumed so far (same count as the producer's)
  int held_q = -1;         // store_thread: Q buffer whose output store may still be reading it
  // store_thread: once the store from Q buffer held_q has been read, hand the
  // buffer back to the producer (one arrival per group).
  auto release_q = [&]() {
    if (store_thread && held_q >= 0) {
      bulk_wait_group_read0();
      mbar_arrive(&s.q_empty[held_q]);
    }
    held_q = -1;
  };
  // A consumer thread is done with the K or the V of stage st.  Below
  // kLeanSplit the stage is freed once, for both, by release_v after the
  // tile's P V (release_k does nothing); from kLeanSplit on, K (empty) as
  // soon as the tile's S is done and V (v_empty) after its P V
  // (FlashAttention-3's separate K and V pipelines): with two stages (D=128)
  // the producer can then load tile i + 1's K while tile i's P V runs.  (It
  // still loads in the order K, V, K, ...: K of tile n + 1 waits for V of
  // tile n's stage to come free, so under kLeanOverlap, whose V comes free
  // after the softmax, K loads a little later than under kLeanSplit alone.)
  auto release_k = [&](int st) {
    if constexpr (LEAN >= kLeanSplit) mbar_arrive(&s.empty[st]);
  };
  auto release_v = [&](int st) {
    if constexpr (LEAN >= kLeanSplit)
      mbar_arrive(&s.v_empty[st]);
    else
      mbar_arrive(&s.empty[st]);
  };
  // Stage and phase parity of the n-th K/V tile (n >= 0; kLeanPinned: in
  // unsigned arithmetic, which needs no sign fix-ups).
  auto stage_of = [](int n) {
    return LEAN >= kLeanPinned ? static_cast<int>(static_cast<uint32_t>(n) % ST) : n % ST;
  };
  auto parity_of = [](int n) {
    return LEAN >= kLeanPinned ? (static_cast<uint32_t>(n) / ST) & 1
                               : static_cast<uint32_t>((n / ST) & 1);
  };
  // LEAN: the wgmma descriptors of Q buffer 0, K stage 0 and V stage 0; the
  // others are fixed byte offsets from them (desc_advance).
  const uint64_t q_desc0 = desc_k_major(smem_u32(s.q[0][0]));
  const uint64_t k_desc0 = desc_k_major(smem_u32(s.k[0][0]));
  const uint64_t v_desc0 = desc_mn_major(smem_u32(s.v[0][0]), C::kHalfTileBytes);
  constexpr uint32_t kQBufferBytes = sizeof(s.q[0]);
  constexpr uint32_t kKStageBytes = sizeof(s.k[0]);
  constexpr uint32_t kVStageBytes = sizeof(s.v[0]);

  for (int u = u_first, j = 0; u < n_units; u += u_step, ++j) {
    const Fwd51Unit w = fwd51_unit(p, u, n_m, BM, BN, heads_inner);
    const bool last_unit = u + u_step >= n_units;
    const TileList& tiles = w.tiles;
    const Visibility& vis = w.vis;
    const int qb = j % QB;
    const int64_t gp_first = w.p_first + cg * 64;  // position of the group's first row
    const int64_t wp_first = gp_first + warp * 16;
    FullTiles warp_full = full_tiles(vis, wp_first, wp_first + 15, BN);  // LEAN
    if constexpr (LEAN >= kLeanPinned) {
      pin_reg(warp_full.causal_last);
      pin_reg(warp_full.sink_end);
      pin_reg(warp_full.window_first);
    }
    MaskTiles warp_masks{};
    if constexpr (LEAN >= kLeanMasks) {
      warp_masks = mask_tiles(vis, wp_first, wp_first + 15, p.k_len, BN);
      pin_reg(warp_masks.sink_free_first);
      pin_reg(warp_masks.complete_end);
      pin_reg(warp_masks.before_window_end);
    }
    const SpanTiles group_tiles = span_tiles(vis, gp_first, gp_first + 63, p.k_len, BN);

#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;

    mbar_wait(&s.q_full[qb], static_cast<uint32_t>((j / QB) & 1));
    const uint32_t q_addr = smem_u32(s.q[qb][0]) + cg * 64 * 128;  // this group's 64 rows

    // S = Q K^T into sc (issued, not waited for); as v5.  LEAN: every
    // descriptor is a constant offset from one made before the unit loop.
    auto issue_s = [&](int st) {
      const uint32_t k_addr = smem_u32(s.k[st][0]);
      const uint64_t q_desc = desc_advance(q_desc0, qb * kQBufferBytes + cg * 64 * 128);
      const uint64_t k_desc = desc_advance(k_desc0, st * kKStageBytes);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off = (kk >> 2) * C::kQHalfBytes + (kk & 3) * 32;
        const uint32_t k_off = (kk >> 2) * C::kHalfTileBytes + (kk & 3) * 32;
        if constexpr (LEAN >= kLean)
          wgmma_ss<T>(sc, desc_advance(q_desc, off), desc_advance(k_desc, k_off), kk > 0);
        else
          wgmma_ss<T>(sc, desc_k_major(q_addr + off), desc_k_major(k_addr + k_off), kk > 0);
      }
    };
    // O += P V (issued, not waited for); as v5.
    auto issue_pv = [&](int st) {
      const uint32_t v_addr = smem_u32(s.v[st][0]);
      const uint64_t v_desc = desc_advance(v_desc0, st * kVStageBytes);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        const uint64_t desc = LEAN >= kLean ? desc_advance(v_desc, kk * 16 * 128)
                                   : desc_mn_major(v_addr + kk * 16 * 128, C::kHalfTileBytes);
        if constexpr (D == 128)
          wgmma_rs<T>(o, pa[kk], desc);
        else
          wgmma_rs_n64<T>(o, pa[kk], desc);
      }
    };
    // Scores of the unit's key tile `it` to probabilities, online softmax; as
    // v5 unless LEAN (see the top of the file).
    auto softmax_tile = [&](int it) {
      const int64_t j0 = static_cast<int64_t>(tiles[it]) * BN;
      if constexpr (LEAN >= kLeanMasks) {
        // (mask_kind is warp-uniform: the branches stay convergent)
        if (!warp_full.fully_visible(tiles[it]))
          mask_tile_of_kind(sc, mask_kind(warp_full, warp_masks, tiles[it]), vis, wp_first + g,
                            j0 + 2 * t, p.k_len);
      } else if constexpr (LEAN >= kLean) {
        if (!warp_full.fully_visible(tiles[it]))
          mask_tile(sc, vis, wp_first + g, j0 + 2 * t, p.k_len);
      }
      if constexpr (LEAN >= kLean) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // (kLeanPinned: from the first pair; the same max)
          float mx = LEAN >= kLeanPinned ? fmaxf(sc[2 * r], sc[2 * r + 1]) : -INFINITY;
#pragma unroll
          for (int n = LEAN >= kLeanPinned ? 1 : 0; n < 16; ++n)
            mx = fmaxf(mx, fmaxf(sc[4 * n + 2 * r], sc[4 * n + 2 * r + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          mx *= scale_log2;  // the max of the scaled scores (scale > 0: see the launcher)
          const float ref = row_max[r];
          const bool bump = mx > ref + C::kLazyRescale;  // false while both are -inf
          const float new_ref = bump ? mx : ref;
          const float m_safe = new_ref == -INFINITY ? 0.f : new_ref;  // row sees nothing yet
          corr[r] = bump ? exp2f(ref - m_safe) : 1.f;
          row_max[r] = new_ref;
          float sum = 0.f;
#pragma unroll
          for (int n = 0; n < 16; ++n) {
            sc[4 * n + 2 * r] = exp2f(fmaf(sc[4 * n + 2 * r], scale_log2, -m_safe));
            sc[4 * n + 2 * r + 1] = exp2f(fmaf(sc[4 * n + 2 * r + 1], scale_log2, -m_safe));
            sum += sc[4 * n + 2 * r] + sc[4 * n + 2 * r + 1];
          }
          row_sum[r] = row_sum[r] * corr[r] + sum;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 64; ++i) sc[i] *= scale_log2;
        if (!vis.tile_fully_visible(wp_first, wp_first + 15, j0, j0 + BN - 1))
          mask_tile(sc, vis, wp_first + g, j0 + 2 * t, p.k_len);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = row_max[r];
#pragma unroll
          for (int n = 0; n < 16; ++n)
            mx = fmaxf(mx, fmaxf(sc[4 * n + 2 * r], sc[4 * n + 2 * r + 1]));
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
      }
    };
    // O *= corr, then P as A fragments; as v5.
    auto rescale_and_pack = [&]() {
      // LEAN: corr is exactly 1 for a row whose reference stayed; a warp
      // whose 16 rows all stayed skips the multiplies (warp-uniform branch).
      if (LEAN < kLean || __any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) {
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[4 * n + e] *= corr[e >> 1];
      }
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        pa[kk][0] = MmaOp<T>::pack(sc[8 * kk + 0], sc[8 * kk + 1]);
        pa[kk][1] = MmaOp<T>::pack(sc[8 * kk + 2], sc[8 * kk + 3]);
        pa[kk][2] = MmaOp<T>::pack(sc[8 * kk + 4], sc[8 * kk + 5]);
        pa[kk][3] = MmaOp<T>::pack(sc[8 * kk + 6], sc[8 * kk + 7]);
      }
    };

    if constexpr (!PINGPONG) {
      // One tile at a time: S, softmax, P V (the other groups fill the gaps).
      for (int it = 0; it < tiles.count; ++it) {
        const int n = kv + it, st = n % ST;
        mbar_wait(&s.k_full[st], parity_of(n));
        if (!group_tiles.needs(tiles[it])) {
          // No row of this group sees the tile.  The waits keep this group's
          // arrivals on empty[st] (and v_empty[st]) in step with the stage's uses.
          mbar_wait(&s.v_full[st], parity_of(n));
          release_k(st);
          release_v(st);
        } else {
          fence_regs(sc);
          wgmma_fence();
          issue_s(st);
          wgmma_commit();
          wgmma_wait<0>();
          fence_regs(sc);
          release_k(st);
          softmax_tile(it);
          rescale_and_pack();
          mbar_wait(&s.v_full[st], parity_of(n));  // V's copy overlapped S and the softmax
          fence_regs(o);
          wgmma_fence();
          issue_pv(st);
          wgmma_commit();
          wgmma_wait<0>();
          fence_regs(o);
          fence_frags(pa);
          release_v(st);  // this thread is done with V (below kLeanSplit: K and V)
        }
        if (it == 0) release_q();  // the previous unit's store has long been read by now
      }
    } else {
      // Turns 0 .. count of the unit: in turn i this group issues P V of tile
      // i - 1 (if it computed that tile) and S of tile i (if it needs it),
      // passes the turn to the next group (round robin), waits for both,
      // releases tile i - 1's stage (from kLeanSplit: its V, and tile i's K),
      // then runs the softmax of tile i while
      // the other groups' wgmmas run.  Every group takes every turn (also
      // with nothing to issue), so the barrier arrivals always pair up; the
      // turns run on across units, only the CTA's very first turn needs no
      // token and its very last passes none on.
      const int turns = tiles.count + 1;
      auto pass_turn = [&](int turn) {
        if (!(last_unit && turn == turns - 1 && cg == NC - 1))
          named_bar_arrive(C::kTurnBar + (cg + 1) % NC, 256);
      };
      // One turn's wgmmas: fence, issue, commit, hand the turn on, wait, all
      // in one straight path per combination (ptxas serialises wgmmas whose
      // issue and wait sit on different branches).
      auto turn_gemms = [&]<bool PV, bool S>(int turn, int pv_st, int s_st) {
        fence_regs(sc);
        fence_regs(o);
        wgmma_fence();
        if constexpr (PV) issue_pv(pv_st);
        if constexpr (S) issue_s(s_st);
        wgmma_commit();
        pass_turn(turn);
        wgmma_wait<0>();
        fence_regs(sc);
        fence_regs(o);
        fence_frags(pa);
      };
      // kLeanOverlap, a turn with both products: S of tile i first, then P V
      // of tile i - 1, in two commit groups; the softmax of tile i runs once
      // S is done (wait for one group) while P V still runs, and only O's
      // rescale and the packing of P, which touch what P V reads and writes,
      // wait for P V.  Same operations in the same order per element.
      auto turn_overlapped = [&](int turn, int pv_st, int s_st) {
        fence_regs(sc);
        fence_regs(o);
        fence_frags(pa);
        wgmma_fence();
        issue_s(s_st);
        wgmma_commit();
        issue_pv(pv_st);
        wgmma_commit();
        pass_turn(turn);
        wgmma_wait<1>();
        fence_regs(sc);
        release_k(s_st);
        softmax_tile(turn);
        fence_wait_placement();  // else ptxas waits for P V before the softmax
        wgmma_wait<0>();
        fence_regs(o);
        fence_frags(pa);
        release_v(pv_st);
        rescale_and_pack();
      };
      int pending = -1;  // tile (of the unit) whose P V is still to be issued
      for (int turn = 0; turn < turns; ++turn) {
        const bool has_tile = turn < tiles.count;
        const int n = kv + turn, st = stage_of(n);
        const bool do_s = has_tile && group_tiles.needs(tiles[turn]);
        const int pv_st = pending >= 0 ? stage_of(kv + pending) : 0;
        if (has_tile) mbar_wait(&s.k_full[st], parity_of(n));
        if (pending >= 0) mbar_wait(&s.v_full[pv_st], parity_of(kv + pending));
        if (!(j == 0 && turn == 0 && cg == 0)) named_bar_sync(C::kTurnBar + cg, 256);
        if (LEAN >= kLeanOverlap && pending >= 0 && do_s) {
          turn_overlapped(turn, pv_st, st);  // (turn >= 1: no Q to release here)
          pending = turn;
          continue;
        }
        if (pending >= 0 && do_s)
          turn_gemms.template operator()<true, true>(turn, pv_st, st);
        else if (pending >= 0)
          turn_gemms.template operator()<true, false>(turn, pv_st, st);
        else if (do_s)
          turn_gemms.template operator()<false, true>(turn, pv_st, st);
        else
          pass_turn(turn);
        if (pending >= 0) release_v(pv_st);
        pending = -1;
        if (do_s) {
          release_k(st);
          softmax_tile(turn);
          rescale_and_pack();
          pending = turn;
        } else if (has_tile) {
          mbar_wait(&s.v_full[st], parity_of(n));  // see the plain loop
          release_k(st);
          release_v(st);
        }
        if (turn == 0) release_q();  // the previous unit's store has long been read by now
      }
    }
    release_q();  // (done above unless the unit had no tile)
    kv += tiles.count;

    // Epilogue: normalise; lse (natural log) per row; out through shared
    // memory: the group's own Q rows are free (its last S wgmma has
    // completed), written in the 128-byte-swizzled layout (16-byte chunk c
    // of row r at chunk c ^ (r & 7); r & 7 == g here), then one TMA store
    // per 64-column half.
    float* lse = p.lse + w.b * p.lse_batch_stride + w.h * p.lse_head_stride;
    const uint32_t stage_addr = smem_u32(s.q[qb][0]) + cg * 64 * 128;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row_in_group = warp * 16 + g + r * 8;
      const int64_t row = w.row0 + cg * 64 + row_in_group;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const uint32_t packed =
            MmaOp<T>::pack(o[4 * nb + 2 * r] * inv, o[4 * nb + 2 * r + 1] * inv);
        const int half = nb >> 3, chunk = (nb & 7) ^ g;
        st_shared_u32(stage_addr + half * C::kQHalfBytes + row_in_group * 128 + chunk * 16 + t * 4,
                      packed);
      }
      if (t == 0 && row < p.q_len) lse[row] = (row_max[r] + log2f(sum)) * (1.f / kLog2e);
    }
    fence_proxy_async_shared();
    named_bar_sync(C::kEpilogueBar + cg, 128);
    const int64_t group_row0 = w.row0 + cg * 64;
    if (store_thread) {
      if (group_row0 < p.q_len) {
        for (int half = 0; half < C::kHalves; ++half)
          tma_store_4d(&tm_o, s.q[qb][half] + cg * 64 * C::kHalfCols, half * C::kHalfCols,
                       static_cast<int>(group_row0), w.h, w.b);
      }
      bulk_commit_group();
    }
    held_q = qb;
  }
  // Shared memory must outlive the last store's reads; the producer needs no
  // more Q buffers.
  if (store_thread) bulk_wait_group_read0();
#else
  // Built for another target: never launched (the launcher checks the device
  // and the presence of sm_90a code first).
  __trap();
#endif
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
