"""Run in a subprocess by test_w4a16_decode.py: prints one digest of decode-size w4a16 GEMM outputs on fixed
random inputs (the shapes of up to 4 rows in check_w4a16_shapes.SHAPES, fp16 and bf16, without and with the
residual epilogue, and through the fused norm) under whatever VLM_W4A16_* settings the environment holds (the
library reads them once per process), so that two settings can be compared bit for bit."""
from __future__ import annotations

import hashlib
import zlib

from check_w4a16_shapes import SHAPES
from w4a16_reference import random_layer

from vlmserve.kernels import w4a16_gemm, w4a16_gemm_rms_norm


def main() -> None:
    import torch

    digest = hashlib.sha256()
    for m, n, k, group in SHAPES:
        if m > 4:
            continue
        for dtype in ("float16", "bfloat16"):
            seed = zlib.crc32(f"{m},{n},{k},{group},{dtype}".encode())  # the same in every process
            _, packed, sz = random_layer(n, k, group, dtype, seed)
            dev, tdtype = packed.device, getattr(torch, dtype)
            gen = torch.Generator().manual_seed(seed)
            a = torch.randn(m, k, generator=gen).to(dev, tdtype)
            residual = torch.randn(m, n, generator=gen).to(dev, tdtype)
            h = (torch.randn(m, k, generator=gen) * 3).to(dev)
            norm_w = (1 + 0.1 * torch.randn(k, generator=gen)).to(dev)
            outs = [w4a16_gemm(a, packed, sz, n, group), w4a16_gemm(a, packed, sz, n, group, residual=residual)]
            out = torch.empty(m, n, dtype=tdtype, device=dev)
            w4a16_gemm_rms_norm(h, None, norm_w, 1e-6, packed, sz, n, group, out=out, dtype=tdtype)
            outs.append(out)
            torch.cuda.synchronize()
            for o in outs:
                digest.update(o.view(torch.int16).cpu().numpy().tobytes())
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
