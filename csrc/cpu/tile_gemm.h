// Small dense products on attention tiles (at most 64 x 64 x head_dim), row
// major, written as axpy loops over a contiguous inner dimension so the
// compiler vectorises them without reassociating sums (csrc/cpu/ is compiled
// with -O3 and, by default, -march=native: see SWAA_CPU_MARCH in CMakeLists).
#pragma once

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

}  // namespace swaa::cpu
