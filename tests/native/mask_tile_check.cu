// Host-side check of the Hopper forward v5.1's boundary-tile mask
// (csrc/cuda/hopper/fwd51_sm90.cuh, mask_tile): on random (window, sink,
// full_from, k_len, tile, row) cases, including positions past 2^31, every
// element it keeps or masks must match the int64 predicate v5 evaluates per
// element (Visibility::visible and j < k_len).  And the per-unit tile ranges
// of variant 7 (full_tiles) must accept exactly the tiles
// Visibility::tile_fully_visible accepts for a warp's 16 rows.  And where a
// tile is not fully visible, variant 9's one-bound masks (mask_kind,
// mask_tile_of_kind) must give the predicate's elements for every thread row
// of the warp.  And the backward kernels' per-item test (group_items) must
// agree with the key span (visible_keys) it replaces.  Compiled and run by
// tests/test_mask_tile.py; prints the counts, exit code 1 on a mismatch.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "cuda/hopper/bwd_sm90.cuh"
#include "cuda/hopper/fwd51_sm90.cuh"
#include "cuda/hopper/mask_sm90.cuh"

int main(int argc, char** argv) {
  using swaa::Visibility;
  using swaa::cuda::sm90::full_tiles;
  using swaa::cuda::sm90::group_items;
  using swaa::cuda::sm90::mask_key_rows;
  using swaa::cuda::sm90::mask_query_rows;
  using swaa::cuda::sm90::mask_kind;
  using swaa::cuda::sm90::mask_tile;
  using swaa::cuda::sm90::mask_tile_of_kind;
  using swaa::cuda::sm90::mask_tiles;
  const int n_cases = argc > 1 ? std::atoi(argv[1]) : 100000;
  std::mt19937_64 rng(argc > 2 ? std::atoll(argv[2]) : 1);
  auto uniform = [&](int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  long elements = 0, masked = 0, mismatches = 0, full = 0, tile_mismatches = 0;
  long bwd_elements = 0, bwd_masked = 0, bwd_mismatches = 0;
  long kinds[4] = {0, 0, 0, 0}, kind_mismatches = 0;
  // Variant 9: a tile that needs a mask for the warp whose rows start at
  // p_row, masked with the clause its kind keeps, for every thread row g and
  // lane t of the warp.  Returns the kind.
  auto check_kind = [&](const Visibility& vis, int64_t k_len, int64_t j0, int64_t p_row) {
    const auto kind = mask_kind(full_tiles(vis, p_row, p_row + 15, 128),
                                mask_tiles(vis, p_row, p_row + 15, k_len, 128), int(j0 / 128));
    ++kinds[kind];
    for (int g = 0; g < 8; ++g)
      for (int t = 0; t < 4; ++t) {
        float x[64];
        for (int e = 0; e < 64; ++e) x[e] = 1.f;
        mask_tile_of_kind(x, kind, vis, p_row + g, j0 + 2 * t, k_len);
        for (int n = 0; n < 16; ++n)
          for (int e = 0; e < 4; ++e) {
            const int64_t p = p_row + g + (e >> 1) * 8, j = j0 + 8 * n + 2 * t + (e & 1);
            const bool want = j < k_len && vis.visible(p, j);
            if ((x[4 * n + e] == 1.f) != want) {
              if (kind_mismatches < 5)
                std::printf("kind %d mismatch: window %lld sink %lld full_from %lld k_len %lld "
                            "j0 %lld p_row %lld g %d t %d element %d\n", int(kind),
                            (long long)vis.window, (long long)vis.sink,
                            (long long)vis.full_from, (long long)k_len, (long long)j0,
                            (long long)p_row, g, t, 4 * n + e);
              ++kind_mismatches;
            }
          }
      }
    return kind;
  };
  // Edges of the kinds' tile ranges (a review's cases: an off-by-one in the
  // window's tile range fails the first, second, fourth and fifth), with the
  // kind each must get: (window, sink, k_len, p_row, tile).
  struct Edge {
    int64_t window, sink, k_len, p_row;
    int tile;
    swaa::cuda::sm90::MaskKind kind;
  };
  using swaa::cuda::sm90::kMaskBoth;
  using swaa::cuda::sm90::kMaskLower;
  using swaa::cuda::sm90::kMaskSink;
  const Edge edges[] = {{2, 128, 256, 256, 1, kMaskLower}, {130, 4, 1000, 256, 0, kMaskBoth},
                        {129, 4, 1000, 384, 1, kMaskSink}, {1, 4, 1000, 255, 1, kMaskLower},
                        {1, 4, 1000, 383, 2, kMaskLower}};
  for (const Edge& c : edges) {
    Visibility vis;
    vis.window = c.window;
    vis.sink = c.sink;
    vis.full_from = swaa::kNever;
    const auto kind = check_kind(vis, c.k_len, int64_t(c.tile) * 128, c.p_row);
    if (kind != c.kind) {
      std::printf("edge case window %lld p_row %lld tile %d: kind %d, want %d\n",
                  (long long)c.window, (long long)c.p_row, c.tile, int(kind), int(c.kind));
      ++kind_mismatches;
    }
  }
  long items = 0, items_active = 0, item_mismatches = 0;
  // One item test against the key span it replaces (group_items, bwd_sm90.cuh).
  auto check_item = [&](const Visibility& vis, int64_t k_len, int64_t a, int64_t pos0) {
    const swaa::KeySpan seen = swaa::visible_keys(vis, pos0, std::min(pos0 + 63, k_len - 1));
    const bool want = (a < seen.head.end && a + 63 >= seen.head.begin) ||
                      (a < seen.body.end && a + 63 >= seen.body.begin);
    const bool got = group_items(vis, a, k_len).active(pos0);
    ++items;
    items_active += want;
    if (got != want) {
      if (item_mismatches < 5)
        std::printf("item mismatch: window %lld sink %lld full_from %lld k_len %lld a %lld "
                    "pos0 %lld: got %d want %d\n", (long long)vis.window, (long long)vis.sink,
                    (long long)vis.full_from, (long long)k_len, (long long)a, (long long)pos0,
                    got, want);
      ++item_mismatches;
    }
  };
  // Each bound of the test exactly, and one past: the window's last item
  // (a + 63 + window - 1), the first item whose last row reaches full_from
  // (also where full_from is the last key), the first causal item, a group at
  // k_len, sink keys.
  {
    Visibility vis;
    vis.window = 100, vis.sink = 0, vis.full_from = swaa::kNever;
    for (int64_t pos0 : {289, 290, 291}) check_item(vis, 1000, 128, pos0);
    for (int64_t pos0 : {63, 64, 65}) check_item(vis, 1000, 128, pos0);
    vis.full_from = 400;
    for (int64_t pos0 : {336, 337}) check_item(vis, 1000, 0, pos0);
    vis.full_from = 999;
    for (int64_t pos0 : {935, 936}) check_item(vis, 1000, 0, pos0);
    vis.full_from = 1000;  // past the last key: never reached
    for (int64_t pos0 : {936, 999}) check_item(vis, 1000, 0, pos0);
    for (int64_t pos0 : {900, 999}) check_item(vis, 1000, 1024, pos0);
    vis.sink = 200;
    for (int64_t pos0 : {500, 999}) check_item(vis, 1000, 128, pos0);
  }
  for (int i = 0; i < n_cases; ++i) {
    const bool huge = i % 50 == 0;  // positions around and past 2^31
    const int64_t k_len = huge ? uniform(1, INT64_C(3) << 31) : uniform(1, 3000);
    Visibility vis;
    vis.window = i % 4 == 0 ? swaa::kNoWindow : uniform(1, huge ? INT64_C(3) << 31 : 2000);
    vis.sink = i % 3 == 0 ? 0 : uniform(0, 300);
    vis.full_from = i % 5 == 0 ? swaa::kNever : uniform(0, k_len + 10);
    if (i % 17 == 0) {  // a full_from tensor is not clamped: negative and extreme values
      const int64_t extremes[] = {INT64_MIN, INT64_MIN + 5, -swaa::kNever, -1, INT64_MAX};
      vis.full_from = i % 3 == 0 ? -uniform(1, 5000) : extremes[uniform(0, 4)];
    }
    int64_t j0 = uniform(0, k_len / 128) * 128;                       // a key tile
    int64_t p_row = uniform(j0 > 300 ? j0 - 300 : 0, j0 + 400);       // a warp's row near it
    if (huge && i % 7 == 0) p_row = uniform(0, k_len + 200), j0 = uniform(0, 5) * 128;
    if (i % 11 == 0) p_row -= uniform(1, 400);          // Lq > Lk: positions below 0
    if (i % 13 == 0) vis.sink = uniform(0, k_len + 300);  // sinks up to past the keys
    const int t = static_cast<int>(uniform(0, 3));                    // the thread's column pair
    float got[64], want[64];
    for (int e = 0; e < 64; ++e) got[e] = want[e] = 1.f;
    mask_tile(got, vis, p_row, j0 + 2 * t, k_len);
    for (int n = 0; n < 16; ++n)
      for (int e = 0; e < 4; ++e) {
        const int64_t p = p_row + (e >> 1) * 8, j = j0 + 8 * n + 2 * t + (e & 1);
        if (!(j < k_len && vis.visible(p, j))) want[4 * n + e] = -INFINITY;
      }
    const bool want_full = vis.tile_fully_visible(p_row, p_row + 15, j0, j0 + 127);
    const auto warp_full = full_tiles(vis, p_row, p_row + 15, 128);
    const bool got_full = warp_full.fully_visible(int(j0 / 128));
    full += want_full;
    if (got_full != want_full) {
      if (tile_mismatches < 5)
        std::printf("tile mismatch: window %lld sink %lld full_from %lld j0 %lld p_row %lld: "
                    "got %d want %d\n", (long long)vis.window, (long long)vis.sink,
                    (long long)vis.full_from, (long long)j0, (long long)p_row, got_full, want_full);
      ++tile_mismatches;
    }
    if (!got_full) check_kind(vis, k_len, j0, p_row);
    // The backward kernels' item test (group_items, bwd_sm90.cuh): does any of
    // an item's 64 query rows from pos0 see a group's 64 keys from a?  As the
    // kernels asked before: visible_keys of the rows meets the keys.
    for (int r = 0; r < 4; ++r) {
      const int64_t a = uniform(0, k_len / 64 + 1) * 64;
      const int64_t pos0 = r == 0 ? uniform(a > 200 ? a - 200 : 0, a + 200) : uniform(0, k_len - 1);
      if (pos0 > k_len - 1) continue;
      check_item(vis, k_len, a, pos0);
      if (r == 1) {  // full_from at the last key and one past it: the guard of full_pos
        Visibility at_end = vis;
        for (int64_t ff : {k_len - 1, k_len}) at_end.full_from = ff, check_item(at_end, k_len, a, pos0);
      }
    }
    // The backward's masks (mask_sm90.cuh), 8 column blocks: rows are queries
    // (the dq kernel) or keys (the dk/dv kernels' S^T).
    {
      float q_rows[32], k_rows[32];
      for (int e = 0; e < 32; ++e) q_rows[e] = k_rows[e] = 1.f;
      const int64_t row = p_row, col = j0 + 2 * t;  // queries x keys
      const int64_t key_row = j0 + uniform(0, 15), query_col = p_row + 2 * t;  // keys x queries
      mask_query_rows<8>(q_rows, vis, row, col, k_len);
      mask_key_rows<8>(k_rows, vis, key_row, query_col, k_len);
      for (int n = 0; n < 8; ++n)
        for (int e = 0; e < 4; ++e) {
          const int64_t pq = row + (e >> 1) * 8, jq = col + 8 * n + (e & 1);
          const bool want_q = jq < k_len && vis.visible(pq, jq);
          const int64_t jk = key_row + (e >> 1) * 8, pk = query_col + 8 * n + (e & 1);
          const bool want_k = jk < k_len && vis.visible(pk, jk);
          bwd_elements += 2;
          bwd_masked += !want_q + !want_k;
          const bool bad_q = (q_rows[4 * n + e] == 1.f) != want_q;
          const bool bad_k = (k_rows[4 * n + e] == 1.f) != want_k;
          if ((bad_q || bad_k) && bwd_mismatches < 5)
            std::printf("backward mismatch (%s rows): window %lld sink %lld full_from %lld "
                        "k_len %lld row %lld col %lld element %d\n", bad_q ? "query" : "key",
                        (long long)vis.window, (long long)vis.sink, (long long)vis.full_from,
                        (long long)k_len, (long long)(bad_q ? row : key_row),
                        (long long)(bad_q ? col : query_col), 4 * n + e);
          bwd_mismatches += bad_q + bad_k;
        }
    }
    for (int e = 0; e < 64; ++e) {
      ++elements;
      masked += want[e] < 0.f;
      if (got[e] != want[e]) {
        if (mismatches < 5)
          std::printf("mismatch: window %lld sink %lld full_from %lld k_len %lld j0 %lld p_row %lld "
                      "t %d element %d: got %g want %g\n",
                      (long long)vis.window, (long long)vis.sink, (long long)vis.full_from,
                      (long long)k_len, (long long)j0, (long long)p_row, t, e, got[e], want[e]);
        ++mismatches;
      }
    }
  }
  std::printf("elements %ld masked %ld mismatches %ld\n", elements, masked, mismatches);
  std::printf("tiles %d fully_visible %ld tile_mismatches %ld\n", n_cases, full, tile_mismatches);
  std::printf("backward elements %ld masked %ld backward_mismatches %ld\n", bwd_elements, bwd_masked,
              bwd_mismatches);
  std::printf("mask kinds upper %ld sink %ld lower %ld both %ld kind_mismatches %ld\n", kinds[0],
              kinds[1], kinds[2], kinds[3], kind_mismatches);
  std::printf("items %ld active %ld item_mismatches %ld\n", items, items_active, item_mismatches);
  return mismatches == 0 && tile_mismatches == 0 && bwd_mismatches == 0 && kind_mismatches == 0 &&
                 item_mismatches == 0
             ? 0
             : 1;
}
