//! # zoo-kernels: candle-zoo's own compute kernels as candle ops
//!
//! - [`flash_attention`]: fused, trainable scaled dot-product attention (forward and backward
//!   kernels on the CPU; [`reference_attention`] from plain candle ops elsewhere).
//! - [`allocator::retain_freed_memory`]: one call that stops a training loop from faulting its
//!   buffers in again every step (glibc; opt-in, process-wide).
//! - [`bias::add_bias`]: bias addition whose backward sums rows fast (candle's strided
//!   reduction made bias gradients 15% of a Transformer layer's training step).
//! - [`conv::conv2d`]: NCHW convolution with bias and fused ReLU whose backward is two matrix
//!   products per image (candle's took half of the MNIST CNN's training step).
//! - [`heads::split_heads`], [`heads::merge_heads`]: attention's head reshuffles as one node each.
//! - [`dropout::dropout`]: dropout as one node with a hashed mask that is recomputed, not stored.
//! - [`linear::linear`]: `act(x Wᵀ + b)` as one autograd node (candle's composition is five, and
//!   each costs a zeros tensor and an add in the backward pass).
//! - [`norm::layer_norm`], [`norm::rms_norm`]: fused CPU normalization with a backward pass
//!   (candle-nn's fused ones have none).
//! - [`pool::max_pool2d`]: max pooling whose backward is correct (candle 0.11.1's scales the
//!   gradient by `1/k²` and misplaces it on odd-sized inputs).
//!
//! CUDA (feature `cuda`) and Metal (feature `metal`) attention kernels and further CPU training
//! kernels land here next. This crate also turns on the AVX-512 kernels of
//! candle's matrix-multiply crate `gemm` (its `x86-v4` feature, which candle leaves off); gemm
//! picks them at run time on CPUs that have AVX-512 and falls back to AVX2/SSE elsewhere.

#![warn(missing_docs)]

#[macro_use]
mod multiversion;

mod aligned;
pub mod allocator;
pub mod attention;
pub mod bias;
pub mod conv;
pub mod dropout;
mod gemm;
pub mod heads;
mod host;
pub mod linear;
mod math;
pub mod norm;
mod parallel;
pub mod pool;
pub mod switch;

pub use switch::{fused_kernels, set_fused_kernels, set_simd_code, simd_code, simd_in_use, SimdCode};

pub use attention::{
    flash_attention, flash_attention_with_backend, reference_attention, AttentionBackend, AttentionDropout,
    AttentionMask, AttentionOptions,
};
