//! # zoo-kernels: candle-zoo's own compute kernels as candle ops
//!
//! The fused, trainable attention (CPU, CUDA behind `cuda`, Metal behind `metal`) and the
//! CPU training kernels land here. For now this crate turns on the AVX-512 kernels of
//! candle's matrix-multiply crate `gemm` (its `x86-v4` feature, which candle leaves off):
//! every candle matmul in a program that links the zoo picks them at run time on CPUs that
//! have AVX-512, and falls back to AVX2/SSE elsewhere.
