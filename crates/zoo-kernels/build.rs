//! Compiles `kernels/cuda/*.cu` to PTX when the `cuda` feature is on; a plain build needs no
//! CUDA toolkit. nvcc is found through `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then `PATH`. The
//! target architecture is `CUDA_COMPUTE_CAP` (default 80 = A100; 90 = H100/H200): the PTX is
//! built for `compute_<cap>` and the driver JIT-compiles it for the GPU it runs on (any GPU of
//! that capability or newer).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["flash_attention"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../kernels/cuda");
    for v in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = env::var("NVCC").map(PathBuf::from).unwrap_or_else(|_| {
        env::var("CUDA_HOME")
            .map(|h| PathBuf::from(h).join("bin/nvcc"))
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    });
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let cap = cap.trim().trim_start_matches("sm_").trim_end_matches(['a', 'f']);
    let src_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../../kernels/cuda");
    for name in KERNELS {
        let src = src_dir.join(format!("{name}.cu"));
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "feature `cuda` needs nvcc to compile {}: {e} (set NVCC or CUDA_HOME, or put nvcc on PATH)",
                    src.display()
                )
            });
        assert!(status.success(), "nvcc failed on {} ({status})", src.display());
    }
}
