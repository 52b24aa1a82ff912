// The online softmax of the tiled CPU kernels (attention forward, ring chunk
// and decode): per query row a running max, a running sum and an output
// accumulator, folded one key tile at a time and rescaled when the max grows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/tile_gemm.h"

namespace swaa::cpu {

template <typename acc_t>
struct OnlineSoftmax {
  int64_t rows = 0, dim = 0;
  std::vector<acc_t> max, sum, acc;

  void reset(int64_t r, int64_t d) {
    rows = r, dim = d;
    max.assign(r, -std::numeric_limits<acc_t>::infinity());
    sum.assign(r, acc_t(0));
    acc.assign(r * d, acc_t(0));
  }

  // Folds in a tile of scores (rows x n, leading dim lds; -inf = masked) and
  // the tile's values (n x dim, leading dim ldv).  Overwrites the scores with
  // unnormalised probabilities.
  void update(acc_t* scores, int64_t lds, int64_t n, const acc_t* values, int64_t ldv) {
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* s = scores + r * lds;
      acc_t tile_max = kNegInf;
      for (int64_t c = 0; c < n; ++c) tile_max = std::max(tile_max, s[c]);
      const acc_t new_max = std::max(max[r], tile_max);
      // A row that has seen nothing yet (new_max = -inf: every score so far
      // masked, or NaN, which std::max drops) subtracts 0: masked scores give
      // exp(-inf) = 0 as before, and a NaN score a NaN probability, so the row
      // turns NaN (as on CUDA) instead of being taken for empty.  The same
      // bits as subtracting new_max whenever new_max is finite.
      const acc_t m_safe = new_max == kNegInf ? acc_t(0) : new_max;
      const acc_t correction = exp_fast(max[r] - m_safe);
      for (int64_t c = 0; c < n; ++c) s[c] = exp_fast(s[c] - m_safe);  // vectorised
      acc_t tile_sum = 0;
      for (int64_t c = 0; c < n; ++c) tile_sum += s[c];
      sum[r] = sum[r] * correction + tile_sum;
      max[r] = new_max;
      if (correction != acc_t(1))
        for (int64_t d = 0; d < dim; ++d) acc[r * dim + d] *= correction;
    }
    gemm_pb<acc_t>(rows, n, dim, acc_t(1), scores, lds, values, ldv, acc.data(), dim);
  }

  // True when row r saw a key; a NaN score makes the sum NaN, which counts as
  // seen (the output and lse are NaN, as in swa_attention), not as nothing.
  bool seen(int64_t r) const { return sum[r] != acc_t(0); }

  // Natural-log log-sum-exp of row r; -inf when the row saw nothing.
  acc_t lse(int64_t r) const {
    return seen(r) ? max[r] + std::log(sum[r]) : -std::numeric_limits<acc_t>::infinity();
  }
};

}  // namespace swaa::cpu
