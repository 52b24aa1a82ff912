// The plan of the ring cache's split decode kernel (csrc/cuda/ring.cu): how
// many CTAs share one (row, KV head) and how their partial results are
// combined.  Host-only and free of CUDA and torch, so a plain C++ test can
// check it (tests/test_decode_plan.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace swaa {

enum class DecodeCombine { kAuto, kCluster, kGlobal };

// Largest split count of the automatic choice: one wave of 132 SMs x 2 CTAs
// covers a 131k-key row with 33 splits per (row, KV head) at B = 1, Hkv = 8;
// 1024 leaves room for B = 1 with one KV head.
constexpr int64_t kDecodeSplitsMax = 1024;
// The plan's costs are counted in keys streamed by one CTA; the constants
// below are in units of kCostUnitKeys keys (one 64-key tile of the default
// tiling), whatever the tiling's own tile size (32-key tilings weigh the
// overheads the same).
constexpr int64_t kCostUnitKeys = 64;
// Cost of the second kernel of the global combine (launch + reading the
// partial results), in units of one 64-key tile of one CTA (~2 us when the
// GPU streams at full bandwidth).
constexpr int64_t kGlobalCombineCost = 2;
// Cost of the fused global combine (SWAA_DECODE_GLOBAL_COMBINE=fused: the
// CTA that finishes a row last merges its splits, no second launch): the
// last CTA reads the partials back from L2 and writes the output, ~1 us, half
// the second kernel's cost.  Unmeasured (the decode step of bench/gpu_check.sh
// measures it).
constexpr int64_t kFusedCombineCost = 1;
// Cost of a CTA besides its tiles: pipeline start-up (first tiles in flight,
// query fragments) and the merge of warps and splits.
constexpr int64_t kCtaOverhead = 2;

constexpr int64_t kMaxClusterSize = 8;  // the portable cluster size

// Occupancy of ring_decode_split_kernel (measured once per device by
// ring.cu's split_decode_occupancy): CTAs resident at once without clusters
// (global_slots), and for each cluster size s (1..8) the CTAs that fit at
// once in clusters of s.  Clusters are placed inside one GPC, so on parts
// whose GPCs have unequal SM counts (H100 / H200: 132 SMs) fewer than
// SMs x CTAs-per-SM cluster CTAs may be resident; the plan uses the real
// count.
struct SplitDecodeOccupancy {
  int64_t global_slots = 0;
  int64_t cluster_slots[kMaxClusterSize + 1] = {};  // by cluster size 1..8
  int64_t per_sm = 1;  // CTAs of the split kernel resident on one SM
};

// The global combine's cost in the plan: kernel or fused.
inline constexpr int64_t global_combine_cost(bool fused) {
  return fused ? kFusedCombineCost : kGlobalCombineCost;
}

struct SplitDecodePlan {
  int64_t splits = 1;
  bool global_combine = false;  // workspace + combine kernel instead of a cluster
};

// The keys one CTA of a plan reads when the ring is full: whole tiles of the
// capacity + the new key, split `splits` ways (the plan's own estimate).
inline int64_t plan_keys_per_cta(int64_t capacity, int64_t tile_keys, int64_t splits) {
  const int64_t tiles = (capacity + 1 + tile_keys - 1) / tile_keys;
  return (tiles + splits - 1) / splits * tile_keys;
}

// The split count and combine of the split decode, from static sizes only
// (batch, heads, ring capacity, occupancy): never from seqlens, so a captured
// graph stays valid.  Cost of a plan, in keys = waves of CTAs x (keys of the
// tiles per CTA + kCtaOverhead units), + combine_cost units
// (global_combine_cost(fused) unless SWAA_DECODE_COMBINE_COST is set) for the
// global combine, a unit being kCostUnitKeys keys; the capacity (+ the new
// key) stands for the row length.  Cluster plans use 1..8 splits, global
// plans 2..min(tiles, SWAA_DECODE_SPLITS_MAX); the cheapest wins, ties going
// to fewer splits and to the cluster (one launch).  `requested` (the op's
// num_splits, else SWAA_DECODE_SPLITS) fixes the count: a cluster when it is
// <= 8 unless SWAA_DECODE_COMBINE=global.
inline SplitDecodePlan plan_split_decode(int64_t ctas_per_split, int64_t capacity,
                                         int64_t tile_keys, int64_t max_cluster,
                                         const SplitDecodeOccupancy& occ, int64_t requested,
                                         DecodeCombine combine, int64_t splits_max,
                                         int64_t combine_cost, bool per_sm_cost) {
  const int64_t tiles = (capacity + 1 + tile_keys - 1) / tile_keys;  // + the new key
  const int64_t cluster_max = std::max<int64_t>(1, std::min(max_cluster, tiles));
  const int64_t global_max = std::max<int64_t>(1, std::min(tiles, splits_max));
  SplitDecodePlan plan;
  if (requested > 0) {
    const bool global = combine == DecodeCombine::kGlobal ||
                        (combine == DecodeCombine::kAuto && requested > max_cluster);
    plan.global_combine = global;
    plan.splits = std::max<int64_t>(1, std::min(requested, global ? tiles : cluster_max));
    return plan;
  }
  int64_t best_cost = std::numeric_limits<int64_t>::max();
  auto consider = [&](int64_t s, bool global) {
    const int64_t slots = std::max<int64_t>(1, global ? occ.global_slots : occ.cluster_slots[s]);
    // slots: rounds of resident CTAs; sm: CTAs per SM (the SMs a plan can use
    // = its resident slots / CTAs per SM), streamed one after the other
    const int64_t lanes = per_sm_cost ? std::max<int64_t>(1, slots / occ.per_sm) : slots;
    const int64_t waves = (ctas_per_split * s + lanes - 1) / lanes;
    const int64_t keys_per_cta = plan_keys_per_cta(capacity, tile_keys, s);
    const int64_t cost = waves * (keys_per_cta + kCtaOverhead * kCostUnitKeys) +
                         (global ? combine_cost * kCostUnitKeys : 0);
    if (cost < best_cost) best_cost = cost, plan.splits = s, plan.global_combine = global;
  };
  if (combine != DecodeCombine::kGlobal)
    for (int64_t s = 1; s <= cluster_max; ++s) consider(s, false);
  if (combine != DecodeCombine::kCluster)
    for (int64_t s = combine == DecodeCombine::kGlobal ? 1 : 2; s <= global_max; ++s)
      consider(s, true);
  return plan;
}

// SWAA_DECODE_LEAD's default (the split kernel is always a programmatic
// dependent of the kernel before it; this is how many of its first tiles each
// CTA asks the L2 for before its griddepcontrol.wait): 1 when every CTA of the
// grid is resident at once and each reads at least kLeadMinKeys keys, else 0.
// The prefetch's costs are fixed per CTA (thread 0 reads seqlens first, and
// the first cp.async then asks again for the tile it prefetched): over a long
// split they are hidden, over a short one they are not, and past the first
// wave of a larger grid only the first wave's CTAs could lead.  H200, session
// 20, 7 interleaved rounds, lead 1 over lead 0: B = 8 at W = 4096 (4 splits of
// 17 tiles, one wave) 1.006x back to back and 1.002x with a projection GEMM
// before every step; B = 1 (33 splits of 2 tiles) 1.041x back to back but
// 0.988x behind the GEMM, as in a model; B = 64 (one split of 65 tiles, two
// waves) 0.998x.  Session 19 (docs/ring_cache.md "Session 19"), over stream
// order (-1), back to back: lead 0 1.010-1.012x at B = 8, 1.081-1.088x at
// B = 1, 0.999x at B = 64; lead 1 1.018-1.019x and 1.126-1.134x; 4 and 8 tiles
// lose at B = 8 and 64 (the prefetches take bandwidth from the tail of the
// kernel before, which the wait waits for).
constexpr int64_t kLeadMinKeys = 512;

inline int default_decode_lead(const SplitDecodePlan& plan, int64_t ctas_per_split,
                               int64_t capacity, int64_t tile_keys,
                               const SplitDecodeOccupancy& occ) {
  const int64_t resident = plan.global_combine || plan.splits > kMaxClusterSize
                               ? occ.global_slots
                               : occ.cluster_slots[plan.splits];
  return ctas_per_split * plan.splits <= resident &&
                 plan_keys_per_cta(capacity, tile_keys, plan.splits) >= kLeadMinKeys
             ? 1
             : 0;
}

}  // namespace swaa
