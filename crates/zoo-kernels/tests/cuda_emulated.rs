//! The CUDA attention kernels (`kernels/cuda/flash_attention.cu`) run on the CPU through the
//! emulator in `tools/cuda_emu` and are compared with the fused CPU kernel: output and all three
//! gradients, f32 / f16 / bf16, on shapes with partial tiles, GQA, causal masking, key-padding
//! lengths, an additive mask and rows that see no key.
//!
//! This tests the kernels' arithmetic, indexing and barrier placement on every machine (CI has
//! no GPU); `tests/cuda_attention.rs` (feature `cuda`) runs the same comparison on a real GPU.
//! Skips with a message when no C++20 compiler (`$CXX`, `c++`, `g++`) is found.
//!
//! Error measure per tensor: `max |emulated − cpu| / max |cpu|`. Tolerances: f32 2e-5 (the
//! two kernels sum in different orders); f16 4e-3 and bf16 3e-2 (the emulated kernel rounds its
//! outputs and gradients to the input dtype; the CPU kernel gets the same rounded inputs).

mod common;

use candle_core::{DType, Device};
use common::{make_data, rel_err, rounded, run_attention, Case, Data, Impl, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the emulator binary once per test process; `None` (with a message) without a compiler.
fn emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = repo_root();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zoo_cuda_emu_run_attention");
        let compilers: Vec<String> = std::env::var("CXX")
            .ok()
            .into_iter()
            .chain(["c++".to_string(), "g++".to_string()])
            .collect();
        for cxx in compilers {
            let result = Command::new(&cxx)
                .args(["-std=c++20", "-O2", "-pthread", "-DZOO_CUDA_EMU", "-I"])
                .arg(root.join("tools/cuda_emu"))
                .arg(root.join("tools/cuda_emu/run_attention.cpp"))
                .arg("-o")
                .arg(&out)
                .output();
            match result {
                Err(_) => continue, // not installed: try the next name
                Ok(o) if o.status.success() => return Some(out),
                Ok(o) => panic!(
                    "{cxx} failed to compile the CUDA kernels for the emulator:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                ),
            }
        }
        eprintln!("SKIP: no C++20 compiler ($CXX, c++, g++): the CUDA kernels are not emulated");
        None
    })
    .as_deref()
}

/// (o, lse, dq, dk, dv) from the emulated CUDA kernels.
fn emulated(bin: &Path, c: &Case, x: &Data, dt: &str, tag: &str) -> Result<Vec<Vec<f32>>> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (input, output) = (
        dir.join(format!("emu_{tag}_in.bin")),
        dir.join(format!("emu_{tag}_out.bin")),
    );
    let mut buf = Vec::new();
    let (nq, nk) = (c.nq as i64, c.nk as i64);
    for v in [
        c.b,
        c.h,
        c.hkv,
        c.nq,
        c.nk,
        c.d,
        c.causal as usize,
        c.mask as usize,
    ] {
        buf.extend((v as i32).to_le_bytes());
    }
    buf.extend((1.0 / (c.d as f32).sqrt()).to_le_bytes());
    let strides: [i64; 4] = if c.mask { [nq * nk, 0, nk, 1] } else { [0; 4] };
    for s in strides {
        buf.extend(s.to_le_bytes());
    }
    buf.extend((x.mask.len() as i64).to_le_bytes());
    for part in [&x.q, &x.k, &x.v, &x.dout] {
        part.iter().for_each(|v| buf.extend(v.to_le_bytes()));
    }
    for bi in 0..c.b {
        let len = c.kv_lengths.as_ref().map_or(c.nk as i32, |l| l[bi] as i32);
        buf.extend(len.to_le_bytes());
    }
    x.mask.iter().for_each(|v| buf.extend(v.to_le_bytes()));
    std::fs::write(&input, buf)?;
    let st = Command::new(bin).arg(dt).arg(&input).arg(&output).status()?;
    if !st.success() {
        return Err(format!("emulator failed: {st}").into());
    }
    let bytes = std::fs::read(&output)?;
    let all: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (nqe, nke, rows) = (c.b * c.h * c.nq * c.d, c.b * c.hkv * c.nk * c.d, c.b * c.h * c.nq);
    let mut parts = Vec::new();
    let mut at = 0;
    for n in [nqe, rows, nqe, nke, nke] {
        parts.push(all[at..at + n].to_vec());
        at += n;
    }
    if at != all.len() {
        return Err(format!("emulator wrote {} floats, expected {at}", all.len()).into());
    }
    Ok(parts)
}

fn check(c: &Case, seed: u64, dtypes: &[(&str, DType, f64)]) -> Result<()> {
    let Some(bin) = emulator() else { return Ok(()) };
    let raw = make_data(c, seed);
    for &(name, dt, tol) in dtypes {
        let x = Data {
            q: rounded(&raw.q, dt)?,
            k: rounded(&raw.k, dt)?,
            v: rounded(&raw.v, dt)?,
            dout: rounded(&raw.dout, dt)?,
            mask: raw.mask.clone(),
        };
        let want = run_attention(c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
        let got = emulated(bin, c, &x, name, &format!("{seed}_{name}"))?;
        let label = format!(
            "{name} b{} h{} hkv{} nq{} nk{} d{} causal={} kv_len={:?} mask={}",
            c.b, c.h, c.hkv, c.nq, c.nk, c.d, c.causal, c.kv_lengths, c.mask
        );
        for (what, g, w) in [
            ("out", &got[0], &want[0]),
            ("dq", &got[2], &want[1]),
            ("dk", &got[3], &want[2]),
            ("dv", &got[4], &want[3]),
        ] {
            let e = rel_err(g, w);
            eprintln!("{label}: {what} {e:.2e}");
            assert!(e <= tol, "{label}: {what} relative error {e:.2e} > {tol:.0e}");
        }
        // lse is finite exactly for rows that see a key; such rows have non-zero output rows.
        assert!(got[1].iter().all(|l| !l.is_nan()), "{label}: NaN in lse");
    }
    Ok(())
}

const F32: (&str, DType, f64) = ("f32", DType::F32, 2e-5);
const F16: (&str, DType, f64) = ("f16", DType::F16, 4e-3);
const BF16: (&str, DType, f64) = ("bf16", DType::BF16, 3e-2);
const F16_TC: (&str, DType, f64) = ("f16-tc", DType::F16, 2e-3);
const BF16_TC: (&str, DType, f64) = ("bf16-tc", DType::BF16, 1e-2);

#[test]
fn plain_shapes_with_partial_tiles_all_dtypes() -> Result<()> {
    let c = Case {
        b: 2,
        h: 2,
        hkv: 2,
        nq: 70,
        nk: 67,
        d: 40,
        causal: false,
        kv_lengths: None,
        mask: false,
    };
    check(&c, 1, &[F32, F16, BF16, F16_TC, BF16_TC])
}

#[test]
fn causal_gqa_with_more_keys_than_queries() -> Result<()> {
    let c = Case {
        b: 1,
        h: 4,
        hkv: 2,
        nq: 37,
        nk: 130,
        d: 64,
        causal: true,
        kv_lengths: None,
        mask: false,
    };
    check(&c, 2, &[F32, BF16, BF16_TC])
}

#[test]
fn padding_lengths_mask_and_rows_without_keys() -> Result<()> {
    // Batch 1 has 0 valid keys (all its rows see nothing); mask row 2 of batch 0 is all -inf.
    let c = Case {
        b: 2,
        h: 3,
        hkv: 1,
        nq: 20,
        nk: 75,
        d: 128,
        causal: false,
        kv_lengths: Some(vec![69, 0]),
        mask: true,
    };
    check(&c, 3, &[F32, F16, F16_TC, BF16_TC])
}

#[test]
fn causal_with_more_queries_than_keys_and_tiny_head_dim() -> Result<()> {
    // nq > nk: the first nq - nk queries see no key under bottom-right causal alignment.
    let c = Case {
        b: 1,
        h: 2,
        hkv: 2,
        nq: 90,
        nk: 33,
        d: 3,
        causal: true,
        kv_lengths: Some(vec![30]),
        mask: false,
    };
    check(&c, 4, &[F32, BF16_TC])
}

#[test]
fn host_shared_memory_sizes_match_the_kernel_source() -> Result<()> {
    use zoo_kernels::attention::cuda_layout::{smem_bytes, Kernel, MAX_HEAD_DIM};
    let Some(bin) = emulator() else { return Ok(()) };
    let out = Command::new(bin).arg("smem").output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut rows = 0;
    for line in text.lines() {
        let v: Vec<usize> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        let d = v[0];
        let host = [
            smem_bytes(Kernel::Forward, false, d),
            smem_bytes(Kernel::Dq, false, d),
            smem_bytes(Kernel::Dkdv, false, d),
            smem_bytes(Kernel::Forward, true, d),
            smem_bytes(Kernel::Dq, true, d),
            smem_bytes(Kernel::Dkdv, true, d),
        ];
        assert_eq!(
            host.as_slice(),
            &v[1..],
            "head dim {d}: host vs kernel shared memory"
        );
        rows += 1;
    }
    assert_eq!(rows, MAX_HEAD_DIM, "one line per head dim");
    Ok(())
}
