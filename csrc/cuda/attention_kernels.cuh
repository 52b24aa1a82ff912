// Tensor-core kernels of swaa::fwd and swaa::bwd (FlashAttention-2 style,
// sm_80 and newer): mma.sync m16n8k16 fed by ldmatrix from XOR-swizzled shared
// memory, cp.async tile copies overlapped with the math, online softmax in
// registers, float32 accumulation.
//
// Every kernel is "row-owned": a CTA owns a block of rows (queries for the
// forward and for dq, keys for dk/dv), each warp 16 of them, and walks the
// column tiles (keys, resp. queries) that swaa/visibility.h says are visible:
//   forward, dq : visible_keys(query block)   -> sink tiles, then window tiles
//   dk, dv      : visible_queries(key block)  -> near band, then far rows
//                 (sink keys, rows past full_from), for every query head of
//                 the block's GQA group (K/V are never repeated).
// A warp masks a tile element by element only when tile_fully_visible says
// the (16 rows x tile) piece is not wholly visible.
//
// The backward is deterministic: dq and dk/dv are written by the CTA owning
// the rows, no atomics.  delta = rowsum(dout * out) comes from a small
// preprocess kernel.
//
// Instantiated per (dtype, head dim) by csrc/cuda/attention_<dtype>_hd<D>.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "swaa/params.h"
#include "swaa/visibility.h"

namespace swaa {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; zero-fills when !valid.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
// 4-byte async copy global -> shared; zero-fills when !valid.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename T>
struct MmaOp;

template <>
struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
  }
};

template <>
struct MmaOp<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    return __half22float2(*reinterpret_cast<__half2*>(&x));
  }
};

// ---------------------------------------------------------------------------
// Shared-memory tiles: ROWS x D elements, rows of D/8 16-byte chunks, chunk c
// of row r stored at chunk (c ^ (r & 7)) so that ldmatrix (8 rows, same
// chunk) and the cp.async writes are free of bank conflicts.

template <int D>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// Copies rows [row0, row0 + ROWS) of a (rows_total, D) matrix with row stride
// `stride` (elements) into a swizzled tile; rows past rows_total become zeros.
template <typename T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t stride, int64_t row0,
                                          int64_t rows_total) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int chunk = i * THREADS + threadIdx.x;
    const int r = chunk / kChunksPerRow;
    const int c = chunk % kChunksPerRow;
    const bool valid = row0 + r < rows_total;
    const T* g = valid ? src + (row0 + r) * stride + c * 8 : src;
    cp_async_16(tile + swizzle<D>(r, c * 8), g, valid);
  }
}

// A operand (16 rows x 16 k) of rows [r0, r0+16), k columns [k0, k0+16).
template <int D>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const void* tile, int r0, int k0,
                                       int lane) {
  const int idx = lane >> 3, r = lane & 7;
  const int row = r0 + r + (idx & 1) * 8;
  const int col = k0 + (idx >> 1) * 8;
  ldmatrix_x4(a, static_cast<const uint16_t*>(tile) + swizzle<D>(row, col));
}

// B operands of two n8 tiles where the tile stores B^T (n rows, k columns):
// b[0], b[1] for n rows [n0, n0+8), b[2], b[3] for [n0+8, n0+16).
template <int D>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const void* tile, int n0, int k0,
                                       int lane) {
  const int idx = lane >> 3, r = lane & 7;
  const int row = n0 + r + (idx >> 1) * 8;
  const int col = k0 + (idx & 1) * 8;
  ldmatrix_x4(b, static_cast<const uint16_t*>(tile) + swizzle<D>(row, col));
}

// B operands of two n8 tiles where the tile stores B itself (k rows, n
// columns): b[0], b[1] for columns [n0, n0+8), b[2], b[3] for [n0+8, n0+16).
template <int D>
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], const void* tile, int k0, int n0,
                                             int lane) {
  const int idx = lane >> 3, r = lane & 7;
  const int row = k0 + r + (idx & 1) * 8;
  const int col = n0 + (idx >> 1) * 8;
  ldmatrix_x4_trans(b, static_cast<const uint16_t*>(tile) + swizzle<D>(row, col));
}

// acc (16 x 8*NT) += A (16 x D, rows r0.. of tile_a) * B^T (tile_b rows n0..)
template <typename T, int D, int NT>
__device__ __forceinline__ void gemm_abt(float (&acc)[NT][4], const T* tile_a, int r0,
                                         const T* tile_b, int lane) {
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += 16) {
    uint32_t a[4];
    load_a<D>(a, tile_a, r0, k0, lane);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      load_b<D>(b, tile_b, np * 16, k0, lane);
      MmaOp<T>::run(acc[2 * np], a, b[0], b[1]);
      MmaOp<T>::run(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc (16 x D) += P (16 x 8*NT, in registers as C fragments) * B (tile rows
// 0..8*NT, all D columns).
template <typename T, int D, int NT>
__device__ __forceinline__ void gemm_pb(float (&acc)[D / 8][4], const float (&p)[NT][4],
                                        const T* tile_b, int lane) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    uint32_t a[4];
    a[0] = MmaOp<T>::pack(p[2 * kk][0], p[2 * kk][1]);
    a[1] = MmaOp<T>::pack(p[2 * kk][2], p[2 * kk][3]);
    a[2] = MmaOp<T>::pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = MmaOp<T>::pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      load_b_trans<D>(b, tile_b, kk * 16, dp * 16, lane);
      MmaOp<T>::run(acc[2 * dp], a, b[0], b[1]);
      MmaOp<T>::run(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) x[i][j] = 0.f;
}

// The column tiles a row block visits: tiles [0, n_head) (the sink keys),
// then [body_first, body_first + count - n_head) (the window keys).
struct TileList {
  int n_head;
  int body_first;
  int count;
  __device__ __forceinline__ int operator[](int i) const {
    return i < n_head ? i : body_first + (i - n_head);
  }
};

// Tiles of width `tile` covering the key ranges of visible_keys (head starts
// at 0 and ends at or before body.begin), none visited twice.
__device__ __forceinline__ TileList tiles_of(const KeySpan& span, int tile) {
  TileList list;
  list.n_head = span.head.empty() ? 0 : static_cast<int>((span.head.end + tile - 1) / tile);
  int first = static_cast<int>(span.body.begin / tile);
  const int end = static_cast<int>((span.body.end + tile - 1) / tile);
  first = max_of(first, list.n_head);
  list.body_first = first;
  list.count = list.n_head + (span.body.empty() || end <= first ? 0 : end - first);
  return list;
}

// The key tiles (width `tile`) one warp's rows need: tiles [0, head_end) and
// [body_first, body_end), as ints.  A CTA walks the union over its warps; a
// warp skips the tiles it does not need (a fully masked tile adds exactly
// nothing: probabilities 0, so skipping it is bitwise neutral).  Rows past
// the last key position (query rows past q_len) need no tile.
struct WarpTiles {
  int head_end;
  int body_first;
  int body_end;
  __device__ __forceinline__ bool needs(int tile_index) const {
    return tile_index < head_end || (tile_index >= body_first && tile_index < body_end);
  }
};

__device__ __forceinline__ WarpTiles warp_tiles(const Visibility& vis, int64_t wp_first,
                                                int64_t k_len, int tile) {
  if (wp_first > k_len - 1) return WarpTiles{0, 0, 0};
  const KeySpan span = visible_keys(vis, wp_first, min_of<int64_t>(wp_first + 15, k_len - 1));
  WarpTiles w;
  w.head_end = span.head.empty() ? 0 : static_cast<int>((span.head.end + tile - 1) / tile);
  w.body_first = static_cast<int>(span.body.begin / tile);
  w.body_end = span.body.empty() ? 0 : static_cast<int>((span.body.end + tile - 1) / tile);
  return w;
}

// Position of this CTA in a linear grid of n_units x n_slices CTAs (a slice is
// one (batch, head) pair).  slices_inner: consecutive CTAs take the same unit
// of every slice before the next unit, so the longest units (ordered first by
// the caller) of every head start in the first wave instead of trailing behind
// the other heads; otherwise the units of one slice are consecutive (the grid
// order of v1-v3).
struct GridPos {
  int unit;
  int slice;
};
__device__ __forceinline__ GridPos grid_pos(int n_units, int n_slices, bool slices_inner) {
  const int cta = static_cast<int>(blockIdx.x);
  if (slices_inner) return GridPos{cta / n_slices, cta % n_slices};
  return GridPos{cta % n_units, cta / n_units};
}

// ---------------------------------------------------------------------------
// Forward

template <typename T, int D, int WARPS>
struct FwdConfig {
  static constexpr int kWarps = WARPS;
  static constexpr int kBlockM = 16 * kWarps;   // query rows per CTA
  static constexpr int kBlockN = D <= 64 ? 128 : 64;  // keys per tile
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kSmem = (kBlockM + 2 * kBlockN) * D * static_cast<int>(sizeof(T));
};

// Masks the elements of a warp's (16 x 8*NT) score tile that are not visible.
template <int NT>
__device__ __forceinline__ void mask_scores(float (&s)[NT][4], const Visibility& vis,
                                            int64_t p_row0, int64_t j_col0, int64_t k_len,
                                            int lane, bool rows_are_queries) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = p_row0 + g + (e >> 1) * 8;
      const int64_t col = j_col0 + nt * 8 + 2 * t + (e & 1);
      const int64_t p = rows_are_queries ? row : col;
      const int64_t j = rows_are_queries ? col : row;
      if (!(j < k_len && vis.visible(p, j))) s[nt][e] = -INFINITY;
    }
}

template <typename T, int D, int WARPS>
__global__ void __launch_bounds__(FwdConfig<T, D, WARPS>::kThreads)
    fwd_kernel(const AttnParams p, bool heads_inner, bool skip_idle_warps) {
  using Cfg = FwdConfig<T, D, WARPS>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, NT = BN / 8, DT = D / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;
  T* sV = sK + BN * D;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_m = static_cast<int>((p.q_len + BM - 1) / BM);
  const GridPos pos = grid_pos(n_m, static_cast<int>(p.batch * p.q_heads), heads_inner);
  const int m_block = n_m - 1 - pos.unit;  // longest rows first (full attention)
  const int q_heads = static_cast<int>(p.q_heads);  // 32-bit index math
  const int h = pos.slice % q_heads, b = pos.slice / q_heads;
  const int64_t kvh = h / (p.q_heads / p.kv_heads);
  const int64_t row0 = static_cast<int64_t>(m_block) * BM;
  const int64_t p_first = row0 + p.q_offset;
  const int64_t p_last = min_of<int64_t>(p_first + BM - 1, p.k_len - 1);
  const Visibility vis = p.visibility(b);
  const TileList tiles = tiles_of(visible_keys(vis, p_first, p_last), BN);

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;

  load_tile<T, BM, D, Cfg::kThreads>(sQ, q, p.q_row_stride, row0, p.q_len);
  load_tile<T, BN, D, Cfg::kThreads>(sK, k, p.k_row_stride, int64_t(tiles[0]) * BN, p.k_len);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // This warp's 16 query rows stay in registers as A fragments.
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qa[kk], sQ, warp * 16, kk * 16, lane);

  const int64_t wp_first = p_first + warp * 16;  // position of the warp's first row
  const WarpTiles needed = warp_tiles(vis, wp_first, p.k_len, BN);
  const float scale_log2 = p.scale * kLog2e;
  float o[DT][4];
  zero(o);
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};

  for (int it = 0; it < tiles.count; ++it) {
    const int64_t j0 = int64_t(tiles[it]) * BN;
    load_tile<T, BN, D, Cfg::kThreads>(sV, v, p.v_row_stride, j0, p.k_len);
    cp_async_commit();

    const bool active = !skip_idle_warps || needed.needs(tiles[it]);
    float s[NT][4];
    zero(s);
    if (active) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          uint32_t bf[4];
          load_b<D>(bf, sK, np * 16, kk * 16, lane);
          MmaOp<T>::run(s[2 * np], qa[kk], bf[0], bf[1]);
          MmaOp<T>::run(s[2 * np + 1], qa[kk], bf[2], bf[3]);
        }
      }
      // Scores in log2 units, then the mask (boundary tiles only).
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
      if (!vis.tile_fully_visible(wp_first, wp_first + 15, j0, j0 + BN - 1))
        mask_scores<NT>(s, vis, wp_first, j0, p.k_len, lane, true);
    }

    cp_async_wait_all();
    __syncthreads();  // V(it) landed; every warp is done with K(it)
    if (it + 1 < tiles.count) {
      load_tile<T, BN, D, Cfg::kThreads>(sK, k, p.k_row_stride, int64_t(tiles[it + 1]) * BN,
                                         p.k_len);
      cp_async_commit();
    }

    // Online softmax, two rows per thread (g and g + 8).
#pragma unroll
    for (int r = 0; r < 2 && active; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_safe = mx == -INFINITY ? 0.f : mx;  // row sees nothing yet
      const float correction = exp2f(row_max[r] - m_safe);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * r] = exp2f(s[nt][2 * r] - m_safe);
        s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_safe);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * correction + sum;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[dt][2 * r] *= correction;
        o[dt][2 * r + 1] *= correction;
      }
    }
    if (active) gemm_pb<T, D, NT>(o, s, sV, lane);

    cp_async_wait_all();
    __syncthreads();  // K(it + 1) landed; every warp is done with V(it)
  }

  // Epilogue: normalise, write out and lse (natural log).
  const int g = lane >> 2, t = lane & 3;
  T* out = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int64_t row = row0 + warp * 16 + g + r * 8;
    if (row >= p.q_len) continue;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    T* o_row = out + row * p.o_row_stride;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const uint32_t packed = MmaOp<T>::pack(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(o_row + dt * 8 + 2 * t) = packed;
    }
    if (t == 0) lse[row] = (row_max[r] + log2f(sum)) * (1.f / kLog2e);
  }
}

// ---------------------------------------------------------------------------
// Backward

// One lane's part of delta = sum_d dout * out: the 8 elements `sub` * 8 .. + 7 of
// row i of (batch b, head h), float32 (the Hopper prep kernel uses it too).
template <typename T>
__device__ __forceinline__ float delta_part(const AttnParams& p, int64_t b, int64_t h, int64_t i,
                                            int sub) {
  const T* o = static_cast<const T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride +
               i * p.o_row_stride + sub * 8;
  const T* d = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride +
               i * p.do_row_stride + sub * 8;
  const uint4 ov = *reinterpret_cast<const uint4*>(o);
  const uint4 dv = *reinterpret_cast<const uint4*>(d);
  const uint32_t* ow = reinterpret_cast<const uint32_t*>(&ov);
  const uint32_t* dw = reinterpret_cast<const uint32_t*>(&dv);
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float2 a = MmaOp<T>::unpack(ow[w]);
    const float2 c = MmaOp<T>::unpack(dw[w]);
    sum += a.x * c.x + a.y * c.y;
  }
  return sum;
}

// delta[b, h, i] = sum_d dout * out (float32), D/8 lanes per row.
template <typename T, int D>
__global__ void bwd_delta_kernel(const AttnParams p, float* delta) {
  constexpr int kLanes = D / 8;
  const int64_t rows = p.batch * p.q_heads * p.q_len;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  const int sub = threadIdx.x % kLanes;
  float sum = 0.f;
  if (row < rows) {
    const int64_t i = row % p.q_len;
    const int64_t h = (row / p.q_len) % p.q_heads;
    const int64_t b = row / (p.q_len * p.q_heads);
    sum = delta_part<T>(p, b, h, i, sub);
  }
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (row < rows && sub == 0) delta[row] = sum;
}

template <typename T, int D, int KV_BLOCK_M>
struct BwdConfig {
  // dq kernel: 4 warps x 16 query rows, key tiles of 64.
  static constexpr int kDqWarps = 4;
  static constexpr int kDqBlockM = 16 * kDqWarps;
  static constexpr int kDqBlockN = 64;
  static constexpr int kDqThreads = 32 * kDqWarps;
  static constexpr int kDqSmem = (2 * kDqBlockM + 3 * kDqBlockN) * D * static_cast<int>(sizeof(T));
  // dk/dv kernel: 8 warps x 16 key rows, query tiles of 64 (double-buffered).
  static constexpr int kKvWarps = 8;
  static constexpr int kKvBlockN = 16 * kKvWarps;
  static constexpr int kKvBlockM = KV_BLOCK_M;
  static constexpr int kKvThreads = 32 * kKvWarps;
  static constexpr int kKvSmem = (2 * kKvBlockN + 4 * kKvBlockM) * D * static_cast<int>(sizeof(T)) +
                                 4 * kKvBlockM * static_cast<int>(sizeof(float));  // lse, delta x2
};

// Scores to log2 units (s *= scale * log2(e)); masking comes after this.
template <int NT>
__device__ __forceinline__ void scale_scores(float (&s)[NT][4], float scale_log2) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
}

// P = exp2(s - lse2) (0 where masked to -inf), dS = P * (dP - delta), in place;
// lse2 = lse * log2(e).  `lse2_of(nt, e)` / `delta_of(nt, e)` give an element's values.
template <int NT, typename LseFn, typename DeltaFn>
__device__ __forceinline__ void softmax_grad(float (&s)[NT][4], float (&dp)[NT][4],
                                             LseFn lse2_of, DeltaFn delta_of) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float prob = exp2f(s[nt][e] - lse2_of(nt, e));
      s[nt][e] = prob;
      dp[nt][e] = prob * (dp[nt][e] - delta_of(nt, e));
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdConfig<T, D, 64>::kDqThreads)
    bwd_dq_kernel(const AttnParams p, const float* delta, bool heads_inner,
                  bool skip_idle_warps) {
  using Cfg = BwdConfig<T, D, 64>;
  constexpr int BM = Cfg::kDqBlockM, BN = Cfg::kDqBlockN, NT = BN / 8, DT = D / 8;
  constexpr int kThreads = Cfg::kDqThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + BM * D;
  T* sK0 = sdO + BM * D;  // two key buffers: tile `it` lives in sK0 + (it & 1) * BN * D
  T* sV = sK0 + 2 * BN * D;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_m = static_cast<int>((p.q_len + BM - 1) / BM);
  const GridPos pos = grid_pos(n_m, static_cast<int>(p.batch * p.q_heads), heads_inner);
  const int m_block = n_m - 1 - pos.unit;  // longest rows first (full attention)
  const int q_heads = static_cast<int>(p.q_heads);  // 32-bit index math
  const int h = pos.slice % q_heads, b = pos.slice / q_heads;
  const int64_t kvh = h / (p.q_heads / p.kv_heads);
  const int64_t row0 = static_cast<int64_t>(m_block) * BM;
  const int64_t p_first = row0 + p.q_offset;
  const int64_t p_last = min_of<int64_t>(p_first + BM - 1, p.k_len - 1);
  const Visibility vis = p.visibility(b);
  const TileList tiles = tiles_of(visible_keys(vis, p_first, p_last), BN);

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride;
  const float* dlt = delta + (b * p.q_heads + h) * p.q_len;

  load_tile<T, BM, D, kThreads>(sQ, q, p.q_row_stride, row0, p.q_len);
  load_tile<T, BM, D, kThreads>(sdO, dout, p.do_row_stride, row0, p.q_len);
  load_tile<T, BN, D, kThreads>(sK0, k, p.k_row_stride, int64_t(tiles[0]) * BN, p.k_len);
  cp_async_commit();

  // Per-thread rows g and g + 8 of this warp: lse (log2 units) and delta;
  // rows past q_len get lse = +inf so their probabilities are 0.
  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + warp * 16 + g + r * 8;
    lse2[r] = row < p.q_len ? lse[row] * kLog2e : INFINITY;
    dl[r] = row < p.q_len ? dlt[row] : 0.f;
  }
  cp_async_wait_all();
  __syncthreads();

  const int64_t wp_first = p_first + warp * 16;
  const WarpTiles needed = warp_tiles(vis, wp_first, p.k_len, BN);
  const float scale_log2 = p.scale * kLog2e;
  float dq[DT][4];
  zero(dq);

  for (int it = 0; it < tiles.count; ++it) {
    const int64_t j0 = int64_t(tiles[it]) * BN;
    const T* sKc = sK0 + (it & 1) * BN * D;
    load_tile<T, BN, D, kThreads>(sV, v, p.v_row_stride, j0, p.k_len);
    cp_async_commit();

    const bool active = !skip_idle_warps || needed.needs(tiles[it]);
    float s[NT][4];
    zero(s);
    if (active) {
      gemm_abt<T, D, NT>(s, sQ, warp * 16, sKc, lane);
      scale_scores<NT>(s, scale_log2);
      if (!vis.tile_fully_visible(wp_first, wp_first + 15, j0, j0 + BN - 1))
        mask_scores<NT>(s, vis, wp_first, j0, p.k_len, lane, true);
    }

    cp_async_wait_all();
    __syncthreads();  // V(it) landed; the other K buffer is free
    if (it + 1 < tiles.count) {
      load_tile<T, BN, D, kThreads>(sK0 + ((it + 1) & 1) * BN * D, k, p.k_row_stride,
                                    int64_t(tiles[it + 1]) * BN, p.k_len);
      cp_async_commit();
    }
    if (active) {
      float dp[NT][4];
      zero(dp);
      gemm_abt<T, D, NT>(dp, sdO, warp * 16, sV, lane);
      softmax_grad<NT>(
          s, dp, [&](int, int e) { return lse2[e >> 1]; },
          [&](int, int e) { return dl[e >> 1]; });
      gemm_pb<T, D, NT>(dq, dp, sKc, lane);
    }

    cp_async_wait_all();
    __syncthreads();  // K(it + 1) landed; every warp is done with V(it)
  }

  T* dq_out = static_cast<T*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + warp * 16 + g + r * 8;
    if (row >= p.q_len) continue;
    T* dst = dq_out + row * p.dq_row_stride;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
      *reinterpret_cast<uint32_t*>(dst + dt * 8 + 2 * t) =
          MmaOp<T>::pack(dq[dt][2 * r] * p.scale, dq[dt][2 * r + 1] * p.scale);
  }
}

// How the dk/dv work is laid out over CTAs (filled by the launcher from static
// sizes).  A key block's work is its list of (query head, query tile) items;
// the first `n_split_blocks` key blocks (those holding sink keys: every later
// query sees them, so their list is ~Lq/BM items per head against ~W/BM for
// the others) are cut into `n_split` pieces of `chunk` consecutive items, one
// CTA each, that write float32 partial dk/dv (dk unscaled) to `partial`;
// bwd_dkdv_reduce_kernel sums the pieces in piece order (deterministic) and
// writes dk/dv.  A piece past the end of its block's list writes zeros.
// Unit order per (batch, kv head): the pieces of the split blocks, then the
// other key blocks in increasing order (roughly longest first: rows past
// full_from see every earlier key); slices_inner interleaves the (batch, kv
// head) slices per unit.
struct DkdvSchedule {
  int n_blocks;        // key blocks of BN keys
  int n_split_blocks;  // leading key blocks whose work is split (0: none)
  int n_split;         // pieces per split block (>= 2 when n_split_blocks > 0)
  int chunk;           // items per piece
  bool slices_inner;
  float* partial;      // (batch, kv_heads, n_split_blocks, n_split, 2, BN, D) float32

  __host__ __device__ int n_units() const { return n_blocks + n_split_blocks * (n_split - 1); }
};

// STAGED (the default): lse and delta of each query tile come into shared
// memory with the tile (cp.async), and a warp whose 16 keys no query of the
// tile can see skips the tile's math (e.g. the non-sink keys of a sink block
// against the far query rows).  !STAGED reads them from global memory per
// element and always computes (kept for comparison, SWAA_BWD_STAGE=0).
template <typename T, int D, int KV_BLOCK_M, bool STAGED>
__global__ void __launch_bounds__(BwdConfig<T, D, KV_BLOCK_M>::kKvThreads)
    bwd_dkdv_kernel(const AttnParams p, const float* delta, const DkdvSchedule sched) {
  using Cfg = BwdConfig<T, D, KV_BLOCK_M>;
  constexpr int BN = Cfg::kKvBlockN, BM = Cfg::kKvBlockM, NT = BM / 8, DT = D / 8;
  constexpr int kThreads = Cfg::kKvThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * D;
  // two buffers each: query tile `it` lives in sQ0 / sdO0 + (it & 1) * BM * D
  T* sQ0 = sV + BN * D;
  T* sdO0 = sQ0 + 2 * BM * D;
  // per buffer: BM lse values then BM delta values
  float* sCols0 = reinterpret_cast<float*>(sdO0 + 2 * BM * D);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const GridPos pos =
      grid_pos(sched.n_units(), static_cast<int>(p.batch * p.kv_heads), sched.slices_inner);
  const int kv_heads = static_cast<int>(p.kv_heads);  // 32-bit index math
  const int kvh = pos.slice % kv_heads, b = pos.slice / kv_heads;
  const int n_pieces = sched.n_split_blocks * sched.n_split;  // units that are pieces
  const int n_block = pos.unit < n_pieces ? pos.unit / sched.n_split
                                          : pos.unit - n_pieces + sched.n_split_blocks;
  const int piece = pos.unit < n_pieces ? pos.unit % sched.n_split : -1;  // -1: whole block
  const int64_t group = p.q_heads / p.kv_heads;
  const int64_t j_first = static_cast<int64_t>(n_block) * BN;
  const int64_t j_last = min_of<int64_t>(j_first + BN - 1, p.k_len - 1);
  const Visibility vis = p.visibility(b);
  // Query rows (not positions) that see some key of the block.
  const QuerySpan span =
      visible_queries(vis, j_first, j_last, p.q_offset, p.q_offset + p.q_len - 1);
  const Range near{span.near.begin - p.q_offset, span.near.end - p.q_offset};
  const Range far{span.far.begin - p.q_offset, span.far.end - p.q_offset};
  // Query tiles of the near band, then of the far rows (no tile twice).
  const int near_first = near.empty() ? 0 : static_cast<int>(near.begin / BM);
  const int near_end = near.empty() ? 0 : static_cast<int>((near.end + BM - 1) / BM);
  int far_first = far.empty() ? 0 : static_cast<int>(far.begin / BM);
  const int far_end = far.empty() ? 0 : static_cast<int>((far.end + BM - 1) / BM);
  if (!near.empty() && far_first < near_end) far_first = near_end;
  const int n_near = near_end - near_first;
  const int n_far = far_end > far_first ? far_end - far_first : 0;
  const int per_head = n_near + n_far;
  const int n_items = per_head * static_cast<int>(group);
  // This CTA's items [first, end): the whole list, or one piece of it.
  const int first = piece < 0 ? 0 : min_of(n_items, piece * sched.chunk);
  const int end = piece < 0 ? n_items : min_of(n_items, first + sched.chunk);
  auto tile_head = [&](int i) { return static_cast<int64_t>(kvh) * group + i / per_head; };
  auto tile_row0 = [&](int i) {
    const int w = i % per_head;
    return static_cast<int64_t>(w < n_near ? near_first + w : far_first + (w - n_near)) * BM;
  };

  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const T* q_b = static_cast<const T*>(p.q) + b * p.q_batch_stride;
  const T* do_b = static_cast<const T*>(p.dout) + b * p.do_batch_stride;
  const float* lse_b = p.lse + b * p.lse_batch_stride;
  const float* delta_b = delta + b * p.q_heads * p.q_len;

  load_tile<T, BN, D, kThreads>(sK, k, p.k_row_stride, j_first, p.k_len);
  load_tile<T, BN, D, kThreads>(sV, v, p.v_row_stride, j_first, p.k_len);
  // lse and delta of query rows [row0, row0 + BM) of head h into buffer buf.
  auto load_cols = [&](int buf, int64_t h, int64_t row0) {
    if constexpr (STAGED) {
      static_assert(2 * BM <= kThreads, "one thread per staged value");
      const int i = threadIdx.x;
      if (i < 2 * BM) {
        const int64_t row = row0 + (i % BM);
        float* dst = sCols0 + buf * 2 * BM + i;
        if (row < p.q_len) {
          cp_async_4(dst, i < BM ? lse_b + h * p.lse_head_stride + row : delta_b + h * p.q_len + row,
                     true);
        } else {
          // rows past q_len: lse = +inf (probability 0), delta = 0; a plain
          // store, visible after the __syncthreads that publishes the tile
          *dst = i < BM ? INFINITY : 0.f;
        }
      }
    }
  };
  if (first < end) {
    const int64_t h = tile_head(first);
    load_tile<T, BM, D, kThreads>(sQ0, q_b + h * p.q_head_stride, p.q_row_stride,
                                  tile_row0(first), p.q_len);
    load_tile<T, BM, D, kThreads>(sdO0, do_b + h * p.do_head_stride, p.do_row_stride,
                                  tile_row0(first), p.q_len);
    load_cols(0, h, tile_row0(first));
  }
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  const int64_t wj_first = j_first + warp * 16;  // this warp's first key
  const float scale_log2 = p.scale * kLog2e;
  float dk[DT][4], dv[DT][4];
  zero(dk);
  zero(dv);

  for (int it = first; it < end; ++it) {
    const int buf = (it - first) & 1;
    if (it + 1 < end) {
      const int64_t h = tile_head(it + 1);
      load_tile<T, BM, D, kThreads>(sQ0 + (buf ^ 1) * BM * D, q_b + h * p.q_head_stride, p.q_row_stride,
                                    tile_row0(it + 1), p.q_len);
      load_tile<T, BM, D, kThreads>(sdO0 + (buf ^ 1) * BM * D, do_b + h * p.do_head_stride, p.do_row_stride,
                                    tile_row0(it + 1), p.q_len);
      load_cols(buf ^ 1, h, tile_row0(it + 1));
      cp_async_commit();
    }
    const T* sQc = sQ0 + buf * BM * D;
    const T* sdOc = sdO0 + buf * BM * D;
    const int64_t h = tile_head(it);
    const int64_t qrow0 = tile_row0(it);
    const int64_t pos0 = qrow0 + p.q_offset;
    const float* lse_h = lse_b + h * p.lse_head_stride;
    const float* delta_h = delta_b + h * p.q_len;

    // Does any query of the tile see any of this warp's 16 keys?
    bool active = true;
    if constexpr (STAGED) {
      const KeySpan seen = visible_keys(vis, pos0, min_of<int64_t>(pos0 + BM - 1, p.k_len - 1));
      const int64_t wj_last = wj_first + 15;
      active = (wj_first < seen.head.end && wj_last >= seen.head.begin) ||
               (wj_first < seen.body.end && wj_last >= seen.body.begin);
    }
    if (active) {
      // Transposed scores: rows = this warp's keys, columns = the tile's queries.
      float s[NT][4], dpt[NT][4];
      zero(s);
      zero(dpt);
      gemm_abt<T, D, NT>(s, sK, warp * 16, sQc, lane);
      gemm_abt<T, D, NT>(dpt, sV, warp * 16, sdOc, lane);
      scale_scores<NT>(s, scale_log2);
      if (!vis.tile_fully_visible(pos0, pos0 + BM - 1, wj_first, wj_first + 15))
        mask_scores<NT>(s, vis, wj_first, pos0, p.k_len, lane, false);
      // Column values: lse (log2 units, +inf past q_len) and delta of the queries.
      if constexpr (STAGED) {
        // Read from shared memory where used (no 4 * NT registers held across
        // the products; lanes with the same t read the same word: broadcast).
        const float* cols = sCols0 + buf * 2 * BM + 2 * t;
        softmax_grad<NT>(
            s, dpt, [&](int nt, int e) { return cols[nt * 8 + (e & 1)] * kLog2e; },
            [&](int nt, int e) { return cols[BM + nt * 8 + (e & 1)]; });
      } else {
        float lse2[NT][2], dl[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int64_t row = qrow0 + nt * 8 + 2 * t + c;
            const bool valid = row < p.q_len;
            lse2[nt][c] = valid ? lse_h[row] * kLog2e : INFINITY;
            dl[nt][c] = valid ? delta_h[row] : 0.f;
          }
        softmax_grad<NT>(
            s, dpt, [&](int nt, int e) { return lse2[nt][e & 1]; },
            [&](int nt, int e) { return dl[nt][e & 1]; });
      }
      gemm_pb<T, D, NT>(dv, s, sdOc, lane);
      gemm_pb<T, D, NT>(dk, dpt, sQc, lane);
    }

    cp_async_wait_all();
    __syncthreads();  // next tile landed; every warp is done with this one
  }

  if (piece >= 0) {
    // Partial sums of a piece, float32, every key row of the block (the reduce
    // skips rows past k_len); dk stays unscaled, like the accumulator.
    // Pieces of a slice are its first n_pieces units (block-major, then piece).
    float* dk_part =
        sched.partial + (static_cast<int64_t>(pos.slice) * n_pieces + pos.unit) * 2 * BN * D;
    float* dv_part = dk_part + BN * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp * 16 + g + r * 8;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        *reinterpret_cast<float2*>(dk_part + row * D + dt * 8 + 2 * t) =
            make_float2(dk[dt][2 * r], dk[dt][2 * r + 1]);
        *reinterpret_cast<float2*>(dv_part + row * D + dt * 8 + 2 * t) =
            make_float2(dv[dt][2 * r], dv[dt][2 * r + 1]);
      }
    }
    return;
  }
  T* dk_out = static_cast<T*>(p.dk) + b * p.dk_batch_stride + kvh * p.dk_head_stride;
  T* dv_out = static_cast<T*>(p.dv) + b * p.dv_batch_stride + kvh * p.dv_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = wj_first + g + r * 8;
    if (key >= p.k_len) continue;
    T* dk_row = dk_out + key * p.dk_row_stride;
    T* dv_row = dv_out + key * p.dv_row_stride;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      *reinterpret_cast<uint32_t*>(dk_row + dt * 8 + 2 * t) =
          MmaOp<T>::pack(dk[dt][2 * r] * p.scale, dk[dt][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dv_row + dt * 8 + 2 * t) =
          MmaOp<T>::pack(dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

// dk, dv of the split key blocks: the sum of their pieces' partials in piece
// order (a fixed order: bitwise reproducible), dk times the softmax scale.
// One thread per 4 consecutive elements of a (key, head dim) row.
template <typename T, int D, int BN>
__global__ void bwd_dkdv_reduce_kernel(const AttnParams p, const DkdvSchedule sched) {
  constexpr int kVec = 4;
  const int64_t per_block = int64_t(BN) * D / kVec;  // threads per (batch, kv head, block)
  const int64_t total = p.batch * p.kv_heads * sched.n_split_blocks * per_block;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t in_block = idx % per_block;
  const int64_t blk = idx / per_block;  // ((b * kv_heads + kvh) * n_split_blocks + n_block)
  const int64_t n_block = blk % sched.n_split_blocks;
  const int64_t kvh = (blk / sched.n_split_blocks) % p.kv_heads;
  const int64_t b = blk / (sched.n_split_blocks * p.kv_heads);
  const int row = static_cast<int>(in_block / (D / kVec));
  const int col = static_cast<int>(in_block % (D / kVec)) * kVec;
  const int64_t key = n_block * BN + row;
  if (key >= p.k_len) return;
  const float* part = sched.partial + blk * sched.n_split * 2 * BN * D + row * D + col;
  float4 dk = make_float4(0.f, 0.f, 0.f, 0.f), dv = dk;
  for (int s = 0; s < sched.n_split; ++s) {
    const float4 a = *reinterpret_cast<const float4*>(part + int64_t(s) * 2 * BN * D);
    const float4 c = *reinterpret_cast<const float4*>(part + int64_t(s) * 2 * BN * D + BN * D);
    dk.x += a.x, dk.y += a.y, dk.z += a.z, dk.w += a.w;
    dv.x += c.x, dv.y += c.y, dv.z += c.z, dv.w += c.w;
  }
  T* dk_row = static_cast<T*>(p.dk) + b * p.dk_batch_stride + kvh * p.dk_head_stride +
              key * p.dk_row_stride + col;
  T* dv_row = static_cast<T*>(p.dv) + b * p.dv_batch_stride + kvh * p.dv_head_stride +
              key * p.dv_row_stride + col;
  reinterpret_cast<uint32_t*>(dk_row)[0] = MmaOp<T>::pack(dk.x * p.scale, dk.y * p.scale);
  reinterpret_cast<uint32_t*>(dk_row)[1] = MmaOp<T>::pack(dk.z * p.scale, dk.w * p.scale);
  reinterpret_cast<uint32_t*>(dv_row)[0] = MmaOp<T>::pack(dv.x, dv.y);
  reinterpret_cast<uint32_t*>(dv_row)[1] = MmaOp<T>::pack(dv.z, dv.w);
}

}  // namespace cuda
}  // namespace swaa
