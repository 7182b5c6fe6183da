//! Builds and runs the CPU emulators of the GPU kernels (`tools/cuda_emu`, `tools/metal_emu`):
//! the kernel source compiles as C++ against an emulation header, and `run_attention` reads a
//! case from a file and writes the output, the row log-sum-exp and the three gradients.

use super::{make_data, rel_err, run_attention, Case, Data, Impl, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One emulator: its tool directory under `tools/` and the macro that selects emulation.
pub struct Emulator {
    /// `tools/<dir>` holds the header and `run_attention.cpp`.
    pub dir: &'static str,
    /// `-D<define>` makes the kernel source include the emulation header.
    pub define: &'static str,
}

pub const CUDA: Emulator = Emulator {
    dir: "cuda_emu",
    define: "ZOO_CUDA_EMU",
};

pub const METAL: Emulator = Emulator {
    dir: "metal_emu",
    define: "ZOO_METAL_EMU",
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Emulator {
    /// Compiles `run_attention.cpp` (the first compiler of `$CXX`, `c++`, `g++` that exists);
    /// `None`, with a message, when there is none. Panics when the kernel source does not
    /// compile: that is a test failure, not a missing tool.
    pub fn build(&self) -> Option<PathBuf> {
        let root = repo_root();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("zoo_{}_run_attention", self.dir));
        let compilers: Vec<String> = std::env::var("CXX")
            .ok()
            .into_iter()
            .chain(["c++".to_string(), "g++".to_string()])
            .collect();
        for cxx in compilers {
            let result = Command::new(&cxx)
                .args([
                    "-std=c++20",
                    "-O2",
                    "-pthread",
                    &format!("-D{}", self.define),
                    "-I",
                ])
                .arg(root.join("tools").join(self.dir))
                .arg(root.join("tools").join(self.dir).join("run_attention.cpp"))
                .arg("-o")
                .arg(&out)
                .output();
            match result {
                Err(_) => continue, // not installed: try the next name
                Ok(o) if o.status.success() => return Some(out),
                Ok(o) => panic!(
                    "{cxx} failed to compile the kernels for {}:\n{}",
                    self.dir,
                    String::from_utf8_lossy(&o.stderr)
                ),
            }
        }
        eprintln!(
            "SKIP: no C++20 compiler ($CXX, c++, g++): the kernels of tools/{} are not emulated",
            self.dir
        );
        None
    }
}

/// (o, lse, dq, dk, dv) from an emulator binary `bin` for case `c`, variant `dt`.
pub fn emulated(bin: &Path, c: &Case, x: &Data, dt: &str, tag: &str) -> Result<Vec<Vec<f32>>> {
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

/// Runs case `c` (data from `seed`) through emulator binary `bin` for each `(variant, dtype,
/// tolerance)` and compares output and gradients with the fused CPU kernel on the same rounded
/// inputs: `max |emulated − cpu| / max |cpu|` must be within the tolerance.
pub fn compare_with_cpu(bin: &Path, c: &Case, seed: u64, dtypes: &[(&str, DType, f64)]) -> Result<()> {
    let tool = bin.file_name().and_then(|n| n.to_str()).unwrap_or("emu");
    let raw = make_data(c, seed);
    for &(name, dt, tol) in dtypes {
        let x = raw.rounded(dt)?;
        let want = run_attention(c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
        let got = emulated(bin, c, &x, name, &format!("{tool}_{seed}_{name}"))?;
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
