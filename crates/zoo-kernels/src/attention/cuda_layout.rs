//! Launch geometry of the CUDA attention kernels (`kernels/cuda/flash_attention.cu`): tile sizes
//! and dynamic shared memory per kernel. Compiled on every build (not only with `cuda`) so that
//! `tests/cuda_emulated.rs` can check these numbers against the kernel source's own formulas:
//! a host that allocates less shared memory than a kernel indexes would corrupt memory on a GPU.

/// Query rows per block of the forward and dQ kernels (`BM` in the .cu file).
pub const BM: usize = 64;
/// Keys per tile / per block of the dK,dV kernels (`BN`).
pub const BN: usize = 64;
/// Query rows per step of the f32 dK,dV kernel (`BMK`).
pub const BMK: usize = 32;
/// Threads per block.
pub const THREADS: u32 = 256;
/// Largest head dimension the CUDA kernels serve (registers hold 8 columns per thread).
pub const MAX_HEAD_DIM: usize = 128;
/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_SMEM: usize = 48 * 1024;

/// The three block kernels (the row-term kernel `delta` uses no shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Output and row log-sum-exp.
    Forward,
    /// dQ.
    Dq,
    /// dK and dV.
    Dkdv,
}

/// Bytes of dynamic shared memory `kernel` needs at head dim `d`; `tensor_cores` selects the
/// f16/bf16 wmma variant (16-bit tiles, head dim padded to a multiple of 32).
pub fn smem_bytes(kernel: Kernel, tensor_cores: bool, d: usize) -> usize {
    let lds = BN + 1;
    if !tensor_cores {
        return 4 * match kernel {
            Kernel::Forward => (BM + 2 * BN) * (d + 1) + BM * lds + 4 * BM,
            Kernel::Dq => (2 * BM + 2 * BN) * (d + 1) + BM * lds + 3 * BM,
            Kernel::Dkdv => (2 * BN + 2 * BMK) * (d + 1) + 2 * BMK * lds + 3 * BMK,
        };
    }
    let (ldsf, ldp) = (BN + 4, BN + 8);
    let dp = d.div_ceil(32) * 32;
    let ldt = dp + 8;
    match kernel {
        Kernel::Forward => 2 * ((BM + 2 * BN) * ldt + BM * ldp) + 4 * (BM * ldsf + BM * (dp + 4) + 4 * BM),
        Kernel::Dq => 2 * ((2 * BM + 2 * BN) * ldt + BM * ldp) + 4 * (2 * BM * ldsf + 3 * BM),
        Kernel::Dkdv => 2 * ((2 * BN + 2 * BM) * ldt + 2 * BM * ldp) + 4 * (2 * BM * ldsf + 3 * BM),
    }
}
