//! The fused CUDA attention on a real GPU (feature `cuda`): output and all three gradients
//! against the fused CPU kernel and against the plain-ops reference evaluated in f64, on random
//! shapes (partial tiles, GQA, q_len != kv_len, causal, key padding, an additive and a boolean
//! mask, rows without keys), f32 / f16 / bf16. Skips with a message when `Device::new_cuda(0)`
//! fails (no GPU or no driver), so it passes on CPU-only machines.
//!
//! Error measure per tensor: `max |cuda − expected| / max |expected|`. Tolerances: against the
//! f64 reference, f32 1e-5 and f16/bf16 1e-2 (the targets; inputs are rounded to the
//! dtype first so only the kernel's own error counts); against the CPU kernel, f32 2e-5.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{check_on_device as check, rel_err, Case, Result};
use zoo_kernels::{flash_attention_with_backend, AttentionBackend, AttentionMask, AttentionOptions};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("SKIP: no CUDA device ({e}); the CUDA kernels are covered by tests/cuda_emulated.rs");
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
    for (i, d) in [1usize, 32, 64, 80, 96, 128].into_iter().enumerate() {
        check(&dev, &case(2, 3, 3, 70, 131, d), 10 + i as u64, ALL)?;
    }
    Ok(())
}

#[test]
fn causal_gqa_decode_and_long_shapes() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let shapes = [
        case(1, 8, 2, 1, 700, 64),     // decode: one query, GQA
        case(1, 8, 2, 16, 1000, 128),  // decode block
        case(2, 4, 1, 300, 300, 64),   // multi-query, square
        case(1, 2, 2, 513, 129, 128),  // nq > nk: leading rows see nothing
        case(1, 4, 4, 1024, 1024, 64), // several full tiles both ways
    ];
    for (i, mut c) in shapes.into_iter().enumerate() {
        c.causal = true;
        check(&dev, &c, 20 + i as u64, ALL)?;
        c.causal = false;
        check(&dev, &c, 30 + i as u64, &ALL[..1])?;
    }
    Ok(())
}

#[test]
fn padding_masks_and_rows_without_keys() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut c = case(3, 4, 2, 40, 150, 64);
    c.kv_lengths = Some(vec![150, 0, 77]);
    c.mask = true;
    check(&dev, &c, 40, ALL)?;
    c.causal = true;
    check(&dev, &c, 41, &ALL[..1])
}

#[test]
fn boolean_masks_and_non_contiguous_inputs_take_the_fused_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (b, h, n, d) = (2, 4, 96, 64);
    let q = Tensor::randn(0f32, 1.0, (b, n, h, d), &dev)?.transpose(1, 2)?; // non-contiguous
    let k = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev)?;
    let allow: Vec<u8> = (0..n * n).map(|i| ((i % n) <= (i / n)) as u8).collect();
    let opts = AttentionOptions {
        mask: Some(AttentionMask::Allow(Tensor::from_vec(allow, (n, n), &dev)?)),
        ..Default::default()
    };
    let (got, backend) = flash_attention_with_backend(&q, &k, &v, &opts)?;
    assert_eq!(backend, AttentionBackend::CudaFused);
    let causal = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let (want, _) = flash_attention_with_backend(
        &q.to_device(&Device::Cpu)?,
        &k.to_device(&Device::Cpu)?,
        &v.to_device(&Device::Cpu)?,
        &causal,
    )?;
    let (g, w) = (
        got.flatten_all()?.to_vec1::<f32>()?,
        want.flatten_all()?.to_vec1::<f32>()?,
    );
    let e = rel_err(&g, &w);
    assert!(
        e <= 2e-5,
        "boolean lower-triangular mask vs causal on the CPU: {e:.2e}"
    );
    Ok(())
}

#[test]
fn head_dims_above_128_fall_back_with_a_reason() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let q = Tensor::randn(0f32, 1.0, (1, 2, 5, 160), &dev)?;
    let (_, backend) = flash_attention_with_backend(&q, &q, &q, &AttentionOptions::default())?;
    match backend {
        AttentionBackend::Reference(reason) => assert!(reason.contains("head_dim 160"), "{reason}"),
        other => panic!("expected the reference for head_dim 160, got {other:?}"),
    }
    Ok(())
}
