"""A small swaa fwd + bwd on CUDA for compute-sanitizer (memcheck / racecheck):
odd lengths, GQA, sink, window and per-sequence full_from, both head dims; the
backward once as chosen by the sizes and once with the sink key blocks' dk/dv
split into 3 pieces (SWAA_BWD_SPLIT=3: partial sums + reduce kernel)."""
import os

import torch

import swaa_ext  # noqa: F401  (registers torch.ops.swaa)

torch.manual_seed(0)
for split in ("1", "3"):
    os.environ["SWAA_BWD_SPLIT"] = split
    for D, dtype in ((64, torch.bfloat16), (128, torch.float16)):
        B, Hq, Hkv, Lq, Lk = 2, 4, 2, 77, 150
        q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype)
        k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype)
        v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype)
        full_from = torch.tensor([1 << 40, 120], device="cuda")
        out, lse = torch.ops.swaa.fwd(q, k, v, 24, 3, full_from, D ** -0.5)
        dq, dk, dv = torch.ops.swaa.bwd(torch.randn_like(out), q, k, v, out, lse, 24, 3,
                                        full_from, D ** -0.5)
torch.cuda.synchronize()
print("sanitize case done", out.float().abs().sum().item(), dk.float().abs().sum().item())
