#!/usr/bin/env python3
"""PyTorch's side of the GPU attention comparison (run by scripts/gpu_check.sh).

Times torch.nn.functional.scaled_dot_product_attention restricted to the flash backend on the
GPU, for the same shapes and dtype as examples/bench_attention (--device cuda), and prints one
JSON object per line with the bench's keys: impl, b, h, hkv, d, nq, n, causal, pass, ms, gflops.
FLOPs as the bench counts them: forward 4*B*H*pairs*D (pairs halved when causal), forward+backward
3.5x that. Usage: torch_sdpa_cuda.py --b 4 --h 16 --n 4096 --d 128 --dtype bf16
"""
import argparse
import json

import torch
import torch.nn.functional as F


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--b", type=int, default=1)
    p.add_argument("--h", type=int, default=16)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--causal", default="false,true")
    p.add_argument("--pass", dest="passes", default="fwd,fwd_bwd")
    a = p.parse_args()
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = SDPBackend.FLASH_ATTENTION if dt != torch.float32 else SDPBackend.EFFICIENT_ATTENTION
    for causal in [c == "true" for c in a.causal.split(",")]:
        for pas in a.passes.split(","):
            q, k, v = (
                torch.randn(a.b, a.h, a.n, a.d, device="cuda", dtype=dt, requires_grad=pas == "fwd_bwd")
                for _ in range(3)
            )

            def run():
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    if pas == "fwd_bwd":
                        out.sum().backward()

            ms = timed(run)
            pairs = a.n * a.n * (0.5 if causal else 1.0)
            flops = 4 * a.b * a.h * pairs * a.d * (3.5 if pas == "fwd_bwd" else 1.0)
            print(json.dumps({
                "impl": "torch_sdpa_" + backend.name.lower(), "b": a.b, "h": a.h, "hkv": a.h, "d": a.d,
                "nq": a.n, "n": a.n, "causal": causal, "pass": pas, "ms": ms,
                "gflops": flops / (ms * 1e-3) / 1e9, "device": "cuda", "dtype": a.dtype,
            }), flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
