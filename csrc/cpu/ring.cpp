// CPU kernels of the ring-buffer KV cache ops (schemas: csrc/ring_ops.cpp).
//
// ring_append: one task per (row, KV head) copies the chunk positions that
//   survive the chunk into their slots (a chunk longer than the window writes
//   only its last `window` non-sink positions: nothing is written twice).
// ring_chunk: one task per (row, query head, block of 64 queries).  The keys
//   visible to the block come from visible_keys() (sink range + window range);
//   each key tile is gathered from the ring (positions before seqlens[b], at
//   slot_of(pos)) or from the chunk itself (positions from seqlens[b] on) and
//   folded in with an online softmax, masking only the tiles that are partly
//   visible.  Nothing is written to the cache.
// ring_decode: flash-decoding on the CPU: one task per (row, KV head, split of
//   the visible keys) serves all query heads of the KV head (K/V read once),
//   keeps (max, sum, acc) per head, and the partial results of the splits are
//   combined through their log-sum-exp.  The new key is written afterwards.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/online_softmax.h"
#include "cpu/tile_gemm.h"
#include "cpu/tiles.h"
#include "ring_ops.h"

namespace swaa {
namespace {

using cpu::for_each_key_tile;
using cpu::kBlockK;
using cpu::kBlockQ;
using cpu::load_rows;
using cpu::mask_tile;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Where the key/value rows of a (batch row, KV head) live: the ring for
// positions before `written`, the chunk for positions from `written` on.
template <typename scalar_t>
struct KeySource {
  const scalar_t* k_cache;
  const scalar_t* v_cache;
  int64_t kc_row, vc_row;
  const scalar_t* k_new;
  const scalar_t* v_new;
  int64_t k_row, v_row;
  int64_t written;
  RingLayout ring;

  static KeySource make(const RingParams& p, int64_t b, int64_t kvh) {
    KeySource s;
    s.k_cache = static_cast<const scalar_t*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride;
    s.v_cache = static_cast<const scalar_t*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride;
    s.kc_row = p.kc_row_stride;
    s.vc_row = p.vc_row_stride;
    s.k_new = static_cast<const scalar_t*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
    s.v_new = static_cast<const scalar_t*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
    s.k_row = p.k_row_stride;
    s.v_row = p.v_row_stride;
    s.written = p.seqlens[b];
    s.ring = p.ring;
    return s;
  }
  const scalar_t* key(int64_t pos) const {
    return pos < written ? k_cache + ring.slot_of(pos) * kc_row : k_new + (pos - written) * k_row;
  }
  const scalar_t* value(int64_t pos) const {
    return pos < written ? v_cache + ring.slot_of(pos) * vc_row : v_new + (pos - written) * v_row;
  }
};

// Gathers the K and V rows of `n` keys as acc_t; rows(c) gives key c's K and
// V row pointers.
template <typename acc_t, typename Rows>
void gather_rows(int64_t n, int64_t D, Rows&& rows, std::vector<acc_t>& k_tile,
                 std::vector<acc_t>& v_tile) {
  k_tile.resize(n * D);
  v_tile.resize(n * D);
  for (int64_t c = 0; c < n; ++c) {
    const auto [kr, vr] = rows(c);
    for (int64_t d = 0; d < D; ++d) {
      k_tile[c * D + d] = static_cast<acc_t>(kr[d]);
      v_tile[c * D + d] = static_cast<acc_t>(vr[d]);
    }
  }
}

// The rows of `n` positions (given by pos_at(c)): ring slots or the new keys.
template <typename scalar_t, typename acc_t, typename PosAt>
void gather_tile(const KeySource<scalar_t>& src, int64_t n, int64_t D, PosAt&& pos_at,
                 std::vector<acc_t>& k_tile, std::vector<acc_t>& v_tile) {
  gather_rows<acc_t>(n, D, [&](int64_t c) {
    const int64_t pos = pos_at(c);
    return std::pair{src.key(pos), src.value(pos)};
  }, k_tile, v_tile);
}

// The rows of `n` keys held in consecutive slots slot0 .. slot0 + n - 1
// (OldKeys::consecutive_slots): no slot arithmetic per key.
template <typename scalar_t, typename acc_t>
void gather_slots(const KeySource<scalar_t>& src, int64_t slot0, int64_t n, int64_t D,
                  std::vector<acc_t>& k_tile, std::vector<acc_t>& v_tile) {
  gather_rows<acc_t>(n, D, [&](int64_t c) {
    return std::pair{src.k_cache + (slot0 + c) * src.kc_row, src.v_cache + (slot0 + c) * src.vc_row};
  }, k_tile, v_tile);
}

template <typename scalar_t>
void append_kernel(const RingParams& p) {
  const int64_t D = p.head_dim;
  at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / p.kv_heads, kvh = w % p.kv_heads;
      const int64_t written = p.seqlens[b];
      const int64_t valid = p.valid(b);
      const auto* k = static_cast<const scalar_t*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
      const auto* v = static_cast<const scalar_t*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
      auto* kc = static_cast<scalar_t*>(p.k_cache) + b * p.kc_batch_stride + kvh * p.kc_head_stride;
      auto* vc = static_cast<scalar_t*>(p.v_cache) + b * p.vc_batch_stride + kvh * p.vc_head_stride;
      for (int64_t i = 0; i < valid; ++i) {
        const int64_t pos = written + i;
        if (!p.ring.survives(pos, written + valid)) continue;  // overwritten later in this chunk
        const int64_t slot = p.ring.slot_of(pos);
        std::copy(k + i * p.k_row_stride, k + i * p.k_row_stride + D, kc + slot * p.kc_row_stride);
        std::copy(v + i * p.v_row_stride, v + i * p.v_row_stride + D, vc + slot * p.vc_row_stride);
      }
    }
  });
}

template <typename scalar_t>
void chunk_kernel(const RingParams& p) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = p.head_dim;
  const int64_t n_qblocks = (p.chunk_len + kBlockQ - 1) / kBlockQ;
  const Visibility vis = p.ring.visibility();
  at::parallel_for(0, p.batch * p.q_heads * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_rows, k_tile, v_tile, scratch, scores(kBlockQ * kBlockK);
    cpu::OnlineSoftmax<acc_t> state;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t qb = w % n_qblocks;
      const int64_t h = (w / n_qblocks) % p.q_heads;
      const int64_t b = w / (n_qblocks * p.q_heads);
      const int64_t row0 = qb * kBlockQ;
      const int64_t rows_total = std::min(kBlockQ, p.chunk_len - row0);
      const int64_t rows = std::clamp<int64_t>(p.valid(b) - row0, 0, rows_total);
      const KeySource<scalar_t> src = KeySource<scalar_t>::make(p, b, h / p.group());
      const int64_t p_first = src.written + row0;
      const int64_t p_last = p_first + rows - 1;

      state.reset(rows, D);
      if (rows > 0) {
        const auto qr = load_rows<scalar_t, acc_t>(
            static_cast<const scalar_t*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride +
                row0 * p.q_row_stride,
            p.q_row_stride, rows, D, q_rows);
        for_each_key_tile(visible_keys(vis, p_first, p_last), [&](int64_t j0, int64_t n) {
          gather_tile<scalar_t, acc_t>(src, n, D, [&](int64_t c) { return j0 + c; }, k_tile, v_tile);
          cpu::gemm_abt<acc_t>(rows, n, D, cpu::scale_of<acc_t>(p), qr.ptr, qr.ld, k_tile.data(), D,
                               scores.data(), kBlockK, scratch);
          if (!vis.tile_fully_visible(p_first, p_last, j0, j0 + n - 1))
            mask_tile(scores.data(), kBlockK, vis, p_first, rows, j0, n);
          state.update(scores.data(), kBlockK, n, v_tile.data(), D);
        });
      }
      auto* out = static_cast<scalar_t*>(p.out) + ((b * p.q_heads + h) * p.chunk_len + row0) * D;
      float* lse = p.lse + (b * p.q_heads + h) * p.chunk_len + row0;
      for (int64_t r = 0; r < rows_total; ++r) {
        const bool seen = r < rows && state.seen(r);  // padding rows: zero, lse -inf
        const acc_t inv = seen ? acc_t(1) / state.sum[r] : acc_t(0);
        for (int64_t d = 0; d < D; ++d)
          out[r * D + d] = static_cast<scalar_t>(seen ? state.acc[r * D + d] * inv : acc_t(0));
        lse[r] = seen ? static_cast<float>(state.lse(r)) : -std::numeric_limits<float>::infinity();
      }
    }
  });
}

// Splits of the visible keys for decode: enough tasks to occupy the threads
// when batch x KV heads is small, each split at least kBlockK keys.
int64_t cpu_decode_splits(const RingParams& p, int64_t requested) {
  const int64_t max_keys = p.ring.capacity() + 1;
  const int64_t max_splits = std::max<int64_t>(1, (max_keys + kBlockK - 1) / kBlockK);
  if (requested > 0) return std::min(requested, max_splits);
  const int64_t tasks = p.batch * p.kv_heads;
  const int64_t want = (2 * at::get_num_threads() + tasks - 1) / tasks;
  return std::clamp<int64_t>(want, 1, max_splits);
}

template <typename scalar_t>
void decode_kernel(const RingParams& p, int64_t splits) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = p.head_dim, G = p.group();
  // Partial results per (b, query head, split): normalised output and lse.
  std::vector<acc_t> part_out(p.batch * p.q_heads * splits * D);
  std::vector<acc_t> part_lse(p.batch * p.q_heads * splits);

  at::parallel_for(0, p.batch * p.kv_heads * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q_rows, k_tile, v_tile, scratch, scores(G * kBlockK);
    cpu::OnlineSoftmax<acc_t> state;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t split = w % splits;
      const int64_t kvh = (w / splits) % p.kv_heads;
      const int64_t b = w / (splits * p.kv_heads);
      const KeySource<scalar_t> src = KeySource<scalar_t>::make(p, b, kvh);
      const int64_t pos = src.written;  // the query's position
      // Keys: the old visible ones in ascending position, then the new one.
      const OldKeys old = OldKeys::of(p.ring, pos, src.written);
      const RingCursor cursor = RingCursor::at(p.ring, old.cursor_first(p.ring));
      const int64_t n_keys = p.valid(b) > 0 ? old.count() + 1 : 0;
      const int64_t per_split = (n_keys + splits - 1) / splits;
      const int64_t key_begin = std::min(n_keys, split * per_split);
      const int64_t key_end = std::min(n_keys, key_begin + per_split);
      auto pos_at = [&](int64_t index) {
        return index < old.count() ? old.position(index) : pos;
      };

      state.reset(G, D);
      // the G query heads of this KV head, one row each
      const auto qr = load_rows<scalar_t, acc_t>(
          static_cast<const scalar_t*>(p.q) + b * p.q_batch_stride + kvh * G * p.q_head_stride,
          p.q_head_stride, G, D, q_rows);
      for (int64_t i0 = key_begin; i0 < key_end; i0 += kBlockK) {
        const int64_t n = std::min(kBlockK, key_end - i0);
        const int64_t slot0 = old.consecutive_slots(cursor, i0, n);  // the CUDA kernel's rule
        if (slot0 >= 0)
          gather_slots<scalar_t, acc_t>(src, slot0, n, D, k_tile, v_tile);
        else
          gather_tile<scalar_t, acc_t>(src, n, D, [&](int64_t c) { return pos_at(i0 + c); },
                                       k_tile, v_tile);
        cpu::gemm_abt<acc_t>(G, n, D, cpu::scale_of<acc_t>(p), qr.ptr, qr.ld, k_tile.data(), D,
                             scores.data(), kBlockK, scratch);
        state.update(scores.data(), kBlockK, n, v_tile.data(), D);
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t slot = ((b * p.q_heads + kvh * G + g) * splits + split);
        const acc_t inv = state.seen(g) ? acc_t(1) / state.sum[g] : acc_t(0);
        for (int64_t d = 0; d < D; ++d) part_out[slot * D + d] = state.acc[g * D + d] * inv;
        part_lse[slot] = state.lse(g);
      }
    }
  });

  // Combine the splits of each (b, query head) through their log-sum-exp.
  at::parallel_for(0, p.batch * p.q_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> combined(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const acc_t* lse_s = part_lse.data() + bh * splits;
      acc_t lse_max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t s = 0; s < splits; ++s) lse_max = max_keep_nan(lse_max, lse_s[s]);
      auto* out = static_cast<scalar_t*>(p.out) + bh * D;
      if (lse_max == -std::numeric_limits<acc_t>::infinity()) {  // padded row
        for (int64_t d = 0; d < D; ++d) out[d] = scalar_t(0);
        p.lse[bh] = -std::numeric_limits<float>::infinity();
        continue;
      }
      std::fill(combined.begin(), combined.end(), acc_t(0));
      acc_t weight_sum = 0;
      for (int64_t s = 0; s < splits; ++s) {
        const acc_t weight = std::exp(lse_s[s] - lse_max);  // 0 for empty splits
        if (weight == acc_t(0)) continue;
        weight_sum += weight;
        const acc_t* o = part_out.data() + (bh * splits + s) * D;
        for (int64_t d = 0; d < D; ++d) combined[d] += weight * o[d];
      }
      for (int64_t d = 0; d < D; ++d) out[d] = static_cast<scalar_t>(combined[d] / weight_sum);
      p.lse[bh] = static_cast<float>(lse_max + std::log(weight_sum));
    }
  });
}

void ring_append_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& seqlens,
                     const std::optional<at::Tensor>& lengths, int64_t window, int64_t sink) {
  RingCall call = prepare_ring(RingOp::kAppend, at::Tensor(), k, v, k_cache, v_cache, seqlens,
                               lengths, window, sink, 1.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(),
                                  "swaa_ring_append_cpu",
                                  [&] { append_kernel<scalar_t>(call.params); });
}

std::tuple<at::Tensor, at::Tensor> ring_chunk_cpu(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& k_cache,
                                                  const at::Tensor& v_cache,
                                                  const at::Tensor& seqlens,
                                                  const std::optional<at::Tensor>& lengths,
                                                  int64_t window, int64_t sink, double scale) {
  RingCall call = prepare_ring(RingOp::kChunk, q, k, v, k_cache, v_cache, seqlens, lengths, window,
                               sink, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "swaa_ring_chunk_cpu",
                                  [&] { chunk_kernel<scalar_t>(call.params); });
  return {call.out, call.lse};
}

std::tuple<at::Tensor, at::Tensor> ring_decode_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& seqlens, const std::optional<at::Tensor>& lengths,
    int64_t window, int64_t sink, double scale, int64_t num_splits, bool advance) {
  RingCall call = prepare_ring(RingOp::kDecode, q, k, v, k_cache, v_cache, seqlens, lengths,
                               window, sink, scale);
  TORCH_CHECK_VALUE(num_splits >= 0, "ring_decode: num_splits must be >= 0, got ", num_splits);
  const int64_t splits = cpu_decode_splits(call.params, num_splits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "swaa_ring_decode_cpu",
                                  [&] {
                                    decode_kernel<scalar_t>(call.params, splits);
                                    append_kernel<scalar_t>(call.params);
                                  });
  if (advance) advance_seqlens(seqlens, call);
  return {call.out, call.lse};
}

}  // namespace
}  // namespace swaa

TORCH_LIBRARY_IMPL(swaa, CPU, m) {
  m.impl("ring_append", &swaa::ring_append_cpu);
  m.impl("ring_decode", &swaa::ring_decode_cpu);
  m.impl("ring_chunk", &swaa::ring_chunk_cpu);
}
