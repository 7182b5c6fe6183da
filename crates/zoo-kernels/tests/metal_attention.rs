//! The fused Metal attention on a real Apple GPU (feature `metal`): output and all three
//! gradients against the fused CPU kernel and against the plain-ops reference evaluated in f64,
//! on random shapes (partial tiles, GQA, q_len != kv_len, causal, key padding, an additive mask,
//! rows without keys), f32 / f16 / bf16. Skips with a message when `Device::new_metal(0)` fails,
//! so it passes on machines without Metal.
//!
//! Run on a Mac with `cargo test --features metal -p zoo-kernels`. Until someone has, the Metal
//! path is unverified on hardware; its kernels are tested through the CPU emulator
//! (`tests/metal_emulated.rs`) everywhere.
//!
//! Error measure per tensor: `max |metal − expected| / max |expected|`. Tolerances: against the
//! f64 reference, f32 1e-5 and f16/bf16 1e-2 (inputs are rounded to the dtype first); against
//! the CPU kernel, f32 2e-5.
#![cfg(feature = "metal")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{check_on_device as check, Case, Result};
use zoo_kernels::{flash_attention_with_backend, AttentionBackend, AttentionOptions};

fn gpu() -> Option<Device> {
    match Device::new_metal(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!(
                "SKIP: no Metal device ({e}); the Metal kernels are covered by tests/metal_emulated.rs"
            );
            None
        }
    }
}

const ALL: &[(DType, f64)] = &[(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::BF16, 1e-2)];

fn case(b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
    Case {
        b,
        h,
        hkv,
        nq,
        nk,
        d,
        causal: false,
        kv_lengths: None,
        mask: false,
    }
}

#[test]
fn head_dims_and_partial_tiles() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (i, d) in [1usize, 32, 64, 80, 128].into_iter().enumerate() {
        check(&dev, &case(2, 3, 3, 37, 53, d), 50 + i as u64, ALL)?;
    }
    Ok(())
}

#[test]
fn causal_gqa_decode_and_padding() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let shapes = [
        case(1, 8, 2, 1, 300, 64),   // decode: one query, GQA
        case(1, 4, 2, 16, 200, 128), // decode block
        case(1, 2, 2, 70, 33, 64),   // nq > nk: leading rows see nothing
    ];
    for (i, mut c) in shapes.into_iter().enumerate() {
        c.causal = true;
        check(&dev, &c, 60 + i as u64, ALL)?;
    }
    let mut c = case(3, 4, 2, 20, 60, 64);
    c.kv_lengths = Some(vec![60, 0, 37]);
    c.mask = true;
    check(&dev, &c, 70, ALL)
}

#[test]
fn the_fused_metal_path_is_taken() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let q = Tensor::randn(0f32, 1.0, (1, 2, 24, 64), &dev)?;
    let (_, backend) = flash_attention_with_backend(&q, &q, &q, &AttentionOptions::default())?;
    assert_eq!(backend, AttentionBackend::MetalFused);
    Ok(())
}
