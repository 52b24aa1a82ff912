// Boundary-tile masks of the Hopper backward kernels (bwd_sm90.cuh,
// bwd_fused_sm90.cuh): Visibility::visible (and j < k_len) for the 4 x NB
// accumulator elements a thread holds of a 16-row x 8 NB-column wgmma tile,
// turned once per row into a range test on the column, as mask_tile in
// fwd51_sm90.cuh does for the forward (there: rows = queries, 16 blocks).
// Element x[4 n + e] is row r0 + 8 (e >> 1), column c0 + 8 n + (e & 1).
// Invisible elements become -inf; the others are left alone.  Per element
// that is three compares against per-row constants instead of the int64
// predicate (which ptxas compiled into a branch per element).
// tests/native/mask_tile_check.cu compares both with the per-element
// predicate on random cases (tests/test_mask_tile.py, CPU, needs nvcc).
#pragma once

#include <cmath>
#include <cstdint>

#include "swaa/visibility.h"

namespace swaa {
namespace cuda {
namespace sm90 {

// A column offset clamped to [-1, 256]: every column index of a tile is in
// [0, 128), so the clamped bound decides the same.
__host__ __device__ __forceinline__ int clamp_column(int64_t x) {
  return static_cast<int>(x < -1 ? -1 : x > 256 ? 256 : x);
}

// Rows are queries (positions p_row, p_row + 8), columns keys j_col + c:
// visible <=> c <= hi && (c >= lo || c < sink_c), with
//   hi = min(p - j_col, k_len - 1 - j_col)   (causal, keys past the end),
//   lo = p - j_col - window + 1, or 0 once p >= full_from,
//   sink_c = sink - j_col.
// The per-row bounds for the one-bound masks below (d = p - j_col).
// mask_query_rows keeps its own copy of the two lines: written through these
// helpers its SASS changes (nvcc 13.0), untimed.
__host__ __device__ __forceinline__ int query_row_hi(int64_t d, int64_t j_col, int64_t k_len) {
  return clamp_column(d < k_len - 1 - j_col ? d : k_len - 1 - j_col);
}
__host__ __device__ __forceinline__ int query_row_lo(const Visibility& vis, int64_t p, int64_t d) {
  return p >= vis.full_from ? 0 : clamp_column(d - vis.window + 1);
}

template <int NB>
__host__ __device__ __forceinline__ void mask_query_rows(float (&x)[4 * NB], const Visibility& vis,
                                                         int64_t p_row, int64_t j_col,
                                                         int64_t k_len) {
  const int sink_c = clamp_column(vis.sink - j_col);
  int hi[2], lo[2];
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t p = p_row + 8 * rh;
    const int64_t d = p - j_col;
    hi[rh] = clamp_column(d < k_len - 1 - j_col ? d : k_len - 1 - j_col);
    lo[rh] = p >= vis.full_from ? 0 : clamp_column(d - vis.window + 1);
  }
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 8 * n + (e & 1), rh = e >> 1;
      if (!(c <= hi[rh] && (c >= lo[rh] || c < sink_c))) x[4 * n + e] = -INFINITY;
    }
}

// mask_query_rows for a tile where only the upper bound can reject: every
// element has c >= lo or c < sink_c (the tile lies in the sink or wholly
// inside every row's window), so visible <=> c <= hi.  One compare per element.
template <int NB>
__host__ __device__ __forceinline__ void mask_query_rows_upper(float (&x)[4 * NB], int64_t p_row,
                                                               int64_t j_col, int64_t k_len) {
  int hi[2];
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) hi[rh] = query_row_hi(p_row + 8 * rh - j_col, j_col, k_len);
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (8 * n + (e & 1) > hi[e >> 1]) x[4 * n + e] = -INFINITY;
}

// mask_query_rows for a tile where only the window's lower bound can reject:
// every element has c <= hi (the tile's keys are below every row's position
// and k_len) and none is a sink key (c >= sink_c), so visible <=> c >= lo.
template <int NB>
__host__ __device__ __forceinline__ void mask_query_rows_lower(float (&x)[4 * NB],
                                                               const Visibility& vis,
                                                               int64_t p_row, int64_t j_col) {
  int lo[2];
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) lo[rh] = query_row_lo(vis, p_row + 8 * rh, p_row + 8 * rh - j_col);
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (8 * n + (e & 1) < lo[e >> 1]) x[4 * n + e] = -INFINITY;
}

// mask_query_rows for a tile whose keys all lie before every row's window
// (and before every row's position and k_len): visible <=> c < sink_c.  No
// per-row work.
template <int NB>
__host__ __device__ __forceinline__ void mask_query_rows_sink(float (&x)[4 * NB],
                                                              const Visibility& vis,
                                                              int64_t j_col) {
  const int sink_c = clamp_column(vis.sink - j_col);
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (8 * n + (e & 1) >= sink_c) x[4 * n + e] = -INFINITY;
}

// Rows are keys (j_row, j_row + 8), columns queries p_col + c (the S^T tiles
// of the dk/dv products): for a key j < k_len, visible <=> c >= lo && (c <= hi
// || c >= ff), with
//   lo = j - p_col   (causal: p >= j),
//   hi = j + window - 1 - p_col, or no bound for a sink key,
//   ff = full_from - p_col (0 once every column is past full_from);
// a key at or past k_len sees no query (lo past every column).
template <int NB>
__host__ __device__ __forceinline__ void mask_key_rows(float (&x)[4 * NB], const Visibility& vis,
                                                       int64_t j_row, int64_t p_col,
                                                       int64_t k_len) {
  // full_from may be any int64 (a tensor's values are not clamped): compare
  // before subtracting, so INT64_MIN cannot wrap around.
  const int ff = vis.full_from <= p_col ? 0 : clamp_column(vis.full_from - p_col);
  int lo[2], hi[2];
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t j = j_row + 8 * rh;
    lo[rh] = j >= k_len ? 256 : clamp_column(j - p_col);
    hi[rh] = j < vis.sink ? 256 : clamp_column(j + vis.window - 1 - p_col);
  }
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 8 * n + (e & 1), rh = e >> 1;
      if (!(c >= lo[rh] && (c <= hi[rh] || c >= ff))) x[4 * n + e] = -INFINITY;
    }
}

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
