#!/usr/bin/env python3
"""One markdown table from scripts/gpu_check.sh's JSON lines: per shape and pass, our fused
kernel's time and TFLOP/s beside PyTorch SDPA's, their ratio (torch ms / ours ms: > 1 means we
are faster) and our output's max relative error against the f32 reference (n <= 4096).
Usage: gpu_table.py runs/gpu/attention.jsonl
"""
import json
import sys


def main(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        key = (r["b"], r["h"], r["n"], r["d"], r["causal"], r["pass"])
        side = "ours" if r["impl"] == "fused" else "torch"
        rows.setdefault(key, {})[side] = r
    print("| B x H x N x D | causal | pass | ours ms | ours TFLOP/s | torch ms | torch TFLOP/s | torch/ours | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[3], k[2], k[4], k[5])):
        b, h, n, d, causal, pas = key
        o, t = rows[key].get("ours"), rows[key].get("torch")
        ms = lambda r: "%.3f" % r["ms"] if r else "—"
        tf = lambda r: "%.1f" % (r["gflops"] / 1e3) if r else "—"
        ratio = "%.2fx" % (t["ms"] / o["ms"]) if o and t else "—"
        err = o.get("max_rel_err") if o else None
        err_s = "—" if err is None else "%.1e" % float(err)
        print(f"| {b}x{h}x{n}x{d} | {causal} | {pas} | {ms(o)} | {tf(o)} | {ms(t)} | {tf(t)} | {ratio} | {err_s} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu/attention.jsonl")
