"""The split-decode plan of the ring cache (csrc/include/swaa/decode_plan.h): how many CTAs share a
(row, KV head) and how they combine.  Host C++ only, so it is compiled here with the system C++
compiler and checked without a GPU against plans worked out by hand.  The occupancy numbers are
an H200's: 132 SMs, 2 CTAs of the split kernel per SM, and fewer resident CTAs in clusters of 3+
(GPCs of unequal size); the plans they give for B = 1, 8, 64 are the ones the GPU chose in
session 3 (bench/results/logs/decode2_H200_session3.log)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")

SMS, PER_SM = 132, 2
CLUSTER_SLOTS = [264, 264, 258, 240, 240, 252, 252, 240]  # clusters of 1..8
AUTO, CLUSTER, GLOBAL = 0, 1, 2
TILE, MAX_CLUSTER, SPLITS_MAX, COMBINE_COST, FUSED_COMBINE_COST = 64, 8, 1024, 2, 1


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path_factory.mktemp("decode_plan") / "decode_plan_check"
    subprocess.run([CXX, "-std=c++17", "-O1", f"-I{ROOT / 'csrc' / 'include'}",
                    str(ROOT / "tests" / "native" / "decode_plan_check.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=120)

    def plan(batch, capacity, *, kv_heads=8, requested=0, combine=AUTO, per_sm_cost=False,
             combine_cost=COMBINE_COST, tile=TILE):
        ctas_per_split = batch * kv_heads  # one head chunk: Hq / Hkv <= 16
        line = " ".join(map(str, [ctas_per_split, capacity, tile, MAX_CLUSTER, PER_SM, SMS,
                                  *CLUSTER_SLOTS, requested, combine, SPLITS_MAX, combine_cost,
                                  int(per_sm_cost)]))
        out = subprocess.run([str(exe)], input=line + "\n", capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        plan.last_lead = int(out[2])  # SWAA_DECODE_LEAD's default for this plan
        return int(out[0]), "global" if out[1] == "1" else "cluster"

    def lead(batch, capacity, **kw):
        """(splits, combine, SWAA_DECODE_LEAD's default) of the plan."""
        return (*plan(batch, capacity, **kw), plan.last_lead)

    plan.exe = exe
    plan.lead = lead
    return plan


@pytest.mark.parametrize("batch,capacity,expected", [
    (64, 4100, (1, "cluster")),     # 512 CTAs already fill the GPU twice over
    (8, 4100, (4, "global")),       # clusters of 4 do not all fit at once: 4 global splits
    (8, 131072, (4, "global")),
    (1, 4100, (33, "global")),      # one wave of 264 CTAs
    (1, 131072, (33, "global")),    # 8 rows x 33 splits = 264 CTAs, 63 tiles each
])
def test_default_cost_model_gives_the_measured_plans(planner, batch, capacity, expected):
    assert planner(batch, capacity) == expected


def test_forced_cluster_combine_gives_the_measured_plan(planner):
    # SWAA_DECODE_COMBINE=cluster at B=8: 3 splits (192 CTAs fit; 4 x 64 = 256 do not)
    assert planner(8, 4100, combine=CLUSTER) == (3, "cluster")


def test_per_sm_cost_model_prefers_fewer_longer_ctas_at_batch_8(planner):
    # SWAA_DECODE_COST=sm: 2 CTAs on one SM share its bandwidth, so 2 splits on 128 SMs
    # (33 tiles each, no second kernel) beat 4 splits with two CTAs on most SMs (2 x 17 tiles)
    assert planner(8, 4100, per_sm_cost=True) == (2, "cluster")
    # a batch that fills the GPU anyway keeps one split per row under both models
    assert planner(64, 4100, per_sm_cost=True) == (1, "cluster")


@pytest.mark.parametrize("requested,combine,capacity,expected", [
    (5, AUTO, 4100, (5, "cluster")),       # <= 8: one launch with a cluster
    (12, AUTO, 4100, (12, "global")),      # > 8: only the global combine can take it
    (3, GLOBAL, 4100, (3, "global")),      # forced global
    (100, AUTO, 100, (2, "global")),       # capped at one split per 64-key tile (101 keys: 2)
    (20, CLUSTER, 4100, (8, "cluster")),   # forced cluster: at most 8
])
def test_requested_split_count(planner, requested, combine, capacity, expected):
    assert planner(1, capacity, requested=requested, combine=combine) == expected


def test_combine_costs_of_the_header(planner):
    # the second kernel costs 2 tiles; the fused combine (SWAA_DECODE_GLOBAL_COMBINE=fused: no
    # second launch, the last CTA of a row merges) 1
    out = subprocess.run([str(planner.exe), "--costs"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    assert [int(x) for x in out] == [COMBINE_COST, FUSED_COMBINE_COST]


@pytest.mark.parametrize("batch,capacity,kernel_plan,fused_plan", [
    (8, 4100, (4, "global"), (4, "global")),     # issue 4's shape: the same plan either way
    (64, 4100, (1, "cluster"), (1, "cluster")),
    (1, 131072, (33, "global"), (33, "global")),
    (8, 2052, (3, "cluster"), (4, "global")),    # W = 2048: one more split, one wave of 256 CTAs
    (1, 1028, (6, "cluster"), (17, "global")),   # a short ring at B = 1: 17 one-tile splits
])
def test_fused_combine_cost_lets_the_plan_take_the_global_combine(planner, batch, capacity,
                                                                  kernel_plan, fused_plan):
    assert planner(batch, capacity, combine_cost=COMBINE_COST) == kernel_plan
    assert planner(batch, capacity, combine_cost=FUSED_COMBINE_COST) == fused_plan


@pytest.mark.parametrize("batch,capacity,expected", [
    (8, 131072, (4, "global")),   # in 32-key tiles a CTA overhead of 2 tiles would give 33 splits
    (8, 4100, (4, "global")),
    (1, 4100, (33, "global")),
    (64, 4100, (1, "global")),
])
def test_cost_counts_keys_whatever_the_tile_size(planner, batch, capacity, expected):
    # The 32-key tilings (SWAA_DECODE_TILE=32) plan global only; the CTA overhead and the combine
    # cost are in units of 64 keys, not of the tiling's tiles, so at the same occupancy a 32-key
    # tiling gets the plan of the 64-key one.
    for tile in (64, 32):
        assert planner(batch, capacity, combine=GLOBAL, tile=tile) == expected, tile


@pytest.mark.parametrize("batch,capacity,kw,expected", [
    # one wave of 256 CTAs of 17 tiles (1088 keys): the first tile is prefetched before the wait
    (8, 4100, {}, (4, "global", 1)),
    (8, 131072, {}, (4, "global", 1)),
    # B = 1: 33 splits of 2 tiles (128 keys): the prefetch would be half of each CTA's bytes and
    # its fixed cost is not hidden (0.988x behind a projection GEMM on the H200): no prefetch
    (1, 4100, {}, (33, "global", 0)),
    # a long ring at B = 1: 264 CTAs of 63 tiles, one wave
    (1, 131072, {}, (33, "global", 1)),
    # B = 64: 512 CTAs of one split, two waves: past the first wave no CTA can lead
    (64, 4100, {}, (1, "cluster", 0)),
    # exactly kLeadMinKeys (512 keys, 8 tiles) per CTA leads; one tile less does not
    (1, 8 * 64 * 2 - 1, {"requested": 2, "combine": GLOBAL}, (2, "global", 1)),
    (1, 7 * 64 * 2 - 1, {"requested": 2, "combine": GLOBAL}, (2, "global", 0)),
    # a cluster plan counts the CTAs that fit in clusters (240 in clusters of 4): 256 do not
    (8, 4100, {"requested": 4, "combine": CLUSTER}, (4, "cluster", 0)),
    (8, 4100, {"requested": 3, "combine": CLUSTER}, (3, "cluster", 1)),
    # keys, not tiles: 32-key tiles of the same split lead the same way
    (8, 4100, {"combine": GLOBAL, "tile": 32}, (4, "global", 1)),
])
def test_default_lead_prefetches_only_for_one_wave_of_long_splits(planner, batch, capacity, kw,
                                                                   expected):
    assert planner.lead(batch, capacity, **kw) == expected
