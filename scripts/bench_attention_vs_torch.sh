#!/usr/bin/env bash
# Runs candle-zoo's attention benchmark and PyTorch's (../shared/bench/torch_attention.py) in
# one sitting and writes all JSON lines to ${OUT:-runs/bench/attention.jsonl}.
# Usage: scripts/bench_attention_vs_torch.sh      (PY=... to choose the PyTorch interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench/attention.jsonl}
PY=${PY:-$(../shared/bench/setup.sh)}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
cargo build --release --example bench_attention
B=./target/release/examples/bench_attention
T=(env -C ../shared/bench "$PY" torch_attention.py)
# Square shapes, B=1, H=8, D=64; the reference (n x n scores) only up to 2048.
"$B" --json --impl fused,candle_flash >> "$OUT"
"$B" --json --impl reference --n 128,512,1024,2048 >> "$OUT"
"${T[@]}" --impl sdpa >> "$OUT"
# Batch 4 at n = 512.
"$B" --json --b 4 --n 512 --impl fused,reference,candle_flash >> "$OUT"
"${T[@]}" --b 4 --n 512 --impl sdpa >> "$OUT"
# Decode shapes: 1 and 16 queries against 1024, 4096 and 8192 keys, GQA 8 query heads / 2 kv heads.
for n in 1024 4096 8192; do
  "$B" --json --n $n --nq 1,16 --hkv 2 --pass fwd --impl fused,reference,candle_flash >> "$OUT"
  "${T[@]}" --n $n --nq 1,16 --hkv 2 --pass fwd --impl sdpa >> "$OUT"
done
# Long sequence: forward+backward at n = 16384 (the naive path would need ~7 GiB per score matrix set).
"$B" --json --n 16384 --impl fused --pass fwd_bwd --causal false,true --seconds 1 >> "$OUT"
echo "wrote $OUT ($(wc -l < "$OUT") lines)"
