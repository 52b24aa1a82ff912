// Prints the split-decode plan (csrc/include/swaa/decode_plan.h) for each case
// read from stdin, one per line:
//   ctas_per_split capacity tile_keys max_cluster per_sm sms cluster_slots(1..8)
//   requested combine(0 auto, 1 cluster, 2 global) splits_max combine_cost per_sm_cost
// and answers "splits global_combine lead" per line (tests/test_decode_plan.py),
// lead being SWAA_DECODE_LEAD's default for the plan (default_decode_lead).
// With --costs: prints global_combine_cost(false) and global_combine_cost(true)
// (the kernel and the fused global combine) instead.
#include <cstdio>
#include <cstring>
#include <iostream>

#include "swaa/decode_plan.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--costs") == 0) {
    std::printf("%lld %lld\n", static_cast<long long>(swaa::global_combine_cost(false)),
                static_cast<long long>(swaa::global_combine_cost(true)));
    return 0;
  }
  long long ctas, capacity, tile, max_cluster, per_sm, sms, requested, combine, splits_max, cost,
      per_sm_cost;
  while (std::cin >> ctas >> capacity >> tile >> max_cluster >> per_sm >> sms) {
    swaa::SplitDecodeOccupancy occ;
    occ.per_sm = per_sm;
    occ.global_slots = sms * per_sm;
    for (int s = 1; s <= 8; ++s) std::cin >> occ.cluster_slots[s];
    std::cin >> requested >> combine >> splits_max >> cost >> per_sm_cost;
    const swaa::SplitDecodePlan plan = swaa::plan_split_decode(
        ctas, capacity, tile, max_cluster, occ, requested,
        static_cast<swaa::DecodeCombine>(combine), splits_max, cost, per_sm_cost != 0);
    const int lead = swaa::default_decode_lead(plan, ctas, capacity, tile, occ);
    std::printf("%lld %d %d\n", static_cast<long long>(plan.splits), plan.global_combine ? 1 : 0,
                lead);
  }
  return 0;
}
