// Slot arithmetic and call parameters of the ring-buffer KV cache.
//
// A ring cache keeps `sink + window` slots per (batch row, KV head):
//
//     slot_of(t) = t                              if t < sink
//                = sink + (t - sink) % window     otherwise
//
// After `end` positions were written, position t < end still holds its slot
// iff t < sink or end - t <= window (the last `window` non-sink positions).
// Every query that the visibility predicate (swaa/visibility.h, with
// full_from = never) lets see an old key only sees keys that survived: a key j
// visible to a query at p >= end satisfies j < sink or p - j < window.
//
// Header-only, no torch: usable from host C++ and CUDA device code.
#pragma once

#include <cstdint>

#include "swaa/visibility.h"

namespace swaa {

struct RingLayout {
  int64_t window;  // ring slots after the sink slots, >= 1
  int64_t sink;    // pinned slots for positions 0 .. sink-1, >= 0

  SWAA_HD int64_t capacity() const { return sink + window; }

  SWAA_HD int64_t slot_of(int64_t pos) const {
    return pos < sink ? pos : sink + (pos - sink) % window;
  }

  // True when position `pos` still owns its slot once positions [0, end) are written.
  SWAA_HD bool survives(int64_t pos, int64_t end) const {
    return pos < end && (pos < sink || end - pos <= window);
  }

  SWAA_HD Visibility visibility() const { return Visibility{window, sink, kNever}; }
};

// Slots of consecutive non-sink positions first, first+1, ... (at most
// `window` of them) without a 64-bit modulo per key: one modulo for the first
// position, then a single conditional wrap.
struct RingCursor {
  int64_t sink;
  int64_t window;
  int64_t first;      // first position, >= sink
  int64_t first_off;  // (first - sink) % window

  SWAA_HD static RingCursor at(const RingLayout& ring, int64_t first) {
    return RingCursor{ring.sink, ring.window, first, (first - ring.sink) % ring.window};
  }
  // Slot of position first + delta, 0 <= delta < window.
  SWAA_HD int64_t slot(int64_t delta) const {
    int64_t off = first_off + delta;
    if (off >= window) off -= window;
    return sink + off;
  }
};

// The cached (old) keys that a single query at position p sees when the cache
// holds positions [0, written) and p >= written: the sink keys [0, head_end)
// and the window keys [body_begin, body_end), numbered 0 .. count()-1 in
// ascending position.  Derived from visible_keys(), so it is the same rule as
// every other kernel.
struct OldKeys {
  int64_t head_end;
  int64_t body_begin;
  int64_t body_end;

  SWAA_HD static OldKeys of(const RingLayout& ring, int64_t p, int64_t written) {
    const KeySpan span = visible_keys(ring.visibility(), p, p);
    OldKeys keys;
    keys.head_end = min_of(span.head.end, written);
    keys.body_begin = span.body.begin;
    keys.body_end = max_of(span.body.begin, min_of(span.body.end, written));
    return keys;
  }
  SWAA_HD int64_t count() const { return head_end + (body_end - body_begin); }
  SWAA_HD int64_t position(int64_t index) const {
    return index < head_end ? index : body_begin + (index - head_end);
  }
  // First position of the window keys, where a RingCursor over them starts.
  SWAA_HD int64_t cursor_first(const RingLayout& ring) const {
    return body_begin > ring.sink ? body_begin : ring.sink;
  }
  // Slot of key `index` when keys index .. index + n - 1 are window keys in n
  // consecutive slots (no sink key among them, no wrap of the ring inside
  // them), else -1.  A gather then computes one slot per tile of keys instead
  // of one per key.  `cursor` is RingCursor::at(ring, cursor_first(ring)).
  SWAA_HD int64_t consecutive_slots(const RingCursor& cursor, int64_t index, int64_t n) const {
    if (index < head_end || index + n > count()) return -1;
    const int64_t pos = position(index);
    if (pos < cursor.first) return -1;  // before the cursor's first position (defensive)
    const int64_t slot = cursor.slot(pos - cursor.first);
    return slot + n <= cursor.sink + cursor.window ? slot : -1;
  }
};

// Parameters of one ring-cache call (append, decode or chunk), filled once on
// the host (csrc/ring_ops.cpp).  Strides are in elements; all tensors have
// unit stride on the head dimension.
//
// Row b of the batch has written positions [0, seqlens[b]) before the call;
// the chunk holds its next positions seqlens[b] + i for i < valid(b) (the rest
// of the chunk is padding: never written, never attended to, output zero).
struct RingParams {
  const void* q;  // (B, Hq, Lc, D)
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  const void* k;  // (B, Hkv, Lc, D): keys of the chunk
  const void* v;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  void* k_cache;  // (B, Hkv, sink + window, D)
  void* v_cache;
  int64_t kc_batch_stride, kc_head_stride, kc_row_stride;
  int64_t vc_batch_stride, vc_head_stride, vc_row_stride;
  void* out;  // (B, Hq, Lc, D), contiguous
  float* lse;  // (B, Hq, Lc), contiguous, natural log

  const int64_t* seqlens;  // (B,) positions written before this call
  const int64_t* lengths;  // (B,) valid positions of the chunk, nullptr = chunk_len
  int64_t batch, q_heads, kv_heads, chunk_len, head_dim;
  RingLayout ring;
  float scale;
  double scale_f64;  // the same scale unrounded: the float64 CPU kernels'

  SWAA_HD int64_t group() const { return q_heads / kv_heads; }
  SWAA_HD int64_t valid(int64_t b) const {
    if (lengths == nullptr) return chunk_len;
    const int64_t n = lengths[b];
    return n < 0 ? 0 : (n > chunk_len ? chunk_len : n);
  }
};

}  // namespace swaa
