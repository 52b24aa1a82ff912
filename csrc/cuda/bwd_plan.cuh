// Host-side planning of the backward, shared by the sm_80 launchers
// (attention_launch.cuh) and the Hopper backward (hopper/bwd_sm90.cu): the
// tuning-knob readers and the dk/dv CTA layout (DkdvSchedule).  No torch
// headers (the Hopper translation unit has none).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>

#include "cuda/attention_kernels.cuh"  // DkdvSchedule
#include "swaa/params.h"

namespace swaa {
namespace cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Defaults of SWAA_BWD_SPLIT and SWAA_BWD_ORDER (measured on an H200: docs/cuda_kernels.md "v4",
// docs/cuda_kernels_history.md "v4 measured").
constexpr int kBwdSplit = 1;
constexpr int kBwdOrder = 1;

// The single pass's (v7's) CTA order when SWAA_BWD_ORDER is unset: slices
// (batch x KV head) outer for windows of 2048 keys and more, so the CTAs
// running at once share one slice's float32 dq accumulator in L2; inner (the
// order of the other kernels) for shorter windows.  Measured on an H200
// (session 8, run 20261128T164314Z-aa45cf): at W=4096 outer is 1.01-1.22x
// inner (D=128, N=32k: 12.18 against 14.88 ms at S=0); at W=1024 inner is
// 1.00-1.09x outer.  Bitwise neutral (dq is added in the same order either way).
inline bool fused_slices_inner(const AttnParams& p) {
  return p.window < 2048;
}
// At most this many split pieces per launch (all slices and split blocks
// together): about two waves of CTAs on an H100/H200, and a bounded workspace
// (256 x 2 x 128 x D floats: 32 MB at D=128).
constexpr int64_t kMaxPieces = 256;

// Tuning knobs, read at every launch so one process can compare settings
// (bench/tune_cuda_kernels.py): SWAA_FWD_WARPS = 4 or 8 (warps of 16 query
// rows per forward CTA), SWAA_BWD_KV_BLOCK_M = 32 or 64 (query rows per tile
// of the dk/dv kernel), SWAA_BWD_STAGE = 0 or 1 (dk/dv kernel: lse/delta
// staged in shared memory + per-warp skipping of invisible tiles),
// SWAA_FWD_ORDER / SWAA_BWD_ORDER = 0 or 1 (1: CTAs of all heads for one row
// or key block in a row, longest blocks first; 0: the heads one after the
// other), SWAA_BWD_SPLIT = 0 (sink key blocks in one CTA), 1 (split, piece
// count from the sizes) or k >= 2 (exactly k pieces per sink block, for
// tests), SWAA_WARP_SKIP = 0 or 1 (forward and dq: a warp skips the key
// tiles none of its 16 rows can see; bitwise neutral).  Other values, and
// anything that is not a whole number, are ignored.
//
// The whole number an environment variable holds; false when it is unset,
// empty or anything else (atoi would read "on" as 0, a value most knobs take).
inline bool env_int(const char* name, int* value) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return false;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  if (*end != '\0' || v < INT_MIN || v > INT_MAX) return false;
  *value = static_cast<int>(v);
  return true;
}
// fallback, or a or b when the variable holds one of them.
inline int knob(const char* name, int fallback, int a, int b) {
  int v = 0;
  return env_int(name, &v) && (v == a || v == b) ? v : fallback;
}
inline int split_knob() {
  int v = 0;
  return env_int("SWAA_BWD_SPLIT", &v) && v >= 0 && v <= 4096 ? v : kBwdSplit;
}

// The dk/dv CTA layout (DkdvSchedule in attention_kernels.cuh) from static
// sizes only (no device reads).  The key blocks holding sink keys are seen by
// every later query: their item list (query head x query tile) has
// group * ceil(q_len / BM) items, against about group * (W + BN) / BM for a
// key block in the window.  They are cut into pieces of about that window
// length, at most kMaxPieces pieces in all.  Rows past full_from make every
// key block before full_from longer by the same amount (per sequence, known
// only on the device), so they lengthen all those CTAs alike rather than a
// few: the longest-first order handles them, no split.
template <int BN, int BM>
DkdvSchedule plan_dkdv(const AttnParams& p, int split, bool slices_inner) {
  DkdvSchedule s{};
  s.n_blocks = static_cast<int>(ceil_div(p.k_len, BN));
  s.n_split_blocks = 0;
  s.n_split = 1;
  s.chunk = 0;
  s.slices_inner = slices_inner;
  s.partial = nullptr;
  if (split == 0 || p.sink <= 0) return s;
  const int64_t split_blocks = std::min<int64_t>(ceil_div(p.sink, BN), s.n_blocks);
  const int64_t items_max = p.group() * ceil_div(p.q_len, BM);  // a sink block's list
  int64_t n_split;
  if (split >= 2) {
    n_split = split;  // forced (tests): pieces past the list's end are empty
  } else {
    const int64_t band_rows = std::min<int64_t>(p.window, p.q_len) + BN - 1;
    const int64_t band_items = p.group() * (ceil_div(band_rows, BM) + 1);
    const int64_t slices = p.batch * p.kv_heads * split_blocks;
    n_split = std::min<int64_t>(ceil_div(items_max, band_items),
                                std::max<int64_t>(2, kMaxPieces / slices));
  }
  if (n_split < 2) return s;
  s.n_split_blocks = static_cast<int>(split_blocks);
  s.n_split = static_cast<int>(n_split);
  s.chunk = static_cast<int>(ceil_div(items_max, n_split));
  return s;
}

}  // namespace cuda
}  // namespace swaa
