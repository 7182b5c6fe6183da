#!/bin/bash
# Usage: ROUNDS=2 OUT=/tmp/sit tools/attention_rounds.sh   (needs ../shared/bench/setup.sh and a release build of bench_attention)
# alternating rounds: zoo then torch per shape group
cd "$(dirname "$0")/.."; mkdir -p "${OUT:-/tmp/sit}"
PY=/root/.cache/candle-zoo/torch-venv/bin/python
Z=./target/release/examples/bench_attention
groups=(
"--n 128,512,1024"
"--n 2048,4096"
"--b 4 --n 512"
"--n 1024 --nq 1,2,4,16 --hkv 2 --pass fwd"
"--n 4096 --nq 1,2,4,16 --hkv 2 --pass fwd"
"--n 8192 --nq 1,2,4,16 --hkv 2 --pass fwd"
)
for r in $(seq 1 ${ROUNDS:-2}); do
 for g in "${groups[@]}"; do
  $Z --json --impl fused $g --causal false,true --seconds 0.5 >> ${OUT:-/tmp/sit}/zoo_r$r.jsonl 2>/dev/null
  env -C ../shared/bench $PY torch_attention.py --impl sdpa $g >> ${OUT:-/tmp/sit}/torch_r$r.jsonl 2>/dev/null
 done
done
echo done
