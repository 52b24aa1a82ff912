"""Smoke test of one Hopper forward variant (SWAA_FWD_HOPPER=<variant>), run by
bench/fwd51_gpu.sh under a short timeout before anything else touches it (a
hang or crash there skips that variant's tests and timings).

For D in (128, 64) and both 16-bit dtypes: window 1 (P = 1 exactly, so out
must equal V bitwise and lse must equal scale * q.k: isolates the P V and the
Q K^T halves), then a window/sink/full_from case compared with v5
(SWAA_FWD_HOPPER=1: bitwise equality printed, closeness asserted) and with the
sm_80 forward.  Exit code 0 when every check passes.

  python bench/fwd51_smoke.py 3
"""
from __future__ import annotations

import os
import sys

import torch

import swaa_ext  # noqa: F401

NAMES = {"1": "sm90", "2": "sm90-overlap", "3": "sm90-v51", "4": "sm90-v51-pingpong",
         "5": "sm90-v51-persistent", "6": "sm90-v51-pingpong-persistent"}


def run(knob, q, k, v, *args):
    os.environ["SWAA_FWD_HOPPER"] = knob
    out, lse = torch.ops.swaa.fwd(q, k, v, *args)
    torch.cuda.synchronize()
    return out, lse


def main() -> int:
    variant = sys.argv[1]
    ok = True
    for D in (128, 64):
        for dtype in (torch.bfloat16, torch.float16):
            g = torch.Generator(device="cuda").manual_seed(D)
            # 1000 rows: 5.2 CTAs of 192 rows / 7.8 of 128; GQA 2; B=2
            q = torch.randn(2, 4, 1000, D, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(2, 2, 1000, D, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(2, 2, 1000, D, device="cuda", dtype=dtype, generator=g)
            os.environ["SWAA_FWD_HOPPER"] = variant
            path = torch.ops.swaa.fwd_path(q, k, v)
            tag = f"D={D} {str(dtype)[6:]:8s} {path}:"
            if path != NAMES[variant]:
                print(tag, "WRONG PATH, expected", NAMES[variant])
                ok = False
                continue
            o, l = run(variant, q, k, v, 1, 0, None, 0.1)
            rep = torch.arange(4, device="cuda") // 2
            lse_err = (l - (q.float() * k[:, rep].float()).sum(-1) * 0.1).abs().max().item()
            pv_ok = torch.equal(o, v[:, rep])
            print(f"{tag} window 1: out == v: {pv_ok}, max |lse - scale q.k| {lse_err:.3g}")
            ok = ok and pv_ok and lse_err < 1e-3
            ff = torch.tensor([1 << 40, 600], dtype=torch.int64, device="cuda")
            args = (300, 4, ff, D ** -0.5)
            o, l = run(variant, q, k, v, *args)
            o1, l1 = run("1", q, k, v, *args)
            o0, l0 = run("0", q, k, v, *args)
            d1 = (o.float() - o1.float()).abs().max().item()
            d0 = (o.float() - o0.float()).abs().max().item()
            dl0 = (l - l0).abs().max().item()
            finite = bool(torch.isfinite(o).all() and torch.isfinite(l).all())
            print(f"{tag} w=300 s=4 ff: bitwise equal to v5: "
                  f"{torch.equal(o, o1) and torch.equal(l, l1)} (max |out diff| {d1:.3g}); "
                  f"vs sm_80 max |out diff| {d0:.3g}, |lse diff| {dl0:.3g}; finite {finite}")
            ok = ok and finite and d1 < 1e-2 and d0 < 2e-2 and dl0 < 1e-3
    print("smoke", NAMES[variant], "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
