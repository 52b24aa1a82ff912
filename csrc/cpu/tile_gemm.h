// Small dense products on attention tiles (at most 64 x 64 x head_dim), row
// major, written as axpy loops over a contiguous inner dimension so the
// compiler vectorises them without reassociating sums (csrc/cpu/ is compiled
// with -O3 and, by default, -march=native: see SWAA_CPU_MARCH in CMakeLists).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace swaa::cpu {

// S(m x n) = alpha * A(m x d) * B(n x d)^T.  `bt` is scratch for B^T.
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t d, T alpha, const T* a, int64_t lda, const T* b,
              int64_t ldb, T* s, int64_t lds, std::vector<T>& bt) {
  bt.resize(d * n);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < d; ++k) bt[k * n + j] = b[j * ldb + k];
  for (int64_t i = 0; i < m; ++i) {
    T* __restrict__ srow = s + i * lds;
    for (int64_t j = 0; j < n; ++j) srow[j] = 0;
    const T* arow = a + i * lda;
    for (int64_t k = 0; k < d; ++k) {
      const T aik = alpha * arow[k];
      const T* __restrict__ btrow = bt.data() + k * n;
      for (int64_t j = 0; j < n; ++j) srow[j] += aik * btrow[j];
    }
  }
}

// C(m x d) += alpha * P(m x n) * B(n x d).
template <typename T>
void gemm_pb(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* b,
             int64_t ldb, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* __restrict__ crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) {
      const T pij = alpha * p[i * ldp + j];
      if (pij == T(0)) continue;  // masked or underflowed probabilities
      const T* __restrict__ brow = b + j * ldb;
      for (int64_t k = 0; k < d; ++k) crow[k] += pij * brow[k];
    }
  }
}

// C(n x d) += alpha * P(m x n)^T * A(m x d).
template <typename T>
void gemm_ptb(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* a,
              int64_t lda, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    const T* __restrict__ arow = a + i * lda;
    for (int64_t j = 0; j < n; ++j) {
      const T pij = alpha * p[i * ldp + j];
      if (pij == T(0)) continue;
      T* __restrict__ crow = c + j * ldc;
      for (int64_t k = 0; k < d; ++k) crow[k] += pij * arow[k];
    }
  }
}

// exp(x) for float, written so that a loop over it vectorises: x*log2(e) is
// split into an integer n (put straight into the exponent bits) and a
// fraction f in [-0.5, 0.5] whose 2^f comes from a degree-6 Taylor
// polynomial (relative error about 1.5e-7, a couple of ulp).  Inputs below -88
// (masked scores are -inf) give exactly 0.
inline float exp_fast(float x) {
  x = x < -88.0f ? -88.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = std::floor(t + 0.5f);
  const float f = (t - n) * 0.69314718055994531f;  // 2^(t-n) = e^f, |f| <= 0.347
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t biased = static_cast<int32_t>(n) + 127;  // 0 for n = -127 -> result 0
  return p * std::bit_cast<float>(biased << 23);
}
inline double exp_fast(double x) { return std::exp(x); }

}  // namespace swaa::cpu
