// Host-only check of the single-pass Hopper backward's schedule
// (csrc/cuda/hopper/bwd_fused_sm90.cuh, SWAA_BWD_HOPPER=4): runs the kernel's
// own fused_work() / dkdv_work_at() / dq_turn() on the host for many shapes
// and checks, without a GPU,
//   1. the tickets cover every (slice, unit) of the dk/dv schedule once;
//   2. for every dQ tile (b, query head, 64 rows) the blocks adding into it
//      are distinct, their dq_turn() ranks are exactly 0 .. k-1 in decreasing
//      block order, every total is k, and every tile below q_len has k >= 1
//      (rank 0 stores: the accumulator needs no zeroing);
//   3. progress: a step model of the kernel (CTAs start in ticket order on
//      `slots` resident places; per step a resident CTA finishes its next item
//      when the tile's counter equals its rank) never stalls, for slots = 1, 3
//      and 132, and prints how many steps the model takes against the
//      no-wait bound (ceil(items / slots), and the longest CTA).
// Build and run (no GPU needed; the kernels are not instantiated):
//   nvcc -std=c++20 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
//     -Icsrc -Icsrc/include tests/native/fused_schedule_check.cu -o /tmp/fsc && /tmp/fsc
#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>
#include <vector>

#include "cuda/bwd_plan.cuh"
#include "cuda/hopper/bwd_fused_sm90.cuh"

using namespace swaa;
using namespace swaa::cuda;
using namespace swaa::cuda::sm90;

namespace {

constexpr int BN = 128, BM = 64;

struct Case {
  int64_t B, Hq, Hkv, Lq, Lk, window, sink;
  std::vector<int64_t> full_from;  // empty: never
  int split;                       // SWAA_BWD_SPLIT
  bool slices_inner;               // SWAA_BWD_ORDER
};

struct Item {
  int ticket, index, block;
  int64_t tile;
  DqTurn turn;
};

int failures = 0;
#define CHECK(cond, ...)                     \
  do {                                       \
    if (!(cond)) {                           \
      ++failures;                            \
      std::printf("  FAIL: " __VA_ARGS__);   \
      std::printf("\n");                     \
      return;                                \
    }                                        \
  } while (0)

void run(const Case& c, bool verbose) {
  AttnParams p{};
  p.batch = c.B, p.q_heads = c.Hq, p.kv_heads = c.Hkv, p.q_len = c.Lq, p.k_len = c.Lk;
  p.head_dim = 128, p.q_offset = c.Lk - c.Lq;
  p.window = c.window <= 0 ? kNoWindow : c.window;
  p.sink = c.sink;
  p.full_from = c.full_from.empty() ? nullptr : c.full_from.data();
  const DkdvSchedule sched = plan_dkdv<BN, BM>(p, c.split, c.slices_inner);
  const int n_slices = static_cast<int>(c.B * c.Hkv);
  const int n_tickets = sched.n_units() * n_slices;
  const int64_t q_len_pad = ceil_div(c.Lq, kPadRows) * kPadRows;
  const int64_t tiles = q_len_pad / BM;
  std::printf("B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld W=%lld S=%lld ff=%s split=%d order=%d: "
              "%d CTAs (%d units, %d split blocks x %d)\n",
              (long long)c.B, (long long)c.Hq, (long long)c.Hkv, (long long)c.Lq, (long long)c.Lk,
              (long long)c.window, (long long)c.sink, c.full_from.empty() ? "none" : "set",
              c.split, c.slices_inner ? 1 : 0, n_tickets, sched.n_units(), sched.n_split_blocks,
              sched.n_split);

  std::vector<std::vector<Item>> cta(n_tickets);
  std::map<std::pair<int, int>, int> seen_units;
  std::map<int64_t, std::vector<Item>> by_tile;
  for (int t = 0; t < n_tickets; ++t) {
    const DkdvWork w = fused_work<BN, BM>(p, sched, t);
    CHECK(seen_units.emplace(std::make_pair(w.slice, w.unit), t).second,
          "ticket %d repeats slice %d unit %d", t, w.slice, w.unit);
    const Visibility vis = p.visibility(w.b);
    const int block = static_cast<int>(w.j_first / BN);
    for (int it = w.first; it < w.end; ++it) {
      const int64_t r0 = w.row0(it, BM);
      CHECK(r0 >= 0 && r0 < c.Lq, "row0 %lld out of range", (long long)r0);
      const int64_t tile = (int64_t(w.b) * c.Hq + w.head(it)) * tiles + r0 / BM;
      const Item item{t, it - w.first, block, tile, dq_turn<BN, BM>(p, vis, r0, block)};
      cta[t].push_back(item);
      by_tile[tile].push_back(item);
    }
  }
  CHECK(static_cast<int>(seen_units.size()) == n_tickets, "tickets miss units");

  // 2. ranks per tile
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t m = 0; m * BM < c.Lq; ++m) {
        const int64_t tile = (b * c.Hq + h) * tiles + m;
        auto found = by_tile.find(tile);
        CHECK(found != by_tile.end(), "tile b=%lld h=%lld m=%lld has no contribution",
              (long long)b, (long long)h, (long long)m);
        std::vector<Item>& items = found->second;
        const int k = static_cast<int>(items.size());
        std::vector<int> block_of_rank(k, -1);
        for (const Item& item : items) {
          CHECK(item.turn.total == k, "tile m=%lld: total %d but %d contributions",
                (long long)m, item.turn.total, k);
          CHECK(item.turn.rank >= 0 && item.turn.rank < k && block_of_rank[item.turn.rank] < 0,
                "tile m=%lld: rank %d repeated or out of range", (long long)m, item.turn.rank);
          block_of_rank[item.turn.rank] = item.block;
        }
        for (int r = 1; r < k; ++r)
          CHECK(block_of_rank[r] < block_of_rank[r - 1],
                "tile m=%lld: rank %d is block %d after block %d (not decreasing)",
                (long long)m, r, block_of_rank[r], block_of_rank[r - 1]);
      }

  // 3. progress model
  int64_t total_items = 0, longest = 0;
  for (const auto& v : cta) {
    total_items += static_cast<int64_t>(v.size());
    longest = std::max<int64_t>(longest, static_cast<int64_t>(v.size()));
  }
  for (int slots : {1, 3, 132}) {
    std::map<int64_t, int> counter;
    std::vector<size_t> next(n_tickets, 0);
    std::vector<int> resident;
    int started = 0, done = 0;
    int64_t steps = 0, blocked = 0;
    while (done < n_tickets) {
      while (static_cast<int>(resident.size()) < slots && started < n_tickets)
        resident.push_back(started++);
      bool progress = false;
      std::vector<std::pair<int64_t, int>> bumps;
      for (int t : resident) {
        if (next[t] >= cta[t].size()) continue;
        const Item& item = cta[t][next[t]];
        if (counter[item.tile] == item.turn.rank) {
          bumps.emplace_back(item.tile, item.turn.rank + 1);
          ++next[t];
          progress = true;
        } else {
          ++blocked;
        }
      }
      for (auto& bump : bumps) counter[bump.first] = bump.second;
      std::vector<int> still;
      for (int t : resident) {
        if (next[t] >= cta[t].size()) {
          ++done;
          progress = true;
        } else {
          still.push_back(t);
        }
      }
      resident.swap(still);
      ++steps;
      CHECK(progress, "no progress with %d slots at step %lld (deadlock)", slots, (long long)steps);
    }
    const int64_t bound = std::max<int64_t>(longest, (total_items + slots - 1) / slots);
    if (verbose)
      std::printf("  slots %3d: %lld steps (no-wait bound %lld, %.2fx), %lld blocked CTA-steps\n",
                  slots, (long long)steps, (long long)bound, double(steps) / double(bound),
                  (long long)blocked);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool verbose = argc > 1;
  const int64_t never = int64_t(1) << 40;
  std::vector<Case> cases;
  // tile edges, GQA/MQA, Lq < Lk, sinks > a block, full_from per sequence, split / order knobs
  for (int split : {0, 1, 3, 64})
    for (bool inner : {true, false}) {
      cases.push_back({1, 2, 1, 1, 1, 0, 0, {}, split, inner});
      cases.push_back({2, 4, 2, 63, 63, 64, 0, {}, split, inner});
      cases.push_back({1, 4, 1, 129, 129, 129, 1, {}, split, inner});
      cases.push_back({2, 4, 4, 383, 383, 300, 128, {}, split, inner});
      cases.push_back({1, 8, 2, 100, 777, 64, 129, {}, split, inner});
      cases.push_back({2, 2, 1, 640, 1000, 256, 4, {384, 384}, split, inner});
      cases.push_back({2, 8, 2, 1500, 1500, 64, 200, {never, 750}, split, inner});
      cases.push_back({2, 4, 2, 2049, 2049, 200, 4, {1000, never}, split, inner});
      cases.push_back({1, 4, 1, 300, 1000, 0, 130, {}, split, inner});
    }
  // the benchmark shapes (model of waiting, printed with an argument)
  cases.push_back({1, 32, 8, 8192, 8192, 4096, 4, {}, 1, true});
  cases.push_back({1, 32, 8, 32768, 32768, 4096, 0, {}, 1, true});
  cases.push_back({1, 32, 8, 32768, 32768, 1024, 4, {}, 1, true});
  cases.push_back({1, 32, 8, 32768, 32768, 1024, 128, {}, 1, true});
  cases.push_back({1, 4, 1, 32768, 32768, 4096, 4, {}, 1, true});
  for (const Case& c : cases) run(c, verbose);
  std::printf("%s: %d failure(s) in %zu cases\n", failures ? "FAILED" : "OK", failures,
              cases.size());
  return failures ? 1 : 0;
}
