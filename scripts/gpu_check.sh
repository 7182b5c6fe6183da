#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (NVIDIA driver, PyTorch with its CUDA libraries,
# no network, no Rust toolchain). Run scripts/build_gpu_bins.sh HERE first and carry gpu_bins/;
# on the GPU machine: `bash scripts/gpu_check.sh` (one call, a few minutes). It
#   1. reports the GPU, driver, PyTorch and whether the carried binaries find their libraries;
#   2. runs the CUDA tests (crates/zoo-kernels/tests/cuda_attention.rs) on the GPU;
#   3. benchmarks our fused attention against PyTorch SDPA (flash backend) on the same GPU, in the
#      same run: B x H x N x D with N 1k / 4k / 16k (B*N = 16k tokens, H*D = 2048), D 64 and 128,
#      causal and not, bf16, forward and forward+backward;
#   4. prints one table (tools/gpu_table.py) and leaves the raw lines in $OUT (or runs/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
BIN=${BIN_DIR:-/tmp/zoo_gpu_bins}

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
echo "cargo: $(command -v cargo || echo none)"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0))' || true
if [ ! -f gpu_bins/cuda_attention.gz ]; then
  echo "no gpu_bins/cuda_attention.gz: run scripts/build_gpu_bins.sh on the build machine and carry gpu_bins/" >&2
  exit 2
fi
mkdir -p "$BIN"
for b in cuda_attention bench_attention; do gunzip -c "gpu_bins/$b.gz" > "$BIN/$b" && chmod +x "$BIN/$b"; done
echo "binaries built for compute capability $(cat gpu_bins/COMPUTE_CAP) at commit $(cat gpu_bins/COMMIT)"

# The binaries link libcuda (the driver) and CUDA 13 nvrtc/cublas/curand: use the ones the PyTorch
# install carries (site-packages/nvidia/*/lib), and say plainly if a version is missing.
LIBDIRS=$($PY - <<'PYEOF' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = set()
for r in roots:
    for so in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
    for so in glob.glob(os.path.join(r, "torch", "lib", "lib*.so*")):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PYEOF
)
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$BIN/cuda_attention" | grep "not found" || true)
if [ -n "$missing" ]; then
  echo "== MISSING LIBRARIES (the binaries cannot run here):"
  echo "$missing"
  echo "available CUDA libraries:"; echo "$LIBDIRS" | tr ':' '\n' | while read -r d; do ls "$d" 2>/dev/null; done | grep -E "cublas|nvrtc|curand|cudart" | sort -u
fi

echo "== CUDA tests"
"$BIN/cuda_attention" --test-threads 1 2>&1 | tee "$OUT/tests.log" | grep -E "^test |test result|SKIP|panicked|error vs f64 reference [0-9.e-]+$" | tail -60

echo "== benchmark (ours, then PyTorch, same GPU, same run)"
: > "$OUT/attention.jsonl"
for d in 64 128; do
  h=$((2048 / d))
  for n in 1024 4096 16384; do
    b=$((16384 / n))
    timeout 120 "$BIN/bench_attention" --json --device cuda --dtype bf16 --impl fused --b "$b" --h "$h" --d "$d" \
      --n "$n" --causal false,true --pass fwd,fwd_bwd --seconds 1 --check --reference-max-n 4096 \
      >> "$OUT/attention.jsonl" || echo "bench failed: d=$d n=$n (rc $?)"
    timeout 120 $PY tools/torch_sdpa_cuda.py --b "$b" --h "$h" --d "$d" --n "$n" --dtype bf16 \
      >> "$OUT/attention.jsonl" || echo "torch bench failed: d=$d n=$n (rc $?)"
  done
done
$PY tools/gpu_table.py "$OUT/attention.jsonl"
