//! The Metal attention kernels (`kernels/metal/flash_attention.metal`) run on the CPU through the
//! emulator in `tools/metal_emu` and are compared with the fused CPU kernel: output and all three
//! gradients, f32 / f16 / bf16, on shapes with partial tiles, GQA, causal masking, key-padding
//! lengths, an additive mask and rows that see no key.
//!
//! This tests the kernels' arithmetic, indexing and barrier placement on every machine (no Mac
//! here or in CI); `tests/metal_attention.rs` (feature `metal`) runs the same comparison on a
//! real Apple GPU. Skips with a message when no C++20 compiler (`$CXX`, `c++`, `g++`) is found.
//!
//! Error measure per tensor: `max |emulated − cpu| / max |cpu|`. Tolerances: f32 2e-5 (the
//! two kernels sum in different orders); f16 4e-3 and bf16 3e-2 (the emulated kernel rounds its
//! outputs and gradients to the input dtype; the CPU kernel gets the same rounded inputs).

mod common;

use candle_core::DType;
use common::emulator::{self, compare_with_cpu};
use common::{Case, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| emulator::METAL.build()).as_deref()
}

fn check(c: &Case, seed: u64, dtypes: &[(&str, DType, f64)]) -> Result<()> {
    match emulator() {
        Some(bin) => compare_with_cpu(bin, c, seed, dtypes),
        None => Ok(()),
    }
}

const F32: (&str, DType, f64) = ("f32", DType::F32, 2e-5);
const F16: (&str, DType, f64) = ("f16", DType::F16, 4e-3);
const BF16: (&str, DType, f64) = ("bf16", DType::BF16, 3e-2);

#[test]
fn plain_shapes_with_partial_tiles_all_dtypes() -> Result<()> {
    let c = Case {
        b: 2,
        h: 2,
        hkv: 2,
        nq: 37,
        nk: 29,
        d: 40,
        causal: false,
        kv_lengths: None,
        mask: false,
    };
    check(&c, 11, &[F32, F16, BF16])
}

#[test]
fn causal_gqa_with_more_keys_than_queries() -> Result<()> {
    let c = Case {
        b: 1,
        h: 4,
        hkv: 2,
        nq: 21,
        nk: 50,
        d: 64,
        causal: true,
        kv_lengths: None,
        mask: false,
    };
    check(&c, 12, &[F32, BF16])
}

#[test]
fn padding_lengths_mask_and_rows_without_keys_at_head_dim_128() -> Result<()> {
    // Batch 1 has 0 valid keys (all its rows see nothing); mask row 2 of batch 0 is all -inf.
    let c = Case {
        b: 2,
        h: 3,
        hkv: 1,
        nq: 20,
        nk: 35,
        d: 128,
        causal: false,
        kv_lengths: Some(vec![29, 0]),
        mask: true,
    };
    check(&c, 13, &[F32, F16])
}

#[test]
fn causal_with_more_queries_than_keys_and_tiny_head_dim() -> Result<()> {
    // nq > nk: the first nq - nk queries see no key under bottom-right causal alignment.
    let c = Case {
        b: 1,
        h: 2,
        hkv: 2,
        nq: 40,
        nk: 17,
        d: 3,
        causal: true,
        kv_lengths: Some(vec![15]),
        mask: false,
    };
    check(&c, 14, &[F32, BF16])
}

#[test]
fn host_threadgroup_memory_sizes_match_the_kernel_source() -> Result<()> {
    use zoo_kernels::attention::metal_layout::{tg_bytes, Kernel, MAX_HEAD_DIM};
    let Some(bin) = emulator() else { return Ok(()) };
    let out = Command::new(bin).arg("tgmem").output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut rows = 0;
    for line in text.lines() {
        let v: Vec<usize> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        let d = v[0];
        let host = [Kernel::Forward, Kernel::Dq, Kernel::Dkdv].map(|k| tg_bytes(k, d));
        assert_eq!(
            host.as_slice(),
            &v[1..],
            "head dim {d}: host vs kernel threadgroup memory"
        );
        rows += 1;
    }
    assert_eq!(rows, MAX_HEAD_DIM, "one line per head dim");
    Ok(())
}
