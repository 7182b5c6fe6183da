#!/usr/bin/env python3
"""Markdown table from scripts/bench_attention_vs_torch.sh's JSON lines: each case with the
fused kernel, the reference, candle's CPU flash attention and PyTorch SDPA, and the speed-up
of the fused kernel over PyTorch (torch ms / fused ms; > 1 means we are faster).

Usage: python3 tools/attention_table.py runs/bench/attention.jsonl [--peak GFLOPS]

`--peak` is the machine's f32 peak for the "% of peak" column: 500 (the best GEMM measured on
the Zen 5 host of ../shared/notes/cpu-perf.md) unless given; measure the register FMA peak of
the machine at hand with tools/fma_peak.c.
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--peak", type=float, default=500.0, help="f32 GFLOP/s of the machine")
    args = ap.parse_args()
    peak = args.peak
    rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
    key = lambda r: (r["b"], r["h"], r["hkv"], r["d"], r["nq"], r["n"], r["causal"], r["pass"])
    cases = {}
    for r in rows:
        cases.setdefault(key(r), {})[r["impl"]] = r
    print("| b | hkv | nq | n | causal | pass | fused ms | GFLOP/s (% of peak) | reference ms | candle_flash ms | torch SDPA ms | torch / fused | peak RSS MiB fused / torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(cases):
        c = cases[k]
        f = c.get("fused")
        if f is None:
            continue
        t = c.get("torch_sdpa")
        fmt = lambda r: f"{r['ms']:.2f}" if r else "—"
        ratio = f"**{t['ms'] / f['ms']:.2f}x**" if t else "—"
        rss = f"{f['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f}" if t else f"{f['peak_rss_mb']:.0f} / —"
        b, h, hkv, d, nq, n, causal, p = k
        print(f"| {b} | {hkv} | {nq} | {n} | {causal} | {p} | {f['ms']:.2f} | {f['gflops']:.0f} ({f['gflops'] / peak * 100:.0f}%) | "
              f"{fmt(c.get('reference'))} | {fmt(c.get('candle_flash'))} | {fmt(t)} | {ratio} | {rss} |")


if __name__ == "__main__":
    main()
