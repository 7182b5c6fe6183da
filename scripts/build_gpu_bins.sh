#!/usr/bin/env bash
# Builds, on this CPU-only machine, what scripts/gpu_check.sh runs on a lent GPU machine (which
# has no Rust toolchain): the CUDA test binary of zoo-kernels and the attention benchmark, with
# `--features cuda` for CUDA_COMPUTE_CAP (default 90 = H100/H200), stripped and gzipped, into gpu_bins/.
# The CUDA 13.4 toolkit and the libraries the binaries link against come from pinned pip wheels
# (see ../shared/notes/cuda-build.md); libcuda is a generated stub, so the binaries load the real
# driver on the GPU machine. Usage: scripts/build_gpu_bins.sh   (then carry gpu_bins/)
set -euo pipefail
cd "$(dirname "$0")/.."
CAP=${CUDA_COMPUTE_CAP:-90}
CUDA_PIP_DIR=${CUDA_PIP_DIR:-/opt/cuda-pip-13.4-link}
C=$CUDA_PIP_DIR/nvidia/cu13
if [ ! -e "$C/lib/stubs/libcuda.so.1" ] || [ ! -e "$C/lib/libcublas.so" ]; then
  echo "== installing CUDA 13.4 (nvcc + link libraries) from pip wheels into $CUDA_PIP_DIR"
  rm -rf "$CUDA_PIP_DIR"
  python3 -m pip install --quiet --root-user-action=ignore --disable-pip-version-check --no-deps \
    --target "$CUDA_PIP_DIR" \
    nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92 \
    nvidia-cuda-runtime==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 \
    nvidia-cuda-nvrtc==13.4.92 nvidia-curand==10.4.4.72 nvidia-cublas==13.4.3.11
  L=$C/lib
  for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "$L/lib$l.so"; done
  ln -sf libcurand.so.10 "$L/libcurand.so"
  mkdir -p "$L/stubs"
  gcc -E -P -I"$C/include" "$C/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' \
    | tr -d ' (' | sort -u | sed 's/.*/int &(void) { return 34; }/' \
    | gcc -shared -fPIC -x c - -Wl,-soname,libcuda.so.1 -o "$L/stubs/libcuda.so"
  ln -sf libcuda.so "$L/stubs/libcuda.so.1"
fi
export CUDA_HOME=$C PATH=$C/bin:$PATH CUDA_COMPUTE_CAP=$CAP
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu-sm$CAP}
echo "== cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CAP, target $CARGO_TARGET_DIR)"
cargo build --release --features cuda --example bench_attention
test_bin=$(cargo test --release --features cuda -p zoo-kernels --test cuda_attention --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_attention":
        print(m["executable"])')
rm -rf gpu_bins && mkdir -p gpu_bins
cp "$CARGO_TARGET_DIR/release/examples/bench_attention" gpu_bins/bench_attention
cp "$test_bin" gpu_bins/cuda_attention
strip gpu_bins/bench_attention gpu_bins/cuda_attention
# ~100 MiB stripped, ~25 MiB gzipped: under the 64 MiB a device call carries.
gzip -9 gpu_bins/bench_attention gpu_bins/cuda_attention
echo "$CAP" > gpu_bins/COMPUTE_CAP
git rev-parse HEAD > gpu_bins/COMMIT
ls -la gpu_bins
du -sh gpu_bins
