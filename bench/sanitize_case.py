"""Small swaa calls for compute-sanitizer (memcheck, racecheck, synccheck), with
the default kernels (on an H100/H200: the Hopper forward variant 7 and the
Hopper backward).  Parts (--parts, default all):

  fwd   odd lengths, GQA, sink, window and per-sequence full_from, both head dims
        and 16-bit dtypes; plus 2 x 64 heads x 700 rows, more query tiles than
        the GPU has SMs, so the persistent forward loops over several tiles
  bwd   the backward of the odd case, once as chosen by the sizes and once with
        the sink key blocks' dk/dv split into 3 pieces (SWAA_BWD_SPLIT=3:
        partial sums + reduce kernel); then a windowed case without full_from
        and keys nine windows long, where the default takes the single pass
        (v7, its turn watchdog off)
  ring  RingKVCache: a padded prefill chunk longer than the window (the ring
        wraps; ring_chunk + ring_append), then decode steps through the split
        decode kernel with each combine (SWAA_DECODE_COMBINE=cluster / global,
        the global one with the combine kernel and fused, SWAA_DECODE_GLOBAL_
        COMBINE=kernel / fused; 4 splits); then fused decode steps with 24 query
        heads per KV head (a partial head chunk) in every tiling of the global
        kernel (SWAA_DECODE_TILE x SWAA_DECODE_STAGES: 64x3, 64x2, 32x4, 32x6);
        then the combine kernel at 5 and 40 splits with decode4's knobs forced
        both ways (staged loads + seqlens advanced in the kernel + PDL, and
        serial + the add + no PDL; a padded row, seqlens advanced once); then
        three steps of one cache back to back with SWAA_DECODE_LEAD=-1 (stream
        order) and 3 (L2 prefetches before the wait; global and cluster).  The
        ring knobs of the caller's environment are cleared first (the earlier
        steps run the defaults: PDL and the in-kernel advance on, the combine's
        loads eager up to 8 splits and staged above, the split kernel's lead 0)

  compute-sanitizer --tool memcheck --error-exitcode 3 python bench/sanitize_case.py
  python bench/sanitize_case.py --device cpu      # the same calls on the CPU (a smoke test)
"""
import argparse
import itertools
import os

import torch

import swaa_ext  # noqa: F401  (registers torch.ops.swaa)
from swaa_ext import RingKVCache

PARTS = ("fwd", "bwd", "ring")


def odd_case(D, dtype, device):
    """B=2, Hq=4, Hkv=2, 77 queries over 150 keys, window 24, sink 3, full_from per row."""
    q = torch.randn(2, 4, 77, D, device=device, dtype=dtype)
    k = torch.randn(2, 2, 150, D, device=device, dtype=dtype)
    v = torch.randn(2, 2, 150, D, device=device, dtype=dtype)
    full_from = torch.tensor([1 << 40, 120], device=device)
    return q, k, v, (24, 3, full_from, D ** -0.5)


def forward_calls(device):
    for D, dtype in ((64, torch.bfloat16), (128, torch.float16)):
        q, k, v, args = odd_case(D, dtype, device)
        torch.ops.swaa.fwd(q, k, v, *args)
    q = torch.randn(2, 64, 700, 128, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, 8, 700, 128, device=device, dtype=torch.bfloat16)
    torch.ops.swaa.fwd(q, k, k, 100, 4, None, 0.1)
    print("fwd calls done", flush=True)


def backward_calls(device):
    for split in ("1", "3"):
        os.environ["SWAA_BWD_SPLIT"] = split
        for D, dtype in ((64, torch.bfloat16), (128, torch.float16)):
            q, k, v, args = odd_case(D, dtype, device)
            out, lse = torch.ops.swaa.fwd(q, k, v, *args)
            torch.ops.swaa.bwd(torch.randn_like(out), q, k, v, out, lse, *args)
    os.environ.pop("SWAA_BWD_SPLIT")
    # every row windowed, keys >= 7 windows: the default takes the single pass
    # (prefer_single_pass); its turn watchdog off, since the tools stretch waits
    watchdog = os.environ.get("SWAA_BWD_FUSED_WATCHDOG")
    os.environ["SWAA_BWD_FUSED_WATCHDOG"] = "0"
    q = torch.randn(1, 4, 600, 128, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 600, 128, device=device, dtype=torch.bfloat16)
    out, lse = torch.ops.swaa.fwd(q, k, k, 64, 4, None, 0.1)
    torch.ops.swaa.bwd(torch.randn_like(out), q, k, k, out, lse, 64, 4, None, 0.1)
    if watchdog is None:
        os.environ.pop("SWAA_BWD_FUSED_WATCHDOG")
    else:
        os.environ["SWAA_BWD_FUSED_WATCHDOG"] = watchdog
    print("bwd calls done", flush=True)


RING_KNOBS = ("SWAA_DECODE_SPLITS", "SWAA_DECODE_COMBINE", "SWAA_DECODE_GLOBAL_COMBINE",
              "SWAA_DECODE_TILE", "SWAA_DECODE_STAGES", "SWAA_DECODE_COMBINE_LOADS",
              "SWAA_DECODE_ADVANCE", "SWAA_DECODE_PDL", "SWAA_DECODE_LEAD")


def step_three_rows(device, steps):
    """`steps` decode steps of one random ring (W = 3000, S = 4, D = 128, 24 query heads per KV
    head) whose rows start at 0, inside the first window and far past it, the last one padded;
    its seqlens afterwards."""
    cache = RingKVCache(3, 2, 128, window=3000, sink=4, dtype=torch.bfloat16, device=device)
    cache.keys.normal_()
    cache.values.normal_()
    cache.seqlens.copy_(torch.tensor([0, 2990, 50000], device=device))
    for _ in range(steps):
        step = [torch.randn(3, heads, 1, 128, device=device, dtype=torch.bfloat16)
                for heads in (24, 2, 2)]
        cache.attend(*step, lengths=torch.tensor([1, 1, 0], device=device))
    return cache.seqlens.tolist()


def ring_calls(device):
    saved = {name: os.environ.pop(name, None) for name in RING_KNOBS}  # the defaults, not the caller's
    os.environ["SWAA_DECODE_SPLITS"] = "4"
    for combine, global_combine in (("cluster", "kernel"), ("global", "kernel"),
                                    ("global", "fused")):
        os.environ["SWAA_DECODE_COMBINE"] = combine
        os.environ["SWAA_DECODE_GLOBAL_COMBINE"] = global_combine
        for D in (64, 128):
            cache = RingKVCache(2, 2, D, window=300, sink=4, dtype=torch.bfloat16, device=device)
            chunk = [torch.randn(2, heads, 333, D, device=device, dtype=torch.bfloat16)
                     for heads in (4, 2, 2)]  # q, k, v
            lengths = torch.tensor([333, 250], device=device)
            cache.attend(*chunk, lengths=lengths)
            for _ in range(3):
                step = [torch.randn(2, heads, 1, D, device=device, dtype=torch.bfloat16)
                        for heads in (4, 2, 2)]
                cache.attend(*step)
    # the fused combine in every tiling of the global kernel (D = 128), 24 query
    # heads per KV head: CTAs of 16 and 8 heads; 5 splits, one row padded
    os.environ.update(SWAA_DECODE_COMBINE="global", SWAA_DECODE_GLOBAL_COMBINE="fused",
                      SWAA_DECODE_SPLITS="5")
    for tile, stages in ((64, 3), (64, 2), (32, 4), (32, 6)):
        os.environ.update(SWAA_DECODE_TILE=str(tile), SWAA_DECODE_STAGES=str(stages))
        cache = RingKVCache(3, 2, 128, window=300, sink=4, dtype=torch.bfloat16, device=device)
        cache.keys.normal_()
        cache.values.normal_()
        cache.seqlens.copy_(torch.tensor([0, 290, 5000], device=device))
        step = [torch.randn(3, heads, 1, 128, device=device, dtype=torch.bfloat16)
                for heads in (48, 2, 2)]
        cache.attend(*step, lengths=torch.tensor([1, 1, 0], device=device))
    # decode4: the combine kernel with staged loads, advancing seqlens, as a
    # programmatic dependent launch (the defaults), and with the other values of
    # the three knobs; 5 and 40 splits: one and several load batches
    os.environ.update(SWAA_DECODE_TILE="64", SWAA_DECODE_STAGES="3",
                      SWAA_DECODE_GLOBAL_COMBINE="kernel")
    for (loads, advance, pdl), splits in itertools.product(
            (("staged", "kernel", "1"), ("serial", "op", "0")), (5, 40)):
        os.environ.update(SWAA_DECODE_COMBINE_LOADS=loads, SWAA_DECODE_ADVANCE=advance,
                          SWAA_DECODE_PDL=pdl, SWAA_DECODE_SPLITS=str(splits))
        seqlens = step_three_rows(device, 2)
        assert seqlens == [2, 2992, 50000], seqlens
    # SWAA_DECODE_LEAD: the split kernel in stream order, and with L2 prefetches before its
    # wait (the default, 0, ran above), three steps of one cache back to back, both combines
    for name in ("SWAA_DECODE_COMBINE_LOADS", "SWAA_DECODE_ADVANCE", "SWAA_DECODE_PDL"):
        os.environ.pop(name, None)
    for lead, combine in (("-1", "global"), ("3", "global"), ("3", "cluster")):
        os.environ.update(SWAA_DECODE_LEAD=lead, SWAA_DECODE_COMBINE=combine,
                          SWAA_DECODE_SPLITS="4")
        seqlens = step_three_rows(device, 3)
        assert seqlens == [3, 2993, 50000], seqlens
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    print("ring calls done", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    calls = {"fwd": forward_calls, "bwd": backward_calls, "ring": ring_calls}
    for part in args.parts:
        calls[part](args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("sanitize case done:", " ".join(args.parts))


if __name__ == "__main__":
    main()
