// Tile bookkeeping shared by the CPU kernels (attention and ring cache):
// block sizes, widening rows to the accumulator type, boundary masking and
// the walk over the visible key tiles of a query block.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/tile_gemm.h"
#include "swaa/visibility.h"

namespace swaa::cpu {

// The softmax scale in the accumulator type: float32 kernels keep the float
// the CUDA kernels use, float64 kernels take the unrounded double (so a
// float64 call is as exact as a float64 reference, not off by float's
// rounding of 1/sqrt(D)).  P: AttnParams or RingParams.
template <typename acc_t, typename P>
acc_t scale_of(const P& p) {
  if constexpr (std::is_same_v<acc_t, double>)
    return p.scale_f64;
  else
    return static_cast<acc_t>(p.scale);
}

constexpr int64_t kBlockQ = 64;     // query rows per task
constexpr int64_t kBlockK = kTile;  // keys per tile: S rows are kTile wide (gemm_abt)

// A view of `rows` rows of a (L, D) matrix as acc_t: the input itself when it
// is already acc_t, else a widened copy in `buffer`.
template <typename acc_t>
struct Rows {
  const acc_t* ptr;
  int64_t ld;
};

template <typename scalar_t, typename acc_t>
Rows<acc_t> load_rows(const scalar_t* src, int64_t row_stride, int64_t rows, int64_t dim,
                      std::vector<acc_t>& buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return {src, row_stride};
  } else {
    buffer.resize(rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* in = src + r * row_stride;
      acc_t* out = buffer.data() + r * dim;
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<acc_t>(in[d]);
    }
    return {buffer.data(), dim};
  }
}

// Sets the scores of keys invisible to their query to -inf.  Only boundary
// tiles need it (Visibility::tile_fully_visible tells which).
template <typename acc_t>
void mask_tile(acc_t* s, int64_t lds, const Visibility& vis, int64_t p_first, int64_t rows,
               int64_t j_first, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!vis.visible(p_first + r, j_first + c))
        s[r * lds + c] = -std::numeric_limits<acc_t>::infinity();
}

// Calls fn(j_first, n) for each key tile of the visible ranges of a query block.
template <typename Fn>
void for_each_key_tile(const KeySpan& span, Fn&& fn) {
  for (const Range& range : {span.head, span.body})
    for (int64_t j = range.begin; j < range.end; j += kBlockK)
      fn(j, std::min(kBlockK, range.end - j));
}

}  // namespace swaa::cpu
