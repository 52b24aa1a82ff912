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

// Each product keeps one output row (or four) in a fixed-size local array
// that the compiler holds in vector registers across the reduction loop; the
// width is a compile-time constant (kTile columns of S, or the head dim for
// the common 64 / 128) with a generic fallback for other head dims.
constexpr int64_t kTile = 64;  // key-tile width: S rows are padded to it

// S(m x kTile) = alpha * A(m x d) * B(n x d)^T; columns n..kTile-1 of S are 0.
// `bt` is scratch for B^T padded to kTile columns.
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t d, T alpha, const T* a, int64_t lda, const T* b,
              int64_t ldb, T* s, int64_t lds, std::vector<T>& bt) {
  bt.assign(d * kTile, T(0));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < d; ++k) bt[k * kTile + j] = b[j * ldb + k];
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {  // four rows share every load of bt
    T acc[4][kTile] = {};
    for (int64_t k = 0; k < d; ++k) {
      const T* __restrict__ btrow = bt.data() + k * kTile;
      const T a0 = a[(i + 0) * lda + k], a1 = a[(i + 1) * lda + k];
      const T a2 = a[(i + 2) * lda + k], a3 = a[(i + 3) * lda + k];
      for (int64_t j = 0; j < kTile; ++j) {
        acc[0][j] += a0 * btrow[j];
        acc[1][j] += a1 * btrow[j];
        acc[2][j] += a2 * btrow[j];
        acc[3][j] += a3 * btrow[j];
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int64_t j = 0; j < kTile; ++j) s[(i + r) * lds + j] = alpha * acc[r][j];
  }
  for (; i < m; ++i) {
    T acc[kTile] = {};
    for (int64_t k = 0; k < d; ++k) {
      const T aik = a[i * lda + k];
      const T* __restrict__ btrow = bt.data() + k * kTile;
      for (int64_t j = 0; j < kTile; ++j) acc[j] += aik * btrow[j];
    }
    for (int64_t j = 0; j < kTile; ++j) s[i * lds + j] = alpha * acc[j];
  }
}

// C(m x d) += alpha * P(m x n) * B(n x d), head dim fixed at compile time.
template <typename T, int64_t D>
void gemm_pb_fixed(int64_t m, int64_t n, T alpha, const T* p, int64_t ldp, const T* b,
                   int64_t ldb, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T acc[D];
    for (int64_t k = 0; k < D; ++k) acc[k] = c[i * ldc + k];
    for (int64_t j = 0; j < n; ++j) {
      const T pij = alpha * p[i * ldp + j];
      const T* __restrict__ brow = b + j * ldb;
      for (int64_t k = 0; k < D; ++k) acc[k] += pij * brow[k];
    }
    for (int64_t k = 0; k < D; ++k) c[i * ldc + k] = acc[k];
  }
}

template <typename T>
void gemm_pb(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* b,
             int64_t ldb, T* c, int64_t ldc) {
  if (d == 64) return gemm_pb_fixed<T, 64>(m, n, alpha, p, ldp, b, ldb, c, ldc);
  if (d == 128) return gemm_pb_fixed<T, 128>(m, n, alpha, p, ldp, b, ldb, c, ldc);
  for (int64_t i = 0; i < m; ++i) {
    T* __restrict__ crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) {
      const T pij = alpha * p[i * ldp + j];
      const T* __restrict__ brow = b + j * ldb;
      for (int64_t k = 0; k < d; ++k) crow[k] += pij * brow[k];
    }
  }
}

// C(n x d) += alpha * P(m x n)^T * A(m x d), head dim fixed at compile time.
template <typename T, int64_t D>
void gemm_ptb_fixed(int64_t m, int64_t n, T alpha, const T* p, int64_t ldp, const T* a,
                    int64_t lda, T* c, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j) {
    T acc[D];
    for (int64_t k = 0; k < D; ++k) acc[k] = c[j * ldc + k];
    for (int64_t i = 0; i < m; ++i) {
      const T pij = alpha * p[i * ldp + j];
      const T* __restrict__ arow = a + i * lda;
      for (int64_t k = 0; k < D; ++k) acc[k] += pij * arow[k];
    }
    for (int64_t k = 0; k < D; ++k) c[j * ldc + k] = acc[k];
  }
}

template <typename T>
void gemm_ptb(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* a,
              int64_t lda, T* c, int64_t ldc) {
  if (d == 64) return gemm_ptb_fixed<T, 64>(m, n, alpha, p, ldp, a, lda, c, ldc);
  if (d == 128) return gemm_ptb_fixed<T, 128>(m, n, alpha, p, ldp, a, lda, c, ldc);
  for (int64_t i = 0; i < m; ++i) {
    const T* __restrict__ arow = a + i * lda;
    for (int64_t j = 0; j < n; ++j) {
      const T pij = alpha * p[i * ldp + j];
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
  const float in = x;
  x = x < -88.0f ? -88.0f : x;
  x = x > 88.0f ? 88.0f : x;
  x = x == x ? x : 0.0f;  // NaN: keep the integer conversion below defined
  const float t = x * 1.44269504088896341f;
  // round to nearest by adding and removing 1.5 * 2^23 (plain float adds, so
  // the loop vectorises; std::floor may become a libm call)
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float f = (t - n) * 0.69314718055994531f;  // 2^(t-n) = e^f, |f| <= 0.347
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t biased = static_cast<int32_t>(n) + 127;  // 0 for n = -127 -> result 0
  const float result = p * std::bit_cast<float>(biased << 23);
  return in == in ? result : in;  // NaN in, NaN out
}
inline double exp_fast(double x) { return std::exp(x); }

}  // namespace swaa::cpu
