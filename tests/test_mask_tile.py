"""The boundary-tile mask of the Hopper forward v5.1 (csrc/cuda/hopper/
fwd51_sm90.cuh, mask_tile) is the visibility predicate: a host program
(tests/native/mask_tile_check.cu, compiled here with nvcc) compares it with the
int64 per-element test of v5 (Visibility::visible, j < k_len) on random masks,
tiles and rows, also past 2^31 positions; and variant 7's per-unit ranges of fully
visible tiles (full_tiles) with Visibility::tile_fully_visible, variant 9's
one-bound masks of the tiles that are not (mask_kind, mask_tile_of_kind), and the
backward kernels' per-item test (group_items) with the key span (visible_keys) it
replaces.  Needs nvcc (CUDA_HOME or PATH), no GPU;
skipped without nvcc.
"""
from __future__ import annotations

import re
import subprocess

import pytest
from native_build import build_native, find_nvcc


@pytest.mark.skipif(find_nvcc() is None, reason="needs nvcc")
def test_mask_tile_is_the_visibility_predicate(tmp_path):
    exe = build_native("mask_tile_check", tmp_path)
    for seed in ("1", "2"):
        res = subprocess.run([str(exe), "100000", seed], capture_output=True, text=True,
                             timeout=300, check=False)
        assert res.returncode == 0, res.stdout[-3000:]
        assert "mismatches 0" in res.stdout and "masked 0 " not in res.stdout, res.stdout
        # variant 7's per-unit tile ranges (full_tiles): both outcomes seen, no mismatch
        assert "tile_mismatches 0" in res.stdout, res.stdout
        assert "fully_visible 0 " not in res.stdout, res.stdout
        # the backward's masks (mask_sm90.cuh): rows of queries and rows of keys
        assert "backward_mismatches 0" in res.stdout, res.stdout
        assert "backward elements 0 " not in res.stdout and " masked 0 backward" not in res.stdout
        # variant 9's one-bound masks (mask_kind): every kind seen, no mismatch
        kinds = re.search(r"mask kinds upper (\d+) sink (\d+) lower (\d+) both (\d+) "
                          r"kind_mismatches (\d+)", res.stdout)
        assert kinds, res.stdout
        assert all(int(n) > 0 for n in kinds.groups()[:4]) and kinds.group(5) == "0", res.stdout
        # the backward kernels' per-item test (group_items): both outcomes, no mismatch
        assert "item_mismatches 0" in res.stdout and " active 0 " not in res.stdout, res.stdout
