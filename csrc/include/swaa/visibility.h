// The one visibility predicate of swaa_ext, and the block ranges derived from it.
//
// Positions are bottom-right aligned: query row i sits at absolute position
// p = i + q_offset (q_offset = Lk - Lq); key j sits at position j.  Key j is
// visible to the query at p iff
//
//     j <= p  and  (p - j < window  or  j < sink  or  p >= full_from)
//
// "No window" is expressed as window = kNoWindow, "never full" as
// full_from = kNever, so the predicate needs no special cases.
//
// Every kernel (CPU and CUDA, forward and backward, ring cache) derives its
// loops from the functions below: for a block of query positions the visible
// keys form at most two ranges (the sink keys and the window keys), for a block
// of keys the queries that see it form at most two ranges.  Tiles wholly
// inside those ranges *and* wholly visible need no mask; only boundary tiles
// are masked element by element.
//
// Header-only, no torch: usable from host C++ and CUDA device code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SWAA_HD __host__ __device__ __forceinline__
#else
#define SWAA_HD inline
#endif

namespace swaa {

constexpr int64_t kNoWindow = INT64_C(1) << 60;  // larger than any sequence
constexpr int64_t kNever = INT64_C(1) << 60;     // full_from that is never reached

template <typename T>
SWAA_HD T min_of(T a, T b) { return a < b ? a : b; }
template <typename T>
SWAA_HD T max_of(T a, T b) { return a > b ? a : b; }
// The larger of a and b, NaN when either is NaN (max_of, fmaxf and std::max
// drop a NaN operand, depending on its side).  The decode combines take the
// maximum of the splits' log-sum-exps with it, so a split that saw a NaN score
// makes the result NaN, as in swa_attention, instead of being skipped.
template <typename T>
SWAA_HD T max_keep_nan(T a, T b) { return (a != a || a > b) ? a : b; }

// The per-sequence masking rule.
struct Visibility {
  int64_t window;     // >= 1, kNoWindow for unlimited
  int64_t sink;       // >= 0
  int64_t full_from;  // kNever when never full

  SWAA_HD bool visible(int64_t p, int64_t j) const {
    return j <= p && (p - j < window || j < sink || p >= full_from);
  }

  // True when every key in [j_first, j_last] is visible to every query in
  // [p_first, p_last]: such a tile is computed without any mask.
  SWAA_HD bool tile_fully_visible(int64_t p_first, int64_t p_last, int64_t j_first,
                                  int64_t j_last) const {
    if (j_last > p_first) return false;                   // causal edge crosses the tile
    if (j_last < sink) return true;                        // all sink keys
    if (p_first >= full_from) return true;                 // all rows attend fully
    return p_last - j_first < window;                      // farthest pair inside the window
  }
};

// A half-open range [begin, end) of positions; empty when begin >= end.
struct Range {
  int64_t begin;
  int64_t end;
  SWAA_HD bool empty() const { return begin >= end; }
};

// Keys visible to at least one query of [p_first, p_last] (p_first <= p_last),
// as two disjoint, ordered ranges: `head` (the sink keys) and `body` (the window
// keys, or everything up to p_last when some row is past full_from).  Keys in
// neither range are invisible to every query of the block.
struct KeySpan {
  Range head;
  Range body;
};

SWAA_HD KeySpan visible_keys(const Visibility& vis, int64_t p_first, int64_t p_last) {
  const int64_t end = p_last + 1;  // causal: nothing past the last query
  int64_t body_begin;
  if (p_last >= vis.full_from) {
    body_begin = 0;
  } else {
    const int64_t w = vis.window >= end ? end : vis.window;  // avoid overflow
    body_begin = max_of<int64_t>(0, p_first - w + 1);
  }
  const int64_t sink_end = min_of<int64_t>(vis.sink, body_begin);  // part of sink not in body
  KeySpan span;
  span.head = Range{0, sink_end};
  span.body = Range{body_begin, end};
  return span;
}

// Queries (as positions) that see at least one key of [j_first, j_last], with
// queries limited to [p_min, p_max]: the window/causal band of the block, and,
// past it, the rows that still see the block because it holds sink keys or
// because they are past full_from.  Returned as two disjoint ordered ranges.
struct QuerySpan {
  Range near;  // queries inside the band [j_first, j_last + window - 1]
  Range far;   // queries after the band that still see some key of the block
};

SWAA_HD QuerySpan visible_queries(const Visibility& vis, int64_t j_first, int64_t j_last,
                                  int64_t p_min, int64_t p_max) {
  QuerySpan span;
  const int64_t near_begin = max_of(p_min, j_first);
  // last query whose window still reaches j_last: p - j_last < window
  const int64_t band_last =
      vis.window >= kNoWindow - j_last ? kNoWindow : j_last + vis.window - 1;
  const int64_t near_end = min_of(p_max, band_last) + 1;
  span.near = Range{near_begin, max_of(near_begin, near_end)};
  int64_t far_begin;
  if (j_first < vis.sink) {
    far_begin = span.near.end;  // sink keys: every later query sees them
  } else {
    far_begin = max_of(span.near.end, vis.full_from);
  }
  far_begin = max_of(far_begin, near_begin);
  span.far = Range{far_begin, max_of(far_begin, p_max + 1)};
  return span;
}

}  // namespace swaa
