// CPU kernels of swaa::fwd and swaa::bwd.
//
// Tiled like FlashAttention: for each (batch, query head, block of BQ query
// rows) the keys that any row of the block can see form at most two ranges
// (sink keys, window keys; swaa/visibility.h), visited in tiles of BK keys
// with an online softmax and accumulation in float32 (float64 for float64
// inputs).  Only tiles that are partly visible are masked.  The tile products
// are the small loops of cpu/tile_gemm.h; bfloat16/float16 tiles are widened
// to float32 first.
//
// The backward is deterministic and race-free: one pass over query blocks
// writes dq, a second pass over key blocks writes dk and dv, visiting for each
// key block only the query rows that can see it (visible_queries), for every
// query head that shares its KV head (GQA without copying K/V).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "cpu/online_softmax.h"
#include "cpu/tile_gemm.h"
#include "cpu/tiles.h"

namespace swaa {
namespace {

using cpu::for_each_key_tile;
using cpu::kBlockK;
using cpu::kBlockQ;
using cpu::load_rows;
using cpu::mask_tile;

// One task of the forward and of the dq pass: a block of up to kBlockQ query
// rows of one (batch, query head), and where its rows sit.
struct QueryBlock {
  int64_t b, h, kvh;     // batch, query head, the KV head it reads
  int64_t row0, rows;    // first query row, number of rows
  int64_t p_first;       // absolute position of row0
  Visibility vis;

  QueryBlock(const AttnParams& p, int64_t task, int64_t n_qblocks)
      : b(task / (n_qblocks * p.q_heads)),
        h((task / n_qblocks) % p.q_heads),
        kvh(h / p.group()),
        row0((task % n_qblocks) * kBlockQ),
        rows(std::min(kBlockQ, p.q_len - row0)),
        p_first(row0 + p.q_offset),
        vis(p.visibility(b)) {}

  KeySpan keys() const { return visible_keys(vis, p_first, p_first + rows - 1); }
};

template <typename scalar_t>
void fwd_kernel(const AttnParams& p) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t D = p.head_dim;
  const int64_t n_qblocks = (p.q_len + kBlockQ - 1) / kBlockQ;
  const int64_t work = p.batch * p.q_heads * n_qblocks;
  const auto* q_base = static_cast<const scalar_t*>(p.q);
  const auto* k_base = static_cast<const scalar_t*>(p.k);
  const auto* v_base = static_cast<const scalar_t*>(p.v);
  auto* o_base = static_cast<scalar_t*>(p.out);

  at::parallel_for(0, work, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_buf, k_buf, v_buf, scratch, scores(kBlockQ * kBlockK);
    cpu::OnlineSoftmax<acc_t> softmax;
    for (int64_t w = begin; w < end; ++w) {
      const QueryBlock blk(p, w, n_qblocks);
      const auto [b, h, kvh, row0, rows, p_first, vis] = blk;

      const scalar_t* q = q_base + b * p.q_batch_stride + h * p.q_head_stride + row0 * p.q_row_stride;
      const scalar_t* k = k_base + b * p.k_batch_stride + kvh * p.k_head_stride;
      const scalar_t* v = v_base + b * p.v_batch_stride + kvh * p.v_head_stride;
      const auto qr = load_rows<scalar_t, acc_t>(q, p.q_row_stride, rows, D, q_buf);
      softmax.reset(rows, D);

      for_each_key_tile(blk.keys(), [&](int64_t j0, int64_t n) {
        const auto kr = load_rows<scalar_t, acc_t>(k + j0 * p.k_row_stride, p.k_row_stride, n, D, k_buf);
        const auto vr = load_rows<scalar_t, acc_t>(v + j0 * p.v_row_stride, p.v_row_stride, n, D, v_buf);
        cpu::gemm_abt<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), qr.ptr, qr.ld, kr.ptr, kr.ld,
                             scores.data(), kBlockK, scratch);
        if (!vis.tile_fully_visible(p_first, p_first + rows - 1, j0, j0 + n - 1))
          mask_tile(scores.data(), kBlockK, vis, p_first, rows, j0, n);
        softmax.update(scores.data(), kBlockK, n, vr.ptr, vr.ld);
      });

      scalar_t* o = o_base + b * p.o_batch_stride + h * p.o_head_stride + row0 * p.o_row_stride;
      float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row0;
      for (int64_t r = 0; r < rows; ++r) {
        // Every query sees at least itself, so the sum is > 0 (NaN when a
        // score is NaN: the row's out and lse are NaN then).
        const acc_t inv = acc_t(1) / softmax.sum[r];
        for (int64_t d = 0; d < D; ++d)
          o[r * p.o_row_stride + d] = static_cast<scalar_t>(softmax.acc[r * D + d] * inv);
        lse[r] = static_cast<float>(softmax.lse(r));
      }
    }
  });
}

// P = exp(S - lse) on a tile whose scores are already in `s`; masked entries
// become 0.  dS = P * (dP - delta), written over dP.
template <typename acc_t>
void softmax_grad_tile(acc_t* s, acc_t* dp, int64_t ld, const float* lse, const acc_t* delta,
                       int64_t rows, int64_t cols, bool masked, const Visibility& vis,
                       int64_t p_first, int64_t j_first) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      acc_t prob = cpu::exp_fast(s[r * ld + c] - static_cast<acc_t>(lse[r]));
      if (masked && !vis.visible(p_first + r, j_first + c)) prob = 0;
      s[r * ld + c] = prob;
      dp[r * ld + c] = prob * (dp[r * ld + c] - delta[r]);
    }
  }
}

template <typename scalar_t>
void bwd_kernel(const AttnParams& p) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t D = p.head_dim;
  const auto* q_base = static_cast<const scalar_t*>(p.q);
  const auto* k_base = static_cast<const scalar_t*>(p.k);
  const auto* v_base = static_cast<const scalar_t*>(p.v);
  const auto* o_base = static_cast<const scalar_t*>(p.out);
  const auto* do_base = static_cast<const scalar_t*>(p.dout);

  // delta[b, h, i] = sum_d dout * out, the row term of the softmax gradient.
  std::vector<acc_t> delta(p.batch * p.q_heads * p.q_len);
  at::parallel_for(0, p.batch * p.q_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.q_heads, h = bh % p.q_heads;
      const scalar_t* o = o_base + b * p.o_batch_stride + h * p.o_head_stride;
      const scalar_t* dout = do_base + b * p.do_batch_stride + h * p.do_head_stride;
      for (int64_t i = 0; i < p.q_len; ++i) {
        acc_t sum = 0;
        for (int64_t d = 0; d < D; ++d)
          sum += static_cast<acc_t>(o[i * p.o_row_stride + d]) *
                 static_cast<acc_t>(dout[i * p.do_row_stride + d]);
        delta[bh * p.q_len + i] = sum;
      }
    }
  });

  // Pass 1: dq, one task per (batch, query head, query block).
  const int64_t n_qblocks = (p.q_len + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, p.batch * p.q_heads * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_buf, k_buf, v_buf, do_buf, scratch;
    std::vector<acc_t> s(kBlockQ * kBlockK), dp(kBlockQ * kBlockK), dq_acc(kBlockQ * D);
    for (int64_t w = begin; w < end; ++w) {
      const QueryBlock blk(p, w, n_qblocks);
      const auto [b, h, kvh, row0, rows, p_first, vis] = blk;
      const float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row0;
      const acc_t* dlt = delta.data() + (b * p.q_heads + h) * p.q_len + row0;
      const auto qr = load_rows<scalar_t, acc_t>(
          q_base + b * p.q_batch_stride + h * p.q_head_stride + row0 * p.q_row_stride,
          p.q_row_stride, rows, D, q_buf);
      const auto dor = load_rows<scalar_t, acc_t>(
          do_base + b * p.do_batch_stride + h * p.do_head_stride + row0 * p.do_row_stride,
          p.do_row_stride, rows, D, do_buf);
      const scalar_t* k = k_base + b * p.k_batch_stride + kvh * p.k_head_stride;
      const scalar_t* v = v_base + b * p.v_batch_stride + kvh * p.v_head_stride;
      std::fill(dq_acc.begin(), dq_acc.end(), acc_t(0));

      for_each_key_tile(blk.keys(), [&](int64_t j0, int64_t n) {
        const auto kr = load_rows<scalar_t, acc_t>(k + j0 * p.k_row_stride, p.k_row_stride, n, D, k_buf);
        const auto vr = load_rows<scalar_t, acc_t>(v + j0 * p.v_row_stride, p.v_row_stride, n, D, v_buf);
        cpu::gemm_abt<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), qr.ptr, qr.ld, kr.ptr, kr.ld, s.data(), kBlockK, scratch);
        cpu::gemm_abt<acc_t>(rows, n, D, acc_t(1), dor.ptr, dor.ld, vr.ptr, vr.ld, dp.data(), kBlockK, scratch);
        const bool masked = !vis.tile_fully_visible(p_first, p_first + rows - 1, j0, j0 + n - 1);
        softmax_grad_tile(s.data(), dp.data(), kBlockK, lse, dlt, rows, n, masked, vis, p_first, j0);
        cpu::gemm_pb<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), dp.data(), kBlockK, kr.ptr, kr.ld, dq_acc.data(), D);
      });
      auto* dq = static_cast<scalar_t*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride +
                 row0 * p.dq_row_stride;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d)
          dq[r * p.dq_row_stride + d] = static_cast<scalar_t>(dq_acc[r * D + d]);
    }
  });

  // Pass 2: dk and dv, one task per (batch, KV head, key block); loops over the
  // query heads of the group and the query rows that see the block.
  const int64_t n_kblocks = (p.k_len + kBlockK - 1) / kBlockK;
  at::parallel_for(0, p.batch * p.kv_heads * n_kblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_buf, k_buf, v_buf, do_buf, scratch;
    std::vector<acc_t> s(kBlockQ * kBlockK), dp(kBlockQ * kBlockK);
    std::vector<acc_t> dk_acc(kBlockK * D), dv_acc(kBlockK * D);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t kb = w % n_kblocks;
      const int64_t kvh = (w / n_kblocks) % p.kv_heads;
      const int64_t b = w / (n_kblocks * p.kv_heads);
      const int64_t j0 = kb * kBlockK;
      const int64_t n = std::min(kBlockK, p.k_len - j0);
      const Visibility vis = p.visibility(b);
      const auto kr = load_rows<scalar_t, acc_t>(
          k_base + b * p.k_batch_stride + kvh * p.k_head_stride + j0 * p.k_row_stride,
          p.k_row_stride, n, D, k_buf);
      const auto vr = load_rows<scalar_t, acc_t>(
          v_base + b * p.v_batch_stride + kvh * p.v_head_stride + j0 * p.v_row_stride,
          p.v_row_stride, n, D, v_buf);
      std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
      std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
      const QuerySpan span =
          visible_queries(vis, j0, j0 + n - 1, p.q_offset, p.q_offset + p.q_len - 1);

      for (int64_t h = kvh * p.group(); h < (kvh + 1) * p.group(); ++h) {
        const float* lse_h = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride;
        const acc_t* delta_h = delta.data() + (b * p.q_heads + h) * p.q_len;
        for (const Range& range : {span.near, span.far}) {
          for (int64_t pos = range.begin; pos < range.end; pos += kBlockQ) {
            const int64_t rows = std::min(kBlockQ, range.end - pos);
            const int64_t row0 = pos - p.q_offset;
            const auto qr = load_rows<scalar_t, acc_t>(
                q_base + b * p.q_batch_stride + h * p.q_head_stride + row0 * p.q_row_stride,
                p.q_row_stride, rows, D, q_buf);
            const auto dor = load_rows<scalar_t, acc_t>(
                do_base + b * p.do_batch_stride + h * p.do_head_stride + row0 * p.do_row_stride,
                p.do_row_stride, rows, D, do_buf);
            cpu::gemm_abt<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), qr.ptr, qr.ld, kr.ptr, kr.ld, s.data(), kBlockK, scratch);
            cpu::gemm_abt<acc_t>(rows, n, D, acc_t(1), dor.ptr, dor.ld, vr.ptr, vr.ld, dp.data(), kBlockK, scratch);
            const bool masked = !vis.tile_fully_visible(pos, pos + rows - 1, j0, j0 + n - 1);
            softmax_grad_tile(s.data(), dp.data(), kBlockK, lse_h + row0, delta_h + row0, rows, n,
                              masked, vis, pos, j0);
            cpu::gemm_ptb<acc_t>(rows, n, D, acc_t(1), s.data(), kBlockK, dor.ptr, dor.ld, dv_acc.data(), D);
            cpu::gemm_ptb<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), dp.data(), kBlockK, qr.ptr, qr.ld, dk_acc.data(), D);
          }
        }
      }
      auto* dk = static_cast<scalar_t*>(p.dk) + b * p.dk_batch_stride + kvh * p.dk_head_stride +
                 j0 * p.dk_row_stride;
      auto* dv = static_cast<scalar_t*>(p.dv) + b * p.dv_batch_stride + kvh * p.dv_head_stride +
                 j0 * p.dv_row_stride;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t d = 0; d < D; ++d) {
          dk[r * p.dk_row_stride + d] = static_cast<scalar_t>(dk_acc[r * D + d]);
          dv[r * p.dv_row_stride + d] = static_cast<scalar_t>(dv_acc[r * D + d]);
        }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, std::optional<int64_t> window,
                                           int64_t sink, const std::optional<at::Tensor>& full_from,
                                           double scale) {
  FwdCall call = prepare_fwd(q, k, v, window, sink, full_from, scale);
  if (q.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "swaa_fwd_cpu",
                                    [&] { fwd_kernel<scalar_t>(call.params); });
  }
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, std::optional<int64_t> window, int64_t sink,
    const std::optional<at::Tensor>& full_from, double scale) {
  BwdCall call = prepare_bwd(dout, q, k, v, out, lse, window, sink, full_from, scale);
  if (q.numel() == 0 || k.numel() == 0) {
    // No query rows: nothing flows back to the keys.
    call.dk.zero_();
    call.dv.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "swaa_bwd_cpu",
                                    [&] { bwd_kernel<scalar_t>(call.params); });
  }
  return {call.dq, call.dk, call.dv};
}

}  // namespace
}  // namespace swaa

TORCH_LIBRARY_IMPL(swaa, CPU, m) {
  m.impl("fwd", &swaa::fwd_cpu);
  m.impl("bwd", &swaa::bwd_cpu);
}
